"""gunicorn with a fake system: one HUP per deploy, never to a stranger; its workers and app."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest

from wsgireload._system import ProcessInfo
from wsgireload.actions import REGISTRY, resolve
from wsgireload.policy import ChangeSet
from wsgireload.servers import gunicorn
from wsgireload.servers.base import ProcessContext
from wsgireload.servers.gunicorn import GunicornAction, RestartWorkerAction

from .fakes import CHANGES, FakeSiblings, FakeSystem, refusal_log

MASTER = ProcessInfo(
    4242, "1000", 1001, ("/usr/bin/python3", "/usr/local/bin/gunicorn", "app:app")
)
GUNICORN_ENV = {"gunicorn.socket": object(), "SERVER_SOFTWARE": "gunicorn/27.0.1"}


class World:
    """One gunicorn master as its workers see it: the fake system, the shared siblings."""

    def __init__(self, master: ProcessInfo = MASTER, coordinated: bool = True,
                 uid: int = 1001) -> None:
        self.system = FakeSystem(master=master, uid=uid)  # uid: the workers'
        self.siblings = FakeSiblings(self.system, coordinated)

    def worker(
        self,
        booted: float = 10.0,
        pid: int = 5000,
        created_pid: Optional[int] = None,
        restart_fallback: bool = False,
    ) -> GunicornAction:
        system = self.system.worker(pid, booted)
        action = GunicornAction(restart_fallback=restart_fallback, system=system)
        created = pid if created_pid is None else created_pid
        action.setup(ProcessContext(pid, created, GUNICORN_ENV, self.siblings))
        return action


@pytest.fixture
def world() -> World:
    return World()


def test_a_worker_hups_its_verified_master(world: World) -> None:
    world.worker()(CHANGES)
    assert world.system.killed == [(MASTER.pid, signal.SIGHUP)]


def test_three_workers_seeing_one_deploy_send_one_hup(world: World) -> None:
    workers = [world.worker(pid=5000 + n) for n in range(3)]
    for n, worker in enumerate(workers):
        world.system.now = 100.0 + 0.2 * n  # each settles at its own moment, own change set
        worker(ChangeSet(("/srv/app/views.py",), f"fingerprint-{n}", 1.0, 1.0))
    assert world.system.killed == [(MASTER.pid, signal.SIGHUP)]


def test_a_new_worker_seeing_a_later_deploy_hups_again(world: World) -> None:
    world.worker(booted=10.0)(CHANGES)
    world.system.now = 200.0
    world.worker(booted=100.05)(CHANGES)  # booted by that reload, then saw a new change
    assert world.system.killed == [(MASTER.pid, signal.SIGHUP)] * 2


def test_a_reload_too_soon_after_the_last_is_retried_later(world: World) -> None:
    world.worker(booted=10.0)(CHANGES)
    world.system.now = 101.0
    late = world.worker(booted=100.05)
    late(CHANGES)
    assert len(world.system.killed) == 1
    [(delay, retry)] = world.system.scheduled
    assert delay == pytest.approx(2.0)
    late(CHANGES)  # another change set while waiting: still one retry scheduled
    assert len(world.system.scheduled) == 1
    world.system.now = 103.0
    retry()
    assert world.system.killed == [(MASTER.pid, signal.SIGHUP)] * 2


@pytest.mark.parametrize("parent", [1, 777])
def test_an_orphaned_worker_signals_nobody(
    world: World, parent: int, caplog: pytest.LogCaptureFixture
) -> None:
    action = world.worker()
    world.system.parent = parent  # master died: reparented to init or a subreaper
    assert "no longer this worker's parent" in refusal_log(action, world.system, caplog)


def test_a_reused_master_pid_is_not_signalled(world: World) -> None:
    action = world.worker()
    world.system.procs[MASTER.pid] = ProcessInfo(MASTER.pid, "5555", MASTER.uid, MASTER.argv)
    action(CHANGES)
    assert world.system.killed == []


def test_a_master_that_is_not_gunicorn_is_warned_about_at_setup(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.system.procs[MASTER.pid] = ProcessInfo(MASTER.pid, "1000", 1001, ("-bash",))
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        action = world.worker()
        action(CHANGES)
    assert world.system.killed == []
    assert "will be refused" in caplog.text and "server_names" in caplog.text


def test_without_a_shared_record_every_worker_refuses_to_signal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An unsafe or read-only runtime directory: N workers would each HUP.
    world = World(coordinated=False)
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        for n in range(3):
            world.worker(pid=5000 + n)(CHANGES)
    assert world.system.killed == []
    assert caplog.text.count("no safe place to coordinate workers (no record shared") == 3


def test_preload_logs_one_error_per_master_and_never_signals(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="wsgireload"):
        workers = [world.worker(pid=5000 + n, created_pid=4242) for n in range(3)]
        for worker in workers:
            worker(CHANGES)
    assert world.system.killed == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "--preload" in errors[0].getMessage()
    assert "kill -USR2" in errors[0].getMessage()
    assert "--preload" in workers[0].describe()


# -- a master that is pid 1 (a container without an init) ------------------------------------
def test_a_master_that_is_pid_1_is_hupped_like_any_other() -> None:
    container = ProcessInfo(1, "50", 0, ("/venv/bin/python", "/venv/bin/gunicorn", "app:app"))
    world = World(master=container, uid=0)
    workers = [world.worker(pid=5000 + n) for n in range(3)]
    for worker in workers:
        worker(CHANGES)
    assert world.system.killed == [(1, signal.SIGHUP)]
    assert workers[0].describe() == "gunicorn: SIGHUP to master 1"


def test_a_worker_whose_pid_1_parent_is_init_signals_nobody(
    caplog: pytest.LogCaptureFixture,
) -> None:
    init = ProcessInfo(1, "1", 0, ("/sbin/init",))
    world = World(master=init, uid=0)
    assert "does not look like gunicorn" in refusal_log(world.worker(), world.system, caplog)


# -- a master this worker may not signal (gunicorn --user) -------------------------------------
ROOT_MASTER = ProcessInfo(4242, "1000", 0, MASTER.argv)


def infos(caplog: pytest.LogCaptureFixture, words: str) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO
            and words in r.getMessage()]


def three_restart_themselves(
    world: World, caplog: pytest.LogCaptureFixture
) -> Tuple[List[GunicornAction], str]:
    """Three workers with the fallback act on one deploy: each SIGTERMs itself, nothing else is
    signalled; the workers and the one INFO saying why."""
    with caplog.at_level(logging.INFO, logger="wsgireload"):
        workers = [world.worker(pid=5000 + n, restart_fallback=True) for n in range(3)]
        for worker in workers:
            worker(CHANGES)
    assert world.system.killed == [(5000 + n, signal.SIGTERM) for n in range(3)]
    [info] = infos(caplog, "restarts itself")
    return workers, info


def test_a_root_master_makes_each_worker_restart_itself_with_one_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers, info = three_restart_themselves(World(master=ROOT_MASTER, uid=65534), caplog)
    assert "runs as uid 0 and this worker as uid 65534" in info and "--user" in info
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "SIGTERM to this worker" in workers[0].describe()


def test_a_root_master_without_the_fallback_warns_what_to_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(master=ROOT_MASTER, uid=65534)
    text = refusal_log(world.worker(), world.system, caplog)
    assert "action='restart-worker'" in text and "runs as uid 0" in text


@pytest.mark.parametrize("refused", [{0, signal.SIGHUP}, {signal.SIGHUP}], ids=["probe", "hup"])
def test_eperm_at_signal_time_falls_back_for_this_and_later_change_sets(
    world: World, refused: Set[int], caplog: pytest.LogCaptureFixture
) -> None:
    # /proc showed the same uid, the kernel says no anyway (a saved uid, a security module).
    world.system.refused = set(refused)
    workers, info = three_restart_themselves(world, caplog)
    assert (MASTER.pid, signal.SIGHUP) not in world.system.killed
    assert "refused this worker's signal (Operation not permitted)" in info
    workers[0](ChangeSet(("/srv/app/other.py",), "def", 2.0, 2.0))  # the next deploy
    assert world.system.killed[-1] == (5000, signal.SIGTERM)


def test_eperm_without_the_fallback_warns_what_to_do(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.system.refused = {0, signal.SIGHUP}
    text = refusal_log(world.worker(), world.system, caplog)
    assert "refused this worker's signal" in text
    assert "action='restart-worker'" in text


def test_an_orphan_with_the_fallback_does_not_restart_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(master=ROOT_MASTER, uid=65534)
    action = world.worker(restart_fallback=True)
    world.system.parent = 1  # the master died: nobody would replace this worker
    assert "no longer this worker's parent" in refusal_log(action, world.system, caplog)


def test_restart_worker_terminates_itself_only() -> None:
    system = FakeSystem()
    action = RestartWorkerAction(system=system)
    action.setup(ProcessContext(5000, 5000, GUNICORN_ENV))
    action(CHANGES)
    assert system.killed == [(5000, signal.SIGTERM)]


def test_restart_worker_does_nothing_under_preload(caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    action = RestartWorkerAction(system=world.system)
    with caplog.at_level(logging.ERROR, logger="wsgireload"):
        action.setup(ProcessContext(5000, 4242, GUNICORN_ENV, world.siblings))
        RestartWorkerAction(system=world.system).setup(
            ProcessContext(5001, 4242, GUNICORN_ENV, world.siblings)
        )
    action(CHANGES)
    assert world.system.killed == []
    assert len(caplog.records) == 1 and "--preload" in caplog.text  # once per master


def test_restart_worker_never_terminates_init() -> None:
    system = FakeSystem(pid=1)
    RestartWorkerAction(system=system)(CHANGES)
    assert system.killed == []


def test_names_are_registered() -> None:
    assert REGISTRY["gunicorn"] is GunicornAction
    assert REGISTRY["restart-worker"] is RestartWorkerAction
    assert isinstance(resolve("restart-worker"), RestartWorkerAction)




# -- a worker importing the app: its watcher starts before any request -------------------------
class Worker:
    """Stands for gunicorn's Worker class (``early_environ(worker_class=Worker)``)."""

    def __init__(self, pid: Any, ppid: int) -> None:
        self.pid = pid
        self.ppid = ppid


class Arbiter:
    pass


def early(objects: List[Any]) -> Optional[Dict[str, Any]]:
    return gunicorn.early_environ(lambda: objects, worker_class=Worker)


def test_a_gunicorn_worker_importing_the_app_is_seen() -> None:
    worker = Worker(os.getpid(), os.getppid())
    assert early([worker, Arbiter()]) == {"gunicorn.socket": None}


def test_the_arbiter_importing_the_app_is_not_a_worker_preload() -> None:
    assert early([None, Arbiter(), object()]) is None


def test_a_worker_object_of_another_process_is_not_this_process() -> None:
    # An arbiter holds Worker objects (pid: the child's), and a worker whose parent changed
    # is not one its arbiter forked.
    assert early([Worker(os.getpid() + 1, os.getppid())]) is None
    assert early([Worker("[booting]", os.getppid())]) is None
    assert early([Worker(os.getpid(), os.getppid() + 1)]) is None


def test_outside_any_server_nothing_starts_early(monkeypatch: pytest.MonkeyPatch) -> None:
    assert early([]) is None
    monkeypatch.delitem(sys.modules, "gunicorn.workers.base", raising=False)
    assert gunicorn.early_environ(lambda: [Worker(os.getpid(), os.getppid())]) is None


def test_real_frames_of_a_gunicorn_worker_and_of_an_arbiter() -> None:
    """frame_objects walks the main thread's stack: frames compiled as if from gunicorn's
    own files, each with its ``self``."""
    import gunicorn as real  # noqa: F401  (the walk looks only where gunicorn is loaded)

    source = (
        "def load_wsgi(self, detect):\n"
        "    return detect()\n"
    )
    namespace: Dict[str, Any] = {}
    exec(compile(source, "/venv/lib/gunicorn/workers/base.py", "exec"), namespace)

    def detect() -> Optional[Dict[str, Any]]:
        return gunicorn.early_environ(worker_class=Worker)

    assert namespace["load_wsgi"](Worker(os.getpid(), os.getppid()), detect) is not None
    assert namespace["load_wsgi"](Arbiter(), detect) is None
    assert detect() is None  # this test's own frames are not gunicorn's


# -- the rollout: one new worker ready before each old one leaves ----------------------------
class Arbiter1:
    """What gunicorn's arbiter does with the rollout's signals: SIGTTIN forks a worker (ready
    in the record when ``ready`` says so), SIGTTOU retires the oldest."""

    def __init__(self, world: World, workers: int) -> None:
        self.world, self.next_pid = world, 100
        self.num_workers = workers
        world.system.kids[MASTER.pid] = [self.spawn() for _ in range(workers)]
        world.siblings.rollout = "one-by-one"
        self.peak = workers
        self.lose: Optional[int] = None  # the next such signal never reaches the master

    def spawn(self, ready: bool = True) -> int:
        self.next_pid += 1
        entry: Dict[str, Any] = {"born": self.world.system.now}
        if ready:
            entry["ready"] = self.world.system.now
        self.world.siblings.record.setdefault("workers", {})[str(self.next_pid)] = entry
        return self.next_pid

    def handle(self, ready: bool = True) -> None:
        kids = self.world.system.kids[MASTER.pid]
        for _, sig in self.world.system.killed:
            if sig == self.lose:  # its sender died after writing it, before sending it
                self.lose = None
            elif sig == signal.SIGTTIN:
                self.num_workers += 1
                kids.append(self.spawn(ready))
            elif sig == signal.SIGTTOU:
                self.num_workers -= 1
                kids.pop(0)
            self.peak = max(self.peak, len(kids))
        self.world.system.killed.clear()

    def run(self, driver: GunicornAction, steps: int, ready: bool = True) -> None:
        for _ in range(steps):
            self.world.system.now += 0.5
            driver.advance()
            self.handle(ready)


@pytest.mark.parametrize("workers", [1, 3])
def test_a_rollout_replaces_each_worker_once_never_more_than_n_plus_1(
    world: World, workers: int
) -> None:
    arbiter = Arbiter1(world, workers)
    old = list(world.system.kids[MASTER.pid])
    scanner = world.worker(pid=old[-1])
    scanner(CHANGES)
    assert world.system.killed == [(MASTER.pid, signal.SIGTTIN)]
    arbiter.handle()
    arbiter.run(scanner, 4 * workers)
    kids = world.system.kids[MASTER.pid]
    assert len(kids) == workers == arbiter.num_workers and not set(kids) & set(old)
    assert arbiter.peak == workers + 1
    assert world.siblings.record["rollout"]["end"] == "done" and not scanner.rolling


def test_whoever_scans_next_continues_the_rollout(world: World) -> None:
    arbiter = Arbiter1(world, 3)
    world.worker(pid=world.system.kids[MASTER.pid][0])(CHANGES)  # the oldest: retired first
    arbiter.handle()
    arbiter.run(world.worker(pid=999), 1)  # the old scanner is gone; another steps
    arbiter.run(world.worker(pid=998), 12)  # and another, after a while
    assert arbiter.num_workers == 3 and arbiter.peak == 4
    assert world.siblings.record["rollout"]["end"] == "done"


@pytest.mark.parametrize("lost", [signal.SIGTTIN, signal.SIGTTOU])
def test_a_signal_written_but_never_sent_is_sent_again_and_the_count_holds(
    world: World, lost: int
) -> None:
    arbiter = Arbiter1(world, 3)
    old = list(world.system.kids[MASTER.pid])
    arbiter.lose = lost
    scanner = world.worker(pid=old[-1])
    scanner(CHANGES)
    arbiter.handle()
    arbiter.run(world.worker(pid=999), int(4 * world.siblings.boot_timeout) + 20)
    kids = world.system.kids[MASTER.pid]
    assert arbiter.lose is None and arbiter.num_workers == len(kids) == 3
    assert not set(kids) & set(old) and arbiter.peak == 4
    assert world.siblings.record["rollout"]["end"] == "done"


def test_a_second_step_right_after_a_signal_sends_nothing(world: World) -> None:
    Arbiter1(world, 3)
    scanner = world.worker(pid=101)
    scanner(CHANGES)
    world.system.now += gunicorn.ROLL_GAP / 2  # the master has not acted on it yet
    world.worker(pid=999).advance()
    assert world.system.killed == [(MASTER.pid, signal.SIGTTIN)]


def test_a_new_worker_never_ready_stops_the_rollout_with_the_count_restored(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    arbiter = Arbiter1(world, 3)
    scanner = world.worker(pid=103)
    scanner(CHANGES)
    arbiter.handle(ready=False)
    arbiter.run(scanner, int(world.siblings.boot_timeout / 0.5) + 10, ready=False)
    assert arbiter.num_workers == 3 and arbiter.peak == 4
    assert world.siblings.record["rollout"]["end"] == "stopped"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not ready within boot_timeout (30s)" in errors[0]


def test_a_deploy_during_a_rollout_keeps_its_count_and_its_pending_ttin(world: World) -> None:
    arbiter = Arbiter1(world, 3)
    scanner = world.worker(pid=103)
    scanner(CHANGES)
    arbiter.handle(ready=False)  # the new worker still imports the first deploy
    world.system.now += 5.0
    newest = world.worker(pid=104, booted=world.system.now - 4.0)  # a new worker scans now
    newest(ChangeSet(("/srv/app/views.py",), "second", 1.0, 1.0))
    # Every live worker is old now, the unready one too: the pending SIGTTIN gets its SIGTTOU.
    assert world.system.killed == [(MASTER.pid, signal.SIGTTOU)]
    arbiter.handle()
    world.siblings.record["workers"]["104"]["ready"] = world.system.now
    arbiter.run(newest, 20)
    assert arbiter.num_workers == 3 and arbiter.peak == 4
    assert world.siblings.record["rollout"]["end"] == "done"


def test_a_changed_gunicorn_config_file_is_reloaded_with_a_hup(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    Arbiter1(world, 3)
    config = type(sys)("__config__")
    config.__file__ = CHANGES.files[0]
    monkeypatch.setitem(sys.modules, "__config__", config)
    caplog.set_level(logging.INFO, "wsgireload")
    world.worker(pid=101)(CHANGES)
    assert world.system.killed == [(MASTER.pid, signal.SIGHUP)]
    assert "configuration file /srv/app/views.py changed" in caplog.text


def test_without_proc_to_follow_a_rollout_the_hup_is_sent(world: World) -> None:
    Arbiter1(world, 3)
    world.system.kids.clear()
    world.worker(pid=101)(CHANGES)
    assert world.system.killed == [(MASTER.pid, signal.SIGHUP)]


def test_all_at_once_sends_the_hup(world: World) -> None:
    Arbiter1(world, 3)
    world.siblings.rollout = "all-at-once"
    world.worker(pid=101)(CHANGES)
    assert world.system.killed == [(MASTER.pid, signal.SIGHUP)]


def test_workers_restarting_themselves_take_turns(caplog: pytest.LogCaptureFixture) -> None:
    system = FakeSystem(parent=MASTER.pid)
    siblings = FakeSiblings(system)
    siblings.rollout = "one-by-one"
    system.kids[MASTER.pid] = [1, 2, 3]
    siblings.record = {"generation": {"n": 1, "at": 50.0}, "workers": {}}
    for pid in (1, 2, 3):
        system.add(pid)
    assert gunicorn.take_turn(siblings, system) is True  # the first goes at once
    assert gunicorn.take_turn(siblings, system) is False  # the next waits for its replacement
    system.add(4)
    siblings.record["workers"]["4"] = {"born": 51.0, "ready": 53.0, "start": "1000"}
    assert gunicorn.take_turn(siblings, system) is True
    system.now += 100.0
    assert gunicorn.take_turn(siblings, system) is None  # no replacement within boot_timeout
    siblings.rollout = "all-at-once"
    assert gunicorn.take_turn(siblings, system) is True  # today's: everyone at once


def test_one_worker_restarting_itself_says_once_that_it_leaves_a_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    system = FakeSystem(parent=MASTER.pid)
    siblings = FakeSiblings(system)
    system.kids[MASTER.pid] = [system.pid]
    caplog.set_level(logging.INFO, "wsgireload")
    for _ in range(2):
        gunicorn.restart_in_turn(siblings, system, MASTER.pid)
    assert caplog.text.count("one worker and a master it may not signal") == 1
    assert system.killed == [(system.pid, signal.SIGTERM)] * 2

