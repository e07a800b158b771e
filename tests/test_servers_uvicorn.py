"""uvicorn with a fake system and a fake stack: SIGHUP to a verified supervisor once per
deploy; a lone uvicorn is never signalled and WARNs once with the command that can reload."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import types
from pathlib import Path
from typing import Any

import pytest

from wsgireload._system import ProcessInfo
from wsgireload.actions import REGISTRY
from wsgireload.asgi import Reloader
from wsgireload.servers import AutoAction, uvicorn
from wsgireload.servers.base import ProcessContext
from wsgireload.servers.uvicorn import UvicornAction

from .fakes import ASGI_ENVIRON, CHANGES, SITE, FakeSiblings, FakeSystem, fake_stack, refusal_log

MASTER = ProcessInfo(4242, "1000", 1001, ("/venv/bin/python3", "/venv/bin/uvicorn", "app:app",
                                         "--workers", "3"))


def config(**kw: Any) -> Any:
    return types.SimpleNamespace(app="app:app", should_reload=False, workers=3, **kw)


def supervised(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> None:
    fake_stack(monkeypatch, ("/srv/app/app.py", "app", {}),
               (SITE + "uvicorn/server.py", "run", {"self": object()}),
               (SITE + "uvicorn/supervisors/multiprocess.py", "target", {}),
               (SITE + "uvicorn/_subprocess.py", "subprocess_started", {"config": config(**kw)}),
               modules=("uvicorn",))


def lone(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_stack(monkeypatch, (SITE + "uvicorn/server.py", "run", {}),
               (SITE + "uvicorn/main.py", "run", {"config": config()}), modules=("uvicorn",))


def worker(system: FakeSystem, siblings: FakeSiblings, pid: int = 5000) -> UvicornAction:
    action = UvicornAction(system=system.worker(pid, 10.0))
    action.setup(ProcessContext(pid, pid, ASGI_ENVIRON, siblings))
    return action


@pytest.fixture
def system() -> FakeSystem:
    return FakeSystem(master=MASTER)


def test_what_the_stack_says_about_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    supervised(monkeypatch)
    assert uvicorn.role()[0] == uvicorn.SUPERVISED
    assert uvicorn.boot_targets()[0].module == "app"
    fake_stack(monkeypatch, (SITE + "uvicorn/_subprocess.py", "subprocess_started",
                             {"config": types.SimpleNamespace(should_reload=True)}),
               modules=("uvicorn",))
    assert uvicorn.role()[0] == uvicorn.RELOADER
    lone(monkeypatch)
    assert uvicorn.role()[0] == uvicorn.LONE
    # gunicorn's UvicornWorker runs uvicorn's Server under gunicorn's frames: not uvicorn's
    fake_stack(monkeypatch, (SITE + "uvicorn/server.py", "serve", {}),
               (SITE + "gunicorn/arbiter.py", "spawn_worker", {}))
    assert uvicorn.role() == (None, None)
    assert not uvicorn.serves(ASGI_ENVIRON)


def test_a_supervised_worker_hups_its_verified_master_once(
        monkeypatch: pytest.MonkeyPatch, system: FakeSystem) -> None:
    supervised(monkeypatch)
    siblings = FakeSiblings(system)
    assert uvicorn.master_of(ASGI_ENVIRON, system) == ("uvicorn", MASTER.pid)
    assert not uvicorn.serves({})  # only an ASGI gate's process
    assert not uvicorn.serves({**ASGI_ENVIRON, "gunicorn.socket": None})  # gunicorn's worker
    worker(system, siblings)(CHANGES)
    assert system.killed == [(MASTER.pid, signal.SIGHUP)]
    system.now += 1
    worker(system, siblings, pid=5001)(CHANGES)  # started before that reload: replaced by it
    assert system.killed == [(MASTER.pid, signal.SIGHUP)]


@pytest.mark.parametrize("argv", [("/venv/bin/python3", "app.py"), ("/bin/bash",)])
def test_a_master_that_is_not_uvicorn_is_never_signalled(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, system: FakeSystem,
        argv: Any) -> None:
    supervised(monkeypatch)
    system.procs[MASTER.pid] = ProcessInfo(MASTER.pid, "1000", 1001, argv)
    action = worker(system, FakeSiblings(system))
    assert "does not look like uvicorn" in refusal_log(action, system, caplog)


def test_without_a_shared_record_no_worker_signals(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        system: FakeSystem) -> None:
    supervised(monkeypatch)
    action = worker(system, FakeSiblings(system, coordinated=False))
    assert "no safe place to coordinate" in refusal_log(action, system, caplog)


def test_a_lone_uvicorn_is_never_signalled_and_warns_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        system: FakeSystem) -> None:
    lone(monkeypatch)
    monkeypatch.setattr("sys.argv", ["/venv/bin/uvicorn", "app:app", "--workers", "1",
                                     "--port", "8000"])
    action = AutoAction()
    with caplog.at_level(logging.WARNING, "wsgireload"):
        action.setup(ProcessContext(5000, 5000, ASGI_ENVIRON))
        action(CHANGES)
        action(CHANGES)
    assert isinstance(action.delegate, UvicornAction)
    assert uvicorn.master_of(ASGI_ENVIRON) is None
    assert system.killed == []
    assert len(caplog.records) == 1
    assert "`uvicorn app:app --port 8000 --workers 2`" in caplog.text
    assert "uvicorn_worker.UvicornWorker" in caplog.text
    assert action.describe() == "auto: uvicorn: nothing (no master reloads this process)"


def test_check_says_what_auto_does_under_uvicorn() -> None:
    assert "one WARNING" in REGISTRY["uvicorn"].summary  # type: ignore[attr-defined]
    assert uvicorn.lone_advice(["python", "serve.py"]).count("uvicorn <app> --workers 2") == 1


def test_a_supervised_worker_stops_accepting_before_uvicorn_sees_its_sigterm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's shutdown closes connections that sent no request yet: none may be accepted
    between the SIGTERM and that shutdown."""
    import uvicorn as _uvicorn_loaded  # noqa: F401  (in a uvicorn worker, as always)

    monkeypatch.setattr(uvicorn, "STOP_ACCEPTING_FOR", 0.0)
    accepted, exits = [], []

    class Server:  # uvicorn's Server as its SIGTERM handler shows it
        should_exit = False
        servers: Any = ()

        def handle_exit(self, sig: int, frame: Any) -> None:
            exits.append(sig)

    async def scenario() -> None:
        server = Server()
        server.servers = [await asyncio.start_server(
            lambda r, w: accepted.append(w), "127.0.0.1", 0)]
        signal.signal(signal.SIGTERM, server.handle_exit)
        uvicorn.accept_nothing_before_exit()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
        for _ in range(5):
            await asyncio.sleep(0)
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            for _ in range(20):
                await asyncio.sleep(0.001)
        server.servers[0].close()

    previous = signal.getsignal(signal.SIGTERM)
    try:
        asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exits == [signal.SIGTERM]  # uvicorn's own handler still runs
    assert accepted == []


def test_an_asgi_worker_wraps_uvicorns_sigterm_once_it_starts_watching(
        tmp_path: Path) -> None:
    """In any worker uvicorn runs (its supervisor's, gunicorn's UvicornWorker), the ASGI gate
    wraps uvicorn's SIGTERM handler as its lifespan startup completes; any other handler (another
    server's) is left alone."""
    import uvicorn as _uvicorn_loaded  # noqa: F401  (the gate looks for it in sys.modules)

    class Server:
        should_exit = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            """uvicorn's own SIGTERM handler."""

    def other_handler(sig: int, frame: Any) -> None:
        """Another server's SIGTERM handler."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})

    async def handler_after_startup(original: Any) -> bool:
        signal.signal(signal.SIGTERM, original)
        reloader = Reloader(app, extra_files=[str(tmp_path / "x.cfg")], validate=None,
                            action="log-only", interval=3600.0)
        messages = iter([{"type": "lifespan.startup"}])
        try:
            await reloader({"type": "lifespan"}, lambda: _next(messages), _ignore)
        finally:
            reloader.close()
        return bool(signal.getsignal(signal.SIGTERM) != original)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert asyncio.run(handler_after_startup(Server().handle_exit))
        assert not asyncio.run(handler_after_startup(other_handler))
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _next(messages: Any) -> Any:
    return next(messages)


async def _ignore(message: Any) -> None:
    return None
