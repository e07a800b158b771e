"""Hostile input: nothing a client sends can trigger, delay or suppress a reload or read a file.

Also: the environ reaches the app untouched (the very same object), whatever it holds.
"""

from __future__ import annotations

import builtins
import io
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Recorder, environ, force_due, make_reloader, serve

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

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


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    path = tmp_path / "watched.cfg"
    path.write_text("v1")
    return path


@given(reqs=st.lists(hostile_requests, min_size=1, max_size=5))
@SETTINGS
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
@SETTINGS
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
    from .conftest import DrainingRecorder

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
