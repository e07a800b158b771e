"""Who may be signalled: the one /proc reader and rule, against crafted /proc trees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import pytest

from wsgireload.actions import _process
from wsgireload.actions._process import (
    MasterProblem,
    ProcessInfo,
    Refusal,
    master_problem,
    program_name,
    read_process,
    record_master,
)

from .conftest import ProcTree

GUNICORN = ["/usr/bin/python3", "/usr/local/bin/gunicorn", "-w", "3", "app:app"]
UWSGI = ["/venv/bin/uwsgi", "--master", "--processes", "3", "--module", "wsgi"]


@pytest.fixture
def tree(tmp_path: Path) -> ProcTree:
    return ProcTree(tmp_path / "proc")


def problem(
    tree: ProcTree,
    master: int,
    names: object = "gunicorn",
    *,
    parent: Optional[int] = None,
    uid: int = 1001,
    recorded: Optional[ProcessInfo] = None,
) -> Optional[MasterProblem]:
    """The rule as a worker of uid ``uid`` whose parent is ``parent`` (default: the master)."""
    if recorded is None:
        recorded = record_master(master, read=tree.read)
    return master_problem(
        recorded,
        names,  # type: ignore[arg-type]
        getppid=lambda: master if parent is None else parent,
        read=tree.read,
        getuid=lambda: uid,
        geteuid=lambda: uid,
    )


def test_the_recorded_master_unchanged_may_be_signalled(tree: ProcTree) -> None:
    tree.add(4242, GUNICORN)
    assert problem(tree, 4242) is None


# -- pid 1: a container's server, or init ------------------------------------------------------
def test_a_server_that_is_pid_1_is_a_master_like_any_other(tree: ProcTree) -> None:
    tree.add(1, ["/venv/bin/gunicorn", "-w", "3", "app:app"])  # CMD ["gunicorn", ...]
    recorded = record_master(1, read=tree.read)
    assert recorded is not None and recorded.pid == 1
    assert problem(tree, 1) is None
    tree.add(1, UWSGI)
    assert problem(tree, 1, ("uwsgi", "pyuwsgi")) is None


def test_init_as_pid_1_is_not_a_server(tree: ProcTree) -> None:
    tree.add(1, ["/sbin/init", "splash"], uid=0)
    found = problem(tree, 1, uid=0)
    assert found is not None and found.kind is Refusal.NOT_THE_SERVER
    assert "does not look like gunicorn" in str(found)
    assert "(command line '/sbin/init splash')" in str(found)  # argv joined with spaces


@pytest.mark.parametrize("adopter", [1, 777], ids=["init", "subreaper"])
def test_a_worker_orphaned_then_adopted_signals_nobody(tree: ProcTree, adopter: int) -> None:
    tree.add(4242, GUNICORN)
    recorded = record_master(4242, read=tree.read)
    tree.remove(4242)
    tree.add(adopter, GUNICORN)  # even an adopter that looks like the server
    found = problem(tree, 4242, parent=adopter, recorded=recorded)
    assert found is not None and found.kind is Refusal.ORPHANED
    assert f"parent is now {adopter}" in str(found)


def test_a_reused_pid_is_refused(tree: ProcTree) -> None:
    tree.add(4242, GUNICORN, start="1000")
    recorded = record_master(4242, read=tree.read)
    tree.add(4242, GUNICORN, start="2000")  # the master died; a new gunicorn got its pid
    found = problem(tree, 4242, recorded=recorded)
    assert found is not None and found.kind is Refusal.REUSED


def test_a_master_that_changed_uid_is_refused(tree: ProcTree) -> None:
    tree.add(4242, GUNICORN, uid=1001)
    recorded = record_master(4242, read=tree.read)
    tree.add(4242, GUNICORN, uid=1002)
    found = problem(tree, 4242, recorded=recorded)
    assert found is not None and found.kind is Refusal.UID_CHANGED


def test_a_master_that_is_gone_is_refused(tree: ProcTree) -> None:
    tree.add(4242, GUNICORN)
    recorded = record_master(4242, read=tree.read)
    tree.remove(4242)
    found = problem(tree, 4242, recorded=recorded)
    assert found is not None and found.kind is Refusal.GONE


def test_nothing_recorded_says_why_truthfully() -> None:
    found = master_problem(None, "gunicorn", getppid=lambda: 4242, read=lambda pid: None)
    assert found is not None and found.kind is Refusal.UNKNOWN
    assert "already gone when the worker started" in str(found)


# -- a master of another user ------------------------------------------------------------------
def test_a_root_master_of_an_unprivileged_worker_is_out_of_reach(tree: ProcTree) -> None:
    tree.add(4242, GUNICORN, uid=0)  # gunicorn --user nobody: only the workers drop to nobody
    found = problem(tree, 4242, uid=65534)
    assert found is not None and found.kind is Refusal.FOREIGN_USER
    assert "runs as uid 0 and this worker as uid 65534" in str(found)
    assert problem(tree, 4242, uid=0) is None  # a root worker may signal it


def test_a_foreign_uid_that_is_not_our_server_is_refused_as_not_the_server(
    tree: ProcTree,
) -> None:
    # The identity checks come first: FOREIGN_USER always means "our master, out of reach".
    tree.add(4242, ["/bin/bash"], uid=0)
    found = problem(tree, 4242, uid=65534)
    assert found is not None and found.kind is Refusal.NOT_THE_SERVER


# -- the program, never its arguments ----------------------------------------------------------
@pytest.mark.parametrize(
    "argv, names",
    [
        (["timeout", "60", "pytest", "-k", "uwsgi"], ("uwsgi", "pyuwsgi")),
        (["timeout", "900", "python3", "-m", "pytest", "-k", "gunicorn"], ("gunicorn",)),
        (["/usr/bin/python3", "-m", "pytest", "tests/test_uwsgi.py"], ("uwsgi",)),
        (["python3", "-c", "import uwsgi"], ("uwsgi",)),
        (["bash", "-c", "uwsgi --master"], ("uwsgi",)),
        # The old uWSGI check accepted any python, or any command line containing "uwsgi":
        (["/usr/bin/python3.11", "/srv/run.py"], ("uwsgi", "pyuwsgi")),
        (["/usr/bin/vim", "/etc/uwsgi/app.ini"], ("uwsgi", "pyuwsgi")),
    ],
)
def test_a_parent_named_only_in_its_arguments_is_not_the_server(
    tree: ProcTree, argv: List[str], names: object
) -> None:
    tree.add(4242, argv)
    found = problem(tree, 4242, names)
    assert found is not None and found.kind is Refusal.NOT_THE_SERVER


@pytest.mark.parametrize(
    "raw, names",
    [
        (b"gunicorn: master [app:application]\0\0\0\0\0\0\0\0", ("gunicorn",)),
        (b"gunicorn: master [/srv/app/wsgi:app]\0\0\0\0", ("gunicorn",)),  # a path in the title
        (b"uWSGI master\0\0\0\0\0\0", ("uwsgi", "pyuwsgi")),  # --auto-procname
        (b"/venv/bin/python3.11\0/venv/bin/uwsgi\0--master\0", ("uwsgi", "pyuwsgi")),  # pyuwsgi
        (b"/venv/bin/pyuwsgi\0--master\0", ("uwsgi", "pyuwsgi")),
        (b"/venv/bin/python\0-m\0pyuwsgi\0--master\0", ("uwsgi", "pyuwsgi")),
        (b"/venv/bin/python\0-m\0gunicorn\0app:app\0", ("gunicorn",)),
        (b"/venv/bin/python\0/venv/bin/gunicorn\0app:app\0", ("gunicorn",)),
    ],
)
def test_real_command_line_shapes_are_the_server(tree: ProcTree, raw: bytes, names: object) -> None:
    tree.add(4242, raw)
    assert problem(tree, 4242, names) is None


@pytest.mark.parametrize(
    "argv, program",
    [
        (["/venv/bin/gunicorn", "app:app"], "gunicorn"),
        (["/usr/bin/python3", "/usr/local/bin/gunicorn", "-w", "3", "app:app"], "gunicorn"),
        (["python3", "-m", "gunicorn", "app:app"], "gunicorn"),
        (["python3", "-X", "dev", "-m", "gunicorn", "app:app"], "gunicorn"),
        (["python3", "-Wignore", "-um", "gunicorn.app.wsgiapp", "app:app"], "gunicorn"),
        (["python3", "-mgunicorn", "app:app"], "gunicorn"),
        (["python3", "-W", "ignore", "-B", "/venv/bin/gunicorn"], "gunicorn"),
        (["python3", "--", "/venv/bin/gunicorn"], "gunicorn"),
        (["pypy3", "/venv/bin/gunicorn"], "gunicorn"),
        (["python3", "-c", "import gunicorn"], "python3"),
        (["python3", "-Bc", "import gunicorn"], "python3"),
        (["python3"], "python3"),
        (["gunicorn: master [app:application]"], "gunicorn"),
        (["uWSGI master"], "uWSGI"),
        (["uWSGI worker 1"], "uWSGI"),
        (["timeout", "60", "pytest", "-k", "uwsgi"], "timeout"),
        ("/usr/bin/python3 /venv/bin/gunicorn app:app", "gunicorn"),  # ps output, a string
        ([], ""),
    ],
)
def test_program_name(argv: List[str], program: str) -> None:
    assert program_name(argv) == program


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["gunicorn3", "app:app"], True),  # a distribution's renamed script
        (["/usr/bin/uwsgi_python311", "--master"], False),  # asks for "gunicorn"
        (["bash", "-c", "gunicorn"], False),
    ],
)
def test_matching_name(argv: List[str], expected: bool) -> None:
    assert (_process.matching_name(argv, ("gunicorn",)) is not None) is expected


def test_several_names_and_case(tree: ProcTree) -> None:
    tree.add(4242, ["python3", "run_app.py"])
    assert problem(tree, 4242, ("gunicorn", "run_app")) is None
    assert _process.matching_name(["uWSGI master"], ("gunicorn", "uwsgi")) == "uwsgi"


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


def test_read_process_without_proc_knows_only_the_pid(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-proc")
    assert read_process(os.getpid(), root=missing) == ProcessInfo(os.getpid(), None, None, None)


def test_without_proc_only_pid_and_parent_are_checked() -> None:
    bare = ProcessInfo(4242, None, None, None)
    read = {4242: bare}.get
    assert master_problem(bare, "gunicorn", getppid=lambda: 4242, read=read) is None
    found = master_problem(bare, "gunicorn", getppid=lambda: 1, read=read)
    assert found is not None and found.kind is Refusal.ORPHANED


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_read_process_real_self() -> None:
    info = read_process(os.getpid())
    assert info is not None
    assert info.uid == os.getuid()
    assert info.start_time is not None and info.start_time.isdigit()
    assert info.argv and "py" in info.argv[0]


def test_record_master() -> None:
    master = ProcessInfo(1, "5", 0, ("gunicorn: master [app]",))
    assert record_master(1, read={1: master}.get) == master  # pid 1: a container's server
    assert record_master(0, read={0: master}.get) is None
    assert record_master(4242, read={}.get) is None


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
