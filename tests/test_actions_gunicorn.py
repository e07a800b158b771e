"""gunicorn actions with injected kill/getppid//proc: one HUP per deploy, never to a stranger."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Callable, List, Optional, Set, Tuple

import pytest

from wsgireload.actions import REGISTRY, ProcessContext, resolve
from wsgireload.actions._process import ProcessInfo
from wsgireload.actions.gunicorn import GunicornAction, RestartWorkerAction
from wsgireload.policy import ChangeSet

from .conftest import FakeClock

MASTER = ProcessInfo(
    4242, "1000", 1001, ("/usr/bin/python3", "/usr/local/bin/gunicorn", "app:app")
)
CHANGES = ChangeSet(("/srv/app/views.py",), "abc", 1.0, 1.0)
GUNICORN_ENV = {"gunicorn.socket": object(), "SERVER_SOFTWARE": "gunicorn/27.0.1"}


class World:
    """The injected process world: who our parent is, what /proc says, who got signalled."""

    def __init__(self, rundir: Optional[str], master: ProcessInfo = MASTER) -> None:
        self.master = master
        self.parent = master.pid
        self.procs = {master.pid: master}
        self.uid = 1001  # this worker's
        self.refused: Set[int] = set()  # signals to the master the kernel refuses (EPERM)
        self.killed: List[Tuple[int, int]] = []
        self.scheduled: List[Tuple[float, Callable[[], None]]] = []
        self.clock = FakeClock(100.0)
        self.rundir = rundir

    def kill(self, pid: int, sig: int) -> None:
        if pid == self.master.pid and sig in self.refused:
            raise PermissionError(1, "Operation not permitted")
        if sig != 0:  # signal 0 only asks whether a signal would be allowed
            self.killed.append((pid, sig))

    def worker(
        self,
        booted: float = 10.0,
        pid: int = 5000,
        created_pid: Optional[int] = None,
        restart_fallback: bool = False,
    ) -> GunicornAction:
        action = GunicornAction(
            runtime_dir=self.rundir,
            restart_fallback=restart_fallback,
            kill=self.kill,
            getppid=lambda: self.parent,
            getpid=lambda: pid,
            getuid=lambda: self.uid,
            geteuid=lambda: self.uid,
            read_process=self.procs.get,
            boot_time=lambda: booted,
            master_pid=lambda: self.master.pid,
            min_interval=3.0,
            clock=self.clock,
            schedule=lambda delay, fn: self.scheduled.append((delay, fn)),
        )
        action.setup(ProcessContext(pid, pid if created_pid is None else created_pid, GUNICORN_ENV))
        return action


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(str(tmp_path / "run"))


def test_a_worker_hups_its_verified_master(world: World) -> None:
    world.worker()(CHANGES)
    assert world.killed == [(MASTER.pid, signal.SIGHUP)]


def test_three_workers_seeing_one_deploy_send_one_hup(world: World) -> None:
    workers = [world.worker(pid=5000 + n) for n in range(3)]
    for n, worker in enumerate(workers):
        world.clock.now = 100.0 + 0.2 * n  # each settles at its own moment, own change set
        worker(ChangeSet(("/srv/app/views.py",), f"fingerprint-{n}", 1.0, 1.0))
    assert world.killed == [(MASTER.pid, signal.SIGHUP)]


def test_a_new_worker_seeing_a_later_deploy_hups_again(world: World) -> None:
    world.worker(booted=10.0)(CHANGES)
    world.clock.now = 200.0
    world.worker(booted=100.05)(CHANGES)  # booted by that reload, then saw a new change
    assert world.killed == [(MASTER.pid, signal.SIGHUP)] * 2


def test_a_reload_too_soon_after_the_last_is_retried_later(world: World) -> None:
    world.worker(booted=10.0)(CHANGES)
    world.clock.now = 101.0
    late = world.worker(booted=100.05)
    late(CHANGES)
    assert len(world.killed) == 1
    [(delay, retry)] = world.scheduled
    assert delay == pytest.approx(2.0)
    late(CHANGES)  # another change set while waiting: still one retry scheduled
    assert len(world.scheduled) == 1
    world.clock.now = 103.0
    retry()
    assert world.killed == [(MASTER.pid, signal.SIGHUP)] * 2


@pytest.mark.parametrize("parent", [1, 777])
def test_an_orphaned_worker_signals_nobody(
    world: World, parent: int, caplog: pytest.LogCaptureFixture
) -> None:
    action = world.worker()
    world.parent = parent  # master died: reparented to init or a subreaper
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        action(CHANGES)
    assert world.killed == []
    assert "no longer this worker's parent" in caplog.text


def test_a_reused_master_pid_is_not_signalled(world: World) -> None:
    action = world.worker()
    world.procs[MASTER.pid] = ProcessInfo(MASTER.pid, "5555", MASTER.uid, MASTER.argv)
    action(CHANGES)
    assert world.killed == []


def test_a_master_that_is_not_gunicorn_is_warned_about_at_setup(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.procs[MASTER.pid] = ProcessInfo(MASTER.pid, "1000", 1001, ("-bash",))
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        action = world.worker()
        action(CHANGES)
    assert world.killed == []
    assert "will be refused" in caplog.text and "server_names" in caplog.text


def test_an_unsafe_runtime_dir_refuses_to_signal(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    Path(world.rundir).mkdir(mode=0o777)
    Path(world.rundir).chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        world.worker()(CHANGES)
    assert world.killed == []
    assert "no safe place to coordinate" in caplog.text


def test_no_writable_place_for_the_record_refuses_in_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A read-only filesystem with no writable temp directory: N workers would each HUP.
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path / "read-only" / "tmp"))
    world = World(None)  # the default runtime directory
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        for n in range(3):
            world.worker(pid=5000 + n)(CHANGES)
    assert world.killed == []
    assert caplog.text.count("no safe place to coordinate workers (cannot create") == 3


def test_a_record_that_cannot_be_written_refuses(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    Path(world.rundir).mkdir(mode=0o700)
    Path(world.rundir, f"gunicorn-{MASTER.pid}-1000.master.json.lock").mkdir()
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        world.worker()(CHANGES)
    assert world.killed == []
    assert "no safe place to coordinate workers (cannot write" in caplog.text


def test_preload_logs_one_error_per_master_and_never_signals(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="wsgireload"):
        workers = [world.worker(pid=5000 + n, created_pid=4242) for n in range(3)]
        for worker in workers:
            worker(CHANGES)
    assert world.killed == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "--preload" in errors[0].getMessage()
    assert "kill -USR2" in errors[0].getMessage()
    assert "--preload" in workers[0].describe()


# -- a master that is pid 1 (a container without an init) ------------------------------------
def test_a_master_that_is_pid_1_is_hupped_like_any_other(tmp_path: Path) -> None:
    container = ProcessInfo(1, "50", 0, ("/venv/bin/python", "/venv/bin/gunicorn", "app:app"))
    world = World(str(tmp_path / "run"), master=container)
    world.uid = 0
    workers = [world.worker(pid=5000 + n) for n in range(3)]
    for worker in workers:
        worker(CHANGES)
    assert world.killed == [(1, signal.SIGHUP)]
    assert workers[0].describe() == "gunicorn: SIGHUP to master 1"


def test_a_worker_whose_pid_1_parent_is_init_signals_nobody(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    init = ProcessInfo(1, "1", 0, ("/sbin/init",))
    world = World(str(tmp_path / "run"), master=init)
    world.uid = 0
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        world.worker()(CHANGES)
    assert world.killed == []
    assert "does not look like gunicorn" in caplog.text


# -- a master this worker may not signal (gunicorn --user) -------------------------------------
ROOT_MASTER = ProcessInfo(4242, "1000", 0, MASTER.argv)


def infos(caplog: pytest.LogCaptureFixture, words: str) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO
            and words in r.getMessage()]


def test_a_root_master_makes_each_worker_restart_itself_with_one_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(str(tmp_path / "run"), master=ROOT_MASTER)
    world.uid = 65534
    with caplog.at_level(logging.INFO, logger="wsgireload"):
        workers = [world.worker(pid=5000 + n, restart_fallback=True) for n in range(3)]
        for worker in workers:
            worker(CHANGES)
    assert world.killed == [(5000, signal.SIGTERM), (5001, signal.SIGTERM), (5002, signal.SIGTERM)]
    [info] = infos(caplog, "restarts itself")
    assert "runs as uid 0 and this worker as uid 65534" in info and "--user" in info
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "SIGTERM to this worker" in workers[0].describe()


def test_a_root_master_without_the_fallback_warns_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(str(tmp_path / "run"), master=ROOT_MASTER)
    world.uid = 65534
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        world.worker()(CHANGES)
    assert world.killed == []
    assert "action='restart-worker'" in caplog.text and "runs as uid 0" in caplog.text


@pytest.mark.parametrize("refused", [{0, signal.SIGHUP}, {signal.SIGHUP}], ids=["probe", "hup"])
def test_eperm_at_signal_time_falls_back_for_this_and_later_change_sets(
    world: World, refused: Set[int], caplog: pytest.LogCaptureFixture
) -> None:
    # /proc showed the same uid, the kernel says no anyway (a saved uid, a security module).
    world.refused = set(refused)
    with caplog.at_level(logging.INFO, logger="wsgireload"):
        workers = [world.worker(pid=5000 + n, restart_fallback=True) for n in range(3)]
        for worker in workers:
            worker(CHANGES)
    assert (MASTER.pid, signal.SIGHUP) not in world.killed
    assert world.killed == [(5000 + n, signal.SIGTERM) for n in range(3)]
    [info] = infos(caplog, "restarts itself")
    assert "refused this worker's signal (Operation not permitted)" in info
    workers[0](ChangeSet(("/srv/app/other.py",), "def", 2.0, 2.0))  # the next deploy
    assert world.killed[-1] == (5000, signal.SIGTERM)


def test_eperm_without_the_fallback_warns_what_to_do(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.refused = {0, signal.SIGHUP}
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        world.worker()(CHANGES)
    assert world.killed == []
    assert "refused this worker's signal" in caplog.text
    assert "action='restart-worker'" in caplog.text


def test_an_orphan_with_the_fallback_does_not_restart_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(str(tmp_path / "run"), master=ROOT_MASTER)
    world.uid = 65534
    action = world.worker(restart_fallback=True)
    world.parent = 1  # the master died: nobody would replace this worker
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        action(CHANGES)
    assert world.killed == []
    assert "no longer this worker's parent" in caplog.text


def test_restart_worker_terminates_itself_only() -> None:
    killed: List[Tuple[int, int]] = []
    action = RestartWorkerAction(kill=lambda p, s: killed.append((p, s)), getpid=lambda: 5000)
    action.setup(ProcessContext(5000, 5000, GUNICORN_ENV))
    action(CHANGES)
    assert killed == [(5000, signal.SIGTERM)]


def test_restart_worker_does_nothing_under_preload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    killed: List[Tuple[int, int]] = []
    action = RestartWorkerAction(
        runtime_dir=str(tmp_path / "run"),
        kill=lambda p, s: killed.append((p, s)),
        getpid=lambda: 5000,
    )
    with caplog.at_level(logging.ERROR, logger="wsgireload"):
        action.setup(ProcessContext(5000, 4242, GUNICORN_ENV))
    action(CHANGES)
    assert killed == []
    assert "--preload" in caplog.text


def test_restart_worker_never_terminates_init() -> None:
    killed: List[Tuple[int, int]] = []
    action = RestartWorkerAction(kill=lambda p, s: killed.append((p, s)), getpid=lambda: 1)
    action(CHANGES)
    assert killed == []


def test_names_are_registered() -> None:
    assert REGISTRY["gunicorn"] is GunicornAction
    assert REGISTRY["restart-worker"] is RestartWorkerAction
    assert isinstance(resolve("restart-worker"), RestartWorkerAction)


