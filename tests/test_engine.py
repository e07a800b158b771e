"""The engine shared by the workers of one master: one scanner, one validation and one line per
deploy, per-master actions once, per-process actions once in every process born before it.

Several workers are simulated in this process: each Engine gets a Share with its own fake pid.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

from wsgireload import _record
from wsgireload._options import Options
from wsgireload._record import Record, Share
from wsgireload.actions import Action
from wsgireload.engine import Engine
from wsgireload.policy import ChangeSet

from .conftest import edit
from .fakes import FakeSystem


class Recording(Action):
    name = "recording"

    def __init__(self, per_process: bool) -> None:
        self.calls: List[ChangeSet] = []
        self._per_process = per_process

    @property
    def per_process(self) -> bool:  # type: ignore[override]
        return self._per_process

    def __call__(self, changes: ChangeSet) -> None:
        self.calls.append(changes)


class Worker:
    """One simulated worker: an engine over the watched file, joined to the shared record."""

    def __init__(self, record: Record, pid: int, watched: Path, system: FakeSystem,
                 per_process: bool, born: Optional[float] = None) -> None:
        # compile only: these tests count the engine's lines (the boot check has its own tests)
        options = Options.build("test", extra_files=[str(watched.parent / "*.py")],
                                modules=False, settle=0, settle_max=0, validate="compile")
        self.action = Recording(per_process)
        self.engine = Engine(options, self.action)
        self.engine.pid = os.getpid()  # setup ran: the share below stands for joining
        self.engine._joined = True
        share = Share(record, pid, f"st{pid}", born=system.now - 100 if born is None else born,
                      lease=5.0, system=system)
        share.join()
        self.engine.share = share

    def tick(self, now: float) -> Optional[ChangeSet]:
        changes = self.engine.step(now)
        if changes is not None:
            self.engine.act(changes)
        return changes


@dataclass
class World:
    watched: Path
    record: Record
    system: FakeSystem

    def workers(self, per_process: bool, count: int = 3) -> List[Worker]:
        return [
            Worker(self.record, pid, self.watched, self.system, per_process)
            for pid in range(1, count + 1)
        ]


@pytest.fixture
def world(tmp_path: Path) -> World:
    watched = tmp_path / "mod.py"
    watched.write_text("X = 1\n")
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    record = Record(str(rundir / "gunicorn-42-7.master.json"))
    system = FakeSystem(now=1_000_000.0)
    for pid in (1, 2, 3):
        system.add(pid, start=None)
    return World(watched, record, system)


def tick(team: List[Worker], *times: float) -> None:
    """Every worker takes a step at each of ``times``, in turn."""
    for now in times:
        for worker in team:
            worker.tick(now)


def deploy(world: World, per_process: bool, text: str) -> List[Worker]:
    """Three workers that served, an edit of the watched file, and three steps of each."""
    team = world.workers(per_process=per_process)
    tick(team, 1.0)
    edit(world.watched, text)
    tick(team, 2.0, 3.0, 4.0)
    return team


def test_a_per_master_action_runs_once_and_one_line_is_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    watched, record = world.watched, world.record
    caplog.set_level(logging.DEBUG, logger="wsgireload")
    team = deploy(world, False, "X = 2\n")
    assert [len(w.action.calls) for w in team] == [1, 0, 0]
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    described = team[0].action.calls[0].describe()
    assert info == [f"wsgireload: 1 file changed ({described}); reloading with recording"]
    generation = record.read()["generation"]
    assert generation["n"] == 1 and generation["files"] == [str(watched)]


def test_a_per_process_action_runs_once_in_every_worker_born_before_it(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    watched, record, system = world.watched, world.record, world.system
    caplog.set_level(logging.DEBUG, logger="wsgireload")
    team = deploy(world, True, "X = 2\n")
    assert [len(w.action.calls) for w in team] == [1, 1, 1]
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "every other worker of master" in line
    newborn = Worker(record, 4, watched, system, per_process=True, born=system.now + 1)
    for now in (5.0, 6.0):
        newborn.tick(now)
    assert newborn.action.calls == []  # forked after the decision: it runs the new code


def test_a_broken_deploy_is_validated_and_refused_once_per_master(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    watched, record = world.watched, world.record
    caplog.set_level(logging.DEBUG, logger="wsgireload")
    team = deploy(world, False, "X = (\n")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "mod.py:1" in errors[0].getMessage()
    data = record.read()
    assert [v["verdict"] for v in data["validations"]] == ["refused"]
    assert data["last_refusal"]["where"] == f"{watched}:1"
    edit(watched, "X = 3\n")
    tick(team, 5.0, 6.0)
    assert [v["verdict"] for v in record.read()["validations"]] == ["refused", "ok"]
    assert [len(w.action.calls) for w in team] == [1, 0, 0]


def test_a_new_scanner_does_not_decide_again_what_was_decided(world: World) -> None:
    watched, record, system = world.watched, world.record, world.system
    team = world.workers(per_process=False)
    tick(team, 1.0)
    edit(watched, "X = 2\n")
    team[0].tick(2.0)  # the scanner decides; the followers never scanned
    assert len(team[0].action.calls) == 1
    del system.procs[1]  # the scanner exits (replaced by the reload)
    record.update(lambda data: {**data, "lease": {**data["lease"], "expires": 0}})
    tick(team[1:], 3.0, 4.0, 5.0)
    assert record.read()["lease"]["pid"] == 2
    assert [len(w.action.calls) for w in team] == [1, 0, 0]
    assert record.read()["generation"]["n"] == 1


def test_without_a_record_each_process_scans_and_acts_alone(tmp_path: Path) -> None:
    watched = tmp_path / "mod.py"
    watched.write_text("X = 1\n")
    action = Recording(per_process=False)
    options = Options.build(
        "test", extra_files=[str(watched)], modules=False, settle=0, settle_max=0
    )
    engine = Engine(options, action, master=("gunicorn", 1))  # not our parent: no record
    assert engine.step(1.0) is None and engine.share is None
    edit(watched, "X = 2\n")
    changes = engine.step(2.0)
    assert changes is not None and changes.files == (str(watched),)


def test_options_are_frozen_and_checked_once() -> None:
    options = Options.build("Reloader", interval=2, extra_files="a/*.html")
    assert options.extra_files == ("a/*.html",) and options.interval == 2
    with pytest.raises(AttributeError):
        options.interval = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword argument 'intervall'"):
        Options.build("Reloader", intervall=2)


def test_a_worker_that_takes_over_from_a_restarted_scanner_logs_its_own_restart_at_debug(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    team = world.workers(per_process=True)
    tick(team, 1.0)
    edit(world.watched, "X = 2\n")
    caplog.set_level(logging.DEBUG, logger="wsgireload")
    team[0].tick(2.0)  # decides and restarts itself...
    del world.system.procs[1]  # ...and is gone: the next follower takes the lease over
    tick(team[1:], 3.0, 4.0)
    assert [len(w.action.calls) for w in team] == [1, 1, 1]
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1
    assert world.record.read()["lease"]["pid"] in (2, 3)


def test_a_long_lived_follower_taking_over_does_not_decide_old_deploys_again(
    world: World,
) -> None:
    other = world.watched.parent / "other.py"
    other.write_text("Y = 1\n")
    team = world.workers(per_process=True)  # callbacks: every worker acts and lives on
    tick(team, 1.0)
    edit(world.watched, "X = 2\n")
    tick(team, 2.0)  # generation 1: mod.py
    edit(other, "Y = 2\n")
    tick(team, 3.0)  # generation 2: other.py
    assert [len(w.action.calls) for w in team] == [2, 2, 2]
    del world.system.procs[1]
    world.record.update(lambda data: {**data, "lease": {**data["lease"], "expires": 0}})
    tick(team[1:], 4.0, 5.0, 6.0)
    assert [len(w.action.calls) for w in team] == [2, 2, 2]
    assert world.record.read()["generation"]["n"] == 2


def test_a_follower_with_a_reload_still_due_keeps_the_next_generation_for_later(
    world: World,
) -> None:
    team = world.workers(per_process=True)
    tick(team, 1.0)
    edit(world.watched, "X = 2\n")
    team[0].tick(2.0)
    follower = team[1].engine
    assert follower.step(3.0, decide=False) is None  # its owner has not acted on one yet
    changes = follower.step(4.0)
    assert changes is not None and changes.files == (str(world.watched),)


@pytest.mark.parametrize("per_process, follower_pause", [(False, 60.0), (True, 0.5)])
def test_followers_of_a_per_master_action_wake_rarely(
    world: World, per_process: bool, follower_pause: float
) -> None:
    scanner, follower = world.workers(per_process=per_process, count=2)
    scanner.tick(1.0)
    follower.tick(1.0)
    assert scanner.engine.pause(0.5) == 0.5  # it scans every interval
    assert follower.engine.pause(0.5) == follower_pause  # a per-master follower: FOLLOW_EVERY


def test_with_no_writable_place_for_the_record_a_worker_scans_and_acts_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched = tmp_path / "mod.py"
    watched.write_text("X = 1\n")
    blocker = tmp_path / "read-only"
    blocker.write_text("")  # a file where the runtime directory would go
    monkeypatch.setattr(_record, "default_runtime_dir", lambda: str(blocker / "run"))
    action = Recording(per_process=False)
    options = Options.build(
        "test", extra_files=[str(watched)], modules=False, settle=0, settle_max=0
    )
    engine = Engine(options, action, master=("gunicorn", os.getppid()))
    assert engine.step(1.0) is None and engine.share is None
    edit(watched, "X = 2\n")
    changes = engine.step(2.0)
    assert changes is not None and engine.act(changes) is None and len(action.calls) == 1


class FallsBack(Recording):
    """A per-master action that finds the master out of reach when it acts (EPERM on the
    HUP), falls back to restarting each worker and says so to the engine."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(per_process=False)
        self.engine = engine

    def __call__(self, changes: ChangeSet) -> None:
        super().__call__(changes)
        if not self._per_process:
            self._per_process = True
            self.engine.siblings.restart_each_worker()


def test_an_action_that_falls_back_to_per_process_while_acting_reaches_every_worker(
    world: World,
) -> None:
    team = world.workers(per_process=False)
    for worker in team:
        worker.action = FallsBack(worker.engine)
        worker.engine.action = worker.action
    tick(team, 1.0)
    edit(world.watched, "X = 2\n")
    tick(team, 2.0, 3.0, 4.0)
    assert [len(w.action.calls) for w in team] == [1, 1, 1]  # each worker once
    generation = world.record.read()["generation"]
    assert generation["n"] == 2 and generation["per_process"]
    tick(team, 5.0, 6.0)
    assert [len(w.action.calls) for w in team] == [1, 1, 1]
