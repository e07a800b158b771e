"""The per-master record: atomic and lock-guarded, torn files read as empty, dead masters
cleaned, and the scanner lease that passes on when its holder exits or lets it expire."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import List

import pytest

from wsgireload import _record
from wsgireload._record import (
    Record,
    Share,
    default_runtime_dir,
    ensure_private_dir,
    forget_dead,
    open_record,
    read_all,
    where,
)
from wsgireload._system import SYSTEM, proc_start_time

from .fakes import FakeSystem


def machine(*pids: int) -> FakeSystem:
    """A fake system where ``pids`` run (whatever start time a record holds for them)."""
    system = FakeSystem(now=1_000_000.0)
    for pid in pids:
        system.add(pid, start=None)
    return system


def share(record: Record, pid: int, system: FakeSystem, born: float = 0.0) -> Share:
    member = Share(record, pid, f"st{pid}", born=born, lease=5.0, system=system)
    member.join()
    return member


@pytest.fixture
def record(tmp_path: Path) -> Record:
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    return Record(str(rundir / f"gunicorn-42-7{_record.SUFFIX}"))


def test_a_worker_joining_is_ready_for_a_rollout(record: Record) -> None:
    system = machine(7)
    share(record, 7, system)
    assert record.read()["workers"]["7"]["ready"] == system.now


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
                 "gunicorn-43-9.master.json", "uwsgi-44-1.master.json", "notes.txt",
                 "gunicorn-43-9.master.json.50.tmp", "gunicorn-43-9.master.json.43.tmp"):
        (tmp_path / name).write_text("{}")
    forget_dead(str(tmp_path / "absent"), machine())  # no directory: nothing to do, no error
    forget_dead(str(tmp_path), machine(43))  # 50 died between writing and renaming
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


def test_read_all_removes_the_records_of_masters_and_processes_gone(tmp_path: Path) -> None:
    rundir = str(tmp_path / "run")
    for pid in (42, 43):  # a master, and a process alone (a lone uvicorn) with its traps
        record, _ = open_record("uvicorn", pid, rundir, machine(42, 43))
        assert record is not None
        record.update(lambda d, p=pid: {**d, "traps": {"t": "text"}, "alone": p == 43})
    assert [d["master"] for d in read_all(rundir, machine(42, 43))] == [42, 43]
    assert [d["master"] for d in read_all(rundir, machine(42))] == [42]
    assert sorted(os.listdir(rundir)) == ["uvicorn-42-na.master.json",
                                          "uvicorn-42-na.master.json.lock"]


def test_one_scanner_the_others_follow(record: Record) -> None:
    system = machine(1, 2, 3)
    first, second, third = (share(record, pid, system) for pid in (1, 2, 3))
    assert first.turn() and not second.turn() and not third.turn()
    system.now += 1.0
    assert first.turn() and not second.turn()
    assert record.read()["lease"]["pid"] == 1


def test_the_lease_passes_on_when_its_holder_exits(record: Record) -> None:
    system = machine(1, 2)
    first, second = share(record, 1, system), share(record, 2, system)
    assert first.turn() and not second.turn()
    del system.procs[1]
    system.now += 3.0  # first renews no more; its renewal would have changed the record
    record.update(lambda data: {**data, "touched": True})  # any write: the follower rereads
    assert second.turn() and second.took_over
    assert record.read()["lease"]["pid"] == 2


def test_the_lease_passes_on_when_it_expires(record: Record) -> None:
    system = machine(1, 2)
    first, second = share(record, 1, system), share(record, 2, system)
    assert first.turn() and not second.turn()
    system.now += 5.0  # first is alive but stopped renewing (a stuck thread)
    assert second.turn()
    assert not first.turn()  # its next renewal finds the lease taken: it follows


def test_a_worker_born_after_the_last_reload_takes_over_from_one_it_replaces(
    record: Record,
) -> None:
    # After a HUP the old scanner may take a while to exit (gevent: up to a second) while
    # still holding a valid lease; a new worker deferring to it would sleep half a lease.
    system = machine(1, 2, 3)
    old = share(record, 1, system, born=system.now - 100)
    assert old.turn()
    old.decide({"files": ["a.py"], "per_process": False}, {})  # the reload
    sibling = share(record, 2, system, born=system.now - 50)  # replaced by it as well
    assert not sibling.turn()  # an old worker does not take the lease from another one
    system.now += 1.0
    new = share(record, 3, system, born=system.now)  # forked by the reload
    assert new.turn() and new.took_over
    assert record.read()["lease"]["pid"] == 3
    system.now += 3.0
    assert not old.turn()  # its next renewal finds the lease taken: it follows


def test_leave_hands_the_lease_over_at_once(record: Record) -> None:
    system = machine(1, 2)
    first, second = share(record, 1, system), share(record, 2, system)
    assert first.turn() and not second.turn()
    first.leave()
    assert second.turn()


def test_generations_and_who_was_born_after_them(record: Record) -> None:
    system = machine(1, 2)
    old = share(record, 1, system, born=system.now - 10)
    assert old.decide({"files": ["a.py"], "per_process": True}, {}) == 1 and old.acted == 1
    young = share(record, 2, system, born=system.now + 1)  # forked after the decision
    assert young.acted == 1
    late = share(record, 3, system, born=system.now - 5)  # born before, joined after
    assert late.acted == 0


def test_validations_and_refusals_are_recorded(record: Record) -> None:
    member = share(record, 1, machine(1))
    member.validated(["/app/mod.py"], "", "/app/mod.py:3: invalid syntax")
    member.validated(["/app/mod.py"], "f00", None)
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
    system = machine(1)
    scanner = share(record, 1, system)
    assert scanner.turn()
    for pid in (2, 3, 4):
        system.now += 1
        share(record, pid, system)  # a worker that joins, then exits
        record.update(lambda data: {**data, "lease": {**data["lease"], "expires": 0}})
        scanner.scanning = False  # take the lease again at the next turn: a renewal
        assert scanner.turn()
    workers = record.read()["workers"]
    assert sorted(workers) == ["1", "3", "4"] and "gone" not in workers["1"]
    system.now += 3601
    record.update(lambda data: {**data, "lease": {**data["lease"], "expires": 0}})
    scanner.scanning = False
    assert scanner.turn()
    assert sorted(record.read()["workers"]) == ["1"]


# -- the directory ---------------------------------------------------------------------------
def test_the_directory_is_created_private(tmp_path: Path) -> None:
    rundir = str(tmp_path / "run")
    assert ensure_private_dir(rundir) is None
    assert stat.S_IMODE(os.stat(rundir).st_mode) == 0o700


def test_a_directory_that_cannot_be_created_says_why(tmp_path: Path) -> None:
    assert "cannot create" in (ensure_private_dir(str(tmp_path / "no" / "such")) or "")


def test_a_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    rundir.chmod(0o755)
    record, why = open_record("gunicorn", 42, str(rundir), machine(42))
    assert record is None and "accessible to other users" in why
    assert os.listdir(rundir) == []


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(target)
    record, why = open_record("gunicorn", 42, str(tmp_path / "run"), machine(42))
    assert record is None and "not a directory" in why


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_a_directory_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    os.chown(rundir, 65534, 65534)
    assert "belongs to uid 65534" in open_record("gunicorn", 42, str(rundir), machine(42))[1]


def test_a_symlinked_record_is_refused(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    ensure_private_dir(str(rundir))
    os.symlink(tmp_path / "victim", rundir / f"gunicorn-42-7{_record.SUFFIX}.lock")
    system = machine()
    system.add(42, start="7")
    record, why = open_record("gunicorn", 42, str(rundir), system)
    assert record is None and "cannot write" in why
    assert not (tmp_path / "victim").exists()


def test_xdg_runtime_dir_is_used_only_when_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert default_runtime_dir() == str(xdg / "wsgireload")
    os.chmod(xdg, 0o777)
    assert default_runtime_dir().endswith(f"wsgireload-{os.getuid()}")


# -- what the engine hands the action: the master's last reload, lines logged once -----------
def test_the_masters_last_reload_is_noted_for_its_generation(record: Record) -> None:
    system = machine(1, 2)
    scanner, other = share(record, 1, system), share(record, 2, system)
    assert scanner.last_reload() == {} and other.last_reload() == {}
    scanner.decide({"files": ["a.py"], "per_process": False}, {})
    system.now += 1.0
    scanner.note_reload(chain=True)
    assert other.last_reload() == {"n": 1, "at": system.now, "chain": True, "by": 1}
    other.forget_reload()  # not its note: kept
    assert other.last_reload() != {}
    scanner.forget_reload()  # the master refused the signal: there was no reload
    assert other.last_reload() == {}


def test_a_garbled_reload_counts_as_none(record: Record) -> None:
    record.update(lambda data: {"reloaded": {"at": "garbage"}})
    assert share(record, 1, machine(1)).last_reload() == {}


def test_first_to_log_is_true_for_the_first_caller_only(record: Record) -> None:
    system = machine(1, 2)
    first, second = share(record, 1, system), share(record, 2, system)
    assert first.first_to_log("preload-error")
    assert not second.first_to_log("preload-error") and not first.first_to_log("preload-error")
    assert second.first_to_log("other")


def test_masters_are_independent(tmp_path: Path) -> None:
    rundir = str(tmp_path / "run")
    system = machine()
    paths = set()
    for master, start in ((42, "7"), (43, "7"), (42, "8")):  # 42-8: a new master, reused pid
        system.add(master, start=start)
        record, _ = open_record("gunicorn", master, rundir, system)
        assert record is not None and share(record, 1, system).first_to_log("line")
        paths.add(record.path)
    assert len(paths) == 3
    assert sorted(os.listdir(rundir)) == [  # 42-7 is gone: its record was cleaned
        f"gunicorn-42-8{_record.SUFFIX}", f"gunicorn-42-8{_record.SUFFIX}.lock",
        f"gunicorn-43-7{_record.SUFFIX}", f"gunicorn-43-7{_record.SUFFIX}.lock",
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_real_processes_racing_for_the_lease_make_exactly_one_scanner(record: Record) -> None:
    go_read, go_write = os.pipe()
    done_read, done_write = os.pipe()
    results: List[int] = []
    children = []
    for _ in range(8):
        out_read, out_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                me = os.getpid()
                member = Share(record, me, proc_start_time(me), SYSTEM.started(), 20.0)
                member.join()
                os.read(go_read, 1)  # start together
                os.write(out_write, b"1" if member.turn() else b"0")
                os.read(done_read, 1)  # stay alive (a live holder keeps its lease) until all ran
            finally:
                os._exit(0)
        os.close(out_write)
        children.append((pid, out_read))
    os.write(go_write, b"x" * 8)
    for _, out_read in children:
        with os.fdopen(out_read, "rb") as handle:
            results.append(int(handle.read(1) or b"0"))
    os.write(done_write, b"x" * 8)
    for pid, _ in children:
        os.waitpid(pid, 0)
    for fd in (go_read, go_write, done_read, done_write):
        os.close(fd)
    assert sum(results) == 1
