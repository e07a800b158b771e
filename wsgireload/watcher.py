"""A watcher without the middleware: detect, settle, validate and act from a hook or a timer.

For server hooks (a gunicorn config thread, a uWSGI timer) and the CLI, where no response exists
to fire from; it composes the same Detector, Policy and actions the Reloader uses.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional

from ._options import Options, documented
from .actions import ActionSpec
from .boot import validating
from .detect import Detector
from .engine import Engine, EventHook, Master
from .policy import ChangeSet

log = logging.getLogger("wsgireload")


@documented
class Watcher:
    """Watches the files of this process and acts once per settled, validated change set.

    Unlike :class:`~wsgireload.Reloader` it does not wait for responses to close: it is for
    places without a request path (a server hook, a timer, an outside process), where the
    action is the server's own graceful reload. It takes the Reloader's options: ``interval``
    paces the thread of :meth:`start`, ``mode`` has no effect and ``boot_app`` has no creating
    module to fall back on.

    :param action: ``"auto"``, another action name, an Action, or a callable taking the ChangeSet.
    {options}
    :param created_pid: pid of the process that imported the app (None: this one); a hook in
        a preforked worker passes its master's, so that actions see ``--preload``.
    :param detector: a Detector (and its baseline) to use instead of building one from the
        options (the CLI reuses the one of a Reloader it found in the app).
    :param changed_since: ``time.time()`` before this process imported its code: a file
        modified after it counts as changed at once (at worst one extra reload, never a missed
        one).
    :param master: ``(server, pid)`` of the master whose workers share one scanner and one
        record (the gunicorn hook and the uWSGI timer pass it); None: this process alone.
    :param on_event: called with ``(kind, detail)`` as things happen (the CLI prints them).
    :param clock: monotonic clock in seconds (tests inject one).
    """

    def __init__(
        self,
        *,
        action: ActionSpec = "auto",
        created_pid: Optional[int] = None,
        detector: Optional[Detector] = None,
        changed_since: Optional[float] = None,
        master: Optional[Master] = None,
        on_event: Optional[EventHook] = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,  # the Options fields: interval, settle, extra_files, validate...
    ) -> None:
        self.options = Options.build("Watcher", **options)
        self.interval = self.options.interval
        self.clock = clock
        self.engine = Engine(
            self.options,
            action,
            detector=detector,
            created_pid=created_pid,
            since_ns=None if changed_since is None else int(changed_since * 1e9),
            master=master,
            on_event=on_event,
        )
        self.action = self.engine.action
        self.policy = self.engine.policy
        self.detector = self.engine.detector
        self._runner: Optional[Runner] = None

    def setup(self, environ: Optional[Mapping[str, Any]] = None) -> None:
        """Let the action look at this process once (done by the first ``step`` otherwise)."""
        self.engine.setup(environ or {})

    def step(self, now: Optional[float] = None) -> Optional[ChangeSet]:
        """Scan once; act if a change set is due. Returns the change set acted on. Never raises."""
        changes = self.engine.step(self.clock() if now is None else now)
        if changes is not None:
            failure = self.engine.act(changes)
            self.engine.event("failed" if failure is not None else "acted", failure or changes)
        return changes

    # -- as a thread ------------------------------------------------------------------
    def start(self) -> "Watcher":
        """Run ``step`` every ``interval`` seconds in a daemon thread of this process."""
        if (self._thread is not None and self._thread.is_alive()) or validating():
            return self
        self._runner = Runner(self.step, self.engine.pause, self.interval)
        return self

    @property
    def _thread(self) -> Optional[threading.Thread]:
        return None if self._runner is None else self._runner.thread

    def stop(self) -> None:
        """Stop the thread started by ``start`` (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop()
        self.engine.close()  # another worker of the master takes the scanning over at once


class Runner:
    """A watcher thread: ``tick()`` every interval as the engine paces it (``pause``), until
    stopped. What ``tick`` serves is held as its owner chooses (the Reloader's: weakly)."""

    def __init__(
        self, tick: Callable[[], object], pause: Callable[[float], float], interval: float
    ) -> None:
        self.tick, self.pause, self.interval = tick, pause, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="wsgireload-watcher", daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.pause(self.interval)):
                self.tick()
        except BaseException:  # pragma: no cover - interpreter shutdown tears modules down
            if not sys.is_finalizing():
                raise

    def stop(self) -> None:
        """Wake the thread to end it; wait for it (a bounded time) unless called from it."""
        self.stopped.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=max(5.0, self.interval * 2))
