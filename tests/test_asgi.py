"""The ASGI Reloader: its request path, the responses it counts in flight, the lifespan it
passes through (and starts watching at), and the mapping the servers layer reads."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional

import pytest

from wsgireload import servers
from wsgireload.asgi import ASGI_KEY, Reloader, asgi_environ
from wsgireload.errors import ConfigurationError
from wsgireload.servers import gunicorn

from .conftest import FakeClock, Recorder, ServerReload, force_due

Message = Dict[str, Any]
HTTP: Dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}


class App:
    """An ASGI app whose responses the test ends by hand: each call sends its start and a
    first body chunk, then waits for ``release`` before its last chunk (or raising)."""

    def __init__(self, lifespan: Optional[str] = "complete") -> None:
        self.lifespan = lifespan  # complete, failed, raise, or None: return at once
        self.release = asyncio.Event()
        self.raise_after = False
        self.lifespan_seen: List[Message] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            self.lifespan_seen.append(message)
            if self.lifespan == "raise":
                raise RuntimeError("no lifespan here")
            if self.lifespan is not None:
                await send({"type": f"lifespan.startup.{self.lifespan}", "message": "boom"})
            return
        if scope["type"] == "websocket":
            await self.release.wait()
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"he", "more_body": True})
        await self.release.wait()
        if self.raise_after:
            raise ValueError("app failed mid-response")
        await send({"type": "http.response.body", "body": b"llo"})


def make(tmp_path: Path, app: Any) -> tuple:
    """A Reloader whose watcher thread sleeps (the test ticks it) and whose reload the test
    makes due; with the recorder of its action's calls."""
    watched = tmp_path / "watched.cfg"
    watched.write_text("v1")
    clock = FakeClock()
    recorder = Recorder()
    reloader = Reloader(app, extra_files=[str(watched)], settle=0, settle_max=0, validate=None,
                        interval=3600.0, mode="thread", action=ServerReload(recorder),
                        clock=clock)
    return reloader, recorder, watched, clock


async def lifespan(reloader: Reloader) -> List[Message]:
    """Run the lifespan startup as a server does; the messages the server got."""
    sent: List[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        await reloader({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    except RuntimeError:
        pass
    return sent


async def request(reloader: Reloader, scope: Dict[str, Any] = HTTP) -> List[Message]:
    sent: List[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await reloader(dict(scope), receive, send)
    return sent


Scenario = Callable[[Reloader, Recorder, FakeClock], Awaitable[None]]


def run_with_a_reload_due(tmp_path: Path, app: App, scenario: Scenario) -> None:
    """Run a Reloader of ``app`` through its lifespan startup, make a reload due, then run
    ``scenario`` on the same event loop; the Reloader is closed after, whatever happened."""
    reloader, recorder, watched, clock = make(tmp_path, app)

    async def go() -> None:
        await lifespan(reloader)
        force_due(reloader, watched, clock)
        await scenario(reloader, recorder, clock)

    try:
        asyncio.run(go())
    finally:
        reloader.close()


def test_a_non_callable_app_and_a_smoke_path_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="app must be an ASGI callable"):
        Reloader(object())
    with pytest.raises(ConfigurationError, match="smoke is for WSGI apps only"):
        Reloader(App(), smoke="/healthz")


@pytest.mark.parametrize("outcome", ["complete", "failed", "raise", None])
def test_lifespan_passes_through_and_starts_watching_once_the_worker_can_serve(
    tmp_path: Path, outcome: Optional[str]
) -> None:
    """Started at import would mark a worker ready before its startup ran; a worker whose
    startup failed is about to exit; an app without lifespan support is served anyway."""
    app = App(lifespan=outcome)
    reloader, _, _, _ = make(tmp_path, app)
    try:
        assert reloader._pid is None  # noqa: SLF001 (nothing started at import)
        sent = asyncio.run(lifespan(reloader))
        assert app.lifespan_seen == [{"type": "lifespan.startup"}]
        assert sent == ([] if outcome in ("raise", None) else
                        [{"type": f"lifespan.startup.{outcome}", "message": "boom"}])
        started = outcome != "failed"
        assert (reloader._pid == os.getpid()) is started  # noqa: SLF001
        assert (reloader._thread is not None) is started  # noqa: SLF001
    finally:
        reloader.close()


def test_steady_requests_pass_through_untouched(tmp_path: Path) -> None:
    seen: List[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    reloader, _, _, _ = make(tmp_path, app)
    try:
        asyncio.run(lifespan(reloader))
        assert reloader._steady  # noqa: SLF001

        async def go() -> None:
            scope, receive, send = dict(HTTP), object(), object()
            await reloader(scope, receive, send)  # type: ignore[arg-type]
            assert seen[-1] == (scope, receive, send)
            assert seen[-1][2] is send

        asyncio.run(go())
    finally:
        reloader.close()


@pytest.mark.parametrize("ending", ["last body", "raise"])
def test_a_due_reload_fires_after_the_last_response_in_flight(tmp_path: Path, ending: str) -> None:
    app = App()

    async def scenario(reloader: Reloader, recorder: Recorder, clock: FakeClock) -> None:
        first = asyncio.ensure_future(request(reloader))
        second = asyncio.ensure_future(request(reloader))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        reloader._tick()  # noqa: SLF001 (the watcher thread's tick: responses in flight)
        assert recorder.count == 0  # the first chunks went out, more_body: still in flight
        app.raise_after = ending == "raise"
        app.release.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
        if ending == "last body":
            assert [m.get("body") for m in results[0]] == [None, b"he", b"llo"]
        else:
            assert all(isinstance(r, ValueError) for r in results)
        assert recorder.count == 1
        app.raise_after = False
        await request(reloader)
        assert recorder.count == 1  # once per change set

    run_with_a_reload_due(tmp_path, app, scenario)


def test_websockets_do_not_hold_a_reload(tmp_path: Path) -> None:
    app = App()

    async def scenario(reloader: Reloader, recorder: Recorder, clock: FakeClock) -> None:
        socket = asyncio.ensure_future(request(reloader, {"type": "websocket", "path": "/"}))
        await asyncio.sleep(0)
        reloader._tick()  # noqa: SLF001
        assert recorder.count == 1
        app.release.set()
        await socket

    run_with_a_reload_due(tmp_path, app, scenario)


def test_a_response_streaming_for_ever_holds_a_reload_for_drain_timeout_only(
    tmp_path: Path,
) -> None:
    app = App()

    async def scenario(reloader: Reloader, recorder: Recorder, clock: FakeClock) -> None:
        stream = asyncio.ensure_future(request(reloader))
        await asyncio.sleep(0)
        clock.advance(reloader.drain_timeout - 1)
        reloader._tick()  # noqa: SLF001
        assert recorder.count == 0
        clock.advance(1)
        reloader._tick()  # noqa: SLF001
        assert recorder.count == 1  # the server's graceful shutdown ends the stream
        app.release.set()
        await stream
        assert recorder.count == 1

    run_with_a_reload_due(tmp_path, app, scenario)


def test_without_lifespan_the_first_request_starts_watching(tmp_path: Path) -> None:
    app = App()
    app.release.set()
    reloader, _, _, _ = make(tmp_path, app)
    try:
        asyncio.run(request(reloader))
        assert reloader._pid == os.getpid()  # noqa: SLF001
        assert reloader._thread is not None  # noqa: SLF001
    finally:
        reloader.close()


def test_a_gunicorn_asgi_worker_is_recognised_as_gunicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's -k asgi and UvicornWorker are gunicorn workers: its early_environ names them."""
    scope = {"type": "lifespan"}
    assert asgi_environ(scope) == {ASGI_KEY: scope}  # this test process is no server's worker
    monkeypatch.setattr(gunicorn, "early_environ", lambda: {"gunicorn.socket": None})
    environ = asgi_environ(scope)
    assert environ[ASGI_KEY] is scope
    assert servers.detect_server(environ) == "gunicorn"
    assert servers.master_of(environ) == ("gunicorn", gunicorn.SYSTEM.parent_at_start())
    assert servers.threads_available(environ)
