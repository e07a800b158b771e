"""uWSGI with a fake uwsgi module, a fake /proc and system, no sleeps: its reload, its
options, its apps, its threads and its workers' start.

Real servers prove the reloads themselves (tests/servers/test_uwsgi.py).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from wsgireload.policy import ChangeSet
from wsgireload.servers import uwsgi
from wsgireload.servers.base import ProcessContext, Siblings
from wsgireload.servers.uwsgi import UwsgiAction, UwsgiOptions, first_fifo

from .conftest import ProcTree
from .fakes import FakeSiblings, FakeSystem, FakeUwsgi, install_uwsgi

MASTER = 4100
WORKER = 4101
UWSGI_ENVIRON = {"uwsgi.version": b"2.0.31"}


@pytest.fixture
def fake_uwsgi(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeUwsgi]:
    return functools.partial(install_uwsgi, monkeypatch)


def changes(fingerprint: str = "fp1", *files: str) -> ChangeSet:
    return ChangeSet(files or ("/srv/app/mod.py",), fingerprint, 0.0, 0.0)


def context(siblings: Optional[Siblings] = None) -> ProcessContext:
    return ProcessContext(WORKER, WORKER, UWSGI_ENVIRON, siblings or Siblings())


def make_proc(
    root: Path,
    pid: int,
    *,
    start: str = "5000",
    cmdline: bytes = b"/usr/bin/uwsgi\0--master\0--processes\x003\0",
    uid: int = 1001,
) -> None:
    """A /proc/<pid> with the files ``read_process`` reads."""
    ProcTree(root).add(pid, cmdline, start=start, uid=uid)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    (root / "self").mkdir(parents=True)
    make_proc(root, MASTER)
    make_proc(root, WORKER, cmdline=b"/usr/bin/uwsgi\0--master\0")
    return root


class World:
    """One uWSGI master as its workers see it: fake module, fake /proc, shared siblings."""

    def __init__(self, proc: Path, opt: Dict[Any, Any], coordinated: bool = True) -> None:
        self.system = FakeSystem(str(proc), pid=WORKER, parent=MASTER, now=1000.0)
        self.uwsgi = FakeUwsgi(opt, master=MASTER)
        self.siblings = FakeSiblings(self.system, coordinated)

    def worker(self, *, booted: float = 0.0, **kwargs: Any) -> UwsgiAction:
        kwargs.setdefault("pyuwsgi", False)
        kwargs.setdefault("virtualenv", False)
        system = self.system.worker(WORKER, booted)
        action = UwsgiAction(uwsgi_module=self.uwsgi, system=system, **kwargs)
        action.setup(context(self.siblings))
        return action


def mkfifo(tmp_path: Path, name: str = "master.fifo") -> str:
    path = tmp_path / name
    os.mkfifo(path, 0o600)
    return str(path)


# -- uwsgi.opt -------------------------------------------------------------------------------
def test_options_parse_str_keys_and_flags() -> None:
    opts = UwsgiOptions.parse(
        {"master": True, "lazy-apps": True, "master-fifo": b"/run/f", "processes": b"3"}
    )
    assert opts == UwsgiOptions(
        lazy_apps=True, master_fifos=("/run/f",), binary_path=None, master=True, processes=3
    )


def test_options_parse_bytes_keys_lists_and_lazy_alias() -> None:
    opts = UwsgiOptions.parse({
        b"lazy": b"true",
        b"master-fifo": [b"/run/a", b"/run/b"],
        b"binary-path": b"/venv/bin/python",
        b"workers": b"4",
    })
    assert opts.lazy_apps
    assert opts.master_fifos == ("/run/a", "/run/b")
    assert opts.binary_path == "/venv/bin/python"
    assert opts.processes == 4


@pytest.mark.parametrize("value", [b"0", b"false", b"no", b"off", b"", False, None])
def test_options_false_values_are_not_lazy(value: Any) -> None:
    assert not UwsgiOptions.parse({"lazy-apps": value}).lazy_apps


def test_first_fifo_skips_missing_and_regular_files(tmp_path: Path) -> None:
    regular = tmp_path / "plain"
    regular.write_text("")
    fifo = mkfifo(tmp_path)
    assert first_fifo((str(tmp_path / "missing"), str(regular), fifo)) == fifo
    assert first_fifo((str(regular),)) is None


# -- chain or full reload --------------------------------------------------------------------
def test_lazy_apps_with_fifo_chain_reloads(proc: Path, tmp_path: Path) -> None:
    fifo = mkfifo(tmp_path)
    opt = {"master": True, "lazy-apps": True, "master-fifo": fifo.encode()}
    world = World(proc, opt)
    action = world.worker()
    assert action.describe() == f"uWSGI chain reload (master FIFO {fifo})"
    action(changes())
    assert world.system.fifo_writes == [(fifo, b"c")]
    assert world.uwsgi.reloads == 0
    [(_, wake)] = world.system.wakes  # it keeps the master's loop moving
    wake()
    assert world.system.fifo_writes[-1] == (fifo, b"\n")


def test_without_lazy_apps_a_fifo_is_not_used(proc: Path, tmp_path: Path) -> None:
    # A chain reload without lazy-apps forks workers from a master holding the old code.
    fifo = mkfifo(tmp_path)
    world = World(proc, {"master": True, "master-fifo": fifo.encode()})
    action = world.worker()
    action(changes())
    assert world.uwsgi.reloads == 1
    assert world.system.fifo_writes == []


def test_a_full_reload_says_once_per_master_how_to_get_the_chain_reload(
    proc: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wsgireload")
    world = World(proc, {"master": True})
    world.worker()
    world.worker()
    assert caplog.text.count("start uWSGI with --lazy-apps and --master-fifo <path>") == 1
    caplog.clear()
    fifo = mkfifo(tmp_path)
    World(proc, {"master": True, "lazy-apps": True, "master-fifo": fifo.encode()}).worker()
    assert "--lazy-apps" not in caplog.text


def test_lazy_apps_without_fifo_full_reloads(proc: Path) -> None:
    world = World(proc, {"master": True, "lazy-apps": True})
    world.worker()(changes())
    assert world.uwsgi.reloads == 1


def test_configured_fifo_missing_warns_and_full_reloads(
    proc: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = str(tmp_path / "nofifo")
    world = World(proc, {"lazy-apps": True, "master-fifo": missing.encode()})
    with caplog.at_level(logging.WARNING, "wsgireload"):
        action = world.worker()
    assert "is not a FIFO" in caplog.text
    action(changes())
    assert world.uwsgi.reloads == 1


@pytest.mark.parametrize(("pyuwsgi", "level", "reloads", "says"), [
    (False, logging.WARNING, 1, "using uwsgi.reload()"),
    # pyuwsgi in a virtualenv: no fallback to a full reload, which would kill the server
    (True, logging.ERROR, 0, "--binary-path"),
], ids=["falls-back-to-a-full-reload", "pyuwsgi-does-not-fall-back-to-a-killing-reload"])
def test_a_failed_fifo_write(
    proc: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, pyuwsgi: bool, level: int,
    reloads: int, says: str
) -> None:
    fifo = mkfifo(tmp_path)
    world = World(proc, {"lazy-apps": True, "master-fifo": fifo.encode()})
    world.system.fifo_error = OSError(errno.ENXIO, "No such device or address")
    with caplog.at_level(level, "wsgireload"):
        world.worker(pyuwsgi=pyuwsgi, virtualenv=pyuwsgi)(changes())
    assert world.uwsgi.reloads == reloads
    assert says in caplog.text


def test_failed_uwsgi_reload_is_logged(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, {"master": True})
    world.uwsgi.reload = lambda: None  # type: ignore[method-assign]  # uWSGI's kill() failed
    with caplog.at_level(logging.ERROR, "wsgireload"):
        world.worker()(changes())
    assert "uwsgi.reload() failed" in caplog.text


# -- pyuwsgi in a virtualenv -----------------------------------------------------------------
def errors(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_pyuwsgi_in_venv_without_binary_path_refuses_with_the_fix(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, {"master": True})
    first = world.worker(pyuwsgi=True, virtualenv=True)
    second = world.worker(pyuwsgi=True, virtualenv=True)
    assert "none" in first.describe()
    with caplog.at_level(logging.DEBUG, "wsgireload"):
        first(changes("fp1"))
        second(changes("fp1"))  # another worker, same deploy: no second ERROR
    assert world.uwsgi.reloads == 0
    assert world.system.fifo_writes == []
    [message] = errors(caplog)
    assert f"--binary-path {os.path.join(sys.prefix, 'bin', 'python')}" in message
    assert "'uwsgi' package" in message
    caplog.clear()
    with caplog.at_level(logging.ERROR, "wsgireload"):
        second(changes("fp2"))  # the next deploy is refused out loud again
    assert len(errors(caplog)) == 1
    assert world.uwsgi.reloads == 0


def test_pyuwsgi_in_venv_with_binary_path_reloads(proc: Path) -> None:
    world = World(proc, {"master": True, "binary-path": b"/venv/bin/python"})
    world.worker(pyuwsgi=True, virtualenv=True)(changes())
    assert world.uwsgi.reloads == 1


def test_pyuwsgi_outside_a_venv_reloads(proc: Path) -> None:
    world = World(proc, {"master": True})
    world.worker(pyuwsgi=True, virtualenv=False)(changes())
    assert world.uwsgi.reloads == 1


def test_pyuwsgi_in_venv_chain_reload_is_safe(proc: Path, tmp_path: Path) -> None:
    # A chain reload never re-executes the master, so the pyuwsgi hazard does not apply.
    fifo = mkfifo(tmp_path)
    world = World(proc, {"lazy-apps": True, "master-fifo": fifo.encode()})
    world.worker(pyuwsgi=True, virtualenv=True)(changes())
    assert world.system.fifo_writes == [(fifo, b"c")]


# -- master verification ---------------------------------------------------------------------
def refused(world: World, action: UwsgiAction, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.WARNING, "wsgireload"):
        action(changes())
    assert world.uwsgi.reloads == 0 and world.system.fifo_writes == []
    return caplog.text


def test_no_master_means_no_reload(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, {})
    world.uwsgi.master = 0  # uwsgi.masterpid() without --master
    action = world.worker()
    text = refused(world, action, caplog)
    assert "runs without a master process (uwsgi.masterpid() is 0)" in text
    assert "start uWSGI with --master" in text


def test_a_master_that_is_pid_1_reloads(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A container without an init: `uwsgi --master` is pid 1 of its pid namespace.
    make_proc(proc, 1, cmdline=b"/venv/bin/uwsgi\0--master\0--processes\x003\0")
    world = World(proc, {"master": True})
    world.uwsgi.master = 1
    world.system.parent = 1
    with caplog.at_level(logging.WARNING, "wsgireload"):
        world.worker()(changes())
    assert world.uwsgi.reloads == 1
    assert "--master" not in caplog.text


def test_an_orphan_adopted_by_a_pid_1_that_looks_like_uwsgi_signals_nobody(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_proc(proc, 1, cmdline=b"uWSGI master\0\0\0")
    world = World(proc, {"master": True})
    action = world.worker()  # its master is MASTER
    world.system.parent = 1  # MASTER died; pid 1 adopted this worker
    assert "no longer this worker's parent" in refused(world, action, caplog)


@pytest.mark.parametrize(("change", "says"), [
    (lambda world, proc: setattr(world.uwsgi, "master", MASTER + 7), "master pid changed"),
    # the master died; init (or a subreaper) adopted us
    (lambda world, proc: setattr(world.system, "parent", 1), "no longer this worker's parent"),
    (lambda world, proc: make_proc(proc, MASTER, start="9999"), "was reused"),
    (lambda world, proc: (proc / str(MASTER) / "stat").unlink(), "no longer exists"),
], ids=["pid-changed", "no-longer-our-parent", "pid-recycled", "gone-from-proc"])
def test_a_master_changed_since_setup_is_never_signalled(
    proc: Path, caplog: pytest.LogCaptureFixture, change: Callable[[World, Path], None], says: str
) -> None:
    world = World(proc, {"master": True})
    action = world.worker()
    change(world, proc)
    assert says in refused(world, action, caplog)


def test_master_of_another_user(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_proc(proc, MASTER, uid=0)
    world = World(proc, {"master": True})
    world.system.uid = 12345
    text = refused(world, action=world.worker(), caplog=caplog)
    assert "runs as uid 0 and this worker as uid 12345" in text
    assert "--uid" in text  # what to do


def test_master_that_is_not_uwsgi(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_proc(proc, MASTER, cmdline=b"/bin/bash\0-l\0")
    world = World(proc, {"master": True})
    action = world.worker()
    text = refused(world, action, caplog)
    assert "does not look like uwsgi or pyuwsgi" in text and "server_names" in text


@pytest.mark.parametrize(
    "cmdline",
    [
        b"python3\0/srv/run.py\0",  # the old check took any python for uWSGI
        b"timeout\x0060\0pytest\0-k\0uwsgi\0",  # or any command line containing "uwsgi"
    ],
)
def test_a_parent_that_only_mentions_uwsgi_is_refused(
    proc: Path, caplog: pytest.LogCaptureFixture, cmdline: bytes
) -> None:
    make_proc(proc, MASTER, cmdline=cmdline)
    world = World(proc, {"master": True})
    assert "does not look like uwsgi" in refused(world, world.worker(), caplog)


def test_renamed_master_is_accepted_when_uwsgi_opt_names_it(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # --procname-master rewrites the master's command line; uwsgi.opt says to what.
    make_proc(proc, MASTER, cmdline=b"myapp master\0\0\0\0")
    world = World(proc, {"master": True, "procname-master": b"myapp master"})
    world.worker()(changes())
    assert world.uwsgi.reloads == 1
    other = World(proc, {"master": True})  # not told: refused
    assert "does not look like uwsgi" in refused(other, other.worker(), caplog)
    other.worker(server_names=["myapp"])(changes())  # the way out the WARNING names
    assert other.uwsgi.reloads == 1


@pytest.mark.parametrize(
    "cmdline",
    [
        b"/venv/bin/python3\0/venv/bin/uwsgi\0--master\0",  # pyuwsgi's console script
        b"/venv/bin/python\0/venv/bin/uwsgi\0--master\0",  # after a --binary-path reload
        b"/venv/bin/pyuwsgi\0--master\0",
        b"uWSGI master\0\0\0\0",  # --auto-procname
    ],
)
def test_real_master_command_lines_are_accepted(
    proc: Path, cmdline: bytes
) -> None:
    make_proc(proc, MASTER, cmdline=cmdline)
    world = World(proc, {"master": True})
    world.worker()(changes())
    assert world.uwsgi.reloads == 1


def test_procname_options_make_the_master_title() -> None:
    assert UwsgiOptions.parse({"procname-master": b"web master"}).master_title == "web master"
    assert UwsgiOptions.parse({"procname": b"web"}).master_title == "web"
    spaced = {"procname-master": b"master", "procname-prefix-spaced": b"shop"}
    assert UwsgiOptions.parse(spaced).master_title == "shop master"
    auto = {"auto-procname": True, "procname-prefix-spaced": b"shop"}
    assert UwsgiOptions.parse(auto).master_title == "shop uWSGI master"
    assert UwsgiOptions.parse({}).master_title is None


# -- one reload per change set across workers ------------------------------------------------
def test_workers_started_before_a_reload_do_not_ask_again(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, {"master": True})
    workers = [world.worker(booted=10.0) for _ in range(3)]
    with caplog.at_level(logging.INFO, "wsgireload"):
        for index, worker in enumerate(workers):
            # each saw the deploy at a different moment, so even the fingerprints differ
            world.system.now += 0.3
            worker(changes(f"fp{index}"))
    assert world.uwsgi.reloads == 1
    assert caplog.text.count("that reload replaces this worker") == 2


def test_a_worker_started_after_the_reload_reloads_for_a_new_change(proc: Path) -> None:
    world = World(proc, {"master": True})
    world.worker(booted=10.0)(changes("fp1"))
    world.system.now += 5.0
    world.worker(booted=world.system.now - 1.0)(changes("fp2"))
    assert world.uwsgi.reloads == 2


def test_without_a_shared_record_each_worker_reloads_and_says_why(
    proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, {"master": True}, coordinated=False)  # e.g. an unsafe runtime dir
    with caplog.at_level(logging.WARNING, "wsgireload"):
        world.worker()(changes())
    assert world.uwsgi.reloads == 1  # uWSGI ignores requests during a reload (measured)
    assert "no shared reload record (no record shared" in caplog.text


def test_new_worker_during_a_chain_wakes_the_master(
    proc: Path, tmp_path: Path
) -> None:
    fifo = mkfifo(tmp_path)
    opt = {"lazy-apps": True, "master-fifo": fifo.encode(), "processes": b"3"}
    world = World(proc, opt)
    world.worker(booted=10.0)(changes())
    assert len(world.system.wakes) == 1
    world.system.now += 1.0
    world.worker(booted=world.system.now)  # respawned by the chain: setup helps it along
    assert len(world.system.wakes) == 2
    world.system.now += 60.0
    world.worker(booted=world.system.now)  # long after the chain: nothing to help
    assert len(world.system.wakes) == 2


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_the_real_parent_is_not_a_uwsgi_master() -> None:
    uwsgi = FakeUwsgi({"master": True}, master=os.getppid())
    action = UwsgiAction(uwsgi_module=uwsgi, pyuwsgi=False, virtualenv=False)
    action.setup(context())
    assert action.master is not None and action.master.start_time is not None
    problem = action._problem()  # our parent is pytest's shell or runner, never uWSGI
    assert problem is not None and "does not look like uwsgi" in str(problem)


def test_uwsgi_action_never_imports_uwsgi_at_construction() -> None:
    # The Reloader resolves its action in the master before fork; setup happens per worker.
    action = UwsgiAction()
    assert action.method is None and "setup" in action.why_not


# -- a worker (or a master about to fork them): the watcher starts before any request ----------
def test_uwsgi_worker_master_and_others(fake_uwsgi: Callable[..., FakeUwsgi]) -> None:
    me, hooked = os.getpid(), []
    fake_uwsgi(worker=2, master=me + 1)
    assert uwsgi.early_environ() == {"uwsgi.version": b"2.0.31"}  # --lazy-apps, or forked
    fake = fake_uwsgi(worker=0, master=me)
    assert uwsgi.early_environ() is None and uwsgi.before_workers(lambda: hooked.append(1))
    fake.post_fork_hook()  # type: ignore[attr-defined]  # imports before forking: hooked
    assert hooked == [1]
    fake_uwsgi(worker=0, master=me + 1)
    assert uwsgi.early_environ() is None and not uwsgi.before_workers(print)  # a mule
    fake_uwsgi(worker=1, master=0)
    # no --master: nobody to reload, the first request starts as before
    assert uwsgi.early_environ() is None and not uwsgi.before_workers(print)


# -- uWSGI's post-fork hook: the user's keep running -----------------------------------------
def test_the_hook_already_set_runs_first_then_ours() -> None:
    calls: List[str] = []
    fake = FakeUwsgi(worker=0, master=1)
    fake.post_fork_hook = lambda: calls.append("user")  # type: ignore[attr-defined]
    uwsgi.after_fork(fake, lambda: calls.append("wsgireload"))
    fake.post_fork_hook()  # type: ignore[attr-defined]
    assert calls == ["user", "wsgireload"]


def test_a_failing_user_hook_does_not_stop_ours() -> None:
    calls: List[str] = []

    def user() -> None:
        raise RuntimeError("user hook")

    fake = FakeUwsgi(worker=0, master=1)
    fake.post_fork_hook = user  # type: ignore[attr-defined]
    uwsgi.after_fork(fake, lambda: calls.append("wsgireload"))
    with pytest.raises(RuntimeError):
        fake.post_fork_hook()  # type: ignore[attr-defined]  (uWSGI logs it, as before)
    assert calls == ["wsgireload"]


def test_uwsgidecorators_chain_is_joined_not_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    decorators = types.ModuleType("uwsgidecorators")
    chain: List[Callable[[], None]] = []

    def chain_hook() -> None:
        for function in chain:
            function()

    decorators.postfork_chain = chain  # type: ignore[attr-defined]
    decorators.postfork_chain_hook = chain_hook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgidecorators", decorators)
    fake = FakeUwsgi(worker=0, master=1)
    fake.post_fork_hook = chain_hook  # type: ignore[attr-defined]

    def ours() -> None:
        pass

    uwsgi.after_fork(fake, ours)
    assert fake.post_fork_hook is chain_hook and chain == [ours]  # type: ignore[attr-defined]
