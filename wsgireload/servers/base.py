"""The action interface and the two actions that need no server: callback and log-only.

Server actions subclass Action (MasterAction when they signal their worker's master) and
register a name in ``wsgireload.actions.REGISTRY``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence, Tuple, Union

from .. import _record
from ..policy import ChangeSet
from . import _process

log = logging.getLogger("wsgireload")


@dataclass(frozen=True)
class ProcessContext:
    """What a worker process knows about itself, gathered once when its watcher is set up
    (as the worker starts under gunicorn or uWSGI, else at its first request; or at a
    Watcher's first step)."""

    pid: int
    created_pid: int  # the pid that created the Reloader (imported the app)
    # the first request's environ, or the server's own keys when set up without a request
    environ: Mapping[str, Any] = field(repr=False)

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

    def setup(self, context: ProcessContext) -> None:
        """Inspect the process and server once (worker start or first request; Watcher step)."""

    def __call__(self, changes: ChangeSet) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """A short phrase for the reload log line."""
        return self.name


class MasterAction(Action):
    """An action that asks its worker's recorded master to reload (gunicorn, uWSGI): the one
    master check before a signal, and the master's record shared with the sibling workers."""

    server: ClassVar[str] = ""  # the record's server name

    def __init__(
        self,
        server_names: Sequence[str],
        runtime_dir: Optional[str],
        read_process: _process.ReadProcess,
        getppid: Callable[[], int],
        getuid: Callable[[], int],
        geteuid: Callable[[], int],
        clock: Callable[[], float],
    ) -> None:
        self.server_names: Tuple[str, ...] = tuple(server_names)
        self.runtime_dir = runtime_dir
        self.read_process = read_process
        self.getppid = getppid
        self.getuid = getuid
        self.geteuid = geteuid
        self.clock = clock
        self.master: Optional[_process.ProcessInfo] = None

    def _problem(self) -> Optional[_process.MasterProblem]:
        return _process.master_problem(
            self.master,
            self.server_names,
            getppid=self.getppid,
            read=self.read_process,
            getuid=self.getuid,
            geteuid=self.geteuid,
        )

    def _master_record(self) -> Tuple[Optional[_record.Record], str]:
        return _record.for_master(self.server, self.master, self.runtime_dir, self.read_process)

    def _claim_reload(
        self, booted: float, min_interval: float = 0.0, chain: bool = False
    ) -> Union[str, Tuple[_record.Record, _record.Outcome, float]]:
        """``_record.claim_reload`` in the master's record: (record, outcome, wait), or why
        there is no usable record."""
        record, reason = self._master_record()
        if record is None:
            return reason
        try:
            outcome, wait = _record.claim_reload(record, booted, self.clock, min_interval, chain)
        except OSError as exc:
            return f"cannot update {record.path}: {exc.strerror or exc}"
        return record, outcome, wait


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
