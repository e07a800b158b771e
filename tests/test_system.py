"""The operating system seam: the /proc reader, a process's start, the FIFO writer."""

from __future__ import annotations

import errno
import gc
import os
import warnings
from pathlib import Path

import pytest

from wsgireload import _system
from wsgireload._system import SYSTEM, ProcessInfo, read_process

from .conftest import ProcTree


@pytest.fixture
def tree(tmp_path: Path) -> ProcTree:
    return ProcTree(tmp_path / "proc")


# -- reading /proc -----------------------------------------------------------------------------
def test_read_process_parses_a_proc_tree(tree: ProcTree) -> None:
    tree.add(4242, ["/usr/bin/python3", "/usr/bin/gunicorn", "app:app"], start="98765")
    info = read_process(4242, root=str(tree.root))
    assert info == ProcessInfo(
        4242, "98765", 1001, ("/usr/bin/python3", "/usr/bin/gunicorn", "app:app")
    )
    assert read_process(4243, root=str(tree.root)) is None


def test_read_process_keeps_arguments_with_spaces_apart(tree: ProcTree) -> None:
    tree.add(4242, ["timeout", "60", "sh", "-c", "exec gunicorn app:app"])
    info = tree.read(4242)
    assert info is not None and info.argv == ("timeout", "60", "sh", "-c", "exec gunicorn app:app")


def test_children_are_read_from_every_task_of_the_parent(tmp_path: Path) -> None:
    for task, kids in (("10", "12 11 "), ("13", "14 ")):
        (tmp_path / "10" / "task" / task).mkdir(parents=True)
        (tmp_path / "10" / "task" / task / "children").write_text(kids)
    assert _system.System(str(tmp_path)).children(10) == [11, 12, 14]
    assert _system.System(str(tmp_path)).children(99) == []
    assert os.getpid() in SYSTEM.children(os.getppid())


def test_children_of_a_thread_that_exits_mid_scan_leave_nothing_open(tmp_path: Path) -> None:
    (tmp_path / "42" / "task" / "42").mkdir(parents=True)  # its children file is gone
    (tmp_path / "42" / "task" / "43").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _system.System(str(tmp_path)).children(42) == []
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_read_process_without_proc_knows_only_the_pid(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-proc")
    assert read_process(os.getpid(), root=missing) == ProcessInfo(os.getpid(), None, None, None)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_read_process_real_self() -> None:
    info = read_process(os.getpid())
    assert info is not None
    assert info.uid == os.getuid()
    assert info.start_time is not None and info.start_time.isdigit()
    assert info.argv and "py" in info.argv[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_boot_time_and_parent_are_taken_again_in_a_forked_child() -> None:
    before = SYSTEM.started()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(write_end, f"{SYSTEM.started()!r} {SYSTEM.parent_at_start()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        child_boot, child_ppid = handle.read().split()
    os.waitpid(pid, 0)
    assert float(child_boot) > before
    assert int(child_ppid) == os.getpid()


def mkfifo(tmp_path: Path) -> str:
    path = tmp_path / "master.fifo"
    os.mkfifo(path, 0o600)
    return str(path)


def test_write_fifo_refuses_regular_files_and_never_blocks(tmp_path: Path) -> None:
    regular = tmp_path / "plain"
    regular.write_text("")
    with pytest.raises(OSError):
        SYSTEM.write_fifo(str(regular), b"c")
    fifo = mkfifo(tmp_path)
    with pytest.raises(OSError) as info:
        SYSTEM.write_fifo(fifo, b"c")  # nobody reading: the master is gone
    assert info.value.errno == errno.ENXIO
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        SYSTEM.write_fifo(fifo, b"c")
        assert os.read(reader, 10) == b"c"
    finally:
        os.close(reader)


def test_alive_asks_for_the_same_process_and_never_pid_0() -> None:
    me = SYSTEM.process(os.getpid())
    assert me is not None and SYSTEM.alive(os.getpid(), me.start_time)
    assert not SYSTEM.alive(os.getpid(), "not-its-start")
    assert not SYSTEM.alive(0, None) and not SYSTEM.alive(-1, None)
    assert _system.exists(os.getpid())
