"""hypercorn with a fake system and a fake stack: auto never signals (its SIGHUP stops every
worker first) and WARNs once per master; action='hypercorn' HUPs the verified supervisor;
``--workers 0`` is never signalled."""

from __future__ import annotations

import logging
import signal
import types

import pytest

from wsgireload._system import ProcessInfo
from wsgireload.actions import resolve
from wsgireload.servers import AutoAction, hypercorn
from wsgireload.servers.base import ProcessContext
from wsgireload.servers.hypercorn import HypercornAction

from .fakes import ASGI_ENVIRON, CHANGES, SITE, FakeSiblings, FakeSystem, fake_stack, refusal_log

MASTER = ProcessInfo(4242, "1000", 1001, ("/venv/bin/python3", "/venv/bin/hypercorn", "app:app"))
CONFIG = types.SimpleNamespace(application_path="app:app", workers=2)


def stack(monkeypatch: pytest.MonkeyPatch, spawned: bool = True) -> None:
    fake_stack(monkeypatch, (SITE + "hypercorn/asyncio/run.py", "_run", {}),
               (SITE + "hypercorn/asyncio/run.py", "asyncio_worker", {"config": CONFIG}),
               modules=("hypercorn",))
    parent = types.SimpleNamespace(pid=MASTER.pid) if spawned else None
    monkeypatch.setattr(hypercorn.multiprocessing, "parent_process", lambda: parent)


@pytest.fixture
def system() -> FakeSystem:
    return FakeSystem(master=MASTER)


def test_auto_never_signals_and_warns_once_per_master(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        system: FakeSystem) -> None:
    stack(monkeypatch)
    assert hypercorn.master_of(ASGI_ENVIRON, system) == ("hypercorn", MASTER.pid)
    assert [t.module for t in hypercorn.boot_targets()] == ["app"]
    siblings = FakeSiblings(system)
    with caplog.at_level(logging.WARNING, "wsgireload"):
        for pid in (5000, 5001):  # two workers, each acting once (say, a lease handed over)
            action = AutoAction()
            action.setup(ProcessContext(pid, pid, ASGI_ENVIRON, siblings))
            assert isinstance(action.delegate, HypercornAction)
            action(CHANGES)
    assert system.killed == []
    assert len(caplog.records) == 1
    assert "action='hypercorn'" in caplog.text


def test_action_hypercorn_hups_the_verified_supervisor(
        monkeypatch: pytest.MonkeyPatch, system: FakeSystem) -> None:
    stack(monkeypatch)
    action = resolve("hypercorn")
    assert isinstance(action, HypercornAction)
    action.system = system
    action.setup(ProcessContext(5000, 5000, ASGI_ENVIRON, FakeSiblings(system)))
    action(CHANGES)
    assert system.killed == [(MASTER.pid, signal.SIGHUP)]


def test_hypercorn_without_workers_is_never_signalled(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        system: FakeSystem) -> None:
    stack(monkeypatch, spawned=False)  # --workers 0: the worker runs in hypercorn's process
    assert hypercorn.serves(ASGI_ENVIRON) and hypercorn.master_of(ASGI_ENVIRON, system) is None
    action = HypercornAction(system=system)
    action.setup(ProcessContext(5000, 5000, ASGI_ENVIRON))
    assert "--workers 0" in refusal_log(action, system, caplog)
