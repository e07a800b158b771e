"""gunicorn actions: one SIGHUP to the verified master per deploy, or a worker restarting itself.

Both refuse under ``--preload``, where neither can load new code (the master holds the old
modules) and a self-restarting worker would storm.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable, Optional, Sequence

from .. import _record
from ..policy import ChangeSet
from . import _process
from ._process import ReadProcess, Refusal
from .base import Action, MasterAction, ProcessContext

log = logging.getLogger("wsgireload")

Kill = Callable[[int, int], None]
Schedule = Callable[[float, Callable[[], None]], None]

PRELOAD_ERROR = (
    "wsgireload: gunicorn runs with --preload (preload_app): the master imported the app "
    "before forking, so neither a HUP nor a worker restart can load new code, and restarting "
    "workers would only storm. Code changes will be ignored. To reload on deploy, drop "
    "--preload, or reload yourself with `kill -USR2 <master pid>` and then "
    "`kill -TERM <old master pid>` once the new master serves."
)


def _timer(delay: float, function: Callable[[], None]) -> None:
    timer = threading.Timer(delay, function)
    timer.daemon = True
    timer.name = "wsgireload-retry"
    timer.start()


def terminate_self(kill: Kill, getpid: Callable[[], int]) -> None:
    """SIGTERM to this worker: gunicorn's worker finishes its requests and exits, and the
    master spawns a fresh one. (``sys.exit()`` would be caught by gunicorn: no restart.)"""
    pid = getpid()
    if pid <= 1:  # never terminate an init process (a container's only process)
        log.warning("wsgireload: not restarting pid %d", pid)
        return
    kill(pid, signal.SIGTERM)


class GunicornAction(MasterAction):
    """SIGHUP to this worker's gunicorn master: a graceful reload of every worker.

    One worker of a master signals per deploy (``_record.claim_reload`` in the master's record;
    no record, no signal: N workers would each HUP), only a master verified as unchanged since
    the worker started, and two reloads of one master at least ``min_interval`` seconds apart.

    A master this worker may not signal (``gunicorn --user``: the master stays root, the
    workers drop privileges) makes the reload impossible. With ``restart_fallback`` (what
    ``action="auto"`` uses) each worker then restarts itself after its response instead, as
    ``restart-worker`` does; decided at setup from /proc, or at the first signal refused
    with EPERM. Without it, a WARNING says what to do.

    :param min_interval: seconds between two reloads of one master.
    :param runtime_dir: private directory for the master's record.
    :param server_names: names one of which the master's program must be.
    :param restart_fallback: restart each worker when the master cannot be signalled.
    """

    name = server = "gunicorn"
    summary = (
        "one SIGHUP per deploy to the verified master (graceful reload of every worker); "
        "with --preload, one ERROR and no reload"
    )

    def __init__(
        self,
        *,
        min_interval: float = 3.0,  # seconds
        runtime_dir: Optional[str] = None,
        server_names: Sequence[str] = ("gunicorn",),
        restart_fallback: bool = False,
        kill: Kill = os.kill,
        getppid: Callable[[], int] = os.getppid,
        getpid: Callable[[], int] = os.getpid,
        getuid: Callable[[], int] = os.getuid,
        geteuid: Callable[[], int] = os.geteuid,
        read_process: ReadProcess = _process.read_process,
        boot_time: Callable[[], float] = _process.boot_time,
        master_pid: Callable[[], int] = _process.boot_ppid,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule = _timer,
    ) -> None:
        super().__init__(server_names, runtime_dir, read_process, getppid, getuid, geteuid, clock)
        self.restart_fallback = restart_fallback
        self.kill = kill
        self.getpid = getpid
        self.boot_time = boot_time
        self.master_pid = master_pid
        self.min_interval = float(min_interval)
        self.schedule = schedule
        self.disabled: Optional[str] = None  # why this action does nothing in this process
        self.restarting: Optional[str] = None  # why each worker restarts itself instead
        self._retry_pending = False

    def setup(self, context: ProcessContext) -> None:
        self.master = _process.record_master(self.master_pid(), read=self.read_process)
        if context.preloaded:
            self.disabled = "--preload"
            if _record.first_to_log(self._master_record()[0], "preload-error"):
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
            self._attempt()

    def _retry(self) -> None:
        self._retry_pending = False
        if self.restarting is None:
            self._attempt()

    def _restart_instead(self, why: str) -> None:
        """From now on this worker restarts itself for each change set; say so once."""
        self.restarting = why
        if _record.first_to_log(self._master_record()[0], "restart-worker"):
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
        terminate_self(self.kill, self.getpid)

    def _denied(self, exc: OSError) -> None:
        assert self.master is not None
        why = (
            f"gunicorn master {self.master.pid} refused this worker's signal "
            f"({exc.strerror or exc})"
        )
        if self.restart_fallback:
            self._restart_instead(why)
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
            # Signal 0 checks permission only. A worker that may not signal must not claim the
            # reload either: the claim would tell its siblings a reload is on its way.
            self.kill(self.master.pid, 0)
        except PermissionError as exc:
            self._denied(exc)
            return
        except ProcessLookupError:
            log.warning("wsgireload: gunicorn master %d is gone; restart gunicorn yourself",
                        self.master.pid)
            return
        claim = self._claim_reload(self.boot_time(), self.min_interval)
        if isinstance(claim, str):
            # Without a shared record every worker would send its own HUP, and each is a
            # full reload cycle of the master.
            log.warning(
                "wsgireload: not reloading: no safe place to coordinate workers (%s); "
                "pass runtime_dir= a private directory, or restart gunicorn yourself",
                claim,
            )
            return
        record, outcome, wait = claim
        if outcome is _record.Outcome.COVERED and self.restart_fallback and _record.logged(
            record, "restart-worker"
        ):
            # The claim covering us was a HUP the kernel refused: do as the sibling did.
            self._restart_instead("another worker found the master out of reach")
            self._restart_self()
        elif outcome is _record.Outcome.COVERED:
            log.debug(
                "wsgireload: gunicorn master %d already reloaded since this worker started; "
                "it will be replaced",
                self.master.pid,
            )
        elif outcome is _record.Outcome.WAIT:
            log.info(
                "wsgireload: the last reload of gunicorn master %d was too recent; "
                "retrying in %.1fs",
                self.master.pid,
                wait,
            )
            if not self._retry_pending:
                self._retry_pending = True
                self.schedule(wait, self._retry)
        else:
            log.debug("wsgireload: sending SIGHUP to gunicorn master %d", self.master.pid)
            try:
                self.kill(self.master.pid, signal.SIGHUP)
            except PermissionError as exc:
                self._denied(exc)

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
        return f"gunicorn: SIGHUP to master {pid}"


class RestartWorkerAction(Action):
    """The worker sends itself SIGTERM after its response; gunicorn replaces it gracefully.

    Each worker replaces only itself, so no coordination is needed; workers pick up a deploy
    one by one as each notices it.
    """

    name = "restart-worker"
    summary = "each worker sends itself SIGTERM after its response; gunicorn replaces it"
    per_process = True

    def __init__(
        self,
        *,
        runtime_dir: Optional[str] = None,
        kill: Kill = os.kill,
        getpid: Callable[[], int] = os.getpid,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.kill = kill
        self.getpid = getpid
        self.disabled: Optional[str] = None

    def setup(self, context: ProcessContext) -> None:
        if context.preloaded:
            self.disabled = "--preload"
            master = _process.record_master()
            record, _ = _record.for_master("gunicorn", master, self.runtime_dir,
                                           _process.read_process)
            if _record.first_to_log(record, "preload-error"):
                log.error(PRELOAD_ERROR)

    def __call__(self, changes: ChangeSet) -> None:
        if self.disabled is not None:
            log.debug("wsgireload: not reloading (%s): %s", self.disabled, changes.describe())
            return
        terminate_self(self.kill, self.getpid)

    def describe(self) -> str:
        if self.disabled is not None:
            return f"restart-worker: nothing ({self.disabled} prevents reloading)"
        return "restart-worker: SIGTERM to this worker"
