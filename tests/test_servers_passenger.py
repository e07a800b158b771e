"""Passenger: recognised from its loader and environ; each app process stops accepting, a
connection already queued is still served, a new one is refused; an unknown loader warns once."""

from __future__ import annotations

import logging
import socket
import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from wsgireload import cli
from wsgireload.actions import AutoAction, detect_server, resolve
from wsgireload.policy import ChangeSet
from wsgireload.servers import passenger
from wsgireload.servers.base import Change, ProcessContext, Siblings
from wsgireload.servers.passenger import PassengerAction

from .fakes import FakeSystem

SOFTWARE = {"SERVER_SOFTWARE": "Phusion_Passenger/6.0.17"}


@pytest.fixture
def loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[types.ModuleType]:
    """Passenger's wsgi-loader.py as ``__main__``, as it is while it loads the app."""
    main = types.ModuleType("__main__")
    main.options = {"app_root": str(tmp_path), "startup_file": str(tmp_path / "passenger_wsgi.py")}
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setenv("IN_PASSENGER", "1")
    yield main


def listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    return sock


def changes() -> ChangeSet:
    return ChangeSet(("/srv/app/mod.py",), "fp", 0.0, 0.0)


def test_recognised_by_its_environ_and_loader(loader: types.ModuleType, tmp_path: Path) -> None:
    assert passenger.serves(SOFTWARE) and detect_server(SOFTWARE) == "passenger"
    assert not passenger.serves({"HTTP_SERVER_SOFTWARE": "Phusion_Passenger/6"})  # a client's
    assert passenger.early_environ() == {passenger.APP_ROOT: str(tmp_path)}
    [target] = passenger.boot_targets()
    assert (target.path, target.attr) == (str(tmp_path / "passenger_wsgi.py"), "application")
    system = FakeSystem(parent=4242)
    name, core = passenger.master_of(SOFTWARE, system)  # type: ignore[misc]
    assert core == 4242 and name.startswith("passenger.")
    loader.options = {"app_root": str(tmp_path / "other")}  # another app of the same core
    other = passenger.master_of(SOFTWARE, system)
    assert other is not None and other[0] != name


def test_not_passenger_without_its_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IN_PASSENGER", raising=False)
    assert passenger.early_environ() is None and passenger.boot_targets() == []
    assert passenger.master_of(SOFTWARE) is None


def test_auto_chooses_passenger_action(loader: types.ModuleType) -> None:
    action = AutoAction()
    action.setup(ProcessContext(5000, 5000, SOFTWARE))
    assert isinstance(action.delegate, PassengerAction) and action.per_process
    assert isinstance(resolve("passenger"), PassengerAction)


def test_stops_accepting_serves_what_is_queued_refuses_the_rest(
    loader: types.ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "app.sock"
    real = listener(path)
    loader.handler = types.SimpleNamespace(server=real)
    queued = socket.socket(socket.AF_UNIX)
    queued.connect(str(path))  # made by the core before the process stopped accepting
    action = PassengerAction(system=FakeSystem(pid=5000))
    action(changes())
    stopped = loader.handler.server
    assert stopped is not real and stopped.fileno() == real.fileno()
    late = socket.socket(socket.AF_UNIX)
    with pytest.raises(ConnectionRefusedError):  # the core retries with another process
        late.connect(str(path))
    client, _ = stopped.accept()
    assert client is not None and client.getblocking()  # served as usual
    assert stopped.accept() == (None, None)  # then the loader's loop ends
    action(changes())  # once per process
    assert loader.handler.server is stopped
    for sock in (client, queued, late, real):
        sock.close()


def test_an_unknown_loader_warns_once_and_does_nothing(
    loader: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    loader.handler = None
    action = PassengerAction(system=FakeSystem(pid=5000))
    with caplog.at_level(logging.WARNING, "wsgireload"):
        action(changes())
        action(changes())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "tmp/restart.txt" in warnings[0]
    assert not action.stopped


def test_check_on_passenger_wsgi_says_what_auto_does_under_passenger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "passenger_wsgi", raising=False)
    (tmp_path / "passenger_wsgi.py").write_text(
        "from wsgireload import Reloader\n"
        "application = Reloader(lambda environ, start_response: [])\n"
    )
    try:
        assert cli.main(["check", "passenger_wsgi"]) == 0
    finally:
        sys.modules.pop("passenger_wsgi", None)
    out = capsys.readouterr().out
    assert "here: standalone (passenger_wsgi is Passenger's startup file" in out
    assert f"under passenger: {PassengerAction.summary}" in out


class Record(Siblings):
    """The app's record as the engine shows it to an action: one dict, updated in place."""

    coordinated = True

    def __init__(self, rollout: str = "one-by-one") -> None:
        self.rollout = rollout
        self.data: Dict[str, Any] = {"generation": {"n": 1, "at": 50.0}, "workers": {}}

    def update(self, change: Change) -> Dict[str, Any]:
        self.data = change(self.data) or self.data
        return self.data

    def worker(self, system: FakeSystem, pid: int, born: float = 0.0, boot: float = 0.5) -> None:
        system.add(pid, ("python",), start=str(pid))
        self.data["workers"][str(pid)] = {"start": str(pid), "born": born, "ready": born + boot}


def process(system: FakeSystem, record: Record, pid: int) -> PassengerAction:
    action = PassengerAction(system=system)
    action.setup(ProcessContext(pid, pid, SOFTWARE, record))
    return action


def turn(system: FakeSystem, action: PassengerAction, pid: int) -> bool:
    system.pid = pid
    return action.may_stop()


def test_one_by_one_a_process_leaves_once_a_replacement_is_ready() -> None:
    system, record = FakeSystem(now=100.0), Record()
    record.worker(system, 5000)
    record.worker(system, 5001)
    first, second = process(system, record, 5000), process(system, record, 5001)
    assert turn(system, first, 5000)  # the other one stays
    assert not turn(system, second, 5001)  # nobody would be left serving
    system.now += 1.0
    assert not turn(system, second, 5001)
    record.worker(system, 5002, born=100.5)  # Passenger spawned a fresh one: it is ready
    assert turn(system, second, 5001)
    assert record.data["leaving"]["pids"] == ["5000", "5001"]


def test_one_by_one_gives_up_waiting_after_two_boots_and_alone_goes_at_once() -> None:
    system, record = FakeSystem(now=100.0), Record()
    record.worker(system, 5000, boot=1.0)
    record.worker(system, 5001, boot=1.0)
    first, second = process(system, record, 5000), process(system, record, 5001)
    assert turn(system, first, 5000)
    del system.procs[5000]  # it exited; Passenger spawns on demand only: maybe never
    system.now += 3.9
    assert not turn(system, second, 5001)
    system.now += 0.2  # 2 boots + 2 s
    assert turn(system, second, 5001)
    alone = Record()
    alone.worker(system, 6000)
    assert turn(system, process(system, alone, 6000), 6000)


def test_all_at_once_never_waits() -> None:
    system, record = FakeSystem(), Record("all-at-once")
    record.worker(system, 5000)
    record.worker(system, 5001)
    assert turn(system, process(system, record, 5000), 5000)
    assert turn(system, process(system, record, 5001), 5001)
    assert "leaving" not in record.data


def test_a_process_waits_for_its_turn_then_stops_accepting(
    loader: types.ModuleType, tmp_path: Path
) -> None:
    system, record = FakeSystem(now=100.0), Record()
    record.worker(system, 5000)
    record.worker(system, 5001)
    assert turn(system, process(system, record, 5000), 5000)  # the other one left first
    real = listener(tmp_path / "app.sock")
    loader.handler = types.SimpleNamespace(server=real)
    action, system.pid = process(system, record, 5001), 5001
    action(changes())
    action(changes())  # a newer change set while it waits: still one wait
    assert action.waiting and loader.handler.server is real and len(system.scheduled) == 1
    record.worker(system, 5002, born=100.2)  # Passenger's fresh process is ready
    delay, retry = system.scheduled.pop()
    retry()
    assert action.stopped and not action.waiting and loader.handler.server is not real
    real.close()
