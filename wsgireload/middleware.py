"""The Reloader WSGI middleware and its gate: the engine acts once no response is in flight.

The request path is a flag check; scanning, validation and signals happen in the engine and
nothing they raise ever reaches a request.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from . import servers
from ._options import Options, documented
from .actions import ActionSpec
from .boot import calling_module, validating
from .engine import Engine, after_fork_if_missed
from .errors import ConfigurationError
from .policy import ChangeSet
from .watcher import Runner

log = logging.getLogger("wsgireload")

Environ = Dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class State(enum.Enum):
    """Where the gate stands in this process."""

    WATCHING = "watching"  # nothing due (the process may not have started watching yet)
    DUE = "due"  # a change set waits for the responses in flight to close
    FIRING = "firing"  # the action runs
    CLOSED = "closed"  # requests pass through; the action never runs again


class Gate:
    """The engine behind a gate that opens once no response is in flight, whatever the
    protocol: a middleware adds only its request path (``_request_started``, then
    ``_response_closed`` when a counted response ends)."""

    # Seconds a due reload waits for a moment with no response in flight. Under steady load
    # (or a client keeping slow responses overlapping) that moment may never come;
    # server-graceful actions then fire at the next response close. Instances may override it.
    drain_timeout = 60.0
    protocol = "a WSGI"  # of the app it wraps, for error messages

    def __init__(
        self,
        app: Any,
        *,
        action: ActionSpec = "auto",
        clock: Callable[[], float] = time.monotonic,  # monotonic seconds (tests inject one)
        **options: Any,  # the Options fields: interval, settle, extra_files, validate...
    ) -> None:
        if not callable(app):
            raise ConfigurationError(
                f"app must be {self.protocol} callable, not {type(app).__name__}")
        self.options = Options.build(type(self).__name__, **options)
        self.app = app
        self.interval = self.options.interval
        self.clock = clock
        # The baseline is what this process imported; forked workers inherit it, so a change
        # made between a worker's start and its first request is still seen.
        inert = validating()  # inside the boot check's interpreter: pass requests through
        self.engine = engine = Engine(self.options, action, creator=calling_module())
        self.action = engine.action
        self.policy = engine.policy
        self.detector = engine.detector
        self._state = State.CLOSED if inert else State.WATCHING
        engine.on_fork = _weak(self._reset_process_state)
        self._reset_process_state()
        if not inert:
            self._start_early()

    def _reset_process_state(self) -> None:
        """The gate's state, which belongs to one process: rebuilt in a forked child."""
        self._lock = threading.Lock()  # guards the state; never held around foreign code
        self._starting = threading.Lock()  # one process start at a time (runs the setup)
        self._pid: Optional[int] = None  # the process watching (None: not yet)
        self._runner: Optional[Runner] = None
        self._inline = False  # this process scans on the request path (no threads)
        self._next_scan = 0.0
        self._inflight = 0
        self._due_at = 0.0  # when the change set became due (self.clock)
        self._enter(State.CLOSED if self.closed else State.WATCHING)

    def _enter(self, state: State, due: Optional[ChangeSet] = None) -> None:
        """The one place the state changes (hold ``_lock``, or own the object alone):
        ``_due`` is the change set of DUE and FIRING, ``_steady`` the request path's flag."""
        if self.closed:
            state, due = State.CLOSED, None  # for good
        self._state, self._changes = state, due
        self._steady = (
            state is State.WATCHING and self._runner is not None and not self.action.requires_drain
        )

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def _due(self) -> Optional[ChangeSet]:
        return self._changes

    @_due.setter
    def _due(self, changes: Optional[ChangeSet]) -> None:
        """Make ``changes`` due now (None: nothing is due any more)."""
        with self._lock:
            self._enter(State.WATCHING if changes is None else State.DUE, changes)
            self._due_at = self.clock()

    # -- the request path (off the steady flag) ----------------------------------------
    def _request_started(self, request: Any) -> bool:
        """Start this process's watching, scan if inline. True: the response is counted in
        flight, and ``_response_closed`` must run when it ends. Never raises."""
        if self.closed:
            return False
        try:
            if self._pid != os.getpid():
                self._start_process(self._environ(request))
            if self._inline:
                now = self.clock()
                # The second test: a clock that stepped back must not stop the scans.
                if now >= self._next_scan or now < self._next_scan - self.interval:
                    self._next_scan = now + self.interval
                    self.run_step(now)
            if self._due is None and not self.action.requires_drain:
                return False
            with self._lock:
                self._inflight += 1
            return True
        except Exception as exc:  # never let the watcher fail a request
            self.engine.log_failure(exc)
            return False

    def _environ(self, request: Environ) -> Environ:
        """What the servers layer reads of this process, from a request (WSGI: its environ)."""
        return request

    def _response_closed(self) -> None:
        with self._lock:
            self._inflight -= 1
        self._fire_when_idle(closing=True)

    def _note_import_failure(self, exc: BaseException) -> None:
        """Keep watching the files of a failed import: the fix will touch one of them."""
        try:
            filename = getattr(exc, "filename", None)
            files = [filename] if isinstance(filename, str) else []
            files += [frame.f_code.co_filename for frame, _ in traceback.walk_tb(exc.__traceback__)]
            self.engine.note_import_failure([name for name in files if os.path.isabs(name)])
        except Exception:  # pragma: no cover - defensive: we are on an error path already
            pass

    # -- process and thread -------------------------------------------------------------
    def _start_process(self, environ: Environ) -> None:
        with self._starting:
            pid = os.getpid()
            if self._pid == pid:
                return
            self._pid = pid
            self.engine.setup(environ)
            mode = self.options.mode
            threads = servers.threads_available(environ)
            inline = mode == "inline" or (mode == "auto" and not threads)
            with self._lock:
                if self.closed:  # close() ran meanwhile: it saw no thread, so start none
                    return
                self._inline = inline
                self._next_scan = self.clock() + self.interval
                if not inline:
                    runner = Runner(_weak(self._tick), self.engine.pause, self.interval)
                    # A Reloader dropped without close() wakes its thread, which then ends.
                    weakref.finalize(self, runner.stopped.set)
                    self._runner = runner
                self._enter(self._state, self._changes)

    def _start_early(self) -> None:
        """Start watching in a process known to be a serving worker (``servers.start_early``);
        elsewhere, or if anything fails, the first request starts it. Never raises (in a
        worker's boot)."""
        try:
            servers.start_early(self._start_process, _weak(self._start_after_fork))
        except Exception as exc:
            self._early_failed(exc)

    def _start_after_fork(self) -> None:
        """The server's post-fork hook, in each process its master forks (workers only start)."""
        try:
            after_fork_if_missed()  # a server may fork without Python's own fork hooks
            if not self.closed:
                servers.start_early(self._start_process, lambda: None)
        except Exception as exc:
            self._early_failed(exc)

    def _early_failed(self, exc: Exception) -> None:
        if self._runner is None:
            self._pid = None  # the first request sets this process up again
        log.debug("wsgireload: the watcher starts at this worker's first request (%r)", exc)

    def run_step(self, now: float) -> Optional[ChangeSet]:
        """One watcher tick: the engine's step; a change set it hands out becomes due."""
        changes = self.engine.step(now, decide=self._due is None)
        if changes is not None:
            self._due = changes
            log.debug("wsgireload: reload due after the last response: %s", changes.describe())
        return changes

    def _tick(self) -> None:
        """The watcher thread's tick: with no response in flight, "after it" is now."""
        if self.closed:
            return
        self.run_step(self.clock())
        if self._due is not None and not self.action.after_close_only:
            self._fire_when_idle(closing=False)

    # -- firing -------------------------------------------------------------------------
    def _fire_when_idle(self, *, closing: bool) -> None:
        with self._lock:
            changes = self._due
            if self._state is not State.DUE or changes is None:
                return  # nothing due, being fired, or closed (discarded: it must not act)
            if self._inflight > 0 and not (closing and self._overdue()):
                return
            self._enter(State.FIRING, changes)
        try:
            self.engine.act(changes)
        finally:
            with self._lock:
                self._enter(State.WATCHING)

    def _overdue(self) -> bool:
        """Responses kept overlapping for drain_timeout: fire anyway, unless that would cut
        them off (an action that ends the process needs a real drain)."""
        return not self.action.requires_drain and self.clock() - self._due_at >= self.drain_timeout

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the watcher thread of this process (for tests and embedding). Idempotent.

        Afterwards requests pass straight through and the action never runs, not even for a
        reload that was already due. A Reloader dropped without close() stops its thread too.
        """
        with self._lock:
            self._enter(State.CLOSED)
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop()
        self.engine.close()

    @property
    def _thread(self) -> Optional[threading.Thread]:
        return None if self._runner is None else self._runner.thread

    @property
    def reload_due(self) -> Optional[ChangeSet]:
        """The change set waiting for the last response in flight to close, if any."""
        return self._due


@documented
class Reloader(Gate):
    """WSGI middleware that reloads the server gracefully when the app's code changes.

    ::

        from wsgireload import Reloader
        application = Reloader(app)

    A due reload runs at once from the watcher thread when no response is in flight, else
    after the last one closes. The workers of one master share one scanner (see ``engine``).
    The watcher starts as soon as a worker exists where that is known (a gunicorn worker
    without ``--preload``; a uWSGI worker, with or without ``--lazy-apps``), else at the
    process's first request.

    :param app: the WSGI application to wrap.
    :param action: ``"auto"``, another action name, an Action, or a callable taking the ChangeSet.
    {options}
    :param clock: monotonic clock in seconds (tests inject one).
    """

    app: WSGIApp

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._steady:
            try:
                return self.app(environ, start_response)
            except (ImportError, SyntaxError) as exc:
                self._note_import_failure(exc)
                raise
        track = self._request_started(environ)
        try:
            result = self.app(environ, start_response)
        except BaseException as exc:
            if isinstance(exc, (ImportError, SyntaxError)):
                self._note_import_failure(exc)
            if track:
                self._response_closed()
            raise
        return _ClosingIterator(result, self._response_closed) if track else result

    def __repr__(self) -> str:
        return f"<Reloader {self.app!r} action={self.action.describe()!r}>"


class _ClosingIterator:
    """Passes the app's chunks through unbuffered and runs a hook once, after ``close()``."""

    __slots__ = ("_iterable", "_iterator", "_hook")

    def __init__(self, iterable: Iterable[bytes], hook: Callable[[], None]) -> None:
        self._iterable = iterable
        self._iterator: Optional[Iterator[bytes]] = None
        self._hook: Optional[Callable[[], None]] = hook

    def __iter__(self) -> "_ClosingIterator":
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._iterable)
        return next(self._iterator)

    def close(self) -> None:
        hook, self._hook = self._hook, None
        if hook is None:
            return
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            hook()


def _weak(method: Callable[[], None]) -> Callable[[], None]:
    """Call ``method`` while its object lives (the engine and the watcher thread must not keep
    a Reloader alive)."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call
