"""granian with a fake system and a fake stack: SIGHUP to its verified supervisor once per
deploy, from a worker process it started; nothing elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import types
from typing import List, Optional, Tuple

import pytest

from wsgireload._system import ProcessInfo
from wsgireload.servers import AutoAction, granian
from wsgireload.servers.base import ProcessContext
from wsgireload.servers.granian import GranianAction

from .fakes import ASGI_ENVIRON, CHANGES, SITE, FakeSiblings, FakeSystem, fake_stack, refusal_log

MASTER = ProcessInfo(4242, "1000", 1001, ("/venv/bin/python3", "/venv/bin/granian",
                                         "--interface", "asgi", "app:app"))


def worker_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked worker keeps its supervisor's frames below its own."""
    server = types.SimpleNamespace(respawn_interval=3.5, target="app:app")
    fake_stack(monkeypatch, (SITE + "granian/server/mp.py", "_spawn_asgi_lifespan_worker", {}),
               (SITE + "granian/server/mp.py", "wrapped", {}),
               ("/usr/lib/python3.11/multiprocessing/process.py", "_bootstrap", {}),
               (SITE + "granian/server/common.py", "_spawn_workers", {"self": server}),
               modules=("granian", "granian.server.mp"))


@pytest.fixture
def system() -> FakeSystem:
    return FakeSystem(master=MASTER)


def test_auto_hups_the_verified_supervisor_once_per_deploy(
        monkeypatch: pytest.MonkeyPatch, system: FakeSystem) -> None:
    worker_stack(monkeypatch)
    assert granian.serves(ASGI_ENVIRON) and not granian.serves({})
    assert granian.master_of(ASGI_ENVIRON, system) == ("granian", MASTER.pid)
    assert [t.module for t in granian.boot_targets()] == ["app"]
    siblings = FakeSiblings(system)
    action = AutoAction()
    action.setup(ProcessContext(5000, 5000, ASGI_ENVIRON, siblings))
    assert isinstance(action.delegate, GranianAction)
    action.delegate.system = system  # (the fake machine, seen from this worker)
    action.delegate.master = system.procs[MASTER.pid]
    action(CHANGES)
    assert system.killed == [(MASTER.pid, signal.SIGHUP)]
    system.now += 1
    action(CHANGES)  # the reload it asked for replaces this worker: not twice
    assert system.killed == [(MASTER.pid, signal.SIGHUP)]


def test_a_master_that_is_not_our_parent_any_more_is_never_signalled(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        system: FakeSystem) -> None:
    worker_stack(monkeypatch)
    action = GranianAction(system=system)
    action.setup(ProcessContext(5000, 5000, ASGI_ENVIRON, FakeSiblings(system)))
    system.parent = 1  # orphaned
    assert "no longer this worker's parent" in refusal_log(action, system, caplog)


def test_a_process_granian_did_not_start_is_never_signalled(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        system: FakeSystem) -> None:
    fake_stack(monkeypatch, (SITE + "granian/server/embed.py", "serve", {}),
               modules=("granian", "granian.server.mp"))
    assert not granian.serves(ASGI_ENVIRON) and granian.boot_targets() == []
    action = GranianAction(system=system)
    action.setup(ProcessContext(5000, 5000, ASGI_ENVIRON))
    assert "not a worker of granian's supervisor" in refusal_log(action, system, caplog)


@pytest.mark.parametrize("migrates", [True, False])
def test_a_worker_stops_accepting_before_granian_sees_its_sigterm(
        monkeypatch: pytest.MonkeyPatch, migrates: bool) -> None:
    """granian's shutdown drops a connection it has just accepted: on SIGTERM the worker's own
    listening socket (SO_REUSEPORT) closes at once, granian's shutdown comes later; only where
    the kernel hands that socket's queued connections to another (tcp_migrate_req=1), else
    closing it early would reset them: granian's own handler is left alone."""
    monkeypatch.setattr(granian, "STOP_ACCEPTING_FOR", 0.0)
    monkeypatch.setattr(granian.base, "migrates", lambda: migrates)
    stopped: List[float] = []

    async def scenario() -> Tuple[bool, bool, bool]:
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as own, \
                socket.create_server(("127.0.0.1", 0)) as apps:  # the app's own: left alone
            port = own.getsockname()[1]
            spec = types.SimpleNamespace(__getstate__=lambda: ("127.0.0.1", port, 128))
            shutdown = types.SimpleNamespace(set=lambda: stopped.append(time.monotonic()))
            fake_stack(monkeypatch, (SITE + "granian/server/mp.py", "_spawn_asgi_lifespan_worker",
                                     {"loop": loop, "shutdown_event": shutdown,
                                      "sock": (spec, None)}),
                       modules=("granian", "granian.server.mp"))
            granian.accept_nothing_before_exit()
            if not migrates:
                return signal.getsignal(signal.SIGTERM) is previous, False, False
            assert signal.getsignal(signal.SIGTERM) is not previous  # (else the kill ends pytest)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(20):
                await asyncio.sleep(0)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            socket.create_connection(apps.getsockname(), timeout=5).close()
            assert not os.get_blocking(own.fileno())  # (granian's accept must never wait)
            return own.getsockname()[1] != port, bool(stopped), apps.getsockname()[1] > 0

    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert asyncio.run(scenario()) == ((True, True, True) if migrates else (True, False, False))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(stopped) == (1 if migrates else 0)


@pytest.mark.parametrize(("migrates", "trap"), [(False, True), (True, False), (None, False)])
def test_check_names_the_sysctl_that_lets_a_worker_stop_accepting_first(
        monkeypatch: pytest.MonkeyPatch, migrates: Optional[bool], trap: bool) -> None:
    monkeypatch.setattr(granian.base, "migrates", lambda: migrates)
    found = granian.traps(ASGI_ENVIRON)
    assert ("sysctl -w net.ipv4.tcp_migrate_req=1" in found.get("tcp-migrate-req", "")) == trap
