"""Unit tests of the uWSGI action: fake uwsgi module, fake /proc, no sleeps.

Real servers prove the reloads themselves (tests/servers/test_uwsgi.py).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from wsgireload.actions import UwsgiAction
from wsgireload.actions.base import ProcessContext
from wsgireload.actions.uwsgi import (
    UwsgiOptions,
    first_fifo,
    write_fifo,
)
from wsgireload.policy import ChangeSet

from .conftest import FakeClock, ProcTree

MASTER = 4100
WORKER = 4101
UWSGI_ENVIRON = {"uwsgi.version": b"2.0.31"}


def changes(fingerprint: str = "fp1", *files: str) -> ChangeSet:
    return ChangeSet(files or ("/srv/app/mod.py",), fingerprint, 0.0, 0.0)


def context(environ: Optional[Dict[str, Any]] = None) -> ProcessContext:
    return ProcessContext(WORKER, WORKER, environ if environ is not None else UWSGI_ENVIRON)


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


class FakeUwsgi:
    """The parts of the ``uwsgi`` module the action uses."""

    def __init__(self, opt: Dict[Any, Any], masterpid: int = MASTER) -> None:
        self.opt = opt
        self.pid = masterpid
        self.reloads = 0

    def masterpid(self) -> int:
        return self.pid

    def reload(self) -> bool:
        self.reloads += 1
        return True


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    (root / "self").mkdir(parents=True)
    make_proc(root, MASTER)
    make_proc(root, WORKER, cmdline=b"/usr/bin/uwsgi\0--master\0")
    return root


@pytest.fixture
def rundir(tmp_path: Path) -> str:
    return str(tmp_path / "runtime")


class World:
    """One uWSGI master as its workers see it: fake module, fake /proc, shared record."""

    def __init__(self, proc: Path, rundir: str, opt: Dict[Any, Any]) -> None:
        self.proc = proc
        self.rundir = rundir
        self.uwsgi = FakeUwsgi(opt)
        self.clock = FakeClock()
        self.parent = MASTER
        self.uid = 1001  # the workers' uid
        self.fifo_writes: List[Tuple[str, bytes]] = []
        self.wakes: List[Tuple[str, float]] = []
        self.fifo_error: Optional[OSError] = None

    def write_fifo(self, path: str, data: bytes) -> None:
        if self.fifo_error is not None:
            raise self.fifo_error
        self.fifo_writes.append((path, data))

    def worker(self, *, booted: float = 0.0, **kwargs: Any) -> UwsgiAction:
        kwargs.setdefault("pyuwsgi", False)
        kwargs.setdefault("virtualenv", False)
        action = UwsgiAction(
            proc_root=str(self.proc),
            getppid=lambda: self.parent,
            getuid=lambda: self.uid,
            geteuid=lambda: self.uid,
            uwsgi_module=self.uwsgi,
            runtime_dir=self.rundir,
            fifo_writer=self.write_fifo,
            clock=self.clock,
            booted=booted,
            waker=lambda fifo, until: self.wakes.append((fifo, until)),
            **kwargs,
        )
        action.setup(context())
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
def test_lazy_apps_with_fifo_chain_reloads(proc: Path, rundir: str, tmp_path: Path) -> None:
    fifo = mkfifo(tmp_path)
    opt = {"master": True, "lazy-apps": True, "master-fifo": fifo.encode()}
    world = World(proc, rundir, opt)
    action = world.worker()
    assert action.describe() == f"uWSGI chain reload (master FIFO {fifo})"
    action(changes())
    assert world.fifo_writes == [(fifo, b"c")]
    assert world.uwsgi.reloads == 0
    assert [f for f, _ in world.wakes] == [fifo]  # it keeps the master's loop moving


def test_without_lazy_apps_a_fifo_is_not_used(proc: Path, rundir: str, tmp_path: Path) -> None:
    # A chain reload without lazy-apps forks workers from a master holding the old code.
    fifo = mkfifo(tmp_path)
    world = World(proc, rundir, {"master": True, "master-fifo": fifo.encode()})
    action = world.worker()
    action(changes())
    assert world.uwsgi.reloads == 1
    assert world.fifo_writes == []


def test_lazy_apps_without_fifo_full_reloads(proc: Path, rundir: str) -> None:
    world = World(proc, rundir, {"master": True, "lazy-apps": True})
    world.worker()(changes())
    assert world.uwsgi.reloads == 1


def test_configured_fifo_missing_warns_and_full_reloads(
    proc: Path, rundir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = str(tmp_path / "nofifo")
    world = World(proc, rundir, {"lazy-apps": True, "master-fifo": missing.encode()})
    with caplog.at_level(logging.WARNING, "wsgireload"):
        action = world.worker()
    assert "is not a FIFO" in caplog.text
    action(changes())
    assert world.uwsgi.reloads == 1


def test_fifo_write_failure_falls_back_to_full_reload(
    proc: Path, rundir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = mkfifo(tmp_path)
    world = World(proc, rundir, {"lazy-apps": True, "master-fifo": fifo.encode()})
    world.fifo_error = OSError(errno.ENXIO, "No such device or address")
    with caplog.at_level(logging.WARNING, "wsgireload"):
        world.worker()(changes())
    assert world.uwsgi.reloads == 1
    assert "using uwsgi.reload()" in caplog.text


def test_failed_uwsgi_reload_is_logged(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, rundir, {"master": True})
    world.uwsgi.reload = lambda: None  # type: ignore[method-assign]  # uWSGI's kill() failed
    with caplog.at_level(logging.ERROR, "wsgireload"):
        world.worker()(changes())
    assert "uwsgi.reload() failed" in caplog.text


# -- pyuwsgi in a virtualenv -----------------------------------------------------------------
def errors(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_pyuwsgi_in_venv_without_binary_path_refuses_with_the_fix(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, rundir, {"master": True})
    first = world.worker(pyuwsgi=True, virtualenv=True)
    second = world.worker(pyuwsgi=True, virtualenv=True)
    assert "none" in first.describe()
    with caplog.at_level(logging.DEBUG, "wsgireload"):
        first(changes("fp1"))
        second(changes("fp1"))  # another worker, same deploy: no second ERROR
    assert world.uwsgi.reloads == 0
    assert world.fifo_writes == []
    [message] = errors(caplog)
    assert f"--binary-path {os.path.join(sys.prefix, 'bin', 'python')}" in message
    assert "'uwsgi' package" in message
    caplog.clear()
    with caplog.at_level(logging.ERROR, "wsgireload"):
        second(changes("fp2"))  # the next deploy is refused out loud again
    assert len(errors(caplog)) == 1
    assert world.uwsgi.reloads == 0


def test_pyuwsgi_in_venv_with_binary_path_reloads(proc: Path, rundir: str) -> None:
    world = World(proc, rundir, {"master": True, "binary-path": b"/venv/bin/python"})
    world.worker(pyuwsgi=True, virtualenv=True)(changes())
    assert world.uwsgi.reloads == 1


def test_pyuwsgi_outside_a_venv_reloads(proc: Path, rundir: str) -> None:
    world = World(proc, rundir, {"master": True})
    world.worker(pyuwsgi=True, virtualenv=False)(changes())
    assert world.uwsgi.reloads == 1


def test_pyuwsgi_in_venv_chain_reload_is_safe(proc: Path, rundir: str, tmp_path: Path) -> None:
    # A chain reload never re-executes the master, so the pyuwsgi hazard does not apply.
    fifo = mkfifo(tmp_path)
    world = World(proc, rundir, {"lazy-apps": True, "master-fifo": fifo.encode()})
    world.worker(pyuwsgi=True, virtualenv=True)(changes())
    assert world.fifo_writes == [(fifo, b"c")]


def test_pyuwsgi_chain_fifo_failure_does_not_fall_back_to_a_killing_reload(
    proc: Path, rundir: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = mkfifo(tmp_path)
    world = World(proc, rundir, {"lazy-apps": True, "master-fifo": fifo.encode()})
    world.fifo_error = OSError(errno.ENXIO, "No such device or address")
    with caplog.at_level(logging.ERROR, "wsgireload"):
        world.worker(pyuwsgi=True, virtualenv=True)(changes())
    assert world.uwsgi.reloads == 0
    assert "--binary-path" in caplog.text


# -- master verification ---------------------------------------------------------------------
def refused(world: World, action: UwsgiAction, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.WARNING, "wsgireload"):
        action(changes())
    assert world.uwsgi.reloads == 0 and world.fifo_writes == []
    return caplog.text


def test_no_master_means_no_reload(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, rundir, {})
    world.uwsgi.pid = 0  # uwsgi.masterpid() without --master
    action = world.worker()
    text = refused(world, action, caplog)
    assert "runs without a master process (uwsgi.masterpid() is 0)" in text
    assert "start uWSGI with --master" in text


def test_a_master_that_is_pid_1_reloads(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A container without an init: `uwsgi --master` is pid 1 of its pid namespace.
    make_proc(proc, 1, cmdline=b"/venv/bin/uwsgi\0--master\0--processes\x003\0")
    world = World(proc, rundir, {"master": True})
    world.uwsgi.pid = 1
    world.parent = 1
    with caplog.at_level(logging.WARNING, "wsgireload"):
        world.worker()(changes())
    assert world.uwsgi.reloads == 1
    assert "--master" not in caplog.text


def test_an_orphan_adopted_by_a_pid_1_that_looks_like_uwsgi_signals_nobody(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_proc(proc, 1, cmdline=b"uWSGI master\0\0\0")
    world = World(proc, rundir, {"master": True})
    action = world.worker()  # its master is MASTER
    world.parent = 1  # MASTER died; pid 1 adopted this worker
    assert "no longer this worker's parent" in refused(world, action, caplog)


def test_master_pid_changed(proc: Path, rundir: str, caplog: pytest.LogCaptureFixture) -> None:
    world = World(proc, rundir, {"master": True})
    action = world.worker()
    world.uwsgi.pid = MASTER + 7
    assert "master pid changed" in refused(world, action, caplog)


def test_master_no_longer_our_parent(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, rundir, {"master": True})
    action = world.worker()
    world.parent = 1  # the master died; init (or a subreaper) adopted us
    assert "no longer this worker's parent" in refused(world, action, caplog)


def test_master_pid_recycled(proc: Path, rundir: str, caplog: pytest.LogCaptureFixture) -> None:
    world = World(proc, rundir, {"master": True})
    action = world.worker()
    make_proc(proc, MASTER, start="9999")
    assert "was reused" in refused(world, action, caplog)


def test_master_gone_from_proc(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, rundir, {"master": True})
    action = world.worker()
    (proc / str(MASTER) / "stat").unlink()
    assert "no longer exists" in refused(world, action, caplog)


def test_master_of_another_user(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_proc(proc, MASTER, uid=0)
    world = World(proc, rundir, {"master": True})
    world.uid = 12345
    text = refused(world, action=world.worker(), caplog=caplog)
    assert "runs as uid 0 and this worker as uid 12345" in text
    assert "--uid" in text  # what to do


def test_master_that_is_not_uwsgi(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_proc(proc, MASTER, cmdline=b"/bin/bash\0-l\0")
    world = World(proc, rundir, {"master": True})
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
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture, cmdline: bytes
) -> None:
    make_proc(proc, MASTER, cmdline=cmdline)
    world = World(proc, rundir, {"master": True})
    assert "does not look like uwsgi" in refused(world, world.worker(), caplog)


def test_renamed_master_is_accepted_when_uwsgi_opt_names_it(
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    # --procname-master rewrites the master's command line; uwsgi.opt says to what.
    make_proc(proc, MASTER, cmdline=b"myapp master\0\0\0\0")
    world = World(proc, rundir, {"master": True, "procname-master": b"myapp master"})
    world.worker()(changes())
    assert world.uwsgi.reloads == 1
    other = World(proc, rundir + "-other", {"master": True})  # not told: refused
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
    proc: Path, rundir: str, cmdline: bytes
) -> None:
    make_proc(proc, MASTER, cmdline=cmdline)
    world = World(proc, rundir, {"master": True})
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
    proc: Path, rundir: str, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(proc, rundir, {"master": True})
    workers = [world.worker(booted=10.0) for _ in range(3)]
    with caplog.at_level(logging.INFO, "wsgireload"):
        for index, worker in enumerate(workers):
            # each saw the deploy at a different moment, so even the fingerprints differ
            world.clock.now += 0.3
            worker(changes(f"fp{index}"))
    assert world.uwsgi.reloads == 1
    assert caplog.text.count("that reload replaces this worker") == 2


def test_a_worker_started_after_the_reload_reloads_for_a_new_change(
    proc: Path, rundir: str
) -> None:
    world = World(proc, rundir, {"master": True})
    world.worker(booted=10.0)(changes("fp1"))
    world.clock.now += 5.0
    world.worker(booted=world.clock.now - 1.0)(changes("fp2"))
    assert world.uwsgi.reloads == 2


def test_unsafe_runtime_dir_still_reloads_once_per_worker_and_says_why(
    proc: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    world = World(proc, str(shared), {"master": True})
    with caplog.at_level(logging.WARNING, "wsgireload"):
        world.worker()(changes())
    assert world.uwsgi.reloads == 1  # uWSGI ignores requests during a reload (measured)
    assert "accessible to other users" in caplog.text
    assert not list(shared.iterdir())  # nothing written where others could meddle


def test_the_record_is_the_masters_one_record(proc: Path, rundir: str) -> None:
    world = World(proc, rundir, {"master": True})
    world.worker(booted=10.0)(changes())
    [name] = [n for n in os.listdir(rundir) if n.endswith(".master.json")]
    assert name == f"uwsgi-{MASTER}-5000.master.json"
    assert stat.S_IMODE(os.stat(rundir).st_mode) == 0o700
    Path(rundir, name).write_text("{not json")  # torn: start afresh, keep reloading
    world.clock.now += 5.0
    world.worker(booted=world.clock.now - 1.0)(changes("fp2"))
    assert world.uwsgi.reloads == 2


def test_new_worker_during_a_chain_wakes_the_master(
    proc: Path, rundir: str, tmp_path: Path
) -> None:
    fifo = mkfifo(tmp_path)
    opt = {"lazy-apps": True, "master-fifo": fifo.encode(), "processes": b"3"}
    world = World(proc, rundir, opt)
    world.worker(booted=10.0)(changes())
    assert len(world.wakes) == 1
    world.clock.now += 1.0
    world.worker(booted=world.clock.now)  # respawned by the chain: setup helps it along
    assert len(world.wakes) == 2
    world.clock.now += 60.0
    world.worker(booted=world.clock.now)  # long after the chain: nothing to help
    assert len(world.wakes) == 2


# -- low-level helpers on this machine -------------------------------------------------------
def test_write_fifo_refuses_regular_files_and_never_blocks(tmp_path: Path) -> None:
    regular = tmp_path / "plain"
    regular.write_text("")
    with pytest.raises(OSError):
        write_fifo(str(regular), b"c")
    fifo = mkfifo(tmp_path)
    with pytest.raises(OSError) as info:
        write_fifo(fifo, b"c")  # nobody reading: the master is gone
    assert info.value.errno == errno.ENXIO
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_fifo(fifo, b"c")
        assert os.read(reader, 10) == b"c"
    finally:
        os.close(reader)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_the_real_parent_is_not_a_uwsgi_master() -> None:
    uwsgi = FakeUwsgi({"master": True}, masterpid=os.getppid())
    action = UwsgiAction(uwsgi_module=uwsgi, pyuwsgi=False, virtualenv=False)
    action.setup(context())
    assert action.master is not None and action.master.start_time is not None
    problem = action._problem()  # our parent is pytest's shell or runner, never uWSGI
    assert problem is not None and "does not look like uwsgi" in str(problem)


def test_uwsgi_action_never_imports_uwsgi_at_construction() -> None:
    # The Reloader resolves its action in the master before fork; setup happens per worker.
    action = UwsgiAction()
    assert action.method is None and "setup" in action.why_not
