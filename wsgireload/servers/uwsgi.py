"""uWSGI: ask this worker's verified master for one graceful reload per change set.

Chain reload through the master FIFO with --lazy-apps, else ``uwsgi.reload()``; never a reload
that would kill the server (pyuwsgi in a virtualenv without --binary-path). The ``uwsgi``
module, /proc and the FIFO writer are injectable: unit-tested without uWSGI.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from .. import _record
from ..boot import opt_text, opt_texts
from ..policy import ChangeSet
from . import _process
from ._process import PROC_ROOT, MasterProblem, ReadProcess, Refusal
from .base import MasterAction, ProcessContext

log = logging.getLogger("wsgireload")

_FALSE_WORDS = frozenset({b"", b"0", b"false", b"no", b"off"})


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
        try:
            return int(text)
        except ValueError:
            continue
    return 1


def write_fifo(path: str, command: bytes) -> None:
    """Write a command to a uWSGI master FIFO; raise OSError saying why it was not possible.

    Non-blocking: with nobody reading (the master is gone), opening fails with ENXIO at once
    instead of hanging the worker.
    """
    flags = os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISFIFO(info.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a FIFO")
        if info.st_uid != os.getuid():
            raise OSError(errno.EPERM, f"{path} belongs to uid {info.st_uid}")
        os.write(fd, command)
    finally:
        os.close(fd)


def first_fifo(paths: Tuple[str, ...]) -> Optional[str]:
    """The configured FIFO that exists. uWSGI creates only the active (first) one, and
    ``uwsgi.opt`` keeps only the last of repeated options, so check rather than trust."""
    for path in paths:
        try:
            if stat.S_ISFIFO(os.stat(path).st_mode):
                return path
        except OSError:
            continue
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
    signal, and a uWSGI (``_process.master_problem``). Workers share their master's record
    (``_record.claim_reload``): a worker started before the latest reload request is replaced
    by that reload, so it does not ask again; N workers seeing one deploy make one request.

    :param uwsgi_module: the ``uwsgi`` module (tests pass a fake); imported at setup if None.
    :param server_names: names one of which the master's program must be (besides the
        ``--procname-master`` title, read from ``uwsgi.opt``).
    :param proc_root: where procfs is mounted (tests point it at a fake tree).
    :param runtime_dir: private directory for the master's record.
    :param fifo_writer: writes a command to the master FIFO.
    :param booted: when this worker loaded its code, on the ``clock`` (``_process.boot_time``
        if None: its fork, or its import of wsgireload under --lazy-apps).
    :param pyuwsgi: running from the pyuwsgi wheel; detected from ``sys.modules`` if None.
    :param virtualenv: running in a virtualenv; detected from ``sys.prefix`` if None.
    :param waker: ``waker(fifo, until)`` wakes the master until the clock reads ``until``;
        None starts a daemon thread writing newlines to the FIFO.
    """

    name = server = "uwsgi"
    summary = (
        "chain reload through the master FIFO with --lazy-apps and --master-fifo, else "
        "uwsgi.reload() of the verified master; refuses pyuwsgi in a venv without --binary-path"
    )

    def __init__(
        self,
        *,
        uwsgi_module: Any = None,
        server_names: Sequence[str] = ("uwsgi", "pyuwsgi"),
        proc_root: str = PROC_ROOT,
        getppid: Callable[[], int] = os.getppid,
        getuid: Callable[[], int] = os.getuid,
        geteuid: Callable[[], int] = os.geteuid,
        read_process: Optional[ReadProcess] = None,
        runtime_dir: Optional[str] = None,
        fifo_writer: Callable[[str, bytes], None] = write_fifo,
        clock: Callable[[], float] = time.monotonic,
        booted: Optional[float] = None,
        pyuwsgi: Optional[bool] = None,
        virtualenv: Optional[bool] = None,
        waker: Optional[Callable[[str, float], None]] = None,
    ) -> None:
        super().__init__(
            server_names,
            runtime_dir,
            read_process or (lambda pid: _process.read_process(pid, proc_root)),
            getppid,
            getuid,
            geteuid,
            clock,
        )
        self.uwsgi = uwsgi_module
        self.fifo_writer = fifo_writer
        self.booted = booted
        self.pyuwsgi = pyuwsgi
        self.virtualenv = virtualenv
        self.options = UwsgiOptions()
        self.method: Optional[str] = None  # CHAIN or RELOAD; None: cannot reload (see why)
        self.why_not = "setup has not run"
        self.fifo: Optional[str] = None
        self.refusal: Optional[str] = None  # set when a full reload would kill the server
        self.waker = waker or self._wake_in_thread

    def setup(self, context: ProcessContext) -> None:
        if self.uwsgi is None:
            try:
                import uwsgi  # type: ignore[import-not-found,import-untyped,unused-ignore]
            except ImportError:
                self.why_not = "the uwsgi module cannot be imported (not running under uWSGI?)"
                return
            self.uwsgi = uwsgi
        self.options = UwsgiOptions.parse(getattr(self.uwsgi, "opt", {}) or {})
        if self.options.master_title:
            self.server_names += (_process.program_name(self.options.master_title),)
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
        self.master = _process.record_master(pid, read=self.read_process)
        if self.master is None:
            self.why_not = (
                f"the uWSGI master {pid} was already gone when this worker started; restart "
                "uWSGI yourself to load code changes"
            )
            return
        if self.booted is None:
            self.booted = _process.boot_time()
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
            self._refuse(changes)
            return
        problem = self._problem()
        if problem is not None:
            log.warning("wsgireload: not reloading uWSGI: %s; %s", problem, _advice(problem))
            return
        if not self._claim():
            return
        if self.method == CHAIN and self.fifo is not None:
            try:
                self.fifo_writer(self.fifo, b"c")
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
                self.waker(self.fifo, self.clock() + self._wake_window())
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

    def _claim(self) -> bool:
        """Record this reload request for the master, unless one since our start covers us."""
        booted = self.booted if self.booted is not None else _process.boot_time()
        now = self.clock()
        claim = self._claim_reload(booted, chain=self.method == CHAIN)
        if isinstance(claim, str):
            # uWSGI itself ignores reload requests that arrive during a reload (measured), so
            # going ahead without the record is still safe, only less tidy.
            log.warning("wsgireload: no shared reload record (%s); asking uWSGI anyway", claim)
            return True
        record, outcome, _ = claim
        if outcome is _record.Outcome.COVERED:
            self._help_chain()
            log.info(
                "wsgireload: another worker asked uWSGI to reload %.1fs ago, after this worker "
                "started; that reload replaces this worker",
                max(0.0, now - float(_record.last_request(record).get("at", now))),
            )
            return False
        return True

    def _wake_window(self) -> float:
        return WAKE_FOR + WAKE_PER_WORKER * max(1, self.options.processes)

    def _help_chain(self) -> None:
        """Wake the master until the chain reload recorded for it has had time to finish."""
        if self.fifo is None or self.master is None:
            return
        record, _ = self._master_record()
        request = _record.last_request(record) if record is not None else {}
        if not request.get("chain"):
            return
        until = float(request["at"]) + self._wake_window()
        if until > self.clock():
            self.waker(self.fifo, until)

    def _wake_in_thread(self, fifo: str, until: float) -> None:
        def wake() -> None:
            while self.clock() < until:
                try:
                    self.fifo_writer(fifo, b"\n")
                except OSError:
                    return  # the master is gone or reloading: nothing to wake
                time.sleep(WAKE_EVERY)

        threading.Thread(target=wake, name="wsgireload-uwsgi-chain", daemon=True).start()

    def _refuse(self, changes: ChangeSet) -> None:
        """Log the refusal once per change set across the master's workers."""
        record, _ = self._master_record()
        if _record.first_to_log(record, f"refused {changes.fingerprint}"):
            log.error("wsgireload: not reloading (%s): %s", changes.describe(), self.refusal)
        else:
            log.debug("wsgireload: not reloading (%s): refused, logged by another worker",
                      changes.describe())

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
