"""The Reloader middleware: request path, response wrapping, firing, modes, fork."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List

import pytest
import webtest
from webtest.lint import middleware as lint

from wsgireload import Reloader
from wsgireload.actions import Action
from wsgireload.policy import ChangeSet

from .conftest import FakeClock, bump, make_reloader, serve, touch
from .conftest import environ as full_environ


def hello(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class Recorder:
    """A callback action that records each call and whether a response was still open."""

    def __init__(self) -> None:
        self.calls: List[ChangeSet] = []

    def __call__(self, changes: ChangeSet) -> None:
        self.calls.append(changes)


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    f = tmp_path / "template.html"
    f.write_text("v1")
    return f


def make(app: Any, watched: Path, clock: FakeClock, **kw: Any) -> Reloader:
    kw.setdefault("settle", 0.0)
    kw.setdefault("mode", "inline")
    reloader = Reloader(app, extra_files=[str(watched)], clock=clock, **kw)
    return reloader


def make_due(reloader: Reloader, watched: Path, clock: FakeClock) -> None:
    bump(watched)
    clock.advance(10)
    assert reloader.run_step(clock()) is not None
    assert reloader.reload_due is not None


def environ() -> dict:
    env: dict = {}
    import wsgiref.util

    wsgiref.util.setup_testing_defaults(env)
    env.setdefault("QUERY_STRING", "")
    return env


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
    def watchers() -> List[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "wsgireload-watcher"]

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


# -- firing after the response ------------------------------------------------------------
def test_fires_once_after_the_last_inflight_response(watched: Path, clock: FakeClock) -> None:
    recorder = Recorder()
    reloader = make(hello, watched, clock, action=recorder)
    call(reloader)
    make_due(reloader, watched, clock)
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
        make_due(reloader, watched, clock)
        app.get("/")
        assert len(recorder.calls) == n


def test_reload_log_line_names_files_and_action(
    watched: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = make(hello, watched, clock, action="log-only")
    make_due(reloader, watched, clock)
    with caplog.at_level(logging.INFO, logger="wsgireload"):
        webtest.TestApp(reloader).get("/")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "1 file changed" in infos[0] and "template.html" in infos[0] and "log-only" in infos[0]


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
        make_due(reloader, watched, clock)
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
    make_due(reloader, watched, clock)
    with pytest.raises(ValueError, match="app broke"):
        webtest.TestApp(reloader).get("/")
    assert len(recorder.calls) == 1


def test_app_raising_during_iteration(watched: Path, clock: FakeClock) -> None:
    recorder = Recorder()
    body = Tracked([b"a", b"b"], fail_at=1)
    reloader = make(lint(tracked_app(body)), watched, clock, action=recorder)
    make_due(reloader, watched, clock)
    with pytest.raises(RuntimeError, match="boom in iteration"):
        webtest.TestApp(reloader).get("/")
    assert body.closed == 1
    assert len(recorder.calls) == 1


def test_app_raising_in_close(watched: Path, clock: FakeClock) -> None:
    recorder = Recorder()
    body = Tracked([b"a"], fail_close=True)
    reloader = make(lint(tracked_app(body)), watched, clock, action=recorder)
    make_due(reloader, watched, clock)
    with pytest.raises(RuntimeError, match="boom in close"):
        webtest.TestApp(reloader).get("/")
    assert body.closed == 1
    assert len(recorder.calls) == 1


def test_iterable_without_close(watched: Path, clock: FakeClock) -> None:
    recorder = Recorder()

    def app(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"x",)

    reloader = make(lint(app), watched, clock, action=recorder)
    make_due(reloader, watched, clock)
    assert webtest.TestApp(reloader).get("/").body == b"x"
    assert len(recorder.calls) == 1


def test_action_failure_never_reaches_the_request(
    watched: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_action(changes: ChangeSet) -> None:
        raise OSError("cannot signal")

    reloader = make(hello, watched, clock, action=broken_action)
    make_due(reloader, watched, clock)
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


class DrainAction(Action):
    name = "drain-test"
    requires_drain = True

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, changes: ChangeSet) -> None:
        self.calls += 1


def test_requires_drain_counts_requests_started_before_due(
    watched: Path, clock: FakeClock
) -> None:
    action = DrainAction()
    reloader = make(hello, watched, clock, mode="thread", action=action)
    try:
        early = reloader(environ(), lambda *a: None)  # started before the change is due
        make_due(reloader, watched, clock)
        late = reloader(environ(), lambda *a: None)
        list(late)
        late.close()  # type: ignore[attr-defined]
        assert action.calls == 0  # the early response is still in flight
        list(early)
        early.close()  # type: ignore[attr-defined]
        assert action.calls == 1
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
    import importlib

    importlib.import_module("wr_lazy_views")  # ...and the module is first imported after it
    try:
        clock.advance(10)
        changes = reloader.run_step(clock())
        assert changes is not None and str(lazy) in changes.files
    finally:
        sys.modules.pop("wr_lazy_views", None)


# -- acting without waiting for traffic ------------------------------------------------------
class ServerReload(Action):
    """Stands for a server's graceful reload (it lets responses in flight finish)."""

    name = "server-reload"

    def __init__(self) -> None:
        self.calls: List[ChangeSet] = []

    def __call__(self, changes: ChangeSet) -> None:
        self.calls.append(changes)


def test_a_due_reload_with_nothing_in_flight_acts_from_the_watcher_tick(watched: Path) -> None:
    action = ServerReload()
    reloader, clock = make_reloader(hello, watched, action)
    try:
        serve(reloader, full_environ())  # the first request starts this process's watcher
        touch(watched)
        clock.now += 1.0
        reloader._tick()  # what the watcher thread does every interval
        assert len(action.calls) == 1 and reloader.reload_due is None
    finally:
        reloader.close()


def test_a_due_reload_with_a_response_in_flight_waits_for_its_close(watched: Path) -> None:
    action = ServerReload()
    reloader, clock = make_reloader(hello, watched, action)
    try:
        list(reloader(full_environ(), lambda *a: None))  # start the watcher
        touch(watched)
        clock.now += 1.0
        reloader.run_step(clock.now)  # due: responses from now on are counted
        body = reloader(full_environ(), lambda *a: None)
        reloader._tick()
        assert action.calls == []  # a response is open
        list(body)
        body.close()  # type: ignore[attr-defined]
        assert len(action.calls) == 1
    finally:
        reloader.close()


def test_a_callback_runs_only_after_a_response_closes(watched: Path) -> None:
    calls: List[ChangeSet] = []
    reloader, clock = make_reloader(hello, watched, calls.append)
    try:
        serve(reloader, full_environ())
        touch(watched)
        clock.now += 1.0
        reloader._tick()
        assert calls == [] and reloader.reload_due is not None
        serve(reloader, full_environ())
        assert len(calls) == 1
    finally:
        reloader.close()
