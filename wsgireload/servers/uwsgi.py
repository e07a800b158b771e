"""uWSGI: recognising it, its master, its apps, its threads, its workers' start, and one
graceful reload per change set of the verified master.

Chain reload through the master FIFO with --lazy-apps, else ``uwsgi.reload()``; never a reload
that would kill the server (pyuwsgi in a virtualenv without --binary-path). The ``uwsgi``
module and the system are injectable: unit-tested without uWSGI. The boot check's stand-ins
for uWSGI's modules live here too (``install_stubs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .._system import SYSTEM, System
from ..boot import Target
from ..policy import ChangeSet
from .base import MasterAction, MasterProblem, ProcessContext, Refusal, program_name, record_master

log = logging.getLogger("wsgireload")

_FALSE_WORDS = frozenset({b"", b"0", b"false", b"no", b"off"})


def opt_texts(value: Any) -> List[str]:
    """The non-empty strings of a ``uwsgi.opt`` value: bytes, str, or a list of those."""
    values = value if isinstance(value, (list, tuple)) else [value]
    texts = (os.fsdecode(v) if isinstance(v, bytes) else v for v in values)
    return [text for text in texts if isinstance(text, str) and text]


def opt_text(value: Any, default: Optional[str] = None) -> Optional[str]:
    """The first of ``opt_texts(value)``, else ``default``."""
    return next(iter(opt_texts(value)), default)


@dataclass(frozen=True)
class UwsgiOptions:
    """The few uWSGI options that decide how to reload."""

    lazy_apps: bool = False  # --lazy-apps or --lazy: each worker imports the app itself
    master_fifos: Tuple[str, ...] = ()  # --master-fifo paths; uWSGI reads the first one
    binary_path: Optional[str] = None  # --binary-path: what a full reload re-executes
    master: bool = False
    processes: int = 1  # --processes / --workers
    master_title: Optional[str] = None  # --procname-master / --procname, with its prefix

    @classmethod
    def parse(cls, opt: Mapping[Any, Any]) -> "UwsgiOptions":
        """Read ``uwsgi.opt``: keys are str or bytes, values bytes, True, or lists of those."""
        values: Dict[str, Any] = {
            key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key): value
            for key, value in opt.items()
        }
        return cls(
            lazy_apps=_flag(values.get("lazy-apps")) or _flag(values.get("lazy")),
            master_fifos=tuple(opt_texts(values.get("master-fifo"))),
            binary_path=opt_text(values.get("binary-path")),
            master=_flag(values.get("master")),
            processes=_number(values.get("processes", values.get("workers"))),
            master_title=_title(values),
        )


def _title(values: Mapping[str, Any]) -> Optional[str]:
    """The command line uWSGI gives its master when told to rename it, or None."""
    name = opt_text(values.get("procname-master")) or opt_text(values.get("procname"))
    if name is None and _flag(values.get("auto-procname")):
        name = "uWSGI master"
    if name is None:
        return None
    prefix = opt_text(values.get("procname-prefix"), "")
    spaced = opt_text(values.get("procname-prefix-spaced"), "")
    return (prefix or (spaced + " " if spaced else "")) + name


def _flag(value: Any) -> bool:
    if isinstance(value, list):
        return any(_flag(item) for item in value)
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if isinstance(value, bytes):
        return value.strip().lower() not in _FALSE_WORDS
    return bool(value)


def _number(value: Any) -> int:
    for text in opt_texts(value):
        with contextlib.suppress(ValueError):
            return int(text)
    return 1


def first_fifo(paths: Tuple[str, ...]) -> Optional[str]:
    """The configured FIFO that exists. uWSGI creates only the active (first) one, and
    ``uwsgi.opt`` keeps only the last of repeated options, so check rather than trust."""
    for path in paths:
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.stat(path).st_mode):
                return path
    return None


CHAIN = "chain"
RELOAD = "reload"
# uWSGI's master advances a chain reload only when its event loop wakes up, once a second when
# idle: two wake-ups per worker (reap the old one, see the new one accepting), so 3 workers
# took ~5 s here. A newline written to the master FIFO is ignored by uWSGI but wakes the
# loop; workers write one every WAKE_EVERY seconds for a bounded time after a chain starts.
WAKE_EVERY = 0.1  # seconds
WAKE_FOR = 10.0  # seconds after the chain started, plus WAKE_PER_WORKER per worker
WAKE_PER_WORKER = 2.0  # seconds


class UwsgiAction(MasterAction):
    """Reload uWSGI gracefully: a chain reload (workers replaced one by one) when the app is
    loaded per worker (``--lazy-apps``) and a ``--master-fifo`` exists, else ``uwsgi.reload()``
    (the master re-executes itself and its workers).

    Only the master recorded at this worker's setup is asked (pid 1 too: a container's
    uWSGI), after checking it is still our parent, the same process, a user this worker may
    signal, and a uWSGI (``master_problem``). A worker started before the master's latest
    reload is replaced by that reload, so it does not ask again.

    :param uwsgi_module: the ``uwsgi`` module (tests pass a fake); imported at setup if None.
    :param server_names: names one of which the master's program must be (besides the
        ``--procname-master`` title, read from ``uwsgi.opt``).
    :param runtime_dir: private directory for the master's record.
    :param pyuwsgi: running from the pyuwsgi wheel; detected from ``sys.modules`` if None.
    :param virtualenv: running in a virtualenv; detected from ``sys.prefix`` if None.
    :param system: the operating system (tests pass a fake).
    """

    name = "uwsgi"
    summary = (
        "chain reload (one worker at a time) through the master FIFO with --lazy-apps and "
        "--master-fifo, else uwsgi.reload() of the verified master, which stalls every request "
        "for one boot (add --lazy-apps --master-fifo <path> for the chain reload); refuses "
        "pyuwsgi in a venv without --binary-path"
    )

    def __init__(
        self,
        *,
        uwsgi_module: Any = None,
        server_names: Sequence[str] = ("uwsgi", "pyuwsgi"),
        runtime_dir: Optional[str] = None,
        pyuwsgi: Optional[bool] = None,
        virtualenv: Optional[bool] = None,
        system: System = SYSTEM,
    ) -> None:
        super().__init__(server_names, runtime_dir, system)
        self.uwsgi = uwsgi_module
        self.pyuwsgi = pyuwsgi
        self.virtualenv = virtualenv
        self.options = UwsgiOptions()
        self.method: Optional[str] = None  # CHAIN or RELOAD; None: cannot reload (see why)
        self.why_not = "setup has not run"
        self.fifo: Optional[str] = None
        self.refusal: Optional[str] = None  # set when a full reload would kill the server

    def setup(self, context: ProcessContext) -> None:
        super().setup(context)
        if self.uwsgi is None:
            try:
                import uwsgi  # type: ignore[import-not-found,import-untyped,unused-ignore]
            except ImportError:
                self.why_not = "the uwsgi module cannot be imported (not running under uWSGI?)"
                return
            self.uwsgi = uwsgi
        self.options = UwsgiOptions.parse(getattr(self.uwsgi, "opt", {}) or {})
        if self.options.master_title:
            self.server_names += (program_name(self.options.master_title),)
        pid = int(self.uwsgi.masterpid())
        if pid <= 0:  # uWSGI answers 0 without --master; 1 is a master (a container's)
            self.why_not = (
                f"uWSGI runs without a master process (uwsgi.masterpid() is {pid}), so there "
                "is no one to reload the workers: start uWSGI with --master"
                if not self.options.master
                else f"uwsgi.masterpid() is {pid} although --master is set; restart uWSGI "
                "yourself to load code changes"
            )
            return
        self.master = record_master(pid, self.system)
        if self.master is None:
            self.why_not = (
                f"the uWSGI master {pid} was already gone when this worker started; restart "
                "uWSGI yourself to load code changes"
            )
            return
        if self.pyuwsgi is None:
            self.pyuwsgi = "pyuwsgi" in sys.modules
        if self.virtualenv is None:
            self.virtualenv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
        if self.options.lazy_apps and self.options.master_fifos:
            self.fifo = first_fifo(self.options.master_fifos)
            if self.fifo is None:
                log.warning(
                    "wsgireload: --master-fifo %s is not a FIFO; code changes will use a full "
                    "uwsgi.reload() instead of a chain reload",
                    ", ".join(self.options.master_fifos),
                )
        self.method = CHAIN if self.fifo is not None else RELOAD
        if self.method == RELOAD and self.siblings.first_to_log("uwsgi-full-reload"):
            log.info("wsgireload: uWSGI will reload every worker at once, so each deploy stalls "
                     "requests for one boot; for a chain reload (one worker at a time) start "
                     "uWSGI with --lazy-apps and --master-fifo <path>")
        if self.pyuwsgi and self.virtualenv and not self.options.binary_path:
            python = os.path.join(sys.prefix, "bin", "python")
            self.refusal = (
                "this uWSGI is the pyuwsgi wheel inside the virtualenv "
                f"{sys.prefix}: a full reload would re-execute "
                f"{getattr(sys, '_base_executable', 'the base Python')} without it and kill the "
                f"server. Fix: start uWSGI with --binary-path {python} (or install the compiled "
                "'uwsgi' package instead of 'pyuwsgi'; or use --lazy-apps with --master-fifo "
                "for chain reloads). Restart the server yourself to load this change"
            )
        self._help_chain()  # a worker born in a chain reload helps it go on

    def __call__(self, changes: ChangeSet) -> None:
        if self.method is None or self.master is None or self.uwsgi is None:
            log.warning("wsgireload: not reloading uWSGI: %s", self.why_not)
            return
        if self.method == RELOAD and self.refusal is not None:
            if self.siblings.first_to_log(f"refused {changes.fingerprint}"):  # once per change set
                log.error("wsgireload: not reloading (%s): %s", changes.describe(), self.refusal)
            else:
                log.debug("wsgireload: not reloading (%s): refused, logged by another worker",
                          changes.describe())
            return
        problem = self._problem()
        if problem is not None:
            log.warning("wsgireload: not reloading uWSGI: %s; %s", problem, _advice(problem))
            return
        if not self.siblings.coordinated:
            # uWSGI itself ignores reload requests that arrive during a reload (measured), so
            # going ahead without the record is still safe, only less tidy.
            log.warning("wsgireload: no shared reload record (%s); asking uWSGI anyway",
                        self.siblings.why_alone())
        elif (since := self._covered()) is not None:
            self._help_chain()
            log.info(
                "wsgireload: another worker asked uWSGI to reload %.1fs ago, after this worker "
                "started; that reload replaces this worker",
                since,
            )
            return
        else:
            self.siblings.reloading(chain=self.method == CHAIN)
        if self.method == CHAIN and self.fifo is not None:
            try:
                self.system.write_fifo(self.fifo, b"c")
            except OSError as exc:
                if self.refusal is not None:
                    log.error(
                        "wsgireload: cannot write to the master FIFO %s (%s), and %s",
                        self.fifo,
                        exc.strerror or exc,
                        self.refusal,
                    )
                    return
                log.warning(
                    "wsgireload: cannot write to the master FIFO %s (%s); using uwsgi.reload()",
                    self.fifo,
                    exc.strerror or exc,
                )
            else:
                self._wake(self.system.monotonic() + self._wake_window())
                return
        if not self.uwsgi.reload():
            log.error(
                "wsgireload: uwsgi.reload() failed: the master %d was not signalled; restart "
                "uWSGI yourself to load this change",
                self.master.pid,
            )

    def _problem(self) -> Optional[MasterProblem]:
        assert self.master is not None and self.uwsgi is not None
        pid_now = int(self.uwsgi.masterpid())
        if pid_now != self.master.pid:
            return MasterProblem(
                Refusal.REUSED,
                f"uWSGI's master pid changed from {self.master.pid} to {pid_now} since this "
                "worker started",
            )
        return super()._problem()

    def _wake_window(self) -> float:
        return WAKE_FOR + WAKE_PER_WORKER * max(1, self.options.processes)

    def _help_chain(self) -> None:
        """Wake the master until the chain reload recorded for it has had time to finish."""
        if self.fifo is None or self.master is None:
            return
        request = self.siblings.last_reload()
        if request.get("chain"):
            until = float(request["at"]) + self._wake_window()
            if until > self.system.monotonic():
                self._wake(until)

    def _wake(self, until: float) -> None:
        fifo = self.fifo
        if fifo is not None:
            self.system.repeat(WAKE_EVERY, until, lambda: self.system.write_fifo(fifo, b"\n"))

    def describe(self) -> str:
        if self.method == CHAIN:
            return f"uWSGI chain reload (master FIFO {self.fifo})"
        if self.method == RELOAD and self.refusal is not None:
            return "uWSGI: none (a full reload would kill this pyuwsgi server)"
        if self.method == RELOAD:
            return "uWSGI graceful reload (uwsgi.reload())"
        return "uWSGI: none"


def _advice(problem: MasterProblem) -> str:
    if problem.kind is Refusal.NOT_THE_SERVER:
        return (
            "if that is this uWSGI under another name, pass UwsgiAction(server_names=[...]); "
            "else restart uWSGI yourself to load this change"
        )
    if problem.kind is Refusal.FOREIGN_USER:
        return (
            "run the master and its workers as one user (uWSGI's --uid drops the master's "
            "privileges too), or restart uWSGI yourself to load this change"
        )
    return "restart uWSGI yourself to load this change"


# -- recognising uWSGI, its master, its apps, its threads and its workers ---------------------
NAME = "uwsgi"
SCRIPT_PREFIX = "uwsgi_file_"  # the module name uWSGI gives a --wsgi-file script


def serves(environ: Mapping[str, Any]) -> bool:
    return "uwsgi.version" in environ


def module() -> Any:
    """The real ``uwsgi`` module when this process runs inside uWSGI, else None."""
    found = sys.modules.get("uwsgi")
    if not hasattr(found, "opt") or getattr(found, "__wsgireload_stub__", False):
        return None
    return found


def checker_stubs() -> Optional[Dict[str, Any]]:
    """This worker's ``uwsgi.opt`` for the checker's stand-in ``uwsgi`` modules
    (``install_stubs``); None outside uWSGI."""
    found = module()
    opt = getattr(found, "opt", None) or {}
    return None if found is None else {str(k): v for k, v in opt.items()}


def master_of(environ: Mapping[str, Any], system: System = SYSTEM) -> Optional[Tuple[str, int]]:
    """(record name, master pid) from ``uwsgi.masterpid()``; None without a master."""
    try:
        pid = int(module().masterpid()) if serves(environ) else 0
    except Exception:  # no uwsgi module (a test), or an odd one
        return None
    return (NAME, pid) if pid > 0 and pid != system.getpid() else None


def auto_action() -> UwsgiAction:
    return UwsgiAction()


def boot_targets(opt: Optional[Mapping[str, Any]] = None) -> List[Target]:
    """The apps a uWSGI instance loads, from its ``uwsgi.opt`` (this process's if None)."""
    if opt is None:
        opt = getattr(module(), "opt", None) or {}
    callable_name = opt_text(opt.get("callable")) or "application"
    targets: List[Target] = []
    for key in ("module", "wsgi", "wsgi-file", "file", "mount"):
        for spec in opt_texts(opt.get(key)):
            if key == "mount":
                spec = spec.partition("=")[2]
            if key in ("wsgi-file", "file") or spec.endswith(".py") or os.sep in spec:
                targets.append(Target(path=os.path.abspath(spec), attr=callable_name, spec=spec))
            elif spec:
                name, _, obj = spec.partition(":")
                targets.append(Target(module=name, attr=obj or callable_name, spec=spec))
    return targets


def traps(environ: Mapping[str, Any]) -> Dict[str, str]:
    """uWSGI without --lazy-apps: no chain reload, every reload stalls every request."""
    if UwsgiOptions.parse(getattr(module(), "opt", {}) or {}).lazy_apps:
        return {}
    return {"uwsgi-full-reload": (
        "uWSGI without --lazy-apps: no chain reload is possible, so each reload restarts every "
        "worker at once and requests wait for one boot. Fix: start uWSGI with --lazy-apps and "
        "--master-fifo <path>")}


def log_target() -> Optional[logging.Logger]:
    """uWSGI logs what its workers write to stderr, line by line, as it is."""
    stderr = logging.getLogger("wsgireload.uwsgi")
    if not stderr.handlers:
        stderr.propagate = False  # a child of wsgireload's own logger
        stderr.addHandler(logging.StreamHandler(sys.stderr))
    return stderr


def threads_available(environ: Mapping[str, Any]) -> bool:
    """uWSGI before 2.0.27 runs no Python threads unless started with --enable-threads."""
    version = environ.get("uwsgi.version")
    if version is None:
        return True  # not uWSGI
    with contextlib.suppress(Exception):  # no uwsgi module: the version decides
        if module().opt.get("enable-threads") or module().opt.get("threads"):
            return True
    try:
        if isinstance(version, bytes):
            version = version.decode("ascii", "replace")
        parts = tuple(int(p) for p in str(version).split("-")[0].split(".")[:3])
    except Exception:  # an odd value must not leave this process without a watcher
        return True
    return parts >= (2, 0, 27)


def early_environ() -> Optional[Dict[str, Any]]:
    """What a first request would tell about uWSGI, if this process is a worker of a master
    (importing the app under --lazy-apps, or just forked); else None."""
    found = module()
    if found is None:
        return None
    master, worker = int(found.masterpid()), int(found.worker_id())
    if master > 0 and worker > 0 and master != SYSTEM.getpid():
        return {"uwsgi.version": getattr(found, "version", b"")}
    return None


def before_workers(hook: Callable[[], None]) -> bool:
    """In a master importing the app before it forks its workers, have uWSGI call ``hook``
    in each process it forks, after the hooks already set: in ``uwsgidecorators``' chain if
    that is the hook (never imported here: importing it replaces ``uwsgi.post_fork_hook``).
    A hook set later replaces this one: the first request starts. Whether it was set."""
    found = module()
    if found is None or int(found.worker_id()) != 0 or int(found.masterpid()) != SYSTEM.getpid():
        return False  # no master (nobody to reload the workers), a mule, or not uWSGI
    after_fork(found, hook)
    return True


def after_fork(uwsgi: Any, hook: Callable[[], None]) -> None:
    """Chain ``hook`` after ``uwsgi``'s post-fork hooks (see ``before_workers``)."""
    previous = getattr(uwsgi, "post_fork_hook", None)
    decorators = sys.modules.get("uwsgidecorators")
    chain = getattr(decorators, "postfork_chain", None)
    if previous is not None and previous is getattr(decorators, "postfork_chain_hook", None):
        if isinstance(chain, list):
            chain.append(hook)
            return

    def post_fork() -> None:
        try:
            if callable(previous):
                previous()
        finally:
            hook()

    uwsgi.post_fork_hook = post_fork


# -- the boot check's stand-ins (in its fresh interpreter) -------------------------------------
class _Anything:
    """Stands for any uWSGI API value: callable, falsy, and 0 where a number is expected."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bare = _decorator_or_none(*args, **kwargs)  # @postfork: the function itself
        return _decorator_or_none if bare is None else bare  # @timer(3): a decorator

    def __bool__(self) -> bool:
        return False

    def __int__(self) -> int:
        return 0


def _decorator_or_none(*args: Any, **kwargs: Any) -> Any:
    return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else None


def install_stubs(opt: Mapping[str, Any]) -> None:
    """Harmless ``uwsgi`` and ``uwsgidecorators`` modules, as the app sees them in a worker."""
    uwsgi = types.ModuleType("uwsgi", "wsgireload boot-check stand-in for uWSGI's module")
    vars(uwsgi).update({
        "__wsgireload_stub__": True,
        "opt": {k: (v.encode() if isinstance(v, str) else v) for k, v in opt.items()},
        "version": b"0.0.0-wsgireload-boot-check",
        "numproc": 1,
        "applications": None,
    })
    for name in ("worker_id", "mule_id", "masterpid", "signal_registered", "cache_exists"):
        setattr(uwsgi, name, lambda *a, **k: 0)
    stub = _Anything()
    uwsgi.__getattr__ = lambda name: stub  # type: ignore[method-assign]
    decorators = types.ModuleType("uwsgidecorators", "wsgireload boot-check stand-in")
    decorators.__getattr__ = lambda name: stub  # type: ignore[method-assign]
    sys.modules["uwsgi"] = uwsgi
    sys.modules["uwsgidecorators"] = decorators


ACTIONS = (UwsgiAction,)
PIDFILE_MASTER = True
