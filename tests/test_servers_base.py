"""What the servers share: who may be signalled (the one rule, against crafted /proc trees),
and the actions that need no server (a user callback, log-only)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import pytest

from wsgireload._system import ProcessInfo
from wsgireload.actions import CallbackAction, LogOnlyAction
from wsgireload.policy import ChangeSet
from wsgireload.servers.base import (
    MasterProblem,
    Refusal,
    master_problem,
    matching_name,
    program_name,
    record_master,
)

from .conftest import ProcTree
from .fakes import CHANGES, FakeSystem

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
    system = FakeSystem(str(tree.root), parent=master if parent is None else parent, uid=uid)
    if recorded is None:
        recorded = record_master(master, system)
    return master_problem(recorded, names, system)  # type: ignore[arg-type]


def test_the_recorded_master_unchanged_may_be_signalled(tree: ProcTree) -> None:
    tree.add(4242, GUNICORN)
    assert problem(tree, 4242) is None


# -- pid 1: a container's server, or init ------------------------------------------------------
def test_a_server_that_is_pid_1_is_a_master_like_any_other(tree: ProcTree) -> None:
    tree.add(1, ["/venv/bin/gunicorn", "-w", "3", "app:app"])  # CMD ["gunicorn", ...]
    recorded = record_master(1, FakeSystem(str(tree.root)))
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
    recorded = record_master(4242, FakeSystem(str(tree.root)))
    tree.remove(4242)
    tree.add(adopter, GUNICORN)  # even an adopter that looks like the server
    found = problem(tree, 4242, parent=adopter, recorded=recorded)
    assert found is not None and found.kind is Refusal.ORPHANED
    assert f"parent is now {adopter}" in str(found)


def test_a_reused_pid_is_refused(tree: ProcTree) -> None:
    tree.add(4242, GUNICORN, start="1000")
    recorded = record_master(4242, FakeSystem(str(tree.root)))
    tree.add(4242, GUNICORN, start="2000")  # the master died; a new gunicorn got its pid
    found = problem(tree, 4242, recorded=recorded)
    assert found is not None and found.kind is Refusal.REUSED


def test_a_master_that_changed_uid_is_refused(tree: ProcTree) -> None:
    tree.add(4242, GUNICORN, uid=1001)
    recorded = record_master(4242, FakeSystem(str(tree.root)))
    tree.add(4242, GUNICORN, uid=1002)
    found = problem(tree, 4242, recorded=recorded)
    assert found is not None and found.kind is Refusal.UID_CHANGED


def test_a_master_that_is_gone_is_refused(tree: ProcTree) -> None:
    tree.add(4242, GUNICORN)
    recorded = record_master(4242, FakeSystem(str(tree.root)))
    tree.remove(4242)
    found = problem(tree, 4242, recorded=recorded)
    assert found is not None and found.kind is Refusal.GONE


def test_nothing_recorded_says_why_truthfully() -> None:
    found = master_problem(None, "gunicorn", FakeSystem(parent=4242))
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
    assert (matching_name(argv, ("gunicorn",)) is not None) is expected


def test_several_names_and_case(tree: ProcTree) -> None:
    tree.add(4242, ["python3", "run_app.py"])
    assert problem(tree, 4242, ("gunicorn", "run_app")) is None
    assert matching_name(["uWSGI master"], ("gunicorn", "uwsgi")) == "uwsgi"


def test_without_proc_only_pid_and_parent_are_checked() -> None:
    bare = ProcessInfo(4242, None, None, None)
    system = FakeSystem(parent=4242)
    system.procs[4242] = bare
    assert master_problem(bare, "gunicorn", system) is None
    system.parent = 1
    found = master_problem(bare, "gunicorn", system)
    assert found is not None and found.kind is Refusal.ORPHANED


def test_record_master() -> None:
    system = FakeSystem()
    master = system.procs[1] = system.procs[0] = ProcessInfo(1, "5", 0, ("gunicorn: master [app]",))
    assert record_master(1, system) == master  # pid 1: a container's server
    assert record_master(0, system) is None
    assert record_master(4242, system) is None


def test_callback_gets_the_change_set_and_runs_in_every_worker() -> None:
    seen: List[ChangeSet] = []
    action = CallbackAction(seen.append)
    action(CHANGES)
    assert seen == [CHANGES]
    assert action.per_process and action.after_close_only
    assert "append" in action.describe()


def test_log_only_warns_what_to_do_and_does_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        LogOnlyAction()(CHANGES)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "restart the server" in record.getMessage()
    assert "views.py" in record.getMessage()
