"""Property-based attacks on the response wrapper: generated app behaviours, direct and linted.

Invariants: every chunk the app yielded reaches the server in order, the inner close() runs
exactly once, and a due reload runs exactly once, after the last counted response closed.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional
from wsgiref.util import FileWrapper

import pytest
import webtest
import webtest.lint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import (
    DrainingRecorder,
    Recorder,
    environ,
    force_due,
    make_reloader,
    serve,
)

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

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


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    path = tmp_path / "watched.cfg"
    path.write_text("v1")
    return path


@pytest.mark.parametrize("due", [False, True], ids=["steady", "reload-due"])
@given(b=behaviours())
@SETTINGS
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
@SETTINGS
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
@SETTINGS
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
        reloader, clock = make_reloader(
            webtest.lint.middleware(make_app(Behaviour("closable", [b"a", b"b"], "none"), trace)),
            watched,
            recorder,
        )
        try:
            serve(reloader, environ())
            force_due(reloader, watched, clock)
            serve(reloader, environ())
        finally:
            reloader.close()
        import gc

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
