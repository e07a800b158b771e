"""The uWSGI helper: one timer per master or lazy worker, a taken signal refused.

uWSGI's module exists only inside uWSGI, so a recording fake stands in for the registration
rules here; tests/servers/test_contrib_servers.py runs the real thing.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from wsgireload.errors import ConfigurationError
from wsgireload.watcher import Watcher


class FakeUwsgi(types.ModuleType):
    """Records register_signal/add_timer calls; one signal table slot per worker id."""

    def __init__(
        self, worker_id: int, taken: Tuple[int, ...] = (), version: bytes = b"2.0.20"
    ) -> None:
        super().__init__("uwsgi")
        self.wid = worker_id
        self.taken = set(taken)
        self.calls: List[Tuple[str, Any]] = []
        self.version = version  # before 2.0.27: no Python threads without --enable-threads
        self.opt: Dict[str, Any] = {}

    def masterpid(self) -> int:
        return 4242

    def worker_id(self) -> int:
        return self.wid

    def signal_registered(self, signum: int) -> bool:
        return signum in self.taken

    def register_signal(self, signum: int, target: str, handler: Any) -> None:
        self.taken.add(signum)
        self.calls.append(("register_signal", (signum, target)))

    def add_timer(self, signum: int, seconds: int) -> None:
        self.calls.append(("add_timer", (signum, seconds)))


@pytest.fixture
def fake_uwsgi(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from wsgireload.contrib import uwsgi as helper

    def install(worker_id: int, taken: Tuple[int, ...] = (), **kw: Any) -> FakeUwsgi:
        fake = FakeUwsgi(worker_id, taken, **kw)
        monkeypatch.setitem(sys.modules, "uwsgi", fake)
        helper._reset()
        return fake

    yield install
    helper._reset()


def register(**kw: Any) -> Watcher:
    from wsgireload.contrib.uwsgi import register as reg

    kw.setdefault("modules", False)
    kw.setdefault("action", lambda changes: None)
    return reg(**kw)


def test_uwsgi_master_registers_one_timer(fake_uwsgi: Any) -> None:
    fake = fake_uwsgi(0)
    first = register()
    assert register() is first  # a second import in the same process
    assert fake.calls == [("register_signal", (120, "workers")), ("add_timer", (120, 1))]


def test_uwsgi_lazy_worker_one_adds_the_timer(fake_uwsgi: Any) -> None:
    fake = fake_uwsgi(1)
    register(target="worker", signum=7, interval=2)
    assert fake.calls == [("register_signal", (7, "worker")), ("add_timer", (7, 2))]


def test_uwsgi_lazy_other_workers_only_register(fake_uwsgi: Any) -> None:
    fake = fake_uwsgi(2)
    watcher = register()
    assert fake.calls == [("register_signal", (120, "workers"))]
    assert watcher.engine.master is None  # ticked one at a time: each scans for itself


@pytest.mark.parametrize("version, opt", [(b"2.0.31", {}), (b"2.0.20", {"enable-threads": True})])
def test_uwsgi_lazy_worker_with_threads_watches_from_a_thread(
    fake_uwsgi: Any, version: bytes, opt: Dict[str, Any]
) -> None:
    # uWSGI's master routes a lazy app's timer to one worker per tick: a thread reaches each.
    fake = fake_uwsgi(2, version=version)
    fake.opt.update(opt)
    watcher = register()
    try:
        assert fake.calls == []  # no signal, no timer
        assert watcher._thread is not None and watcher._thread.is_alive()
        assert watcher.engine.master == ("uwsgi", 4242)  # the workers share one scanner
        assert register() is watcher
    finally:
        watcher.stop()


def test_uwsgi_master_with_threads_still_uses_the_timer(fake_uwsgi: Any) -> None:
    fake = fake_uwsgi(0, version=b"2.0.31")
    watcher = register()
    assert fake.calls == [("register_signal", (120, "workers")), ("add_timer", (120, 1))]
    assert watcher._thread is None
    assert watcher.engine.master == ("uwsgi", 4242)


def test_uwsgi_recreated_worker_reregisters_without_a_timer(fake_uwsgi: Any) -> None:
    fake = fake_uwsgi(1, taken=(120,))  # its predecessor's handler is in the slot
    register()
    assert fake.calls == [("register_signal", (120, "workers"))]


def test_uwsgi_master_refuses_a_taken_signal(fake_uwsgi: Any) -> None:
    fake_uwsgi(0, taken=(120,))
    with pytest.raises(ConfigurationError, match="signal 120 is already registered"):
        register()


@pytest.mark.parametrize(
    "kw, message",
    [({"interval": 0.5}, "whole number"), ({"target": "mule"}, "target"),
     ({"signum": 300}, "signum")],
)
def test_uwsgi_bad_options(fake_uwsgi: Any, kw: Dict[str, Any], message: str) -> None:
    fake_uwsgi(0)
    with pytest.raises(ConfigurationError, match=message):
        register(**kw)


def test_uwsgi_handler_steps_the_watcher(fake_uwsgi: Any, tmp_path: Path) -> None:
    from wsgireload.contrib import uwsgi as helper

    fake_uwsgi(0)
    watcher = register()
    steps: List[Any] = []
    watcher.step = lambda now=None: steps.append(now)  # type: ignore[method-assign]
    assert helper._registration is not None
    helper._registration(120)
    assert len(steps) == 1


