"""gunicorn: recognising it, its master, its app URI, its workers, and its reloads: a rollout
through the verified master (SIGTTIN, the new worker ready, SIGTTOU, until no old worker is
left) or one SIGHUP per deploy, or each worker restarting itself in turn.

Both reloads refuse under ``--preload``, where neither can load new code (the master holds the
old modules) and a self-restarting worker would storm.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from .._record import section
from .._system import SYSTEM, System
from ..boot import Target
from ..policy import ChangeSet
from . import base
from .base import Action, MasterAction, ProcessContext, Refusal, Siblings, record_master

log = logging.getLogger("wsgireload")

PRELOAD_ERROR = (
    "wsgireload: gunicorn runs with --preload (preload_app): the master imported the app "
    "before forking, so neither a HUP nor a worker restart can load new code, and restarting "
    "workers would only storm. Code changes will be ignored. To reload on deploy, drop "
    "--preload, or reload yourself with `kill -USR2 <master pid>` and then "
    "`kill -TERM <old master pid>` once the new master serves."
)


ROLL_GAP = 0.1  # seconds the master gets to act on one signal before the next step
ROLLOUT_STOPPED = (
    "wsgireload: rollout of reload %s stopped: the new gunicorn worker was not ready within "
    "boot_timeout (%.0fs). gunicorn is back to %d worker(s) (SIGTTOU retired the oldest); the "
    "other old workers go on serving the old code, and the slow worker serves the new code "
    "once its import ends. Make the app import faster, or raise boot_timeout, then deploy "
    "again"
)


def step_rollout(data: Dict[str, Any], master: int, siblings: Siblings, system: System) -> Optional[
        Tuple[int, Dict[str, Any]]]:
    """The next signal of the rollout in ``data`` (the master's record) and the rollout as it
    is once sent, or None: nothing to send now.

    Each step is judged against the master's live children, so that whoever holds the lease
    next continues where the last one stopped: ``extra`` says a SIGTTIN is not yet matched
    by its SIGTTOU, and every SIGTTIN gets exactly one, so gunicorn ends with the worker
    count it began with whatever dies on the way. A signal is written before it is sent: one
    whose sender died in between is sent again, a SIGTTIN once no extra worker came within
    boot_timeout, a SIGTTOU once one worker too many stayed for twice that.
    """
    state = section(data, "rollout")
    now = system.monotonic()
    if now - float(state.get("at", 0.0)) < ROLL_GAP:
        return None
    live = system.children(master)
    if not live:
        return None  # the master is gone or stopping (or /proc is unreadable)
    born_before = {int(pid) for pid in state.get("old", ())}
    old = [pid for pid in live if pid in born_before]
    count = int(state.get("count", 1))
    workers = section(data, "workers")
    new = [pid for pid in live if pid not in born_before]
    ready = [pid for pid in new if "ready" in section(workers, str(pid))]
    if state.get("extra"):
        # Every old worker retired so far has its ready replacement, and so has the SIGTTIN.
        if len(ready) > count - len(old):
            return signal.SIGTTOU, {**state, "extra": False, "at": now}
        if now - float(state.get("since", now)) > siblings.boot_timeout:
            if len(live) <= count:  # the SIGTTIN was written but its sender died unsent
                return signal.SIGTTIN, {**state, "since": now, "at": now}
            log.error(ROLLOUT_STOPPED, state.get("n"), siblings.boot_timeout, count)
            return signal.SIGTTOU, {**state, "extra": False, "at": now, "end": "stopped"}
        return None
    if len(live) > count:
        if now - float(state.get("at", 0.0)) < 2 * siblings.boot_timeout:
            return None  # the worker retired last is still finishing its requests
        return signal.SIGTTOU, {**state, "at": now}  # the last SIGTTOU's sender died unsent
    if not old:
        log.debug("wsgireload: rollout of reload %s done: every worker of master %d replaced, "
                 "each new one ready before an old one left", state.get("n"), master)
        return 0, {**state, "end": "done"}
    return signal.SIGTTIN, {**state, "extra": True, "since": now, "at": now}


def take_turn(siblings: Siblings, system: System) -> Optional[bool]:
    """Whether this worker may restart itself now (one-by-one, through the master's record):
    True (its turn, noted), False (wait: a worker that restarted has no ready replacement
    yet), None (give up: none became ready within boot_timeout). Alone: True."""
    verdict: List[Optional[bool]] = [True]

    def change(data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        generation, now = section(data, "generation"), system.monotonic()
        state = section(data, "restarts")
        if state.get("n") != generation.get("n"):
            state = {"n": generation.get("n"), "done": 0, "at": now}
        since = float(generation.get("at", now))
        ready = [pid for pid, w in section(data, "workers").items() if isinstance(w, dict)
                 and "ready" in w and float(w.get("born", 0.0)) >= since
                 and system.alive(int(pid), w.get("start"))]
        if len(ready) >= int(state["done"]):
            return {**data, "restarts": {**state, "done": int(state["done"]) + 1, "at": now}}
        verdict[0] = None if now - float(state["at"]) > siblings.boot_timeout else False
        return None

    if siblings.rollout == "one-by-one":
        siblings.update(change)
    return verdict[0]


def restart_in_turn(siblings: Siblings, system: System, master: int) -> None:
    """SIGTERM to this worker once its turn comes: one worker of the master at a time."""
    turn = take_turn(siblings, system)
    if turn is None and siblings.first_to_log("restarts-stopped"):
        log.error("wsgireload: restarting workers one by one stopped: a worker that restarted "
                  "itself has no ready replacement after boot_timeout (%.0fs); the others go on "
                  "serving the old code. Make the app import faster, or raise boot_timeout, "
                  "then deploy again", siblings.boot_timeout)
    elif turn is False:
        system.later(ROLL_GAP, lambda: restart_in_turn(siblings, system, master))
    elif turn:
        if len(system.children(master)) <= 1 and siblings.first_to_log("one-worker-gap"):
            log.info("wsgireload: one worker and a master it may not signal: each reload waits "
                     "one boot with nobody serving; run 2 workers or more to avoid it")
        # SIGTERM: gunicorn's worker finishes its requests and exits, and the master spawns a
        # fresh one. (``sys.exit()`` would be caught by gunicorn: no restart.)
        pid = system.getpid()
        if pid <= 1:  # never terminate an init process (a container's only process)
            log.warning("wsgireload: not restarting pid %d", pid)
        else:
            system.kill(pid, signal.SIGTERM)


class GunicornAction(MasterAction):
    """SIGHUP to this worker's gunicorn master: a graceful reload of every worker.

    One worker of a master signals per deploy (the one that decided it for the master's
    workers; without a shared record, none: N workers would each HUP), only a master verified
    as unchanged since the worker started, and two reloads of one master at least
    ``min_interval`` seconds apart.

    A master this worker may not signal (``gunicorn --user``: the master stays root, the
    workers drop privileges) makes the reload impossible. With ``restart_fallback`` (what
    ``action="auto"`` uses) each worker then restarts itself after its response instead, as
    ``restart-worker`` does; decided at setup from /proc, or at the first signal refused
    with EPERM. Without it, a WARNING says what to do.

    :param min_interval: seconds between two reloads of one master.
    :param server_names: names one of which the master's program must be.
    :param restart_fallback: restart each worker when the master cannot be signalled.
    :param runtime_dir: private directory for the master's record.
    :param system: the operating system (tests pass a fake).
    """

    name = "gunicorn"
    summary = (
        "one new worker ready before each old one leaves (SIGTTIN, SIGTTOU to the verified "
        "master); rollout='all-at-once': one SIGHUP per deploy; with --preload, one ERROR and "
        "no reload"
    )

    def __init__(
        self,
        *,
        min_interval: float = 3.0,  # seconds
        server_names: Sequence[str] = ("gunicorn",),
        restart_fallback: bool = False,
        runtime_dir: Optional[str] = None,
        system: System = SYSTEM,
    ) -> None:
        super().__init__(server_names, runtime_dir, system)
        self.restart_fallback = restart_fallback
        self.min_interval = float(min_interval)
        self.disabled: Optional[str] = None  # why this action does nothing in this process
        self.restarting: Optional[str] = None  # why each worker restarts itself instead
        self._retry_pending = False
        self._hup_for: Optional[str] = None  # the configuration file, which only a HUP re-reads

    def setup(self, context: ProcessContext) -> None:
        super().setup(context)
        self.master = record_master(self.system.parent_at_start(), self.system)
        if context.preloaded:
            self.disabled = "--preload"
            if self.siblings.first_to_log("preload-error"):
                log.error(PRELOAD_ERROR)
            return
        problem = self._problem()
        if problem is None:
            return
        if problem.kind is Refusal.FOREIGN_USER and self.restart_fallback:
            self._restart_instead(f"{problem} (gunicorn --user)")
        elif problem.kind is Refusal.FOREIGN_USER:
            log.warning(
                "wsgireload: gunicorn reload will be refused: %s (gunicorn --user). Use "
                "action='restart-worker' or action='auto', so that each worker restarts "
                "itself after its response instead",
                problem,
            )
        else:
            advice = (
                "pass GunicornAction(server_names=...) if the master runs under another name"
                if problem.kind is Refusal.NOT_THE_SERVER
                else "restart gunicorn yourself to load code changes"
            )
            log.warning("wsgireload: gunicorn reload will be refused: %s; %s", problem, advice)

    def __call__(self, changes: ChangeSet) -> None:
        if self.disabled is not None:
            log.debug("wsgireload: not reloading (%s): %s", self.disabled, changes.describe())
        elif self.restarting is not None:
            self._restart_self()
        elif not self._retry_pending:  # else the scheduled retry reloads for this change set too
            config = getattr(sys.modules.get("__config__"), "__file__", None)  # gunicorn -c
            self._hup_for = config if config in changes.files else None
            self._attempt()

    def _retry(self) -> None:
        self._retry_pending = False
        if self.restarting is None:
            self._attempt()

    def _restart_instead(self, why: str) -> None:
        self.restarting = why
        if self.siblings.first_to_log("restart-worker"):
            log.info(
                "wsgireload: %s: each worker restarts itself after its response instead "
                "(gunicorn replaces it gracefully)",
                why,
            )

    def _restart_self(self) -> None:
        problem = self._problem()
        if problem is not None and problem.kind is not Refusal.FOREIGN_USER:
            # Orphaned, or the master changed: nobody would replace this worker.
            log.warning(
                "wsgireload: not restarting this worker: %s; restart gunicorn yourself", problem
            )
            return
        restart_in_turn(self.siblings, self.system, self.master.pid if self.master else 0)

    def _denied(self, exc: OSError) -> None:
        assert self.master is not None
        why = (
            f"gunicorn master {self.master.pid} refused this worker's signal "
            f"({exc.strerror or exc})"
        )
        if self.restart_fallback:
            self._restart_instead(why)
            self.siblings.restart_each_worker()
            self._restart_self()
            return
        log.warning(
            "wsgireload: not reloading: %s. Use action='restart-worker' or action='auto', so "
            "that each worker restarts itself after its response instead, or restart gunicorn "
            "yourself",
            why,
        )

    def _attempt(self) -> None:
        problem = self._problem()
        if problem is not None:
            log.warning(
                "wsgireload: not signalling the master: %s; restart gunicorn yourself", problem
            )
            return
        assert self.master is not None
        try:
            # Signal 0 checks permission only. A worker that may not signal must not note a
            # reload either: its siblings would wait for a reload that never comes.
            self.system.kill(self.master.pid, 0)
        except PermissionError as exc:
            self._denied(exc)
            return
        except ProcessLookupError:
            log.warning("wsgireload: gunicorn master %d is gone; restart gunicorn yourself",
                        self.master.pid)
            return
        if not self.siblings.coordinated:
            # Without a shared record every worker would send its own HUP, and each is a
            # full reload cycle of the master.
            log.warning(
                "wsgireload: not reloading: no safe place to coordinate workers (%s); pass "
                "runtime_dir= a private directory, or restart gunicorn yourself",
                self.siblings.why_alone(),
            )
            return
        last, now = self.siblings.last_reload().get("at"), self.system.monotonic()
        recent = isinstance(last, (int, float)) and last <= now
        wait = self.min_interval - (now - float(last or 0.0)) if recent else 0.0
        if self._covered() is not None:
            log.debug(
                "wsgireload: gunicorn master %d already reloaded since this worker started; "
                "it will be replaced",
                self.master.pid,
            )
        elif wait > 0:
            log.info(
                "wsgireload: the last reload of gunicorn master %d was too recent; "
                "retrying in %.1fs",
                self.master.pid,
                wait,
            )
            self._retry_pending = True
            self.system.later(wait, self._retry)
        elif self.siblings.rollout == "one-by-one" and self._hup_for is None and (
                self.system.children(self.master.pid)):  # (no /proc to follow it: a HUP)
            self.siblings.reloading()  # noted first: new workers find themselves born after it
            self._start_rollout()
        else:
            if self._hup_for is not None:
                log.info("wsgireload: the gunicorn configuration file %s changed: reloading with "
                         "SIGHUP, which re-reads it (every worker restarts at once)", self._hup_for)
            log.debug("wsgireload: sending SIGHUP to gunicorn master %d", self.master.pid)
            # Noted before the signal: the workers it forks must find themselves born after it.
            self.siblings.reloading()
            try:
                self.system.kill(self.master.pid, signal.SIGHUP)
            except PermissionError as exc:
                self._denied(exc)

    def _start_rollout(self) -> None:
        """Every live worker is old now; a rollout in progress keeps its count and its
        unmatched SIGTTIN (its new worker is old now too, and is retired in turn)."""
        assert self.master is not None
        master, number = self.master.pid, self.siblings.last_reload().get("n")

        def start(data: Dict[str, Any]) -> Dict[str, Any]:
            live, going = self.system.children(master), section(data, "rollout")
            going = going if going and not going.get("end") else {"count": len(live)}
            return {**data, "rollout": {**going, "n": number, "old": live}}

        self.siblings.update(start)
        self.rolling = True
        self.advance()

    def advance(self) -> None:
        """Send the rollout's next signal, if it is due, to the verified master only."""
        if self.master is None or self.disabled or self.restarting:
            return
        master, due = self.master.pid, []

        def step(data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            state = section(data, "rollout")
            self.rolling = bool(state) and not state.get("end")
            found = step_rollout(data, master, self.siblings, self.system) if self.rolling else None
            if found is None:
                return None
            sig, state = found
            problem = self._problem() if sig else None
            if problem is not None:
                log.warning("wsgireload: rollout stopped: %s; restart gunicorn yourself", problem)
                state = {**state, "end": "refused"}
            elif sig:
                due.append(signal.Signals(sig))
            self.rolling = not state.get("end")
            return {**data, "rollout": state}

        try:
            self.siblings.update(step)
            for sig in due:  # written first: a SIGTTOU may retire this very worker
                log.debug("wsgireload: sending %s to gunicorn master %d", sig.name, master)
                self.system.kill(master, sig)
        except Exception as exc:  # the record or a signal failed: the next step tries again
            log.warning("wsgireload: rollout step failed: %r", exc)

    @property
    def per_process(self) -> bool:  # type: ignore[override]
        """Restarting itself, every worker of the master must act, not only the scanner."""
        return self.restarting is not None

    def describe(self) -> str:
        if self.disabled is not None:
            return f"gunicorn: nothing ({self.disabled} prevents reloading)"
        if self.restarting is not None:
            return "gunicorn: SIGTERM to this worker (its master cannot be signalled)"
        pid = self.master.pid if self.master is not None else "?"
        if self.siblings.rollout == "one-by-one":
            return f"gunicorn: one new worker ready before each old one leaves (master {pid})"
        return f"gunicorn: SIGHUP to master {pid}"


class RestartWorkerAction(Action):
    """The worker sends itself SIGTERM after its response; gunicorn replaces it gracefully.

    Each worker replaces only itself, so no coordination is needed; workers pick up a deploy
    one by one as each notices it.
    """

    name = "restart-worker"
    summary = "each worker sends itself SIGTERM after its response; gunicorn replaces it"
    per_process = True

    def __init__(self, *, runtime_dir: Optional[str] = None, system: System = SYSTEM) -> None:
        self.runtime_dir = runtime_dir  # of the master's record (the --preload ERROR once)
        self.system = system
        self.disabled: Optional[str] = None
        self.siblings: Siblings = Siblings()

    def setup(self, context: ProcessContext) -> None:
        self.siblings = context.siblings
        if context.preloaded:
            self.disabled = "--preload"
            if context.siblings.first_to_log("preload-error"):
                log.error(PRELOAD_ERROR)

    def __call__(self, changes: ChangeSet) -> None:
        if self.disabled is not None:
            log.debug("wsgireload: not reloading (%s): %s", self.disabled, changes.describe())
            return
        restart_in_turn(self.siblings, self.system, self.system.getppid())

    def describe(self) -> str:
        if self.disabled is not None:
            return f"restart-worker: nothing ({self.disabled} prevents reloading)"
        return "restart-worker: SIGTERM to this worker"


# -- recognising gunicorn, its master, its app and its workers --------------------------------
NAME = "gunicorn"
SCRIPT_PREFIX = ""  # gunicorn imports modules by name
checker_stubs, threads_available = base.checker_stubs, base.threads_available
# A worker imports the app itself (or, with --preload, cannot reload): no hook before workers.
before_workers = base.before_workers


def serves(environ: Mapping[str, Any]) -> bool:
    """This process is a gunicorn worker: a request's key, or gunicorn's worker module."""
    return "gunicorn.socket" in environ or "gunicorn.workers.base" in sys.modules


def master_of(environ: Mapping[str, Any], system: System = SYSTEM) -> Optional[Tuple[str, int]]:
    """(record name, master pid): a worker's master is its parent when it was forked."""
    return (NAME, system.parent_at_start()) if "gunicorn.socket" in environ else None


def auto_action() -> Action:
    # A master out of this worker's reach (gunicorn --user) still gets new code: each worker
    # restarts itself instead.
    return GunicornAction(restart_fallback=True)


def frame_objects() -> Iterator[Any]:
    """The ``self`` of each gunicorn frame on the main thread's stack, innermost first.

    In a worker these are its Worker (``init_process``, ``load_wsgi``, ``run``) inside the
    arbiter's ``spawn_worker``; in the arbiter (``--preload``) the Arbiter and its app only.
    """
    if "gunicorn" not in sys.modules:
        return
    for frame in base.main_frames():
        if "gunicorn" in frame.f_code.co_filename:
            yield frame.f_locals.get("self")


def lifespan_off() -> bool:
    """gunicorn's own ASGI worker (``-k asgi``) with ``--asgi-lifespan off``."""
    worker = next((o for o in frame_objects() if type(o).__module__.endswith(".gasgi")), None)
    return getattr(getattr(worker, "cfg", None), "asgi_lifespan", None) == "off"


def app_uri() -> Optional[str]:
    """The app URI this gunicorn worker's master was started with (CLI or ``wsgi_app``)."""
    uri = app_uri_of(*frame_objects())
    kind = getattr(sys.modules.get("gunicorn.app.base"), "BaseApplication", None)
    if uri is None and kind is not None:  # an async worker's main thread runs elsewhere
        uri = app_uri_of(*(obj for obj in gc.get_objects() if isinstance(obj, kind)))
    return uri


def app_uri_of(*objs: Any) -> Optional[str]:
    """The app URI of the first gunicorn worker or application among ``objs`` that has one."""
    for obj in objs:
        for candidate in (obj, getattr(obj, "app", None)):
            for uri in (getattr(candidate, "app_uri", None),
                        getattr(getattr(candidate, "cfg", None), "wsgi_app", None)):
                if isinstance(uri, str) and uri:
                    return uri
    return None


def boot_targets() -> List[Target]:
    """The app as gunicorn's app URI names it, if this is a gunicorn worker (not a paste: URI
    or the like)."""
    return base.app_targets(app_uri())


def early_environ(
    objects: Callable[[], Iterable[Any]] = frame_objects,
    worker_class: Optional[type] = None,  # gunicorn's Worker (default: if gunicorn is loaded)
) -> Optional[Dict[str, Any]]:
    """What a first request would tell about gunicorn, if this process is a worker importing
    the app (no ``--preload``: in the arbiter, wait for a request); else None."""
    if worker_class is None:
        worker_class = getattr(sys.modules.get("gunicorn.workers.base"), "Worker", None)
    if not isinstance(worker_class, type):
        return None
    for obj in objects():
        if isinstance(obj, worker_class):
            # The worker's own process (spawn_worker sets its pid in the child), forked by
            # the arbiter it names: never the arbiter, which only holds Worker objects.
            mine = (getattr(obj, "pid", None), getattr(obj, "ppid", None)) == (
                SYSTEM.getpid(), SYSTEM.getppid())
            return {"gunicorn.socket": None} if mine else None
    return None


def traps(environ: Mapping[str, Any], migrate_req: str = base.MIGRATE_REQ) -> Dict[str, str]:
    """What in this gunicorn's configuration breaks reloads, each with its fix."""
    cfg = next((c for o in frame_objects() if (c := getattr(o, "cfg", None)) is not None), None)
    found, requests = {}, getattr(cfg, "max_requests", 0) or 0
    if getattr(cfg, "preload_app", False):
        found["preload-error"] = PRELOAD_ERROR.removeprefix("wsgireload: ")
    if getattr(cfg, "reuse_port", False) and base.migrates(migrate_req) is False:
        found["reuse-port"] = (
            "gunicorn --reuse-port with net.ipv4.tcp_migrate_req = 0: every reload drops the "
            "connections queued on the old workers' sockets (4-5 failed requests per reload "
            "measured). Fix: sysctl -w net.ipv4.tcp_migrate_req=1 (and set it in "
            "/etc/sysctl.d/), or drop --reuse-port")
    if requests > 0 and not getattr(cfg, "max_requests_jitter", 0):
        found["max-requests"] = (
            f"gunicorn --max-requests {requests} without --max-requests-jitter: the workers a "
            "reload started together also restart together, every worker at once, each "
            f"{requests} requests. Fix: add --max-requests-jitter {max(1, requests // 10)}")
    return found


def log_target() -> Optional[logging.Logger]:
    """gunicorn's error log (``--error-logfile``, stderr by default), in gunicorn's format."""
    error_log = logging.getLogger("gunicorn.error")
    return error_log if error_log.handlers else None


def why_here(name: str) -> Optional[str]:
    return "gunicorn's worker module is loaded in this process" if name == NAME else None


ACTIONS = (GunicornAction, RestartWorkerAction)
PIDFILE_MASTER = True
