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
    Outcome,
    Record,
    Share,
    claim_reload,
    default_runtime_dir,
    ensure_private_dir,
    first_to_log,
    forget_dead,
    open_record,
    read_all,
    where,
)
from wsgireload.actions._process import ProcessInfo

from .conftest import Alive, FakeClock


def share(record: Record, pid: int, wall: FakeClock, alive: Alive, born: float = 0.0) -> Share:
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
                 "gunicorn-43-9.master.json", "uwsgi-44-1.master.json", "notes.txt",
                 "gunicorn-43-9.master.json.50.tmp", "gunicorn-43-9.master.json.43.tmp"):
        (tmp_path / name).write_text("{}")
    forget_dead(str(tmp_path / "absent"), Alive())  # no directory: nothing to do, no error
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
    wall, alive = FakeClock(1_000_000.0), Alive(1, 2, 3)
    first, second, third = (share(record, pid, wall, alive) for pid in (1, 2, 3))
    assert first.turn() and not second.turn() and not third.turn()
    wall.now += 1.0
    assert first.turn() and not second.turn()
    assert record.read()["lease"]["pid"] == 1


def test_the_lease_passes_on_when_its_holder_exits(record: Record) -> None:
    wall, alive = FakeClock(1_000_000.0), Alive(1, 2)
    first, second = share(record, 1, wall, alive), share(record, 2, wall, alive)
    assert first.turn() and not second.turn()
    alive.pids.discard(1)
    wall.now += 3.0  # first renews no more; its renewal would have changed the record
    record.update(lambda data: {**data, "touched": True})  # any write: the follower rereads
    assert second.turn() and second.took_over
    assert record.read()["lease"]["pid"] == 2


def test_the_lease_passes_on_when_it_expires(record: Record) -> None:
    wall, alive = FakeClock(1_000_000.0), Alive(1, 2)
    first, second = share(record, 1, wall, alive), share(record, 2, wall, alive)
    assert first.turn() and not second.turn()
    wall.now += 5.0  # first is alive but stopped renewing (a stuck thread)
    assert second.turn()
    assert not first.turn()  # its next renewal finds the lease taken: it follows


def test_a_worker_born_after_the_last_reload_takes_over_from_one_it_replaces(
    record: Record,
) -> None:
    # After a HUP the old scanner may take a while to exit (gevent: up to a second) while
    # still holding a valid lease; a new worker deferring to it would sleep half a lease.
    wall, alive = FakeClock(1_000_000.0), Alive(1, 2, 3)
    old = share(record, 1, wall, alive, born=wall.now - 100)
    assert old.turn()
    old.decide({"files": ["a.py"], "per_process": False}, {})  # the reload
    sibling = share(record, 2, wall, alive, born=wall.now - 50)  # replaced by it as well
    assert not sibling.turn()  # an old worker does not take the lease from another one
    wall.now += 1.0
    new = share(record, 3, wall, alive, born=wall.now)  # forked by the reload
    assert new.turn() and new.took_over
    assert record.read()["lease"]["pid"] == 3
    wall.now += 3.0
    assert not old.turn()  # its next renewal finds the lease taken: it follows


def test_leave_hands_the_lease_over_at_once(record: Record) -> None:
    wall, alive = FakeClock(1_000_000.0), Alive(1, 2)
    first, second = share(record, 1, wall, alive), share(record, 2, wall, alive)
    assert first.turn() and not second.turn()
    first.leave()
    assert second.turn()


def test_generations_and_who_was_born_after_them(record: Record) -> None:
    wall, alive = FakeClock(1_000_000.0), Alive(1, 2)
    old = share(record, 1, wall, alive, born=wall.now - 10)
    assert old.decide({"files": ["a.py"], "per_process": True}, {}) == 1 and old.acted == 1
    young = share(record, 2, wall, alive, born=wall.now + 1)  # forked after the decision
    assert young.acted == 1
    late = share(record, 3, wall, alive, born=wall.now - 5)  # born before, joined after
    assert late.acted == 0


def test_validations_and_refusals_are_recorded(record: Record) -> None:
    member = share(record, 1, FakeClock(1_000_000.0), Alive(1))
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
    wall, alive = FakeClock(1_000_000.0), Alive(1)
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
    record, why = open_record("gunicorn", 42, str(rundir), start="7")
    assert record is None and "accessible to other users" in why
    assert os.listdir(rundir) == []


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(target)
    record, why = open_record("gunicorn", 42, str(tmp_path / "run"), start="7")
    assert record is None and "not a directory" in why


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_a_directory_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    os.chown(rundir, 65534, 65534)
    assert "belongs to uid 65534" in open_record("gunicorn", 42, str(rundir), start="7")[1]


def test_a_symlinked_record_is_refused(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    ensure_private_dir(str(rundir))
    os.symlink(tmp_path / "victim", rundir / f"gunicorn-42-7{_record.SUFFIX}.lock")
    record, why = open_record("gunicorn", 42, str(rundir), alive=Alive(42), start="7")
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


# -- the actions' part: one reload request per deploy, a floor, lines logged once ------------
def test_two_workers_racing_for_one_deploy_make_one_claim(record: Record) -> None:
    # both workers booted at 10; they saw the deploy with different file sets (fingerprints)
    assert claim_reload(record, 10.0, lambda: 100.0)[0] is Outcome.CLAIMED
    assert claim_reload(record, 10.0, lambda: 100.3)[0] is Outcome.COVERED


def test_a_later_deploy_seen_by_a_new_worker_makes_a_new_claim(record: Record) -> None:
    assert claim_reload(record, 10.0, lambda: 100.0, min_interval=3.0)[0] is Outcome.CLAIMED
    # a worker that booted after the reload sees the next deploy
    assert claim_reload(record, 100.1, lambda: 200.0, min_interval=3.0)[0] is Outcome.CLAIMED
    # its siblings, booted at the same time, are covered by that one
    assert claim_reload(record, 100.2, lambda: 200.1, min_interval=3.0)[0] is Outcome.COVERED


def test_the_rate_floor_defers_a_second_reload(record: Record) -> None:
    assert claim_reload(record, 10.0, lambda: 100.0, min_interval=3.0)[0] is Outcome.CLAIMED
    outcome, wait = claim_reload(record, 100.5, lambda: 101.0, min_interval=3.0)
    assert outcome is Outcome.WAIT and wait == pytest.approx(2.0)
    assert claim_reload(record, 100.5, lambda: 103.0, min_interval=3.0)[0] is Outcome.CLAIMED


def test_a_request_from_before_a_reboot_is_ignored(record: Record) -> None:
    claim_reload(record, 10.0, lambda: 5000.0)
    # the monotonic clock restarted; pid 42 is a new master without /proc
    assert claim_reload(record, 20.0, lambda: 50.0)[0] is Outcome.CLAIMED


def test_a_garbled_request_counts_as_none(record: Record) -> None:
    record.update(lambda data: {"reload_request": {"at": "garbage"}})
    assert claim_reload(record, 0.0, lambda: 1.0)[0] is Outcome.CLAIMED
    assert _record.last_request(record)["at"] == 1.0


def test_masters_are_independent(tmp_path: Path) -> None:
    rundir = str(tmp_path / "run")
    alive = Alive(42, 43)
    for master, start in ((42, "7"), (43, "7"), (42, "8")):  # 42-8: a new master, reused pid
        record, _ = open_record("gunicorn", master, rundir, alive=alive, start=start)
        assert record is not None
        assert claim_reload(record, 10.0, lambda: 100.0)[0] is Outcome.CLAIMED


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_real_processes_racing_make_exactly_one_claim(record: Record) -> None:
    go_read, go_write = os.pipe()
    results: List[int] = []
    children = []
    for _ in range(8):
        out_read, out_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.read(go_read, 1)  # start together
                outcome, _ = claim_reload(record, 0.0)
                os.write(out_write, b"1" if outcome is Outcome.CLAIMED else b"0")
            finally:
                os._exit(0)
        os.close(out_write)
        children.append((pid, out_read))
    os.write(go_write, b"x" * 8)
    for pid, out_read in children:
        with os.fdopen(out_read, "rb") as handle:
            results.append(int(handle.read() or b"0"))
        os.waitpid(pid, 0)
    os.close(go_read)
    os.close(go_write)
    assert sum(results) == 1


def test_first_to_log_is_true_for_the_first_caller_only(record: Record) -> None:
    assert first_to_log(record, "preload-error")
    assert not first_to_log(record, "preload-error")
    assert _record.logged(record, "preload-error") and not _record.logged(record, "other")


def test_first_to_log_says_log_it_without_a_record(tmp_path: Path) -> None:
    assert first_to_log(None, "preload-error") and first_to_log(None, "preload-error")
    broken = Record(str(tmp_path / "missing" / "x.master.json"))  # cannot be written
    assert first_to_log(broken, "preload-error") and first_to_log(broken, "preload-error")


def test_for_master_asks_the_actions_view_of_proc_who_is_alive(tmp_path: Path) -> None:
    master = ProcessInfo(42, "7", 0, ("gunicorn",))
    procs = {42: master}
    rundir = str(tmp_path / "run")
    assert _record.for_master("gunicorn", None, rundir, procs.get) == (
        None, "no master was recorded"
    )
    record, _ = _record.for_master("gunicorn", master, rundir, procs.get)
    assert record is not None and record.path.endswith(f"gunicorn-42-7{_record.SUFFIX}")
    claim_reload(record, 0.0, lambda: 1.0)
    del procs[42]  # the master is gone: the next open cleans its record
    other = ProcessInfo(43, "9", 0, ("gunicorn",))
    _record.for_master("gunicorn", other, rundir, {43: other}.get)
    assert not os.path.exists(record.path)


def test_master_of_names_the_server_a_worker_belongs_to() -> None:
    from wsgireload.actions._process import boot_ppid

    assert _record.master_of({"gunicorn.socket": None}) == ("gunicorn", boot_ppid())
    # mod_wsgi daemon mode: the processes of one group share the record of Apache's parent;
    # two groups (two apps) never share one, and a group name makes a safe file name.
    assert _record.master_of({"mod_wsgi.process_group": "app"}) == ("mod_wsgi.app", boot_ppid())
    assert _record.master_of({"mod_wsgi.process_group": "a/b c"})[0] == "mod_wsgi.a_b_c"  # type: ignore[index]
    assert _record.master_of({"mod_wsgi.process_group": ""}) is None  # embedded mode
    assert _record.master_of({"wsgi.version": (1, 0)}) is None  # waitress, a script
