"""The engine shared by the workers of one master: one scanner, one validation and one line per
deploy, per-master actions once, per-process actions once in every process born before it;
and the process faults it must survive: a fork after the watcher started, signals mid-scan,
an exit while it scans.

Several workers are simulated in this process: each Engine gets a Share with its own fake pid.
Forked children report through a pipe and leave with os._exit; every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from wsgireload import Reloader, _record, engine
from wsgireload._options import Options
from wsgireload._record import Record, Share
from wsgireload.actions import Action
from wsgireload.boot import BootCheck, parse_target
from wsgireload.engine import Engine
from wsgireload.policy import ChangeSet, Policy

from .conftest import (
    FakeClock,
    NeedsNewdep,
    Recorder,
    edit,
    environ,
    first_step_done,
    force_due,
    install,
    make_reloader,
    ok_app,
    run_in_child,
    serve,
    serve_a_reload,
)
from .fakes import FakeSystem


class Recording(Action):
    name = "recording"

    def __init__(self, per_process: bool) -> None:
        self.calls: List[ChangeSet] = []
        self._per_process = per_process

    @property
    def per_process(self) -> bool:  # type: ignore[override]
        return self._per_process

    def __call__(self, changes: ChangeSet) -> None:
        self.calls.append(changes)

    def advance(self) -> None:
        self.advanced = getattr(self, "advanced", 0) + 1


class Worker:
    """One simulated worker: an engine over the watched file, joined to the shared record."""

    def __init__(self, record: Record, pid: int, watched: Path, system: FakeSystem,
                 per_process: bool, born: Optional[float] = None) -> None:
        # compile only: these tests count the engine's lines (the boot check has its own tests)
        options = Options.build("test", extra_files=[str(watched.parent / "*.py")],
                                modules=False, settle=0, settle_max=0, validate="compile")
        self.action = Recording(per_process)
        self.engine = Engine(options, self.action)
        self.engine.pid = os.getpid()  # setup ran: the share below stands for joining
        self.engine._joined = True
        share = Share(record, pid, f"st{pid}", born=system.now - 100 if born is None else born,
                      lease=5.0, system=system)
        share.join()
        self.engine.share = share

    def tick(self, now: float) -> Optional[ChangeSet]:
        changes = self.engine.step(now)
        if changes is not None:
            self.engine.act(changes)
        return changes


@dataclass
class World:
    watched: Path
    record: Record
    system: FakeSystem

    def workers(self, per_process: bool, count: int = 3) -> List[Worker]:
        return [
            Worker(self.record, pid, self.watched, self.system, per_process)
            for pid in range(1, count + 1)
        ]


@pytest.fixture
def mod(tmp_path: Path) -> Path:
    """The app's module, ``mod.py`` (``X = 1``), in the test's directory."""
    path = tmp_path / "mod.py"
    path.write_text("X = 1\n")
    return path


@pytest.fixture
def world(tmp_path: Path, mod: Path) -> World:
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    record = Record(str(rundir / "gunicorn-42-7.master.json"))
    system = FakeSystem(now=1_000_000.0)
    for pid in (1, 2, 3):
        system.add(pid, start=None)
    return World(mod, record, system)


def tick(team: List[Worker], *times: float) -> None:
    """Every worker takes a step at each of ``times``, in turn."""
    for now in times:
        for worker in team:
            worker.tick(now)


def deploy(
    world: World, per_process: bool, text: str, caplog: pytest.LogCaptureFixture
) -> List[Worker]:
    """Three workers that served, an edit of the watched file, and three steps of each; the
    log captured down to DEBUG."""
    caplog.set_level(logging.DEBUG, logger="wsgireload")
    team = world.workers(per_process=per_process)
    tick(team, 1.0)
    edit(world.watched, text)
    tick(team, 2.0, 3.0, 4.0)
    return team


def test_a_per_master_action_runs_once_and_one_line_is_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    team = deploy(world, False, "X = 2\n", caplog)
    assert [len(w.action.calls) for w in team] == [1, 0, 0]
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    described = team[0].action.calls[0].describe()
    assert info == [f"wsgireload: 1 file changed ({described}); reloading with recording"]
    generation = world.record.read()["generation"]
    assert generation["n"] == 1 and generation["files"] == [str(world.watched)]


def test_a_per_process_action_runs_once_in_every_worker_born_before_it(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    team = deploy(world, True, "X = 2\n", caplog)
    assert [len(w.action.calls) for w in team] == [1, 1, 1]
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "every other worker of master" in line
    newborn = Worker(world.record, 4, world.watched, world.system, per_process=True,
                     born=world.system.now + 1)
    for now in (5.0, 6.0):
        newborn.tick(now)
    assert newborn.action.calls == []  # forked after the decision: it runs the new code


def test_a_broken_deploy_is_validated_and_refused_once_per_master(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    team = deploy(world, False, "X = (\n", caplog)
    watched, record = world.watched, world.record
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "mod.py:1" in errors[0].getMessage()
    data = record.read()
    assert [v["verdict"] for v in data["validations"]] == ["refused"]
    assert data["last_refusal"]["where"] == f"{watched}:1"
    edit(watched, "X = 3\n")
    tick(team, 5.0, 6.0)
    assert [v["verdict"] for v in record.read()["validations"]] == ["refused", "ok"]
    assert [len(w.action.calls) for w in team] == [1, 0, 0]


def test_a_new_scanner_does_not_decide_again_what_was_decided(world: World) -> None:
    watched, record, system = world.watched, world.record, world.system
    team = world.workers(per_process=False)
    tick(team, 1.0)
    edit(watched, "X = 2\n")
    team[0].tick(2.0)  # the scanner decides; the followers never scanned
    assert len(team[0].action.calls) == 1
    del system.procs[1]  # the scanner exits (replaced by the reload)
    record.update(lambda data: {**data, "lease": {**data["lease"], "expires": 0}})
    tick(team[1:], 3.0, 4.0, 5.0)
    assert record.read()["lease"]["pid"] == 2
    assert [len(w.action.calls) for w in team] == [1, 0, 0]
    assert record.read()["generation"]["n"] == 1


def test_a_new_scanner_checks_a_refused_deploy_again(world: World, tmp_path: Path) -> None:
    """The scanner that refused a deploy for a missing module exits; the module is installed;
    the worker that takes over checks the deploy again (its predecessor's watch of the
    environment left with it) and reloads."""
    lib = tmp_path / "lib"
    lib.mkdir()
    runner = NeedsNewdep(lib)
    team = world.workers(per_process=False, count=2)
    for worker in team:
        check = BootCheck(app=parse_target("mod"), runner=runner, python=lambda: sys.executable)
        check.search_path = lambda: [str(lib)]  # type: ignore[method-assign]
        worker.engine.policy = Policy(settle=0, settle_max=0, boot=check)
    tick(team, 1.0)
    edit(world.watched, "import newdep\n")
    team[0].tick(2.0)
    assert runner.runs == 1 and world.record.read()["last_refusal"]["files"]
    del world.system.procs[1]  # the scanner exits
    world.record.update(lambda data: {**data, "lease": {**data["lease"], "expires": 0}})
    install(lib, "newdep.py")
    tick(team[1:], 3.0, 4.0, 5.0)
    assert world.record.read()["lease"]["pid"] == 2
    assert runner.runs == 2 and [len(w.action.calls) for w in team] == [0, 1]


def test_without_a_record_each_process_scans_and_acts_alone(mod: Path) -> None:
    action = Recording(per_process=False)
    options = Options.build(
        "test", extra_files=[str(mod)], modules=False, settle=0, settle_max=0
    )
    engine = Engine(options, action, master=("gunicorn", 1))  # not our parent: no record
    assert engine.step(1.0) is None and engine.share is None
    edit(mod, "X = 2\n")
    changes = engine.step(2.0)
    assert changes is not None and changes.files == (str(mod),)


def test_a_refused_deploy_is_checked_again_when_a_module_is_installed(
    tmp_path: Path, mod: Path
) -> None:
    lib = tmp_path / "lib"  # a directory on the search path the boot check imports from
    lib.mkdir()
    runner = NeedsNewdep(lib)
    check = BootCheck(app=parse_target("mod"), runner=runner, python=lambda: sys.executable)
    check.search_path = lambda: [str(lib)]  # type: ignore[method-assign]
    options = Options.build("test", extra_files=[str(mod)], modules=False)
    engine = Engine(options, Recording(per_process=False))
    engine.policy = Policy(settle=0, settle_max=0, boot=check)
    assert engine.step(1.0) is None
    edit(mod, "import newdep\n")
    assert [engine.step(t) for t in (2.0, 3.0, 4.0)] == [None] * 3 and runner.runs == 1
    install(lib, "newdep.py")
    changes = engine.step(5.0)
    assert changes is not None and changes.files == (str(mod),) and runner.runs == 2


def test_options_are_frozen_and_checked_once() -> None:
    options = Options.build("Reloader", interval=2, extra_files="a/*.html")
    assert options.extra_files == ("a/*.html",) and options.interval == 2
    with pytest.raises(AttributeError):
        options.interval = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword argument 'intervall'"):
        Options.build("Reloader", intervall=2)


def test_a_worker_that_takes_over_from_a_restarted_scanner_logs_its_own_restart_at_debug(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    team = world.workers(per_process=True)
    tick(team, 1.0)
    edit(world.watched, "X = 2\n")
    caplog.set_level(logging.DEBUG, logger="wsgireload")
    team[0].tick(2.0)  # decides and restarts itself...
    del world.system.procs[1]  # ...and is gone: the next follower takes the lease over
    tick(team[1:], 3.0, 4.0)
    assert [len(w.action.calls) for w in team] == [1, 1, 1]
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1
    assert world.record.read()["lease"]["pid"] in (2, 3)


def test_a_long_lived_follower_taking_over_does_not_decide_old_deploys_again(
    world: World,
) -> None:
    other = world.watched.parent / "other.py"
    other.write_text("Y = 1\n")
    team = world.workers(per_process=True)  # callbacks: every worker acts and lives on
    tick(team, 1.0)
    edit(world.watched, "X = 2\n")
    tick(team, 2.0)  # generation 1: mod.py
    edit(other, "Y = 2\n")
    tick(team, 3.0)  # generation 2: other.py
    assert [len(w.action.calls) for w in team] == [2, 2, 2]
    del world.system.procs[1]
    world.record.update(lambda data: {**data, "lease": {**data["lease"], "expires": 0}})
    tick(team[1:], 4.0, 5.0, 6.0)
    assert [len(w.action.calls) for w in team] == [2, 2, 2]
    assert world.record.read()["generation"]["n"] == 2


def test_a_follower_with_a_reload_still_due_keeps_the_next_generation_for_later(
    world: World,
) -> None:
    team = world.workers(per_process=True)
    tick(team, 1.0)
    edit(world.watched, "X = 2\n")
    team[0].tick(2.0)
    follower = team[1].engine
    assert follower.step(3.0, decide=False) is None  # its owner has not acted on one yet
    changes = follower.step(4.0)
    assert changes is not None and changes.files == (str(world.watched),)


@pytest.mark.parametrize("per_process, follower_pause", [(False, 60.0), (True, 0.5)])
def test_followers_of_a_per_master_action_wake_rarely(
    world: World, per_process: bool, follower_pause: float
) -> None:
    scanner, follower = world.workers(per_process=per_process, count=2)
    scanner.tick(1.0)
    follower.tick(1.0)
    assert scanner.engine.pause(0.5) == 0.5  # it scans every interval
    assert follower.engine.pause(0.5) == follower_pause  # a per-master follower: FOLLOW_EVERY


def test_the_first_step_comes_soon_and_a_scanner_rolling_out_steps_fast(world: World) -> None:
    scanner, follower = world.workers(per_process=False, count=2)
    assert scanner.engine.pause(1.0) == 0.0  # at once: joining marks the worker ready
    alone = world.workers(per_process=False, count=1)[0]
    alone.engine.share = None  # no master: no rollout waits for it
    assert alone.engine.pause(1.0) == engine.FIRST_STEP
    scanner.tick(1.0)
    follower.tick(1.0)
    assert getattr(scanner.action, "advanced", 0) == 1  # the scanner drives a rollout
    assert getattr(follower.action, "advanced", 0) == 0
    scanner.action.rolling = True
    assert scanner.engine.pause(1.0) == engine.ROLL_STEP
    assert follower.engine.pause(1.0) == engine.FOLLOW_EVERY


def test_with_no_writable_place_for_the_record_a_worker_scans_and_acts_alone(
    tmp_path: Path, mod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "read-only"
    blocker.write_text("")  # a file where the runtime directory would go
    monkeypatch.setattr(_record, "default_runtime_dir", lambda: str(blocker / "run"))
    action = Recording(per_process=False)
    options = Options.build(
        "test", extra_files=[str(mod)], modules=False, settle=0, settle_max=0
    )
    engine = Engine(options, action, master=("gunicorn", os.getppid()))
    assert engine.step(1.0) is None and engine.share is None
    edit(mod, "X = 2\n")
    changes = engine.step(2.0)
    assert changes is not None and engine.act(changes) is None and len(action.calls) == 1


def test_the_record_is_kept_where_the_action_says(tmp_path: Path, mod: Path) -> None:
    # GunicornAction(runtime_dir=...): a read-only /tmp (a container) still coordinates.
    action = Recording(per_process=False)
    action.runtime_dir = str(tmp_path / "run")
    options = Options.build("test", extra_files=[str(mod)], modules=False)
    engine = Engine(options, action, master=("gunicorn", os.getppid()))
    engine.step(1.0)
    assert engine.coordinated and engine.share is not None
    assert os.path.dirname(engine.share.record.path) == str(tmp_path / "run")
    engine.close()


class FallsBack(Recording):
    """A per-master action that finds the master out of reach when it acts (EPERM on the
    HUP), falls back to restarting each worker and says so to the engine."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(per_process=False)
        self.engine = engine

    def __call__(self, changes: ChangeSet) -> None:
        super().__call__(changes)
        if not self._per_process:
            self._per_process = True
            self.engine.restart_each_worker()


def test_an_action_that_falls_back_to_per_process_while_acting_reaches_every_worker(
    world: World,
) -> None:
    team = world.workers(per_process=False)
    for worker in team:
        worker.action = FallsBack(worker.engine)
        worker.engine.action = worker.action
    tick(team, 1.0)
    edit(world.watched, "X = 2\n")
    tick(team, 2.0, 3.0, 4.0)
    assert [len(w.action.calls) for w in team] == [1, 1, 1]  # each worker once
    generation = world.record.read()["generation"]
    assert generation["n"] == 2 and generation["per_process"]
    tick(team, 5.0, 6.0)
    assert [len(w.action.calls) for w in team] == [1, 1, 1]


# -- process faults ---------------------------------------------------------------------------
REPO = str(Path(__file__).resolve().parents[1])


def test_fork_after_the_watcher_started(watched: Path) -> None:
    """The child never inherits the parent's (dead) thread; it starts its own at its first
    request, which then reloads in the child alone."""
    parent_calls = Recorder()
    child_calls: List[int] = []

    def action(changes: Any) -> None:
        if os.getpid() == parent_pid:
            parent_calls(changes)
        else:
            child_calls.append(os.getpid())

    parent_pid = os.getpid()
    reloader, clock = make_reloader(ok_app, watched, action)
    try:
        serve(reloader, environ())
        parent_thread = reloader._thread  # noqa: SLF001
        assert parent_thread is not None and parent_thread.is_alive()
        # The parent's first step (it comes at once) ends before the fork: a step running in
        # the parent while the child deploys would act on the child's deploy.
        first_step_done(reloader)

        def child() -> Dict[str, Any]:
            before = {
                "thread": reloader._thread is not None,  # noqa: SLF001
                "watchers": [
                    t.name for t in threading.enumerate() if t.name == "wsgireload-watcher"
                ],
                "steady": reloader._steady,  # noqa: SLF001
            }
            got, errors = serve(reloader, environ())
            thread = reloader._thread  # noqa: SLF001
            after = {
                "alive": thread is not None and thread.is_alive(),
                "own": thread is not parent_thread,
                "watchers": sum(t.name == "wsgireload-watcher" for t in threading.enumerate()),
                "body": got[0].decode() if got else None,
            }
            force_due(reloader, watched, clock)
            serve(reloader, environ())
            reloader.close()
            return {
                "before": before,
                "after": after,
                "child_calls": len(child_calls),
                "alive_after_close": thread is not None and thread.is_alive(),
            }

        result = run_in_child(child)
        assert result["before"] == {"thread": False, "watchers": [], "steady": False}, result
        assert result["after"] == {"alive": True, "own": True, "watchers": 1, "body": "ok"}, result
        assert result["child_calls"] == 1 and result["alive_after_close"] is False
        # The parent is untouched: its thread runs, nothing fired here.
        assert parent_thread.is_alive() and reloader._thread is parent_thread  # noqa: SLF001
        assert parent_calls.count == 0
        serve(reloader, environ())
        assert parent_calls.count == 0
    finally:
        reloader.close()


def test_fork_while_a_reload_is_due_does_not_double_fire(watched: Path) -> None:
    """A change set due in the parent fires in the parent; the child does not repeat it."""
    calls: List[int] = []
    reloader, clock = make_reloader(ok_app, watched, lambda c: calls.append(os.getpid()))
    try:
        serve(reloader, environ())
        force_due(reloader, watched, clock)

        def child() -> Dict[str, Any]:
            serve(reloader, environ())
            serve(reloader, environ())
            reloader.close()
            return {"calls": len(calls), "due": reloader.reload_due is not None}

        assert run_in_child(child) == {"calls": 0, "due": False}
        serve(reloader, environ())
        assert calls == [os.getpid()]
    finally:
        reloader.close()


def test_only_the_action_signals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Middleware, engine, detector and policy send no signal of their own, even when a
    reload is due and fires: only the action (here a recording callback) acts."""
    signals: List[Tuple[str, Any]] = []
    for module, name in ((os, "kill"), (os, "killpg"), (signal, "pthread_kill"),
                         (signal, "raise_signal"), (os, "abort")):
        monkeypatch.setattr(module, name, lambda *a, n=name: signals.append((n, a)))
    watched = tmp_path / "watched.txt"
    watched.write_text("1")
    recorder = Recorder()
    serve_a_reload(ok_app, watched, recorder)
    assert recorder.count == 1 and signals == []


@pytest.mark.parametrize("handler_raises", [False, True], ids=["handler-returns", "handler-raises"])
def test_signal_during_a_scan_loses_no_change(tmp_path: Path, handler_raises: bool) -> None:
    """SIGALRM every 0.2 ms while the main thread scans 3,000 files (inline mode's situation).

    A handler that raises aborts that scan; the Reloader survives, and every changed file is
    still reported by a later scan (none silently adopted by the interrupted one).
    """
    root = tmp_path / "tree"
    files = []
    for i in range(30):
        sub = root / f"d{i:02d}"
        sub.mkdir(parents=True)
        for j in range(100):
            path = sub / f"f{j:02d}.tpl"
            path.write_bytes(b"")
            files.append(path)
    clock = FakeClock()
    reloader = Reloader(
        ok_app,
        extra_files=[str(root / "**" / "*.tpl")],
        settle=0,
        settle_max=0,
        action=Recorder(),
        clock=clock,
        interval=3600,
        mode="inline",
        validate=None,
    )
    for n, path in enumerate(files):
        os.utime(path, ns=(1, 10**18 + n))

    class Interrupted(Exception):
        pass

    hits = [0]
    raised_in: List[str] = []

    baseline = reloader.detector.baseline
    first, last = str(files[0]), str(files[-1])  # the scan stats in sorted order

    def handler(signum: int, frame: Any) -> None:
        hits[0] += 1
        # Raise once, in the middle of the stat loop: the first file already compared, the
        # last one not yet.
        mid_scan = (
            baseline[first] != (0, 0, 0)
            and baseline[first][0] == 10**18
            and (baseline[last] is None or baseline[last][0] != 10**18 + len(files) - 1)
        )
        if handler_raises and not raised_in and mid_scan:
            raised_in.append(frame.f_code.co_name if frame is not None else "?")
            raise Interrupted()

    old = signal.signal(signal.SIGALRM, handler)
    seen: List[str] = []
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        try:
            for _ in range(3):
                clock.now += 1
                changes = reloader.run_step(clock.now)
                if changes is not None:
                    seen.extend(changes.files)
                    reloader._due = None  # noqa: SLF001 - acknowledge it; no request here
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
        for _ in range(2):  # and once more without signals
            clock.now += 1
            changes = reloader.run_step(clock.now)
            if changes is not None:
                seen.extend(changes.files)
                reloader._due = None  # noqa: SLF001
    finally:
        signal.signal(signal.SIGALRM, old)
        reloader.close()
    assert hits[0] > 0, "the timer never fired during the scans"
    assert bool(raised_in) == handler_raises, "the signal never interrupted a stat loop"
    assert sorted(set(seen)) == sorted(str(p) for p in files)


SHUTDOWN_APP = """
import os, sys, threading, time
sys.path.insert(0, {repo!r})
from wsgireload import Reloader

def app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]

reloader = Reloader(app, interval=0.001, settle=0, settle_max=0, validate="compile",
                    extra_files=[{pattern!r}], action=lambda changes: None)
import io
env = {{"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO(),
       "wsgi.errors": sys.stderr}}
result = reloader(env, lambda *a: None)
list(result)
getattr(result, "close", lambda: None)()
assert any(t.name == "wsgireload-watcher" for t in threading.enumerate())
# Keep files changing so the watcher is mid-scan or mid-compile when the interpreter exits.
for n in range({touches}):
    p = os.path.join({root!r}, "m%d.py" % (n % 50))
    with open(p, "w") as f:
        f.write("x = %d\\n" % n)
time.sleep({linger})
{exit}
"""


@pytest.mark.parametrize(
    "exit_how",
    ["return", "sys.exit(0)", "raise SystemExit(0)"],
    ids=["fall-off", "sys-exit", "raise"],
)
def test_interpreter_shutdown_while_the_watcher_runs_is_silent(
    tmp_path: Path, exit_how: str
) -> None:
    root = tmp_path / "code"
    root.mkdir()
    for n in range(300):
        (root / f"m{n}.py").write_text(f"x = {n}\n")
    for attempt in range(3):
        script = tmp_path / f"app{attempt}.py"
        script.write_text(
            SHUTDOWN_APP.format(
                repo=REPO,
                pattern=str(root / "*.py"),
                root=str(root),
                touches=200 * (attempt + 1),
                linger=0.002 * attempt,
                exit="" if exit_how == "return" else exit_how,
            )
        )
        proc = subprocess.run(
            [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(script)],
            capture_output=True,
            timeout=60,
            env=dict(os.environ, PYTHONDEVMODE="1"),
        )
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr and "Exception" not in stderr, stderr
        assert stderr.strip() == "", stderr


def test_exit_from_a_request_thread_while_the_watcher_scans(tmp_path: Path) -> None:
    """os._exit is not needed: a plain exit with the daemon watcher mid-scan prints nothing."""
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {REPO!r})
        from wsgireload import Reloader
        reloader = Reloader(lambda e, s: [b""], interval=0.0001, include_stdlib=True,
                            action=lambda c: None)
        reloader({{}}, lambda *a: None)
        t = threading.Thread(target=sys.exit, args=(0,))
        t.start(); t.join()
    """)
    )
    proc = subprocess.run(
        [sys.executable, "-X", "dev", str(script)], capture_output=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode(errors="replace")


def test_code_changed_after_a_fork_while_another_thread_held_its_lock() -> None:
    """A gunicorn hook thread may be inside code_changed() when the master forks a worker."""
    from wsgireload import classic

    classic.code_changed()
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with classic._lock:  # noqa: SLF001 - what a concurrent scan looks like
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert inside.wait(5)
    try:
        result = run_in_child(lambda: {"changed": classic.code_changed()}, timeout=10)
    finally:
        release.set()
        holder.join(5)
    assert result == {"changed": False}
