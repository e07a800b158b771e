"""Process-safety checks before signalling a master: fake /proc and injected getppid, no sleeps."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Optional

import pytest

from wsgireload.actions import _process
from wsgireload.actions._process import ProcessInfo, master_problem, read_process, verify_master

MASTER = ProcessInfo(
    pid=4242, start_time="1000", uid=1001, cmdline="/usr/bin/python3 gunicorn app:app"
)


def fake_proc(table: Dict[int, ProcessInfo]):  # type: ignore[no-untyped-def]
    def read(pid: int) -> Optional[ProcessInfo]:
        return table.get(pid)

    return read


def test_same_master_is_safe() -> None:
    assert (
        master_problem(MASTER, "gunicorn", getppid=lambda: 4242, read=fake_proc({4242: MASTER}))
        is None
    )


@pytest.mark.parametrize(
    "recorded, parent, now, reason",
    [
        (None, 4242, MASTER, "no master was recorded"),
        (ProcessInfo(1, "1", 0, "init"), 1, ProcessInfo(1, "1", 0, "init"), "is init"),
        (MASTER, 1, MASTER, "no longer this worker's parent"),  # orphaned: reparented to init
        (MASTER, 777, MASTER, "no longer this worker's parent"),  # orphaned: a subreaper
        (MASTER, 4242, None, "no longer exists"),
        (MASTER, 4242, ProcessInfo(4242, "2000", 1001, MASTER.cmdline), "was reused"),
        (MASTER, 4242, ProcessInfo(4242, "1000", 0, MASTER.cmdline), "changed uid"),
        (MASTER, 4242, ProcessInfo(4242, "1000", 1001, "bash"), "does not look like gunicorn"),
    ],
)
def test_unsafe_master_is_refused_with_a_reason(
    recorded: Optional[ProcessInfo],
    parent: int,
    now: Optional[ProcessInfo],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = {now.pid: now} if now is not None else {}
    problem = master_problem(recorded, "gunicorn", getppid=lambda: parent, read=fake_proc(table))
    assert problem is not None and reason in problem
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        assert not verify_master(
            recorded, "gunicorn", getppid=lambda: parent, read=fake_proc(table)
        )
    assert reason in caplog.text


def test_without_proc_only_pid_and_parent_are_checked() -> None:
    bare = ProcessInfo(4242, None, None, None)
    assert (
        master_problem(bare, "gunicorn", getppid=lambda: 4242, read=fake_proc({4242: bare})) is None
    )


def test_any_of_several_server_names_matches() -> None:
    runner = ProcessInfo(4242, "1000", 1001, "python3 run_app.py")
    read = fake_proc({4242: runner})
    assert master_problem(runner, ("gunicorn", "run_app"), getppid=lambda: 4242, read=read) is None


def test_record_master_refuses_init_and_missing() -> None:
    assert _process.record_master(1, read=fake_proc({1: MASTER})) is None
    assert _process.record_master(4242, read=fake_proc({})) is None
    assert _process.record_master(4242, read=fake_proc({4242: MASTER})) == MASTER


def test_read_process_parses_a_proc_tree(tmp_path: Path) -> None:
    base = tmp_path / "4242"
    base.mkdir()
    # a command name with spaces and parentheses must not shift the fields
    fields = ["S"] + [str(n) for n in range(4, 22)] + ["98765"] + ["0"] * 20
    (base / "stat").write_text("4242 (we (ird) name) " + " ".join(fields) + "\n")
    (base / "cmdline").write_bytes(b"/usr/bin/python3\0/usr/bin/gunicorn\0app:app\0")
    (base / "status").write_text("Name:\tgunicorn\nUid:\t1001\t1001\t1001\t1001\n")
    info = read_process(4242, root=str(tmp_path))
    assert info == ProcessInfo(4242, "98765", 1001, "/usr/bin/python3 /usr/bin/gunicorn app:app")
    assert read_process(4243, root=str(tmp_path)) is None


def test_read_process_without_proc_knows_only_the_pid(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-proc")
    assert read_process(os.getpid(), root=missing) == ProcessInfo(os.getpid(), None, None, None)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_read_process_real_self() -> None:
    info = read_process(os.getpid())
    assert info is not None
    assert info.uid == os.getuid()
    assert info.start_time is not None and info.start_time.isdigit()
    assert info.cmdline is not None and "py" in info.cmdline


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_boot_time_and_parent_are_taken_again_in_a_forked_child() -> None:
    before = _process.boot_time()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(write_end, f"{_process.boot_time()!r} {_process.boot_ppid()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        child_boot, child_ppid = handle.read().split()
    os.waitpid(pid, 0)
    assert float(child_boot) > before
    assert int(child_ppid) == os.getpid()


@pytest.mark.parametrize(
    "cmdline, expected",
    [
        ("/venv/bin/gunicorn app:app", True),
        ("/usr/bin/python3 /usr/local/bin/gunicorn -w 3 app:app", True),
        ("python3 -X dev -m gunicorn app:app", True),
        ("gunicorn: master [app:application]", True),
        ("gunicorn3 app:app", True),
        # The server's name among the arguments is not the server (this test runner's own
        # parent was once "timeout 900 python3 -m pytest -k gunicorn").
        ("timeout 900 python3 -m pytest -k gunicorn", False),
        ("python3 -m pytest tests/test_gunicorn.py", False),
        ("bash -c gunicorn", False),
        ("python3 -c import gunicorn", False),
        ("", False),
    ],
)
def test_only_the_program_names_the_server(cmdline: str, expected: bool) -> None:
    from wsgireload.actions._process import names_program

    assert names_program(cmdline, ("gunicorn",)) is expected
