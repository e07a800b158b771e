"""A watcher without the middleware: detect, settle, validate and act from a hook or a timer.

For server hooks (a gunicorn config thread, a uWSGI timer) and the CLI, where no response exists
to fire from; it composes the same Detector, Policy and actions the Reloader uses.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from ._options import PathSpec, build_detector, build_policy, run_action
from .actions import ActionSpec, ProcessContext, resolve
from .boot import validating
from .detect import Detector
from .policy import ChangeSet

log = logging.getLogger("wsgireload")

_FAILURE_LOG_EVERY = 60.0  # seconds between two logged watcher failures

# (kind, detail) reports for a live display: "changed" (a path), "settling" (seconds to wait),
# "rejected" (the files), "due" (the ChangeSet), "acted" (the ChangeSet), "failed" (the error).
EventHook = Callable[[str, Any], None]


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
    :param action: ``"auto"``, another action name, an Action, or a callable taking the
        ChangeSet.
    :param created_pid: pid of the process that imported the app (defaults to this one); a
        hook in a preforked worker passes its master's pid so actions can see ``--preload``.
    :param detector: use this Detector (and its baseline) instead of building one from the
        options above (the CLI reuses the one of a Reloader it found in the app).
    :param changed_since: wall-clock time (``time.time()``) before this process imported its
        code, such as its fork: a watched file modified after it may be newer than what was
        imported, so it counts as changed at once (at worst one extra reload, never a missed
        one).
    :param on_event: called with ``(kind, detail)`` as things happen (the CLI prints them).
    :param clock: monotonic clock in seconds (tests inject one).
    """

    def __init__(
        self,
        *,
        interval: float = 1.0,  # seconds
        settle: float = 1.0,  # seconds
        settle_max: float = 30.0,  # seconds
        extra_files: Union[PathSpec, Iterable[PathSpec]] = (),
        exclude: Union[str, Iterable[str]] = (),
        modules: bool = True,
        include_stdlib: bool = False,
        validate: Optional[str] = "boot",
        boot_app: Optional[str] = None,
        boot_timeout: Optional[float] = None,  # seconds; None: import_timeout
        smoke: Optional[str] = None,  # a URL path
        import_name: Optional[str] = None,
        import_timeout: float = 30.0,  # seconds
        action: ActionSpec = "auto",
        created_pid: Optional[int] = None,
        detector: Optional[Detector] = None,
        changed_since: Optional[float] = None,
        on_event: Optional[EventHook] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = build_policy(
            interval=interval,
            settle=settle,
            settle_max=settle_max,
            validate=validate,
            import_name=import_name,
            import_timeout=import_timeout,
            boot_app=boot_app,
            boot_timeout=boot_timeout,
            smoke=smoke,
        )
        self.interval = float(interval)
        self.clock = clock
        self.action = resolve(action)
        self.on_event = on_event
        if detector is None and validating():  # in the boot check: no scan cost
            detector = Detector(modules=False)
        if detector is None:
            detector = build_detector(
                extra_files,
                exclude,
                modules=modules,
                include_stdlib=include_stdlib,
                changed_since_ns=time.time_ns(),  # late imports: see Detector
            )
            # The baseline is what this process has loaded now: a later edit is a change.
            detector.scan()
        self.detector = detector
        self._created_pid = os.getpid() if created_pid is None else created_pid
        self._changed_since = changed_since
        self._setup_pid: Optional[int] = None
        self._reported_version = -1
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._next_failure_log = 0.0

    def setup(self, environ: Optional[Mapping[str, Any]] = None) -> None:
        """Let the action look at this process once (done by the first ``step`` otherwise)."""
        self._setup_pid = os.getpid()
        self.action.setup(ProcessContext(self._setup_pid, self._created_pid, environ or {}))

    def step(self, now: Optional[float] = None) -> Optional[ChangeSet]:
        """Scan once; act if a change set is due. Returns the change set acted on. Never raises."""
        try:
            if self._setup_pid != os.getpid():
                self.setup()
            if now is None:
                now = self.clock()
            changed = self.detector.scan()
            if self._changed_since is not None:
                since_ns = int(self._changed_since * 1e9)
                changed = sorted(set(changed).union(self.detector.modified_since(since_ns)))
                self._changed_since = None
            if changed:
                for path in changed:
                    self._event("changed", path)
                self.policy.observe(changed, now)
                self._event("settling", self.policy.settle)
            changes = self.policy.due(now, self.detector.baseline)
            if changes is None:
                version = self.policy._version
                if self.policy.settled(now) and version != self._reported_version:
                    # Settled yet not due: validation refused it (policy logged why).
                    self._reported_version = version
                    self._event("rejected", self.policy.pending)
                return None
            self._event("due", changes)
            self._act(changes)
            return changes
        except Exception as exc:
            self._log_failure(exc)
            return None

    def _act(self, changes: ChangeSet) -> None:
        failure = run_action(self.action, changes)
        if failure is not None:
            self._event("failed", failure)
            return
        self._event("acted", changes)

    def _event(self, kind: str, detail: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, detail)

    def _log_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self._next_failure_log:
            return
        self._next_failure_log = now + _FAILURE_LOG_EVERY
        log.error("wsgireload: the watcher failed: %r", exc, exc_info=exc)

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
            while not stop.wait(self.interval):
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
