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

from ._options import Options
from .actions import ActionSpec
from .boot import validating
from .detect import Detector
from .engine import Engine, EventHook, Master
from .policy import ChangeSet

log = logging.getLogger("wsgireload")


class Watcher:
    """Watches the files of this process and acts once per settled, validated change set.

    Unlike :class:`~wsgireload.Reloader` it does not wait for responses to close: it is for
    places without a request path (a server hook, a timer, an outside process), where the
    action is the server's own graceful reload.

    :param interval: seconds between scans when run as a thread.
    :param settle: seconds without a further change before a change set is acted on.
    :param settle_max: seconds after the first change when it is acted on anyway.
    :param extra_files: paths or glob patterns (``**`` recurses) watched besides the modules.
    :param exclude: ``fnmatch`` patterns of full paths never to watch.
    :param modules: watch the source files of ``sys.modules`` (off: only ``extra_files``).
    :param include_stdlib: also watch the interpreter's standard library.
    :param validate: ``"boot"`` (the default: compile, then boot the app in a fresh
        interpreter), ``"compile"`` or None; ``"import"`` is an alias of ``"boot"``.
    :param boot_app: the app to boot (``"module:application"``, ``"module:create_app()"``, a
        script path); by default the server's own, as far as this process can tell.
    :param boot_timeout: seconds the boot check may take (``import_timeout``: its old name).
    :param smoke: a path to GET once from the booted app; a 5xx status refuses the deploy.
    :param import_name: the old name of ``boot_app``.
    :param backend: ``"poll"``, ``"events"`` or ``"auto"``, as for the Reloader (used when no
        ``detector`` is given); ``mode`` is accepted too and has no effect here.
    :param action: ``"auto"``, another action name, an Action, or a callable taking the ChangeSet.
    :param created_pid: pid of the process that imported the app (defaults to this one); a
        hook in a preforked worker passes its master's pid so actions can see ``--preload``.
    :param detector: use this Detector (and its baseline) instead of building one from the
        options above (the CLI reuses the one of a Reloader it found in the app).
    :param changed_since: wall-clock time (``time.time()``) before this process imported its
        code, such as its fork: a watched file modified after it counts as changed at once (at
        worst one extra reload, never a missed one).
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
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

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
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="wsgireload-watcher", daemon=True
        )
        self._thread.start()
        return self

    def _run(self, stop: threading.Event) -> None:
        try:
            while not stop.wait(self.engine.pause(self.interval)):
                self.step()
        except BaseException:  # pragma: no cover - interpreter shutdown tears modules down
            if not sys.is_finalizing():
                raise

    def stop(self) -> None:
        """Stop the thread started by ``start`` (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self.interval * 2))
        self.engine.close()  # another worker of the master takes the scanning over at once
