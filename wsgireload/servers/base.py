"""What every server module shares: the action interface, the master check before a signal,
and the two actions that need no server (callback, log-only).

A server action subclasses Action (MasterAction when it signals its worker's master); the
engine hands it, through ``ProcessContext.siblings``, what it may know of the master's other
workers: it never opens the master's record itself.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .._system import SYSTEM, ProcessInfo, System
from ..policy import ChangeSet

log = logging.getLogger("wsgireload")
# The key of an ASGI gate's mapping (``wsgireload.asgi.asgi_environ``): its scope.
ASGI_KEY = "wsgireload.asgi"
# seconds an ASGI worker stops accepting before its server's shutdown (uvicorn, granian):
# a connection accepted just before has sent its request by then, and is answered
STOP_ACCEPTING_FOR = 0.2
MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"
Change = Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]  # of the master's record


class Siblings:
    """The other workers of this process's master, as the engine lets an action see them
    (its generations in the master's record). This base is a process alone: no record."""

    # True: the engine shares one record with the master's other workers, so one process
    # decides and acts for the master per change set.
    coordinated: ClassVar[bool] = False
    rollout = "all-at-once"  # the ``rollout`` option: "one-by-one" needs the record
    boot_timeout = 30.0  # seconds a new worker may take to become ready

    def why_alone(self) -> str:
        """Why there is no record shared with the master's other workers."""
        return "no record shared with the master's other workers"

    def last_reload(self) -> Dict[str, Any]:
        """The master's last reload: ``n`` (its generation), ``at`` (``monotonic()``),
        ``chain``; {} if none or alone."""
        return {}

    def reloading(self, chain: bool = False) -> None:
        """Note that this process asks the master to reload now, for the current generation."""

    def update(self, change: Change) -> Dict[str, Any]:
        """Run ``change`` on the master's record under its lock and store what it returns
        (None: nothing); the record as it then is ({} alone: ``change`` never runs)."""
        return {}

    def first_to_log(self, name: str) -> bool:
        """True for the first process of the master to log the line ``name`` (always alone:
        better a repeated line than a lost one)."""
        return True

    def restart_each_worker(self) -> None:
        """The action found the master out of reach and restarts this worker instead: every
        other worker must restart itself too (the engine decides the change set again as
        per process, and forgets the reload this process noted: there was none)."""


ALONE = Siblings()


@dataclass(frozen=True)
class ProcessContext:
    """What a worker process knows about itself, gathered once when its watcher is set up
    (as the worker starts under gunicorn or uWSGI, else at its first request; or at a
    Watcher's first step)."""

    pid: int
    created_pid: int  # the pid that created the Reloader (imported the app)
    # the first request's environ, or the server's own keys when set up without a request
    environ: Mapping[str, Any] = field(repr=False)
    siblings: Siblings = field(default=ALONE, repr=False)

    @property
    def preloaded(self) -> bool:
        """The app was imported before this process was forked (gunicorn ``--preload``)."""
        return self.pid != self.created_pid


class Action:
    """How to reload. Called once per change set: from the watcher thread when no response
    is in flight, else after the last one closed (``after_close_only``: only then).

    Subclasses set ``name`` and implement ``__call__``. ``setup`` runs once per process (as a
    gunicorn or uWSGI worker starts, else at its first request; or at a Watcher's first step)
    to look at the server; keep it cheap and never let it raise.
    """

    name: ClassVar[str] = "action"
    # One line for `wsgireload check`: what this action does, before it has seen a process.
    summary: ClassVar[str] = ""
    # True: the reloader counts every request, not only those started after a reload became
    # due, because the action ends this process abruptly (exit, exec) with no server grace.
    requires_drain: ClassVar[bool] = False
    # True: every process of the master acts itself (it restarts only itself); False: one
    # action reloads the whole master, so one process acts per deploy.
    per_process: ClassVar[bool] = False
    # True: run only from a response's close(), never from the watcher thread while idle. A
    # server's reload lets a response that started before the reload was due finish; a user
    # callback may rely on running after it, and only a close() can tell.
    after_close_only: ClassVar[bool] = False
    # The private directory of the master's record that the engine shares with the master's
    # other workers; None: ``$XDG_RUNTIME_DIR/wsgireload``, else ``<tmp>/wsgireload-<uid>``.
    runtime_dir: Optional[str] = None
    # True while a reload goes on in steps (a rollout): the scanner steps fast and calls
    # ``advance`` at each step.
    rolling = False

    def advance(self) -> None:
        """Take the next step of a reload in progress, if any (the scanner calls it)."""

    def setup(self, context: ProcessContext) -> None:
        """Inspect the process and server once (worker start or first request; Watcher step)."""

    def __call__(self, changes: ChangeSet) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """A short phrase for the reload log line."""
        return self.name


class MasterAction(Action):
    """An action that asks its worker's recorded master to reload (gunicorn, uWSGI): the one
    master check before a signal, and the master's other workers as the engine shows them."""

    def __init__(
        self, server_names: Sequence[str], runtime_dir: Optional[str], system: System
    ) -> None:
        self.server_names: Tuple[str, ...] = tuple(server_names)
        self.runtime_dir = runtime_dir
        self.system = system
        self.master: Optional[ProcessInfo] = None
        self.siblings = ALONE

    def setup(self, context: ProcessContext) -> None:
        self.siblings = context.siblings

    def _problem(self) -> Optional[MasterProblem]:
        return master_problem(self.master, self.server_names, self.system)

    def _covered(self) -> Optional[float]:
        """Seconds since the master's last reload if it came after this process started (so
        it replaces this process, which must not ask again), else None."""
        at = self.siblings.last_reload().get("at")
        started = self.system.started()
        if isinstance(at, (int, float)) and started <= at <= self.system.monotonic():
            return self.system.monotonic() - at
        return None


class HupAction(MasterAction):
    """SIGHUP to this worker's verified master, once per change set for the master's workers:
    for the servers whose master replaces its workers on SIGHUP (uvicorn ``--workers``,
    granian, hypercorn). A subclass names the server and says, at setup, why a process has no
    such master (``why_no_master``): there it never signals, and WARNs once per process.

    :param server_names: names one of which the master's program must be.
    :param runtime_dir: private directory for the master's record.
    :param system: the operating system (tests pass a fake).
    """

    def __init__(self, *, server_names: Sequence[str] = (), runtime_dir: Optional[str] = None,
                 system: System = SYSTEM) -> None:
        super().__init__(server_names or (self.name,), runtime_dir, system)
        self.unsupervised: Optional[str] = "setup has not run"  # why no master reloads us
        self._warned = False

    def why_no_master(self) -> Optional[str]:
        """Why this process has no master that reloads it on SIGHUP (what to do), or None."""
        return None

    def setup(self, context: ProcessContext) -> None:
        super().setup(context)
        self.unsupervised = self.why_no_master()
        if self.unsupervised is None:
            self.master = record_master(self.system.parent_at_start(), self.system)

    def __call__(self, changes: ChangeSet) -> None:
        if self.unsupervised is not None:
            if not self._warned and self.siblings.first_to_log(f"{self.name}-unsupervised"):
                self._warned = True
                log.warning("wsgireload: code changed (%s) but not reloading: %s",
                            changes.describe(), self.unsupervised)
            return
        problem = self._problem()
        if problem is not None or self.master is None:
            log.warning("wsgireload: not signalling the master: %s; restart %s yourself",
                        problem, self.name)
            return
        if not self.siblings.coordinated:  # else each worker would HUP: one cycle each
            log.warning("wsgireload: not reloading: no safe place to coordinate workers (%s); "
                        "pass runtime_dir= a private directory, or restart %s yourself",
                        self.siblings.why_alone(), self.name)
            return
        if self._covered() is not None:
            log.debug("wsgireload: %s master %d already reloaded since this worker started",
                      self.name, self.master.pid)
            return
        try:
            self.system.kill(self.master.pid, 0)  # a refusal must not note a reload
            self.siblings.reloading()  # noted first: the new workers find themselves after it
            self.system.kill(self.master.pid, signal.SIGHUP)
        except OSError as exc:
            log.warning("wsgireload: not reloading: %s master %d: %s; restart it yourself",
                        self.name, self.master.pid, exc.strerror or exc)

    def describe(self) -> str:
        if self.unsupervised is not None:
            return f"{self.name}: nothing (no master reloads this process)"
        return f"{self.name}: SIGHUP to master {self.master.pid if self.master else '?'}"


# -- what a server module whose workers need no more says (uvicorn, granian, hypercorn) -------
def checker_stubs() -> None:
    """Its workers import nothing of the server's that the boot checker must stand in for."""


def threads_available(environ: Mapping[str, Any]) -> bool:
    return True


def early_environ() -> Optional[Dict[str, Any]]:
    return None  # an ASGI gate starts as its worker's lifespan startup completes


def before_workers(hook: Callable[[], None]) -> bool:
    return False


def app_targets(spec: Any) -> List[Any]:
    """[the boot check's Target for ``spec``], a server's ``module:attribute`` option, or []."""
    from ..boot import parse_target
    from ..errors import ConfigurationError

    try:
        return [parse_target(spec)] if isinstance(spec, str) else []
    except ConfigurationError:
        return []


def main_frames() -> Iterator[Any]:
    """The frames of the main thread's stack, innermost first (from any thread)."""
    if threading.current_thread() is threading.main_thread():
        # (gevent's workers patch thread idents: sys._current_frames() has no key for it)
        frame: Optional[FrameType] = sys._getframe()  # noqa: SLF001 (the stdlib's API)
    else:
        main = threading.main_thread().ident
        frame = sys._current_frames().get(main) if main is not None else None  # noqa: SLF001
    while frame is not None:
        yield frame
        frame = frame.f_back


def migrates(path: str = MIGRATE_REQ) -> Optional[bool]:
    """The kernel hands a closing listening socket's queued connections to another socket of
    its ``SO_REUSEPORT`` group (``sysctl net.ipv4.tcp_migrate_req=1``); None: a kernel
    without that setting (before Linux 5.14)."""
    try:
        with open(path, "rb") as handle:
            return handle.read().strip() != b"0"
    except OSError:
        return None


def frame_locals(path: str, names: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The locals of the innermost main-thread frame running one of ``names`` in a file
    whose path ends with ``path`` (``uvicorn/_subprocess.py``), or None."""
    suffix = path.replace("/", os.sep)
    for frame in main_frames():
        code = frame.f_code
        if code.co_name in names and code.co_filename.endswith(suffix):
            return dict(frame.f_locals)
    return None


class CallbackAction(Action):
    """Call a user function with the ChangeSet: ``Reloader(app, action=my_function)``."""

    name = "callback"
    per_process = True  # the user's function runs in every worker, once per deploy
    after_close_only = True

    def __init__(self, function: Callable[[ChangeSet], object]) -> None:
        self.function = function

    def __call__(self, changes: ChangeSet) -> None:
        self.function(changes)

    def describe(self) -> str:
        return f"callback {getattr(self.function, '__qualname__', repr(self.function))}"


class LogOnlyAction(Action):
    """Only log that a reload is due; restarting is someone else's job."""

    name = "log-only"

    def __call__(self, changes: ChangeSet) -> None:
        log.warning(
            "wsgireload: code changed (%s) but action='log-only': restart the server to load it",
            changes.describe(),
        )


# -- who may be signalled: one rule, for every action that signals ----------------------------
_INTERPRETERS = ("python", "pypy")

Names = Union[str, Sequence[str]]


def program_name(argv: Union[str, Sequence[str]]) -> str:
    """The program a command line runs: ``gunicorn`` for ``/venv/bin/gunicorn app:app``,
    ``python3 /venv/bin/gunicorn app:app``, ``python -m gunicorn app:app`` or gunicorn's
    process title ``gunicorn: master [app:app]``; ``uWSGI`` for the title ``uWSGI master``.

    Only the program counts, never its arguments: ``timeout 60 pytest -k gunicorn`` is
    ``timeout``, and ``python -c 'import gunicorn'`` is ``python``. A string is split at
    whitespace (``ps`` output).
    """
    words = argv.split() if isinstance(argv, str) else list(argv)
    if not words:
        return ""
    if len(words[0].split()) > 1:
        # A process title rewritten as one string ("gunicorn: master [/srv/app:app]"): its
        # first word is the program. (A path with spaces is refused this way: safe.)
        words = words[0].split() + words[1:]
    program = os.path.basename(words[0]).rstrip(":")
    if not program.lower().startswith(_INTERPRETERS):
        return program
    args = iter(words[1:])
    for token in args:
        if token == "--":
            return os.path.basename(next(args, program))
        if token.startswith("--"):
            continue  # --help, --version: no script follows them anyway
        if not token.startswith("-") or token == "-":
            return os.path.basename(token) if token != "-" else program
        # Short options, possibly combined: -u, -Bu, -um module, -Wignore, -X dev, -c code.
        flags = token[1:]
        for index, flag in enumerate(flags):
            rest = flags[index + 1 :]
            if flag == "c":
                return program  # inline code: the interpreter is the program
            if flag == "m":
                return (rest or next(args, "")).split(".")[0]
            if flag in "WX":
                if not rest:
                    next(args, None)  # the option's value is the next word
                break
    return program


def matching_name(argv: Union[str, Sequence[str]], names: Names) -> Optional[str]:
    """The one of ``names`` that the program of ``argv`` is (``gunicorn3`` is gunicorn; case
    does not matter: ``uWSGI master`` is uwsgi), or None."""
    program = program_name(argv).lower()
    return next((name for name in _names(names) if name and program.startswith(name.lower())), None)


def _names(names: Names) -> Tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def record_master(pid: int, system: System = SYSTEM) -> Optional[ProcessInfo]:
    """Describe the master ``pid`` (a worker's parent when it started) for later checks.

    None if there is none (pid 0) or it is already gone. Pid 1 is recorded like any pid: the
    checks before a signal decide whether it is a server (a container's) or init.
    """
    return system.process(pid) if pid >= 1 else None


class Refusal(enum.Enum):
    """Why a master may not be signalled, for callers that react differently to each."""

    UNKNOWN = "unknown"  # nothing was recorded at start
    ORPHANED = "orphaned"  # no longer our parent
    GONE = "gone"
    REUSED = "reused"  # the pid now belongs to another process
    UID_CHANGED = "uid-changed"
    NOT_THE_SERVER = "not-the-server"  # its program is not one of the names
    FOREIGN_USER = "foreign-user"  # it is our master, but runs as a user we may not signal


@dataclass(frozen=True)
class MasterProblem:
    kind: Refusal
    reason: str

    def __str__(self) -> str:
        return self.reason


def master_problem(
    recorded: Optional[ProcessInfo],
    names: Names,
    system: System = SYSTEM,
) -> Optional[MasterProblem]:
    """Why signalling ``recorded`` now would be unsafe or impossible, or None when it is fine.

    Requires, in this order: a recorded master, still our parent (a worker re-parented to
    init or a subreaper after its master died signals nobody), the same start time and uid as
    recorded, (where /proc exists) a program that is one of ``names``, and a uid this process
    may signal. A FOREIGN_USER problem therefore means "our verified master, out of reach".
    """
    if recorded is None:
        return MasterProblem(
            Refusal.UNKNOWN,
            "this worker's master was already gone when the worker started, so it cannot "
            "be identified",
        )
    pid = recorded.pid
    parent = system.getppid()
    if parent != pid:
        return MasterProblem(
            Refusal.ORPHANED,
            f"the master {pid} is no longer this worker's parent (parent is now {parent}); "
            "it probably died and this worker was orphaned",
        )
    now = system.process(pid)
    if now is None:
        return MasterProblem(Refusal.GONE, f"the master {pid} no longer exists")
    if recorded.start_time is not None and now.start_time != recorded.start_time:
        return MasterProblem(
            Refusal.REUSED,
            f"pid {pid} was reused: its start time changed since this worker started",
        )
    if recorded.uid is not None and now.uid != recorded.uid:
        return MasterProblem(
            Refusal.UID_CHANGED, f"the master {pid} changed uid ({recorded.uid} -> {now.uid})"
        )
    if now.argv is not None and matching_name(now.argv, names) is None:
        return MasterProblem(
            Refusal.NOT_THE_SERVER,
            f"the master {pid} does not look like {' or '.join(_names(names))} "
            f"(command line {' '.join(now.argv)[:120]!r})",
        )
    denied = signal_denied(now, system)
    if denied is not None:
        return MasterProblem(Refusal.FOREIGN_USER, denied)
    return None


def signal_denied(info: ProcessInfo, system: System = SYSTEM) -> Optional[str]:
    """Why this process may not signal ``info`` (the kernel would say EPERM), or None.

    Root may signal anyone; others only processes of their own uid.
    """
    euid = system.geteuid()
    if info.uid is None or euid == 0 or info.uid in (system.getuid(), euid):
        return None
    return (
        f"the master {info.pid} runs as uid {info.uid} and this worker as uid {euid}, "
        "so the worker may not signal it"
    )


LINKS = ("current", "live", "latest", "active")  # what release layouts name their link


def released_through_link(app_file: Optional[str]) -> Dict[str, str]:
    """The trap of an app imported from a release directory by its real path while a link
    (``current -> releases/42``) points there: the deploy swaps the link, the app never sees it."""
    directory = os.path.dirname(os.path.abspath(app_file)) if app_file else ""
    if not directory or os.path.realpath(directory) != directory:
        return {}  # imported through the link: a swap changes every watched path
    for release in (directory, os.path.dirname(directory)):
        for parent in (os.path.dirname(release), os.path.dirname(os.path.dirname(release))):
            link = next((path for path in (os.path.join(parent, name) for name in LINKS)
                         if os.path.islink(path) and os.path.realpath(path) == release), None)
            if link is not None:
                return {"release-link": (
                    f"the app is imported from {release} by its real path, while {link} "
                    "points there: when a deploy swaps the link, the server (and a reload) "
                    f"keeps the old release. Fix: import through the link, e.g. gunicorn "
                    f"--chdir {link} started from outside it (see docs/deploy/symlink.md)")}
    return {}
