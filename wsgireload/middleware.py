"""The Reloader WSGI middleware: the engine's gate, acting once no response is in flight.

The request path is a flag check; scanning, validation and signals happen in the engine and
nothing they raise ever reaches a request.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from . import servers
from ._options import Options
from .actions import ActionSpec
from .boot import calling_module, validating
from .engine import Engine, after_fork_if_missed
from .errors import ConfigurationError
from .policy import ChangeSet

log = logging.getLogger("wsgireload")

Environ = Dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class Reloader:
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
    :param interval: seconds between two scans of the watched files.
    :param settle: seconds without a further change before a change set is acted on, so a
        half-copied deploy is never loaded.
    :param settle_max: seconds after the first change when it is acted on even if files keep
        changing.
    :param extra_files: more files to watch: paths or glob patterns (``**`` recurses), for
        templates and configuration.
    :param exclude: ``fnmatch`` patterns of full paths never to watch.
    :param modules: watch the source files of ``sys.modules`` (off: only ``extra_files``).
    :param include_stdlib: also watch the interpreter's standard library.
    :param validate: ``"boot"`` (the default: every changed ``.py`` must compile, then the
        app is booted in a fresh interpreter as the server would boot it), ``"compile"`` or
        None; ``"import"`` is an alias of ``"boot"``.
    :param boot_app: the app to boot, ``"module:application"``, ``"module:create_app()"`` or
        a script path; by default the server's own (gunicorn's app URI, uWSGI's module or
        wsgi-file, mod_wsgi's script), else the module creating the Reloader.
    :param boot_timeout: seconds the boot check may take (``import_timeout``: its old name).
    :param smoke: a path such as ``"/healthz"`` to GET once from the booted app: a 5xx
        status refuses the deploy.
    :param import_name: the old name of ``boot_app``.
    :param action: ``"auto"``, another action name, an Action, or a callable taking the ChangeSet.
    :param mode: ``"thread"`` (a watcher thread per worker), ``"inline"`` (scan on the request
        path at most once per interval, for servers without threads) or ``"auto"``.
    :param backend: ``"poll"`` (stat every watched file each interval: works everywhere),
        ``"events"`` (scan only after a filesystem event, via the ``watchfiles`` package;
        polls if it is missing or the filesystem reports nothing) or ``"auto"`` (events
        when ``watchfiles`` is installed).
    :param clock: monotonic clock in seconds (tests inject one).
    """

    # Seconds a due reload waits for a moment with no response in flight. Under steady load
    # (or a client keeping slow responses overlapping) that moment may never come;
    # server-graceful actions then fire at the next response close. Instances may override it.
    drain_timeout = 60.0

    def __init__(
        self,
        app: WSGIApp,
        *,
        action: ActionSpec = "auto",
        clock: Callable[[], float] = time.monotonic,  # monotonic seconds (tests inject one)
        **options: Any,  # the Options fields: interval, settle, extra_files, validate...
    ) -> None:
        if not callable(app):
            raise ConfigurationError(f"app must be a WSGI callable, not {type(app).__name__}")
        self.options = Options.build("Reloader", **options)
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
        engine.on_fork = _weak(self._reset_process_state)
        self._reset_process_state()
        self._closed = inert
        if not inert:
            self._start_early()

    def _reset_process_state(self) -> None:
        """The gate's state, which belongs to one process: rebuilt in a forked child."""
        self._lock = threading.Lock()
        self._pid: Optional[int] = None
        self._steady = False  # True: nothing to do on the request path
        self._inline = False
        self._next_scan = 0.0
        self._inflight = 0
        self._due: Optional[ChangeSet] = None
        self._due_at = 0.0  # policy clock
        self._firing = False
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # -- the request path ---------------------------------------------------------------
    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._steady:
            try:
                return self.app(environ, start_response)
            except (ImportError, SyntaxError) as exc:
                self._note_import_failure(exc)
                raise
        return self._call_tracked(environ, start_response)

    def _call_tracked(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._closed:
            return self.app(environ, start_response)
        try:
            if self._pid != os.getpid():
                self._start_process(environ)
            if self._inline:
                now = self.clock()
                # The second test: a clock that stepped back must not stop the scans.
                if now >= self._next_scan or now < self._next_scan - self.interval:
                    self._next_scan = now + self.interval
                    self.run_step(now)
            track = self._due is not None or self.action.requires_drain
            if track:
                with self._lock:
                    self._inflight += 1
        except Exception as exc:  # never let the watcher fail a request
            self.engine.log_failure(exc)
            track = False
        try:
            result = self.app(environ, start_response)
        except BaseException as exc:
            if isinstance(exc, (ImportError, SyntaxError)):
                self._note_import_failure(exc)
            if track:
                self._response_closed()
            raise
        return _ClosingIterator(result, self._response_closed) if track else result

    # -- process and thread -------------------------------------------------------------
    def _start_process(self, environ: Environ) -> None:
        with self._lock:
            pid = os.getpid()
            if self._pid == pid:
                return
            self._pid = pid
            self._stop = threading.Event()
            self.engine.setup(environ)
            mode = self.options.mode
            threads = servers.threads_available(environ)
            self._inline = mode == "inline" or (mode == "auto" and not threads)
            if self._inline:
                self._next_scan = self.clock() + self.interval
                return
            if self._closed:  # close() ran meanwhile: it saw no thread, so start none
                return
            thread = threading.Thread(
                target=_watch,
                args=(weakref.ref(self), self._stop),
                name="wsgireload-watcher",
                daemon=True,
            )
            thread.start()
            self._thread = thread
            # A Reloader dropped without close() wakes its thread, which then finds it gone.
            weakref.finalize(self, self._stop.set)
            self._steady = self._due is None and not self.action.requires_drain

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
            if not self._closed:
                servers.start_early(self._start_process, lambda: None)
        except Exception as exc:
            self._early_failed(exc)

    def _early_failed(self, exc: Exception) -> None:
        if self._thread is None:
            self._pid = None  # the first request sets this process up again
        log.debug("wsgireload: the watcher starts at this worker's first request (%r)", exc)

    def run_step(self, now: float) -> Optional[ChangeSet]:
        """One watcher tick: the engine's step; a change set it hands out becomes due."""
        changes = self.engine.step(now, decide=self._due is None)
        if changes is not None:
            with self._lock:
                self._due = changes
                self._due_at = now
                self._steady = False
            log.debug("wsgireload: reload due after the last response: %s", changes.describe())
        return changes

    def _tick(self) -> None:
        """The watcher thread's tick: with no response in flight, "after it" is now."""
        self.run_step(self.clock())
        if self._due is not None and not self.action.after_close_only:
            self._fire_when_idle(closing=False)

    # -- firing -------------------------------------------------------------------------
    def _response_closed(self) -> None:
        with self._lock:
            self._inflight -= 1
        self._fire_when_idle(closing=True)

    def _fire_when_idle(self, *, closing: bool) -> None:
        with self._lock:
            if self._due is None or self._firing or self._closed:
                return  # a closed Reloader is being discarded: it must not act any more
            if self._inflight > 0 and not (closing and self._overdue()):
                return
            changes = self._due
            self._firing = True
        try:
            self.engine.act(changes)
        finally:
            with self._lock:
                self._due = None
                self._firing = False
                self._steady = (
                    self._thread is not None and not self._inline and not self.action.requires_drain
                )

    def _overdue(self) -> bool:
        """Responses kept overlapping for drain_timeout: fire anyway, unless that would cut
        them off (an action that ends the process needs a real drain)."""
        return not self.action.requires_drain and self.clock() - self._due_at >= self.drain_timeout

    # -- failures -----------------------------------------------------------------------
    def _note_import_failure(self, exc: BaseException) -> None:
        """Keep watching the files of a failed import: the fix will touch one of them."""
        try:
            filename = getattr(exc, "filename", None)
            files = [filename] if isinstance(filename, str) else []
            files += [frame.f_code.co_filename for frame, _ in traceback.walk_tb(exc.__traceback__)]
            self.engine.note_import_failure([name for name in files if os.path.isabs(name)])
        except Exception:  # pragma: no cover - defensive: we are on an error path already
            pass

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the watcher thread of this process (for tests and embedding). Idempotent.

        Afterwards requests pass straight through and the action never runs, not even for a
        reload that was already due. A Reloader dropped without close() stops its thread too.
        """
        self._closed = True
        self._steady = False
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self.interval * 2))
        self._thread = None
        self.engine.close()

    @property
    def reload_due(self) -> Optional[ChangeSet]:
        """The change set waiting for the last response in flight to close, if any."""
        return self._due

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


def _watch(ref: "weakref.ReferenceType[Reloader]", stop: threading.Event) -> None:
    """The watcher thread's loop. It holds the Reloader weakly so that it can be freed."""
    try:
        reloader = ref()
        while reloader is not None and not reloader._closed:
            interval = reloader.engine.pause(reloader.interval)
            del reloader
            if stop.wait(interval):
                return
            reloader = ref()
            if reloader is not None and not reloader._closed:
                reloader._tick()
    except BaseException:  # pragma: no cover - interpreter shutdown tears modules down
        if not sys.is_finalizing():
            raise


def _weak(method: Callable[[], None]) -> Callable[[], None]:
    """Call ``method`` while its object lives (the engine must not keep a Reloader alive)."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call
