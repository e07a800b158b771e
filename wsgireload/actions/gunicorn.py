"""gunicorn actions: one SIGHUP to the verified master per deploy, or a worker restarting itself.

Both refuse under ``--preload``, where neither can load new code (the master holds the old
modules) and a self-restarting worker would storm.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable, Optional, Sequence, Tuple

from ..policy import ChangeSet
from . import _process
from ._claim import Claim, Outcome, ReloadLedger, mark_once
from ._process import ProcessInfo, ReadProcess
from .base import Action, ProcessContext

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


class GunicornAction(Action):
    """SIGHUP to this worker's gunicorn master: a graceful reload of every worker.

    Only one worker of a master signals per deploy (see ``_claim.ReloadLedger``), only a master
    verified as unchanged since the worker started is signalled, and two reloads of one
    master are at least ``min_interval`` seconds apart.

    :param min_interval: seconds between two reloads of one master.
    :param runtime_dir: private directory for the shared reload records.
    :param server_names: words one of which the master's command line must contain.
    """

    name = "gunicorn"
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
        kill: Kill = os.kill,
        getppid: Callable[[], int] = os.getppid,
        read_process: ReadProcess = _process.read_process,
        boot_time: Callable[[], float] = _process.boot_time,
        master_pid: Callable[[], int] = _process.boot_ppid,
        ledger: Optional[ReloadLedger] = None,
        schedule: Schedule = _timer,
    ) -> None:
        self.server_names: Tuple[str, ...] = tuple(server_names)
        self.runtime_dir = runtime_dir
        self.kill = kill
        self.getppid = getppid
        self.read_process = read_process
        self.boot_time = boot_time
        self.master_pid = master_pid
        self.ledger = ledger or ReloadLedger(runtime_dir, min_interval=min_interval)
        self.schedule = schedule
        self.master: Optional[ProcessInfo] = None
        self.disabled: Optional[str] = None  # why this action does nothing in this process
        self._retry_pending = False

    def setup(self, context: ProcessContext) -> None:
        self.master = _process.record_master(self.master_pid(), read=self.read_process)
        if context.preloaded:
            self.disabled = "--preload"
            if mark_once(self.runtime_dir, f"{self._key()}.preload-error"):
                log.error(PRELOAD_ERROR)
            return
        problem = _process.master_problem(
            self.master, self.server_names, getppid=self.getppid, read=self.read_process
        )
        if problem is not None:
            log.warning(
                "wsgireload: gunicorn reload will be refused: %s (pass "
                "GunicornAction(server_names=...) if the master runs under another name)",
                problem,
            )

    def _key(self) -> str:
        master = self.master
        if master is None:
            return "gunicorn-0-0"
        return f"gunicorn-{master.pid}-{master.start_time or 'na'}"

    def __call__(self, changes: ChangeSet) -> None:
        if self.disabled is not None:
            log.debug("wsgireload: not reloading (%s): %s", self.disabled, changes.describe())
            return
        if self._retry_pending:
            return  # the scheduled retry will reload for this change set too
        self._attempt()

    def _retry(self) -> None:
        self._retry_pending = False
        self._attempt()

    def _attempt(self) -> None:
        if not _process.verify_master(
            self.master, self.server_names, getppid=self.getppid, read=self.read_process
        ):
            return
        assert self.master is not None
        claim: Claim = self.ledger.claim(self._key(), self.boot_time())
        if claim.outcome is Outcome.COVERED:
            log.debug(
                "wsgireload: gunicorn master %d already reloaded since this worker started; "
                "it will be replaced",
                self.master.pid,
            )
        elif claim.outcome is Outcome.WAIT:
            log.info(
                "wsgireload: the last reload of gunicorn master %d was too recent; "
                "retrying in %.1fs",
                self.master.pid,
                claim.wait,
            )
            if not self._retry_pending:
                self._retry_pending = True
                self.schedule(claim.wait, self._retry)
        elif claim.outcome is Outcome.REFUSED:
            log.warning(
                "wsgireload: not reloading: no safe place to coordinate workers (%s); "
                "pass runtime_dir= a private directory, or restart gunicorn yourself",
                claim.reason,
            )
        else:
            log.debug("wsgireload: sending SIGHUP to gunicorn master %d", self.master.pid)
            self.kill(self.master.pid, signal.SIGHUP)
            self.ledger.forget_dead(lambda pid: self.read_process(pid) is not None)

    def describe(self) -> str:
        if self.disabled is not None:
            return f"gunicorn: nothing ({self.disabled} prevents reloading)"
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
            key = f"gunicorn-{master.pid}-{master.start_time or 'na'}" if master else "gunicorn-0-0"
            if mark_once(self.runtime_dir, f"{key}.preload-error"):
                log.error(PRELOAD_ERROR)

    def __call__(self, changes: ChangeSet) -> None:
        if self.disabled is not None:
            log.debug("wsgireload: not reloading (%s): %s", self.disabled, changes.describe())
            return
        pid = self.getpid()
        if pid <= 1:  # never terminate an init process (a container's only process)
            log.warning("wsgireload: not restarting pid %d", pid)
            return
        # gunicorn's worker handles SIGTERM gracefully: it finishes and exits, the master
        # spawns a fresh one. (sys.exit() would be caught by gunicorn and not restart it.)
        self.kill(pid, signal.SIGTERM)

    def describe(self) -> str:
        if self.disabled is not None:
            return f"restart-worker: nothing ({self.disabled} prevents reloading)"
        return "restart-worker: SIGTERM to this worker"
