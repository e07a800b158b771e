"""The Reloader middleware: its request path, response wrapping, firing, modes and fork, and
what no client, app or thread can break: hostile input, PEP 3333 responses (property-based),
resource hygiene, and concurrency against a real threaded server."""

from __future__ import annotations

import builtins
import gc
import io
import logging
import os
import random
import sys
import tempfile
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import FileWrapper

import pytest
import webtest
import webtest.lint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webtest.lint import middleware as lint

from wsgireload import Reloader
from wsgireload.policy import ChangeSet

from .conftest import (
    DrainingRecorder,
    FakeClock,
    Recorder,
    ServerReload,
    bump,
    environ,
    force_due,
    make_reloader,
    serve,
    serve_a_reload,
    touch,
)
from .servers.harness import Load, wait_for

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def hello(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def watcher_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wsgireload-watcher"]


def make(app: Any, watched: Path, clock: FakeClock, **kw: Any) -> Reloader:
    kw.setdefault("settle", 0.0)
    kw.setdefault("mode", "inline")
    return Reloader(app, extra_files=[str(watched)], clock=clock, **kw)


def call(app: Any) -> tuple:
    """Call a WSGI app directly as a server would; return (iterable, chunks consumed)."""
    result = app(environ(), lambda status, headers, exc_info=None: None)
    try:
        return result, list(result)
    finally:
        if hasattr(result, "close"):
            result.close()


# -- the request path ----------------------------------------------------------------------
def test_steady_state_returns_the_apps_iterable_untouched(
    watched: Path, clock: FakeClock
) -> None:
    body = [b"x"]
    reloader = make(lambda e, s: body, watched, clock, mode="thread")
    try:
        call(reloader)  # first request: starts the watcher
        result, _ = call(reloader)
        assert result is body  # no wrapper: wsgi.file_wrapper keeps its fast path
    finally:
        reloader.close()


def test_thread_starts_lazily_and_close_stops_it(watched: Path, clock: FakeClock) -> None:
    watchers = watcher_threads
    before = len(watchers())
    reloader = make(hello, watched, clock, mode="thread")
    assert len(watchers()) == before  # never in a master before fork
    webtest.TestApp(reloader).get("/")
    assert len(watchers()) == before + 1
    webtest.TestApp(reloader).get("/")
    assert len(watchers()) == before + 1  # one per process
    reloader.close()
    reloader.close()  # idempotent
    assert len(watchers()) == before
    assert webtest.TestApp(reloader).get("/").text == "hello"  # still serves after close


def test_inline_mode_scans_at_most_once_per_interval(watched: Path, clock: FakeClock) -> None:
    recorder = Recorder()
    reloader = make(hello, watched, clock, interval=5.0, action=recorder)
    scans: List[float] = []
    original = reloader.run_step

    def counting_step(now: float) -> Any:
        scans.append(now)
        return original(now)

    reloader.run_step = counting_step  # type: ignore[method-assign]
    app = webtest.TestApp(reloader)
    app.get("/")  # first request: sets up the process, first scan one interval later
    clock.advance(5)
    app.get("/")
    app.get("/")
    assert len(scans) == 1
    bump(watched)
    clock.advance(5)
    app.get("/")  # scans, sees the change; due now, fires when this response closes
    assert len(scans) == 2
    assert [c.files for c in recorder.calls] == [(str(watched),)]
    assert not any(t.name == "wsgireload-watcher" for t in threading.enumerate()
                   if getattr(t, "_wr", None) is reloader)


def test_change_between_worker_start_and_first_request_is_detected(
    watched: Path, clock: FakeClock
) -> None:
    recorder = Recorder()
    reloader = make(hello, watched, clock, interval=1.0, action=recorder)
    bump(watched)  # the deploy lands before this process served anything
    app = webtest.TestApp(reloader)
    app.get("/")
    clock.advance(1)
    app.get("/")
    assert len(recorder.calls) == 1


# -- hostile input: nothing a client sends can trigger, delay or suppress a reload or read a
# file; the environ reaches the app untouched (the very same object), whatever it holds.
header_names = st.from_regex(r"\AHTTP_[A-Z0-9_]{1,24}\Z")
text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=64
)  # latin-1, as PEP 3333 hands header values over
hostile_requests = st.fixed_dictionaries(
    {
        "REQUEST_METHOD": st.sampled_from(
            ["GET", "POST", "PUT", "DELETE", "RELOAD", "HUP", "OPTIONS", "TRACE", "X" * 200]
        ),
        "PATH_INFO": st.one_of(
            text,
            st.sampled_from(
                ["/__reload__", "/../../etc/passwd", "/%00", "/" + "a" * 5000, "/wsgireload"]
            ),
        ),
        "QUERY_STRING": st.one_of(text, st.just("reload=1&action=exec&file=/etc/passwd")),
        "headers": st.dictionaries(header_names, text, max_size=6),
        "body": st.binary(max_size=256),
    }
)

FILE_CALLS = ("stat", "lstat", "open", "scandir", "listdir", "access")


class FileCallCounter:
    """Counts file-system calls made by one thread (the request's), via monkeypatch."""

    def __init__(self, monkeypatch: Any) -> None:
        self.thread = threading.get_ident()
        self.calls: List[str] = []
        for name in FILE_CALLS:
            monkeypatch.setattr(os, name, self._wrap(f"os.{name}", getattr(os, name)))
        monkeypatch.setattr(builtins, "open", self._wrap("open", builtins.open))
        monkeypatch.setattr(io, "open", self._wrap("io.open", io.open))

    def _wrap(self, label: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self.thread:
                self.calls.append(f"{label}{args[:1]!r}")
            return real(*args, **kwargs)

        return counted


class CountingInput(io.BytesIO):
    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.reads = 0

    def read(self, *args: Any) -> bytes:
        self.reads += 1
        return super().read(*args)

    def readline(self, *args: Any) -> bytes:
        self.reads += 1
        return super().readline(*args)


def build_environ(req: Dict[str, Any]) -> Dict[str, Any]:
    env = environ(
        REQUEST_METHOD=req["REQUEST_METHOD"],
        PATH_INFO=req["PATH_INFO"],
        QUERY_STRING=req["QUERY_STRING"],
        CONTENT_LENGTH=str(len(req["body"])),
        **{"wsgi.input": CountingInput(req["body"])},
    )
    env.update(req["headers"])
    return env


class EchoApp:
    """Records the environ objects it receives; reads nothing."""

    def __init__(self) -> None:
        self.seen: List[Dict[str, Any]] = []

    def __call__(self, env: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        self.seen.append(env)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"ok"])


@given(reqs=st.lists(hostile_requests, min_size=1, max_size=5))
@settings(SETTINGS, max_examples=40)
def test_hostile_requests_in_steady_state_touch_no_file_and_trigger_nothing(
    watched: Path, monkeypatch: Any, reqs: List[Dict[str, Any]]
) -> None:
    app = EchoApp()
    recorder = Recorder()
    reloader, clock = make_reloader(app, watched, recorder)
    try:
        serve(reloader, environ())  # the first request starts the watcher (and may look around)
        with monkeypatch.context() as m:
            counter = FileCallCounter(m)
            for req in reqs:
                env = build_environ(req)
                got, errors = serve(reloader, env)
                assert (got, errors) == ([b"ok"], [])
                assert app.seen[-1] is env, "the app must receive the server's environ object"
                assert env["wsgi.input"].reads == 0, "the middleware read the request body"
        assert counter.calls == [], "the request path touched the file system"
        assert recorder.count == 0 and reloader.reload_due is None
        assert reloader.policy.pending == ()
    finally:
        reloader.close()


@given(reqs=st.lists(hostile_requests, min_size=1, max_size=4))
@settings(SETTINGS, max_examples=40)
def test_hostile_requests_neither_delay_nor_suppress_a_due_reload(
    watched: Path, reqs: List[Dict[str, Any]]
) -> None:
    """Whatever the request, the due reload fires when its response closes, exactly once."""
    app = EchoApp()
    recorder = Recorder()
    reloader, clock = make_reloader(app, watched, recorder)
    try:
        serve(reloader, environ())
        force_due(reloader, watched, clock)
        for req in reqs:
            env = build_environ(req)
            serve(reloader, env)
            assert app.seen[-1] is env
            assert recorder.count == 1
        assert reloader.reload_due is None
    finally:
        reloader.close()


def test_inline_mode_scans_by_the_clock_not_by_the_requests(
    watched: Path, monkeypatch: Any
) -> None:
    """In inline mode the request path stats files once per interval, however many requests."""
    app = EchoApp()
    recorder = Recorder()
    reloader, clock = make_reloader(app, watched, recorder, mode="inline", interval=5.0)
    try:
        serve(reloader, environ())
        with monkeypatch.context() as m:
            counter = FileCallCounter(m)
            for _ in range(50):
                serve(reloader, environ(PATH_INFO="/__reload__", HTTP_X_RELOAD="1"))
            assert counter.calls == []
            clock.now += 5.0
            serve(reloader, environ())
            scanned = len(counter.calls)
            for _ in range(50):
                serve(reloader, environ(QUERY_STRING="reload=1"))
            assert len(counter.calls) == scanned
        assert scanned > 0 and recorder.count == 0
    finally:
        reloader.close()


class BadStr:
    def __str__(self) -> str:
        raise RuntimeError("odd value")

    __repr__ = __str__


ODD_ENVIRONS: Dict[str, Callable[[], Any]] = {
    "empty": lambda: {},
    "no-wsgi-errors": lambda: {k: v for k, v in environ().items() if k != "wsgi.errors"},
    "non-str-values": lambda: environ(
        PATH_INFO=b"/bytes",
        QUERY_STRING=None,
        SERVER_PORT=80,
        HTTP_HOST=["a", "b"],
        REQUEST_METHOD=7,
    ),
    "non-str-keys": lambda: {**environ(), 1: "one", None: None, b"k": b"v"},
    "uwsgi-version-bytes": lambda: environ(**{"uwsgi.version": b"\xff\xfe"}),
    "uwsgi-version-int": lambda: environ(**{"uwsgi.version": 2}),
    "uwsgi-version-unprintable": lambda: environ(**{"uwsgi.version": BadStr()}),
    "mod-wsgi-group-none": lambda: environ(**{"mod_wsgi.process_group": None}),
    "gunicorn-socket-odd": lambda: environ(**{"gunicorn.socket": BadStr()}),
}


@pytest.mark.parametrize("first", [True, False], ids=["first-request", "later-request"])
@pytest.mark.parametrize("kind", sorted(ODD_ENVIRONS))
def test_odd_environ_passes_through_and_the_watcher_survives(
    watched: Path, kind: str, first: bool
) -> None:
    """The app gets the identical object; the watcher still starts and still reloads."""
    app = EchoApp()
    recorder = Recorder()
    reloader, clock = make_reloader(app, watched, recorder, mode="auto")
    try:
        if not first:
            serve(reloader, environ())
        odd = ODD_ENVIRONS[kind]()
        snapshot = dict(odd)
        got, errors = serve(reloader, odd)
        assert (got, errors) == ([b"ok"], [])
        assert app.seen[-1] is odd and odd == snapshot, "the environ was changed"
        # The process still watches: a change reloads after the next response.
        force_due(reloader, watched, clock)
        serve(reloader, environ())
        assert recorder.count == 1
        # ... and this process has a watcher: a live thread, or inline scans (a uWSGI
        # version below 2.0.27 means no Python threads unless enabled).
        thread = reloader._thread  # noqa: SLF001
        assert (thread is not None and thread.is_alive()) or reloader._inline  # noqa: SLF001
    finally:
        reloader.close()


@pytest.mark.parametrize("draining", [False, True], ids=["callback", "requires_drain"])
def test_overlapping_slow_responses_cannot_postpone_a_reload_for_ever(
    watched: Path, draining: bool
) -> None:
    """A client (or plain heavy load) keeping one response always open in this process.

    Waiting for "no response in flight" then never ends. A server-graceful action fires at a
    response close once the reload has waited ``drain_timeout`` seconds; an action that
    ends the process abruptly (requires_drain) must keep waiting: killing the open response
    would be worse.
    """
    app = EchoApp()
    recorder = Recorder()
    action: Any = DrainingRecorder(recorder) if draining else recorder
    reloader, clock = make_reloader(app, watched, action)
    try:
        serve(reloader, environ())
        force_due(reloader, watched, clock)
        held = reloader(environ(), lambda *a: None)
        for _ in range(100):  # ten minutes of overlapping slow responses
            clock.now += 6.0
            newer = reloader(environ(), lambda *a: None)
            list(held)
            getattr(held, "close", lambda: None)()  # once fired, responses are not wrapped
            held = newer
        expected = 0 if draining else 1
        assert recorder.count == expected
        list(held)
        getattr(held, "close", lambda: None)()
        assert recorder.count == 1
        serve(reloader, environ())
        assert recorder.count == 1
    finally:
        reloader.close()


# -- firing after the response ------------------------------------------------------------
def test_fires_once_after_the_last_inflight_response(watched: Path, clock: FakeClock) -> None:
    recorder = Recorder()
    reloader = make(hello, watched, clock, action=recorder)
    call(reloader)
    force_due(reloader, watched, clock)
    first = reloader(environ(), lambda *a: None)
    second = reloader(environ(), lambda *a: None)
    assert list(first) == [b"hello"]
    first.close()  # type: ignore[attr-defined]
    assert recorder.calls == []  # one response still in flight
    list(second)
    assert recorder.calls == []  # fully sent is not closed yet
    second.close()  # type: ignore[attr-defined]
    assert len(recorder.calls) == 1
    second.close()  # type: ignore[attr-defined]
    assert len(recorder.calls) == 1
    assert reloader.reload_due is None
    call(reloader)
    assert len(recorder.calls) == 1  # exactly once per change set


def test_each_change_set_fires_once(watched: Path, clock: FakeClock) -> None:
    recorder = Recorder()
    reloader = make(hello, watched, clock, action=recorder)
    app = webtest.TestApp(lint(reloader))
    for n in range(1, 4):
        force_due(reloader, watched, clock)
        app.get("/")
        assert len(recorder.calls) == n


def test_reload_log_line_names_files_and_action(
    watched: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = make(hello, watched, clock, action="log-only")
    force_due(reloader, watched, clock)
    with caplog.at_level(logging.INFO, logger="wsgireload"):
        webtest.TestApp(reloader).get("/")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "1 file changed" in infos[0] and watched.name in infos[0] and "log-only" in infos[0]


class Tracked:
    """An app iterable that counts close() calls, optionally failing at a point."""

    def __init__(self, chunks: List[bytes], fail_at: int = -1, fail_close: bool = False) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.fail_close = fail_close
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("boom in iteration")
            yield chunk

    def close(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise RuntimeError("boom in close")


def tracked_app(body: Tracked) -> Any:
    def app(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    return app


@pytest.mark.parametrize("due", [False, True], ids=["steady", "due"])
def test_generator_chunks_pass_through_unbuffered(
    watched: Path, clock: FakeClock, due: bool
) -> None:
    seen: List[str] = []
    recorder = Recorder()

    def app(environ: dict, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for chunk in (b"a", b"b", b"c"):
            seen.append(f"yield {chunk!r}")
            yield chunk

    reloader = make(lint(app), watched, clock, action=recorder)
    call(reloader)
    if due:
        force_due(reloader, watched, clock)
    seen.clear()
    result = reloader(environ(), lambda *a: None)
    it = iter(result)
    assert next(it) == b"a"
    assert seen == ["yield b'a'"]  # nothing read ahead
    assert list(it) == [b"b", b"c"]
    result.close()  # type: ignore[attr-defined]
    assert len(recorder.calls) == (1 if due else 0)


def test_app_raising_before_start_response_still_fires(watched: Path, clock: FakeClock) -> None:
    recorder = Recorder()

    def app(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise ValueError("app broke")

    reloader = make(lint(app), watched, clock, action=recorder)
    force_due(reloader, watched, clock)
    with pytest.raises(ValueError, match="app broke"):
        webtest.TestApp(reloader).get("/")
    assert len(recorder.calls) == 1


@pytest.mark.parametrize(
    "body, error",
    [
        (Tracked([b"a", b"b"], fail_at=1), "boom in iteration"),
        (Tracked([b"a"], fail_close=True), "boom in close"),
    ],
    ids=["during-iteration", "in-close"],
)
def test_app_raising_after_its_call(
    watched: Path, clock: FakeClock, body: Tracked, error: str
) -> None:
    recorder = Recorder()
    reloader = make(lint(tracked_app(body)), watched, clock, action=recorder)
    force_due(reloader, watched, clock)
    with pytest.raises(RuntimeError, match=error):
        webtest.TestApp(reloader).get("/")
    assert body.closed == 1
    assert len(recorder.calls) == 1


def test_iterable_without_close(watched: Path, clock: FakeClock) -> None:
    recorder = Recorder()

    def app(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"x",)

    reloader = make(lint(app), watched, clock, action=recorder)
    force_due(reloader, watched, clock)
    assert webtest.TestApp(reloader).get("/").body == b"x"
    assert len(recorder.calls) == 1


def test_action_failure_never_reaches_the_request(
    watched: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_action(changes: ChangeSet) -> None:
        raise OSError("cannot signal")

    reloader = make(hello, watched, clock, action=broken_action)
    force_due(reloader, watched, clock)
    with caplog.at_level(logging.ERROR, logger="wsgireload"):
        assert webtest.TestApp(reloader).get("/").text == "hello"
    assert any("cannot signal" in r.getMessage() for r in caplog.records)


def test_watcher_failure_never_reaches_the_request(
    watched: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = make(hello, watched, clock, interval=1.0)

    def explode() -> List[str]:
        raise RuntimeError("scan exploded")

    reloader.detector.scan = explode  # type: ignore[method-assign]
    app = webtest.TestApp(reloader)
    with caplog.at_level(logging.ERROR, logger="wsgireload"):
        for _ in range(3):
            clock.advance(1)
            assert app.get("/").text == "hello"
    failures = [r for r in caplog.records if "scan exploded" in r.getMessage()]
    assert len(failures) == 1  # rate-limited


def test_requires_drain_counts_requests_started_before_due(
    watched: Path, clock: FakeClock
) -> None:
    recorder = Recorder()
    reloader = make(hello, watched, clock, mode="thread", action=DrainingRecorder(recorder))
    try:
        early = reloader(environ(), lambda *a: None)  # started before the change is due
        force_due(reloader, watched, clock)
        late = reloader(environ(), lambda *a: None)
        list(late)
        late.close()  # type: ignore[attr-defined]
        assert recorder.count == 0  # the early response is still in flight
        list(early)
        early.close()  # type: ignore[attr-defined]
        assert recorder.count == 1
    finally:
        reloader.close()


def test_failed_lazy_import_keeps_the_file_watched(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, watched: Path
) -> None:
    broken = tmp_path / "wr_lazy_broken.py"
    broken.write_text("def broken(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recorder = Recorder()

    def app(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        import wr_lazy_broken  # noqa: F401

        start_response("200 OK", [])
        return [b"ok"]

    reloader = make(app, watched, clock, action=recorder)
    with pytest.raises(SyntaxError):
        call(reloader)
    reloader.run_step(clock())
    assert str(broken) in reloader.detector.watched()
    broken.write_text("FIXED = True\n")
    bump(broken)
    clock.advance(1)
    changes = reloader.run_step(clock())
    assert changes is not None and str(broken) in changes.files
    sys.modules.pop("wr_lazy_broken", None)


# -- the response wrapper, property-based: every chunk the app yielded reaches the server in
# order, the inner close() runs exactly once, and a due reload runs exactly once, after the
# last counted response closed (called directly, and through WebTest with lint).
KINDS = ("list", "generator", "plain_iter", "closable", "file_wrapper")
FAULTS = ("none", "before_start", "after_start", "chunk", "close")


class Boom(Exception):
    """The app's own failure (must reach the server unchanged)."""


@dataclass
class Behaviour:
    kind: str
    chunks: List[bytes]
    fault: str
    k: int = 0  # the chunk index that raises, for fault == "chunk"

    @property
    def has_close(self) -> bool:
        return self.kind in ("generator", "closable", "file_wrapper")

    def expected_chunks(self) -> List[bytes]:
        if self.fault in ("before_start", "after_start"):
            return []
        if self.fault == "chunk":
            return self.chunks[: self.k]
        return list(self.chunks)


@st.composite
def behaviours(draw: Callable[..., Any]) -> Behaviour:
    kind = draw(st.sampled_from(KINDS))
    chunks = draw(st.lists(st.binary(min_size=0, max_size=16), max_size=6))
    faults = ["none", "before_start", "after_start"]
    if kind != "list":
        faults.append("chunk")
    if kind in ("closable", "file_wrapper"):
        faults.append("close")
    fault = draw(st.sampled_from(faults))
    k = draw(st.integers(0, len(chunks))) if fault == "chunk" else 0
    return Behaviour(kind, chunks, fault, k)


@dataclass
class Trace:
    """What one generated app did."""

    yielded: List[bytes] = field(default_factory=list)
    inner_closes: int = 0
    generator: Optional[Iterator[bytes]] = None
    events: List[str] = field(default_factory=list)


class _Closable:
    def __init__(self, body: Callable[[], Iterator[bytes]], trace: Trace, fail: bool) -> None:
        self.body, self.trace, self.fail = body, trace, fail

    def __iter__(self) -> Iterator[bytes]:
        return self.body()

    def close(self) -> None:
        self.trace.inner_closes += 1
        self.trace.events.append("inner-close")
        if self.fail:
            raise Boom("close")


class _PlainIter:  # an iterable without close()
    def __init__(self, body: Callable[[], Iterator[bytes]]) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        return self.body()


class _FileLike:
    """Read returns the next chunk; '' ends the body, as FileWrapper expects."""

    def __init__(self, b: Behaviour, trace: Trace) -> None:
        self.b, self.trace, self.i = b, trace, 0

    def read(self, size: int = -1) -> bytes:
        b = self.b
        # FileWrapper stops at an empty read, so an empty chunk cannot be sent through it.
        while self.i < len(b.chunks) and not b.chunks[self.i]:
            self.i += 1
        if b.fault == "chunk" and self.i >= b.k:
            raise Boom("read")
        if self.i >= len(b.chunks):
            return b""
        chunk = b.chunks[self.i]
        self.i += 1
        self.trace.yielded.append(chunk)
        return chunk

    def close(self) -> None:
        self.trace.inner_closes += 1
        self.trace.events.append("inner-close")
        if self.b.fault == "close":
            raise Boom("close")


def make_app(b: Behaviour, trace: Trace) -> Callable[..., Any]:
    def body() -> Iterator[bytes]:
        for i, chunk in enumerate(b.chunks):
            if b.fault == "chunk" and i == b.k:
                raise Boom(f"chunk {i}")
            trace.yielded.append(chunk)
            yield chunk
        if b.fault == "chunk" and b.k == len(b.chunks):
            raise Boom("after the last chunk")

    def app(env: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if env.get("test.warm"):  # the first request only starts the watcher
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"warm"]
        if b.fault == "before_start":
            trace.events.append("raised")
            raise Boom("before start_response")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if b.fault == "after_start":
            trace.events.append("raised")
            raise Boom("after start_response")
        if b.kind == "list":
            trace.yielded.extend(b.chunks)
            return list(b.chunks)
        if b.kind == "generator":
            gen = body()
            trace.generator = gen
            return gen
        if b.kind == "plain_iter":
            return _PlainIter(body)
        if b.kind == "closable":
            return _Closable(body, trace, b.fault == "close")
        return env["wsgi.file_wrapper"](_FileLike(b, trace), 4096)

    return app


def expected_file_chunks(b: Behaviour) -> List[bytes]:
    chunks = [c for c in b.chunks if c]
    if b.fault == "chunk":
        return [c for c in b.chunks[: b.k] if c]
    return chunks


def check_response(b: Behaviour, trace: Trace, got: List[bytes]) -> None:
    expected = expected_file_chunks(b) if b.kind == "file_wrapper" else b.expected_chunks()
    if b.fault in ("before_start", "after_start"):
        expected = []
    assert trace.yielded == expected, "the app did not behave as generated"
    assert got == trace.yielded, "chunks lost, reordered or invented on the way to the server"
    if b.fault in ("before_start", "after_start"):
        assert trace.inner_closes == 0
    elif b.kind == "generator":
        assert trace.generator is not None
        assert trace.generator.gi_frame is None, "the generator was never closed"  # type: ignore[attr-defined]
    elif b.has_close:
        assert trace.inner_closes == 1, f"inner close() ran {trace.inner_closes} times"


def expected_errors(b: Behaviour) -> List[str]:
    return {
        "none": [],
        "before_start": ["call"],
        "after_start": ["call"],
        "chunk": ["iter"],
        "close": ["close"],
    }[b.fault]


@pytest.mark.parametrize("due", [False, True], ids=["steady", "reload-due"])
@given(b=behaviours())
@settings(SETTINGS, max_examples=60)
def test_direct_single_response(watched: Path, due: bool, b: Behaviour) -> None:
    """Called directly, as a server would: chunks, exceptions, close and the hook all hold."""
    trace = Trace()
    recorder = Recorder()
    reloader, clock = make_reloader(make_app(b, trace), watched, recorder)
    try:
        serve(reloader, environ(**{"test.warm": True}))  # starts the watcher
        if due:
            force_due(reloader, watched, clock)
        got, errors = serve(reloader, environ(**{"wsgi.file_wrapper": FileWrapper}))
        assert [stage for stage, _ in errors] == expected_errors(b)
        assert all(isinstance(exc, Boom) for _, exc in errors), errors
        check_response(b, trace, got)
        assert recorder.count == (1 if due else 0)
        assert reloader.reload_due is None
        # A second response never fires the same change set again.
        serve(reloader, environ(**{"wsgi.file_wrapper": FileWrapper}))
        assert recorder.count == (1 if due else 0)
    finally:
        reloader.close()


@given(b=behaviours())
@settings(SETTINGS, max_examples=60)
def test_linted_single_response(watched: Path, b: Behaviour) -> None:
    """Through WebTest with lint around the inner app and the Reloader: PEP 3333 holds."""
    trace = Trace()
    recorder = Recorder()
    inner = webtest.lint.middleware(make_app(b, trace))
    reloader, clock = make_reloader(inner, watched, recorder)
    app = webtest.TestApp(reloader, extra_environ={"wsgi.file_wrapper": FileWrapper})
    try:
        app.get("/", extra_environ={"test.warm": True})
        force_due(reloader, watched, clock)
        if b.fault == "none":
            res = app.get("/")
            assert res.body == b"".join(trace.yielded)
            check_response(b, trace, trace.yielded)
        else:
            with pytest.raises(Boom):
                app.get("/")
            if b.has_close and b.fault not in ("before_start", "after_start"):
                if b.kind == "generator":
                    assert trace.generator is not None
                    assert trace.generator.gi_frame is None  # type: ignore[attr-defined]
                else:
                    assert trace.inner_closes == 1
        assert recorder.count == 1
    finally:
        reloader.close()


@pytest.mark.parametrize("draining", [False, True], ids=["callback", "requires_drain"])
@given(
    bs=st.lists(behaviours(), min_size=1, max_size=6),
    early=st.integers(0, 6),
    data=st.data(),
)
@settings(SETTINGS, max_examples=60)
def test_concurrent_responses_fire_once_after_the_last_close(
    watched: Path, draining: bool, bs: List[Behaviour], early: int, data: st.DataObject
) -> None:
    """Responses closed from threads at once: one action, after every counted response closed.

    The first ``early`` responses start before the reload is due. A requires_drain action
    waits for them too; a plain callback waits for those started after the reload became due.
    """
    early = min(early, len(bs))
    traces = [Trace() for _ in bs]
    entered_close = [False] * len(bs)
    begun = [False] * len(bs)
    lock = threading.Lock()
    seen_at_fire: List[List[bool]] = []
    inner_closed_at_fire: List[List[int]] = []

    def on_call(changes: Any) -> None:
        with lock:
            # A response is "open" when it started and has neither raised nor been closed.
            seen_at_fire.append(
                [
                    not began or done or "raised" in t.events
                    for began, done, t in zip(begun, entered_close, traces)
                ]
            )
            inner_closed_at_fire.append(
                [t.inner_closes if began else 1 for began, t in zip(begun, traces)]
            )

    recorder = Recorder(on_call)
    action: Any = DrainingRecorder(recorder) if draining else recorder
    apps = [make_app(b, t) for b, t in zip(bs, traces)]

    def router(env: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return apps[env["test.index"]](env, start_response)

    reloader, clock = make_reloader(router, watched, action)
    try:
        # Start the watcher with a harmless first request.
        warm = Behaviour("list", [b"x"], "none")
        apps.append(make_app(warm, Trace()))
        serve(reloader, environ(**{"test.index": len(bs)}))
        started: List[Any] = []
        results: Dict[int, Any] = {}
        for i in range(len(bs)):
            if i == early:
                force_due(reloader, watched, clock)
            env = environ(**{"test.index": i, "wsgi.file_wrapper": FileWrapper})
            begun[i] = True
            try:
                results[i] = reloader(env, lambda *a: lambda s: None)
            except Boom:
                pass  # the app raised: nothing left to close
            started.append(i)
        if early == len(bs):
            force_due(reloader, watched, clock)
        order = data.draw(st.permutations(sorted(results)))
        barrier = threading.Barrier(len(order) + 1)
        failures: List[BaseException] = []

        def finish(i: int) -> None:
            barrier.wait(timeout=10)
            result = results[i]
            try:
                try:
                    for _chunk in result:
                        pass
                except Boom:
                    pass
            finally:
                with lock:
                    entered_close[i] = True
                try:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                except Boom:
                    pass
                except BaseException as exc:  # pragma: no cover - a real failure
                    failures.append(exc)

        threads = [threading.Thread(target=finish, args=(i,)) for i in order]
        for thread in threads:
            thread.start()
        barrier.wait(timeout=10)
        for thread in threads:
            thread.join(timeout=10)
            assert not thread.is_alive(), "a response close() deadlocked"
        assert not failures
        counted = range(len(bs)) if draining else range(early, len(bs))
        open_at_due = draining and any(i in results for i in range(early))
        if early == len(bs) and not open_at_due:
            # Due when no counted response was open: the next response to close fires it.
            assert recorder.count == 0
            serve(reloader, environ(**{"test.index": len(bs)}))
            assert recorder.count == 1
            return
        assert recorder.count == 1, f"the action ran {recorder.count} times"
        snapshot = seen_at_fire[0]
        assert all(snapshot[i] for i in counted), "fired while a counted response was open"
        for i in counted:
            b = bs[i]
            if (
                b.has_close
                and b.kind != "generator"
                and b.fault not in ("before_start", "after_start")
            ):
                assert inner_closed_at_fire[0][i] == 1, "fired before the inner close() ran"
        for i, b in enumerate(bs):
            if b.has_close and b.kind != "generator" and i in results:
                assert traces[i].inner_closes == 1
    finally:
        reloader.close()


def test_file_wrapper_passes_through_untouched_when_no_reload_is_due(watched: Path) -> None:
    """The common case keeps the server's sendfile path: the app's own object is returned."""
    recorder = Recorder()
    sentinel = FileWrapper(_FileLike(Behaviour("file_wrapper", [b"a"], "none"), Trace()))

    def app(env: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [])
        return sentinel

    reloader, _ = make_reloader(app, watched, recorder)
    try:
        serve(reloader, environ())  # first request starts the watcher
        assert reloader(environ(), lambda *a: None) is sentinel
        sentinel.close()
    finally:
        reloader.close()


def test_no_unraisable_exceptions_from_wrapper(watched: Path) -> None:
    """A wrapper dropped after close() leaves nothing for the garbage collector to report."""
    unraisable: List[Any] = []
    old = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        trace = Trace()
        recorder = Recorder()
        serve_a_reload(
            webtest.lint.middleware(make_app(Behaviour("closable", [b"a", b"b"], "none"), trace)),
            watched,
            recorder,
        )
        gc.collect()
    finally:
        sys.unraisablehook = old
    assert not unraisable
    assert recorder.count == 1


def test_action_that_serves_a_request_itself_neither_deadlocks_nor_fires_twice(
    watched: Path,
) -> None:
    """The action runs outside the Reloader's lock: re-entering the app from it is safe."""
    recorder = Recorder()
    nested: List[Any] = []

    def ok(env: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    def action(changes: Any) -> None:
        nested.append(serve(reloader, environ()))
        recorder(changes)

    reloader, clock = make_reloader(ok, watched, action)
    try:
        serve(reloader, environ())
        force_due(reloader, watched, clock)
        worker = threading.Thread(target=serve, args=(reloader, environ()), daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "deadlock: the action re-entered the Reloader"
        assert recorder.count == 1 and nested == [([b"ok"], [])]
        serve(reloader, environ())
        assert recorder.count == 1
    finally:
        reloader.close()


@given(
    bs=st.lists(behaviours().filter(lambda b: b.fault == "none"), min_size=2, max_size=8),
    due_after=st.integers(0, 8),
)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_linted_concurrent_requests_through_webtest(
    watched: Path, bs: List[Behaviour], due_after: int
) -> None:
    """Threads hammering WebTest (lint inside and outside) while a reload becomes due."""
    traces = [Trace() for _ in bs]
    apps = [webtest.lint.middleware(make_app(b, t)) for b, t in zip(bs, traces)]

    def router(env: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return apps[int(env["PATH_INFO"].strip("/"))](env, start_response)

    recorder = Recorder()
    reloader, clock = make_reloader(router, watched, recorder)
    app = webtest.TestApp(reloader, extra_environ={"wsgi.file_wrapper": FileWrapper})
    bodies: Dict[int, bytes] = {}
    failures: List[BaseException] = []
    barrier = threading.Barrier(len(bs))

    def hit(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            bodies[i] = app.get(f"/{i}").body
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    try:
        app.get("/0")  # starts the watcher
        for t in traces:
            t.__init__()  # type: ignore[misc]
        threads = [threading.Thread(target=hit, args=(i,)) for i in range(len(bs))]
        for n, thread in enumerate(threads):
            if n == min(due_after, len(bs) - 1):
                force_due(reloader, watched, clock)
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
            assert not thread.is_alive()
        assert failures == []
        for i, b in enumerate(bs):
            expected = (
                b"".join(c for c in b.chunks)
                if b.kind != "file_wrapper"
                else b"".join(expected_file_chunks(b))
            )
            assert bodies[i] == expected
        assert recorder.count == 1
    finally:
        reloader.close()


# -- fork ----------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_its_own_watcher(watched: Path, clock: FakeClock) -> None:
    reloader = make(hello, watched, clock, mode="thread", interval=0.05)
    try:
        call(reloader)
        parent_thread = reloader._thread
        assert parent_thread is not None and parent_thread.is_alive()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                before = reloader._thread is None and reloader._pid is None
                call(reloader)
                thread = reloader._thread
                ok = (
                    before
                    and thread is not None
                    and thread is not parent_thread
                    and thread.is_alive()
                    and reloader._pid == os.getpid()
                )
                os.write(write_fd, b"ok" if ok else b"bad")
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            answer = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert answer == b"ok"
        assert reloader._thread is parent_thread  # the parent is untouched
    finally:
        reloader.close()


def test_module_edited_then_imported_lazily_after_creation_is_a_change(
    watched: Path, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gap the Django example hit: views imported at the first request, edited before."""
    recorder = Recorder()
    reloader = make(hello, watched, clock, action=recorder)
    lazy = tmp_path / "wr_lazy_views.py"
    lazy.write_text("VALUE = 2\n")  # the deploy lands after the Reloader was created...
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("wr_lazy_views")  # ...and the module is first imported after it
    try:
        clock.advance(10)
        changes = reloader.run_step(clock())
        assert changes is not None and str(lazy) in changes.files
    finally:
        sys.modules.pop("wr_lazy_views", None)


# -- acting without waiting for traffic ------------------------------------------------------
def test_a_due_reload_with_nothing_in_flight_acts_from_the_watcher_tick(watched: Path) -> None:
    action = ServerReload(Recorder())
    reloader, clock = make_reloader(hello, watched, action)
    try:
        serve(reloader, environ())  # the first request starts this process's watcher
        touch(watched)
        clock.now += 1.0
        reloader._tick()  # what the watcher thread does every interval
        assert len(action.recorder.calls) == 1 and reloader.reload_due is None
    finally:
        reloader.close()


def test_a_due_reload_with_a_response_in_flight_waits_for_its_close(watched: Path) -> None:
    action = ServerReload(Recorder())
    reloader, clock = make_reloader(hello, watched, action)
    try:
        list(reloader(environ(), lambda *a: None))  # start the watcher
        touch(watched)
        clock.now += 1.0
        reloader.run_step(clock.now)  # due: responses from now on are counted
        body = reloader(environ(), lambda *a: None)
        reloader._tick()
        assert action.recorder.calls == []  # a response is open
        list(body)
        body.close()  # type: ignore[attr-defined]
        assert len(action.recorder.calls) == 1
    finally:
        reloader.close()


def test_a_callback_runs_only_after_a_response_closes(watched: Path) -> None:
    calls: List[ChangeSet] = []
    reloader, clock = make_reloader(hello, watched, calls.append)
    try:
        serve(reloader, environ())
        touch(watched)
        clock.now += 1.0
        reloader._tick()
        assert calls == [] and reloader.reload_due is not None
        serve(reloader, environ())
        assert len(calls) == 1
    finally:
        reloader.close()


# -- resource hygiene: no thread, file descriptor, temp file or warning outlives a Reloader;
# close() is idempotent, and a Reloader dropped without close() stops too.
def open_fds() -> List[str]:
    try:
        return sorted(os.listdir("/proc/self/fd"))
    except FileNotFoundError:  # pragma: no cover - not Linux
        pytest.skip("needs /proc/self/fd")


def lifecycle(watched: Path) -> None:
    """Create, serve, reload (with compile validation of a changed module), close."""
    module = watched.with_name("watched_module.py")
    module.write_text("x = 1\n")
    recorder = Recorder()
    reloader, clock = make_reloader(hello, module, recorder, validate="compile")
    serve(reloader, environ())
    module.write_text("x = 2\n")
    force_due(reloader, module, clock)
    serve(reloader, environ())
    assert recorder.count == 1
    reloader.close()


def test_close_leaves_no_thread(watched: Path) -> None:
    before = set(threading.enumerate())
    lifecycle(watched)
    assert set(threading.enumerate()) == before
    assert not watcher_threads()


def test_close_is_idempotent_and_safe_in_any_state(watched: Path) -> None:
    never_used = Reloader(hello, action=Recorder())
    never_used.close()
    never_used.close()
    reloader, _ = make_reloader(hello, watched, Recorder())
    serve(reloader, environ())
    assert len(watcher_threads()) == 1
    reloader.close()
    reloader.close()
    assert not watcher_threads()
    # Requests after close() still work, and start nothing.
    assert serve(reloader, environ()) == ([b"hello"], [])
    assert not watcher_threads()
    reloader.close()


def test_no_action_after_close(watched: Path) -> None:
    """A closed Reloader never acts, even for a reload that was due while responses ran."""
    recorder = Recorder()
    reloader, clock = make_reloader(hello, watched, recorder)
    serve(reloader, environ())
    force_due(reloader, watched, clock)
    result = reloader(environ(), lambda *a: None)  # a response in flight
    reloader.close()
    list(result)
    result.close()  # type: ignore[attr-defined]
    assert recorder.count == 0


class CloseFirst:
    """A lock stand-in that lets another thread call close() before it is first taken."""

    def __init__(self, reloader: Reloader, at: int) -> None:
        self.reloader, self.at, self.n = reloader, at, 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        self.n += 1
        if self.n == self.at:
            closer = threading.Thread(target=self.reloader.close)
            closer.start()
            closer.join(5)
        self.lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


@pytest.mark.parametrize("where", ["before-setup", "during-setup"])
def test_close_racing_the_first_request_leaves_no_thread(watched: Path, where: str) -> None:
    """close() from another thread while the first request sets the process up."""
    reloader, _ = make_reloader(hello, watched, Recorder())
    if where == "before-setup":
        # The request passed the closed check; close() lands before the process state is made.
        reloader._lock = CloseFirst(reloader, at=1)  # type: ignore[assignment]  # noqa: SLF001
    else:
        real_setup = reloader.action.setup

        def setup_then_close(context: Any) -> None:
            real_setup(context)
            closer = threading.Thread(target=reloader.close)
            closer.start()
            closer.join(5)

        reloader.action.setup = setup_then_close  # type: ignore[method-assign]
    assert serve(reloader, environ()) == ([b"hello"], [])
    deadline = time.monotonic() + 5
    while watcher_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watcher_threads(), "a watcher started after close()"


def test_discarded_reloader_stops_its_thread_and_is_freed(watched: Path) -> None:
    """Dropping the last reference without close() ends the watcher (no leak per Reloader)."""
    reloader, _ = make_reloader(hello, watched, Recorder())
    serve(reloader, environ())
    (thread,) = watcher_threads()
    ref = weakref.ref(reloader)
    del reloader
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the watcher of a discarded Reloader kept running"
    assert ref() is None, "the watcher kept the discarded Reloader alive"


def test_no_file_descriptor_or_temp_file_left(
    watched: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    lifecycle(watched)  # warm caches (imports, logging) before counting
    gc.collect()
    before = open_fds()
    for _ in range(3):
        lifecycle(watched)
    gc.collect()
    assert open_fds() == before
    assert list(private_tmp.iterdir()) == []


def test_no_resource_warning(watched: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lifecycle(watched)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- concurrency: 32 client threads against a wsgiref ThreadingMixIn server in this process
# (loopback, every wait bounded) while files keep changing, so the action's calls can be
# counted directly: exactly one per settled change set, no failed request.
class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class Guard:
    """Outermost layer: records any exception the Reloader lets out (there must be none)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.errors: List[BaseException] = []

    def __call__(self, env: Any, start_response: Any) -> Iterator[bytes]:
        try:
            result = self.app(env, start_response)
        except BaseException as exc:
            self.errors.append(exc)
            raise
        try:
            yield from result
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException as exc:
                    self.errors.append(exc)
                    raise


def path_app(env: Any, start_response: Any) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok ", env.get("PATH_INFO", "").encode("latin-1")]


class Writer:
    """Rewrites files continuously (valid and broken code, new files) for ``seconds``."""

    def __init__(self, root: Path, seconds: float, tag: str) -> None:
        self.root, self.seconds, self.tag = root, seconds, tag
        self.touched: Set[str] = set()
        self.times: List[float] = []  # when each write happened
        self.thread = threading.Thread(target=self.run, daemon=True)

    def pauses(self, longer_than: float) -> int:
        """Pauses between two writes longer than this: with 64 threads on the GIL, a starved
        writer can pause longer than the settle time, and a deploy that pauses that long is
        two change sets."""
        return sum(b - a > longer_than for a, b in zip(self.times, self.times[1:]))

    def run(self) -> None:
        rng = random.Random(self.tag)
        deadline = time.monotonic() + self.seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            kind = rng.random()
            if kind < 0.4:
                path = self.root / f"mod{rng.randrange(10)}.py"
                # Half-written code on the way; the end state below is always valid.
                text = f"x = {n}\n" if rng.random() < 0.8 else "def broken(:\n"
            elif kind < 0.9:
                path = self.root / f"conf{rng.randrange(10)}.cfg"
                text = f"n={n}\n"
            else:
                path = self.root / f"new-{self.tag}-{n}.cfg"
                text = "new\n"
            path.write_text(text)
            self.times.append(time.monotonic())
            self.touched.add(str(path))
            time.sleep(0.005)
        for i in range(10):  # the deploy ends with valid code everywhere
            path = self.root / f"mod{i}.py"
            path.write_text(f"x = 'final {self.tag}'\n")
            self.times.append(time.monotonic())
            self.touched.add(str(path))


@pytest.mark.server
def test_32_threads_while_files_change_one_action_per_settled_change_set(
    tmp_path: Path, caplog: Any
) -> None:
    root = tmp_path / "code"
    root.mkdir()
    for i in range(10):
        (root / f"mod{i}.py").write_text("x = 0\n")
        (root / f"conf{i}.cfg").write_text("n=0\n")
    recorder = Recorder()
    reloader = Reloader(
        path_app,
        extra_files=[str(root / "*.py"), str(root / "*.cfg")],
        interval=0.05,
        settle=0.8,  # a writer pausing this long under load would split a burst in two
        settle_max=20.0,
        validate="compile",
        action=recorder,
        mode="thread",
    )
    due: List[ChangeSet] = []
    real_run_step = reloader.run_step

    def recording_run_step(now: float) -> Optional[ChangeSet]:
        changes = real_run_step(now)
        if changes is not None:
            due.append(changes)
        return changes

    reloader.run_step = recording_run_step  # type: ignore[method-assign]
    guard = Guard(reloader)
    caplog.set_level(logging.WARNING, logger="wsgireload")
    server = make_server(
        "127.0.0.1", 0, guard, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    port = server.server_address[1]
    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    serving.start()
    t_start = time.monotonic()
    try:
        with Load(port, threads=32, path="/load", max_seconds=40, pause=0.001) as load:
            assert wait_for(lambda: load.result.ok > 32, 10), "the server never answered"
            bursts = []  # (files touched, the actions it caused)
            for n, seconds in enumerate((2.5, 1.5)):
                before = recorder.count
                writer = Writer(root, seconds, tag=str(n))
                writer.thread.start()
                writer.thread.join(timeout=seconds + 10)
                assert not writer.thread.is_alive()
                assert wait_for(lambda b=before: recorder.count > b, 15), (
                    f"burst {n}: no action within 15 s (due: {len(due)})"
                )
                # Quiet for a while: nothing more may fire for this burst.
                time.sleep(reloader.policy.settle + 0.3)
                fired = recorder.count - before
                # One action per burst, or one more per pause of the writer near the settle
                # time (half of it: scans see writes late by up to an interval, or more when
                # starved themselves).
                allowed = 1 + writer.pauses(reloader.policy.settle / 2)
                assert fired <= allowed, f"burst {n} fired {fired} times ({allowed} allowed)"
                bursts.append((writer.touched, list(range(before, recorder.count))))
            result = load.stop()
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)
        reloader.close()
    elapsed = time.monotonic() - t_start
    assert not serving.is_alive(), "the server did not stop (deadlock?)"
    assert result.failed == 0, result.errors[:5]
    assert guard.errors == []
    assert [c.fingerprint for c in recorder.calls] == [c.fingerprint for c in due]
    assert len(due) == sum(len(actions) for _, actions in bursts)
    for touched, actions in bursts:  # every file a burst touched is in one of its actions
        files = {path for i in actions for path in due[i].files}
        assert touched <= files, sorted(touched - files)[:5]
    assert "watcher failed" not in caplog.text
    assert "reload action" not in caplog.text
    assert elapsed < 45
    print(f"\n{result.ok} requests, 0 failed, 2 bursts -> {len(due)} actions in {elapsed:.1f}s")


def test_inline_mode_on_a_threaded_server_reports_each_change_once(
    tmp_path: Path, caplog: Any
) -> None:
    """mode='inline' under 16 request threads: scans must not overlap.

    Two overlapping scans both saw the same new file; the second reported it again after the
    first change set had fired, so one change caused two actions.
    """
    root = tmp_path / "conf"
    root.mkdir()
    for i in range(200):
        (root / f"f{i}.cfg").write_text("x")
    recorder = Recorder()
    reloader = Reloader(
        path_app,
        extra_files=[str(root / "*.cfg")],
        interval=0.0005,
        settle=0,
        settle_max=0,
        action=recorder,
        mode="inline",
        validate=None,
    )
    caplog.set_level(logging.ERROR, logger="wsgireload")
    stop = time.monotonic() + 2.0
    failures: List[Any] = []

    def requests() -> None:
        while time.monotonic() < stop:
            got, errors = serve(reloader, environ())
            if errors:
                failures.append(errors)

    def writer() -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            # Atomically, as a deploy does: a file seen half-written and then complete is
            # legitimately two changes.
            tmp = root / f"new{n}.cfg.tmp"
            tmp.write_text("n")
            os.replace(tmp, root / f"new{n}.cfg")
            time.sleep(0.002)

    threads = [threading.Thread(target=requests) for _ in range(16)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
        assert not thread.is_alive(), "deadlock"
    try:
        for _ in range(3):  # let the last writes be seen and fired
            time.sleep(0.01)
            serve(reloader, environ())
    finally:
        reloader.close()
    reported = [f for changes in recorder.calls for f in changes.files]
    duplicates = sorted({f for f in reported if reported.count(f) > 1})
    assert failures == []
    assert duplicates == [], f"{len(duplicates)} files reported in more than one change set"
    assert {str(p) for p in root.glob("new*.cfg")} == set(reported)
    assert "watcher failed" not in caplog.text


def test_overlapping_ticks_during_a_slow_validation_fire_once(tmp_path: Path) -> None:
    """Inline mode on a threaded server with a slow validate (an import check takes seconds).

    While one request thread validated a change set, the next one past the throttle
    validated the same pending files again; both became due one after the other, so one
    change fired the action twice.
    """
    watched = tmp_path / "w.cfg"
    watched.write_text("1")
    clock = FakeClock()
    recorder = Recorder()
    reloader = Reloader(
        path_app,
        extra_files=[str(watched)],
        interval=1.0,
        settle=0,
        settle_max=0,
        action=recorder,
        clock=clock,
        mode="inline",
        validate=None,
    )
    entered, release = threading.Event(), threading.Event()
    real_validate = reloader.policy._validate  # noqa: SLF001
    calls = [0]

    def slow_validate(files: Any) -> Optional[str]:
        calls[0] += 1
        if calls[0] == 1:  # the first validation is slow, like an import check
            entered.set()
            release.wait(10)
        return real_validate(files)

    reloader.policy._validate = slow_validate  # type: ignore[method-assign]  # noqa: SLF001
    try:
        serve(reloader, environ())
        os.utime(watched, ns=(1, 2_000_000_000_000_000_000))
        clock.now += 1.0
        slow = threading.Thread(target=reloader.run_step, args=(clock.now,))
        slow.start()
        assert entered.wait(10)
        clock.now += 1.0
        reloader.run_step(clock.now)  # a second tick while the first still validates
        serve(reloader, environ())
        release.set()
        slow.join(10)
        assert not slow.is_alive()
        for _ in range(3):
            serve(reloader, environ())
        assert recorder.count == 1, f"one change fired the action {recorder.count} times"
    finally:
        release.set()
        reloader.close()
