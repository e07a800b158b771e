"""The per-master record: atomic and lock-guarded, torn files read as empty, dead masters
cleaned, and the scanner lease that passes on when its holder exits or lets it expire."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import pytest

from wsgireload import _record
from wsgireload._record import Record, Share, forget_dead, open_record, read_all, where


class Wall:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Alive:
    """Which fake (pid, start) processes run."""

    def __init__(self, *pids: int) -> None:
        self.pids = set(pids)

    def __call__(self, pid: int, start: Optional[str]) -> bool:
        return pid in self.pids


def share(record: Record, pid: int, wall: Wall, alive: Alive, born: float = 0.0) -> Share:
    member = Share(record, pid, f"st{pid}", born=born, lease=5.0, wall=wall, alive=alive)
    member.join()
    return member


@pytest.fixture
def record(tmp_path: Path) -> Record:
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    return Record(str(rundir / f"gunicorn-42-7{_record.SUFFIX}"))


def test_a_torn_or_foreign_record_reads_as_empty(record: Record) -> None:
    Path(record.path).write_text('{"generation": {"n": 3')  # a crash mid-write of old code
    assert record.read() == {}
    Path(record.path).write_text("[1, 2]")
    assert record.read() == {}
    record.update(lambda data: {**data, "x": 1})
    assert record.read() == {"x": 1}


def test_update_replaces_the_file_whole_and_leaves_no_temporary(record: Record) -> None:
    record.update(lambda data: {"a": 1})
    inode = os.stat(record.path).st_ino
    record.update(lambda data: {**data, "b": 2})
    assert json.loads(Path(record.path).read_text()) == {"a": 1, "b": 2}
    assert os.stat(record.path).st_ino != inode  # renamed into place, never rewritten in place
    assert sorted(os.listdir(os.path.dirname(record.path))) == [
        os.path.basename(record.path), os.path.basename(record.path) + ".lock"
    ]
    assert record.update(lambda data: None) == {"a": 1, "b": 2}  # None: nothing written


def test_poll_reads_only_when_the_file_changed(
    record: Record, monkeypatch: pytest.MonkeyPatch
) -> None:
    record.update(lambda data: {"n": 1})
    assert record.poll() == {"n": 1}
    reads = []
    real_read = record.read
    monkeypatch.setattr(record, "read", lambda: reads.append(1) or real_read())
    assert record.poll() is None and record.poll() is None
    assert reads == []
    record.update(lambda data: {"n": 2})
    assert record.poll() == {"n": 2}


def test_records_of_dead_masters_are_removed(tmp_path: Path) -> None:
    for name in ("gunicorn-42-7.master.json", "gunicorn-42-7.master.json.lock",
                 "gunicorn-43-9.master.json", "uwsgi-44-1.json", "notes.txt",
                 "gunicorn-43-9.master.json.50.tmp", "gunicorn-43-9.master.json.43.tmp"):
        (tmp_path / name).write_text("{}")
    forget_dead(str(tmp_path), Alive(43))  # 50 died between writing and renaming
    assert sorted(os.listdir(tmp_path)) == [
        "gunicorn-43-9.master.json", "gunicorn-43-9.master.json.43.tmp", "notes.txt"
    ]


def test_open_record_in_an_unusable_directory_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    record, why = open_record("gunicorn", os.getppid(), str(blocker / "run"))
    assert record is None and "cannot create" in why


def test_open_record_creates_one_private_record_per_master(tmp_path: Path) -> None:
    rundir = str(tmp_path / "run")
    record, why = open_record("gunicorn", os.getppid(), rundir)
    assert record is not None and why == ""
    assert os.stat(rundir).st_mode & 0o777 == 0o700
    data = record.read()
    assert data["server"] == "gunicorn" and data["master"] == os.getppid()
    assert read_all(rundir) == [data]


def test_one_scanner_the_others_follow(record: Record) -> None:
    wall, alive = Wall(), Alive(1, 2, 3)
    first, second, third = (share(record, pid, wall, alive) for pid in (1, 2, 3))
    assert first.turn() and not second.turn() and not third.turn()
    wall.now += 1.0
    assert first.turn() and not second.turn()
    assert record.read()["lease"]["pid"] == 1


def test_the_lease_passes_on_when_its_holder_exits(record: Record) -> None:
    wall, alive = Wall(), Alive(1, 2)
    first, second = share(record, 1, wall, alive), share(record, 2, wall, alive)
    assert first.turn() and not second.turn()
    alive.pids.discard(1)
    wall.now += 3.0  # first renews no more; its renewal would have changed the record
    record.update(lambda data: {**data, "touched": True})  # any write: the follower rereads
    assert second.turn() and second.took_over
    assert record.read()["lease"]["pid"] == 2


def test_the_lease_passes_on_when_it_expires(record: Record) -> None:
    wall, alive = Wall(), Alive(1, 2)
    first, second = share(record, 1, wall, alive), share(record, 2, wall, alive)
    assert first.turn() and not second.turn()
    wall.now += 5.0  # first is alive but stopped renewing (a stuck thread)
    assert second.turn()
    assert not first.turn()  # its next renewal finds the lease taken: it follows


def test_leave_hands_the_lease_over_at_once(record: Record) -> None:
    wall, alive = Wall(), Alive(1, 2)
    first, second = share(record, 1, wall, alive), share(record, 2, wall, alive)
    assert first.turn() and not second.turn()
    first.leave()
    assert second.turn()


def test_generations_and_who_was_born_after_them(record: Record) -> None:
    wall, alive = Wall(), Alive(1, 2)
    old = share(record, 1, wall, alive, born=wall.now - 10)
    assert old.decide({"files": ["a.py"], "per_process": True}, {}) == 1 and old.acted == 1
    young = share(record, 2, wall, alive, born=wall.now + 1)  # forked after the decision
    assert young.acted == 1
    late = share(record, 3, wall, alive, born=wall.now - 5)  # born before, joined after
    assert late.acted == 0


def test_validations_and_refusals_are_recorded(record: Record) -> None:
    member = share(record, 1, Wall(), Alive(1))
    member.validated(["/app/mod.py"], "", "/app/mod.py:3: invalid syntax", {"/app/mod.py": None})
    member.validated(["/app/mod.py"], "f00", None, {})
    data = record.read()
    assert [v["verdict"] for v in data["validations"]] == ["refused", "ok"]
    assert data["last_refusal"]["where"] == "/app/mod.py:3"


@pytest.mark.parametrize(
    "error, expected",
    [
        ("/app/mod.py:3: invalid syntax", "/app/mod.py:3"),
        ('File "/app/wsgi.py", line 7, in <module>', "/app/wsgi.py:7"),
        ("importing wsgi failed: No module named 'x'", ""),
    ],
)
def test_where_finds_the_users_line(error: str, expected: str) -> None:
    assert where(error) == expected


def test_workers_that_exited_are_listed_for_a_while_and_in_bounded_number(
    record: Record, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_record, "_GONE_MAX", 2)
    wall, alive = Wall(), Alive(1)
    scanner = share(record, 1, wall, alive)
    assert scanner.turn()
    for pid in (2, 3, 4):
        wall.now += 1
        share(record, pid, wall, Alive(1, pid))  # a worker that joins, then exits
        record.update(lambda data: {**data, "lease": {**data["lease"], "expires": 0}})
        scanner.scanning = False  # take the lease again at the next turn: a renewal
        assert scanner.turn()
    workers = record.read()["workers"]
    assert sorted(workers) == ["1", "3", "4"] and "gone" not in workers["1"]
    wall.now += 3601
    record.update(lambda data: {**data, "lease": {**data["lease"], "expires": 0}})
    scanner.scanning = False
    assert scanner.turn()
    assert sorted(record.read()["workers"]) == ["1"]
