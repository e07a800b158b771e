"""PidfileAction: signal the server in a pidfile if it checks out (real /proc, fake kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple, Union

import pytest

from wsgireload.actions.pidfile import PidfileAction, parse_signal
from wsgireload.errors import ConfigurationError
from wsgireload.policy import ChangeSet

from .conftest import ProcTree
from .fakes import SignalRecorder

CHANGES = ChangeSet(("a.py",), "f" * 16, 0.0, 0.0)
needs_proc = pytest.mark.skipif(not os.path.isfile("/proc/stat"), reason="needs procfs")


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Tuple[subprocess.Popen[bytes], Path]]:
    proc = subprocess.Popen([sys.executable, "-c", "print('ready', flush=True)\n"
                             "import time; time.sleep(60)"], stdout=subprocess.PIPE)
    # Written once the process runs, as a server does (Popen returns mid-exec, when
    # /proc/<pid>/cmdline can still be empty).
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    pidfile = tmp_path / "server.pid"
    pidfile.write_text(f"{proc.pid}\n")
    try:
        yield proc, pidfile
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@needs_proc
def test_signals_a_verified_process(child: Tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, pidfile = child
    kill = SignalRecorder()
    action = PidfileAction(str(pidfile), expect=["python"], system=kill)
    pid, about = action.target()
    assert pid == proc.pid, about
    action(CHANGES)
    assert kill.sent == [(proc.pid, signal.SIGHUP)] and action.sent == 1


@needs_proc
def test_refuses_a_process_that_is_not_the_server(
    child: Tuple[subprocess.Popen[bytes], Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, pidfile = child
    kill = SignalRecorder()
    action = PidfileAction(str(pidfile), system=kill)  # expects gunicorn or uwsgi
    action(CHANGES)
    assert kill.sent == []
    assert "not gunicorn or uwsgi" in caplog.text


@needs_proc
def test_refuses_a_pid_younger_than_its_pidfile(
    child: Tuple[subprocess.Popen[bytes], Path]
) -> None:
    _, pidfile = child
    an_hour_ago = time.time() - 3600
    os.utime(pidfile, (an_hour_ago, an_hour_ago))  # the server that wrote it is long gone
    pid, reason = PidfileAction(str(pidfile), expect=["python"], system=SignalRecorder()).target()
    assert pid is None and "stale" in reason


@needs_proc
def test_refuses_a_recycled_pid(child: Tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, pidfile = child
    action = PidfileAction(str(pidfile), expect=["python"], system=SignalRecorder())
    assert action.target()[0] == proc.pid
    action._known = (proc.pid, -1)  # as if another process had held this pid at first read
    pid, reason = action.target()
    assert pid is None and "recycled" in reason


def test_refuses_a_dead_pid(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pidfile = tmp_path / "server.pid"
    pidfile.write_text(str(proc.pid))
    pid, reason = PidfileAction(str(pidfile), system=SignalRecorder()).target()
    assert pid is None and "not running" in reason


@pytest.mark.parametrize(
    "content, reason",
    [
        ("0", "pid 0"),
        ("", "does not hold a pid"),
        ("abc", "does not hold a pid"),
        (str(os.getpid()), "this watcher or its parent"),
        (str(os.getppid()), "this watcher or its parent"),
    ],
    ids=["zero", "empty", "text", "own-pid", "parent-pid"],  # the same in every pytest process
)
def test_refuses_bad_pidfiles(tmp_path: Path, content: str, reason: str) -> None:
    pidfile = tmp_path / "server.pid"
    pidfile.write_text(content)
    kill = SignalRecorder()
    action = PidfileAction(str(pidfile), system=kill)
    pid, why = action.target()
    assert pid is None and reason in why
    action(CHANGES)
    assert kill.sent == []


@pytest.mark.parametrize(
    "argv, signalled",
    [
        (["/venv/bin/python", "/venv/bin/gunicorn", "-w", "3", "app:app"], True),
        (b"gunicorn: master [app:app]\0\0\0\0", True),  # its process title
        (["/venv/bin/uwsgi", "--master", "--module", "wsgi"], True),
        (["/sbin/init"], False),  # a host's pid 1
        (["timeout", "60", "pytest", "-k", "uwsgi"], False),  # names it only in its arguments
        (["python3", "-c", "import gunicorn"], False),
    ],
)
def test_the_program_decides_pid_1_included(
    tmp_path: Path, argv: Union[List[str], bytes], signalled: bool
) -> None:
    # In a container without an init the server is pid 1, and its pidfile says 1.
    tree = ProcTree(tmp_path / "proc")
    tree.add(1, argv, uid=os.getuid())
    pidfile = tmp_path / "server.pid"
    pidfile.write_text("1\n")
    kill = SignalRecorder(str(tree.root), everyone_exists=True)
    action = PidfileAction(str(pidfile), system=kill)
    action(CHANGES)
    assert kill.sent == ([(1, signal.SIGHUP)] if signalled else [])


def test_a_recycled_pid_in_a_crafted_proc_is_refused(tmp_path: Path) -> None:
    tree = ProcTree(tmp_path / "proc")
    tree.add(4242, ["/venv/bin/gunicorn", "app:app"], start="1000", uid=os.getuid())
    pidfile = tmp_path / "server.pid"
    pidfile.write_text("4242\n")
    crafted = SignalRecorder(str(tree.root), everyone_exists=True)
    action = PidfileAction(str(pidfile), system=crafted)
    assert action.target()[0] == 4242
    tree.add(4242, ["/venv/bin/gunicorn", "app:app"], start="2000", uid=os.getuid())
    pid, reason = action.target()
    assert pid is None and "recycled" in reason


def test_missing_pidfile(tmp_path: Path) -> None:
    pid, why = PidfileAction(str(tmp_path / "none.pid"), system=SignalRecorder()).target()
    assert pid is None and "cannot read pidfile" in why


def test_without_procfs_uses_ps(
    child: Tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, pidfile = child
    action = PidfileAction(str(pidfile), expect=["python"],
                           system=SignalRecorder(str(tmp_path / "noproc")))
    assert action.target()[0] == proc.pid


def test_parse_signal() -> None:
    assert parse_signal("HUP") is signal.SIGHUP
    assert parse_signal("sigusr2") is signal.SIGUSR2
    assert parse_signal("15") is signal.SIGTERM
    with pytest.raises(ConfigurationError, match="not a signal"):
        parse_signal("NOPE")
    with pytest.raises(ConfigurationError, match="--expect"):
        PidfileAction("x.pid", expect=[])
