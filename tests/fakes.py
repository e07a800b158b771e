"""The one fake of the operating system (``FakeSystem``, ``SignalRecorder``), of a master's
other workers as the engine shows them to an action (``FakeSiblings``), of uWSGI's ``uwsgi``
module (``FakeUwsgi``, the ``fake_uwsgi`` fixture), the stack the servers layer reads, and one
deploy (``CHANGES``) with ``refusal_log`` to check an action that must signal nobody."""

from __future__ import annotations

import logging
import os
import sys
import types
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import pytest

from wsgireload._system import PROC_ROOT, ProcessInfo, System, read_process
from wsgireload.policy import ChangeSet
from wsgireload.servers.base import ASGI_KEY, Siblings

CHANGES = ChangeSet(("/srv/app/views.py",), "abc", 1.0, 1.0)  # one deploy, for an action
ASGI_ENVIRON = {ASGI_KEY: {"type": "lifespan"}}  # what an ASGI worker's gate shows the layer
SITE = "/venv/lib/python3.11/site-packages/"  # where a fake stack's server frames live


class FakeSystem(System):
    """A machine the test sets by hand: processes (a dict, or a fake /proc tree given as
    ``proc_root``), this process's pid, parent, uid and start, a clock; it records signals,
    timers, FIFO writes and repeated wake-ups instead of sending or starting them. With
    ``master``, this process is a worker of that running master (its parent)."""

    def __init__(self, proc_root: Optional[str] = None, *, pid: int = 5000, parent: int = 4242,
                 uid: int = 1001, now: float = 100.0,
                 master: Optional[ProcessInfo] = None) -> None:
        super().__init__(proc_root or "/nonexistent-proc")
        self.use_tree = proc_root is not None
        self.procs: Dict[int, ProcessInfo] = {}
        if master is not None:
            parent = master.pid
            self.procs[master.pid] = master
        self.pid, self.parent, self.uid, self.euid = pid, parent, uid, None
        self.now = now
        self.start = 10.0  # monotonic() when this process started
        self.refused: Set[int] = set()  # signals to other processes the kernel refuses (EPERM)
        self.killed: List[Tuple[int, int]] = []
        self.scheduled: List[Tuple[float, Callable[[], None]]] = []
        self.fifo_writes: List[Tuple[str, bytes]] = []
        self.fifo_error: Optional[OSError] = None
        self.wakes: List[Tuple[float, Callable[[], None]]] = []  # repeat()s: (until, function)
        self.kids: Dict[int, List[int]] = {}  # children(pid), oldest first

    def add(self, pid: int, argv: Tuple[str, ...] = ("gunicorn",), start: Optional[str] = "1000",
            uid: Optional[int] = 1001) -> ProcessInfo:
        info = self.procs[pid] = ProcessInfo(pid, start, uid, argv)
        return info

    def kill(self, pid: int, sig: int) -> None:
        if pid != self.pid and sig in self.refused:
            raise PermissionError(1, "Operation not permitted")
        if sig != 0:  # signal 0 only asks whether a signal would be allowed
            self.killed.append((pid, sig))

    def getpid(self) -> int:
        return self.pid

    def getppid(self) -> int:
        return self.parent

    def getuid(self) -> int:
        return self.uid

    def geteuid(self) -> int:
        return self.uid if self.euid is None else self.euid

    def process(self, pid: int) -> Optional[ProcessInfo]:
        return read_process(pid, self.proc_root) if self.use_tree else self.procs.get(pid)

    def monotonic(self) -> float:
        return self.now

    def children(self, pid: int) -> List[int]:
        return list(self.kids.get(pid, []))

    def started(self) -> float:
        return self.start

    def parent_at_start(self) -> int:
        return self.parent

    def later(self, delay: float, function: Callable[[], None]) -> None:
        self.scheduled.append((delay, function))

    def repeat(self, every: float, until: float, function: Callable[[], None]) -> None:
        self.wakes.append((until, function))

    def write_fifo(self, path: str, command: bytes) -> None:
        if self.fifo_error is not None:
            raise self.fifo_error
        self.fifo_writes.append((path, command))

    def worker(self, pid: int, start: float) -> "FakeSystem":
        """Another process of this machine: its own pid and start, the rest shared."""
        other = _Process(self)
        other.pid, other.start = pid, start
        return other  # type: ignore[return-value]


def refusal_log(action: Callable[[ChangeSet], None], system: FakeSystem,
                caplog: pytest.LogCaptureFixture) -> str:
    """Run ``action`` on CHANGES with WARNING and above captured, assert it signalled nobody;
    return the captured log text."""
    with caplog.at_level(logging.WARNING, "wsgireload"):
        action(CHANGES)
    assert system.killed == []
    return caplog.text


class SignalRecorder(System):
    """This machine (or a crafted /proc tree at ``proc_root``), with signals recorded, not
    sent; signal 0 (the liveness probe) is asked for real unless ``everyone_exists``."""

    def __init__(self, proc_root: str = PROC_ROOT, everyone_exists: bool = False) -> None:
        super().__init__(proc_root)
        self.everyone_exists = everyone_exists
        self.sent: List[Tuple[int, int]] = []

    def kill(self, pid: int, sig: int) -> None:
        if sig != 0:
            self.sent.append((pid, sig))
        elif not self.everyone_exists:
            os.kill(pid, 0)


class _Process:
    """A FakeSystem seen from another process: reads and records go to the shared one."""

    def __init__(self, machine: FakeSystem) -> None:
        self.__dict__["machine"] = machine

    def getpid(self) -> int:
        return int(self.__dict__["pid"])

    def started(self) -> float:
        return float(self.__dict__["start"])

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.__dict__["machine"], name)
        function = getattr(value, "__func__", None)
        # The machine's methods run with this process as ``self``, so that ``kill`` sees its pid.
        return types.MethodType(function, self) if function is not None else value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("pid", "start"):
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["machine"], name, value)


class FakeSiblings(Siblings):
    """The master's workers sharing one record, as the engine would show them to an action."""

    def __init__(self, system: System, coordinated: bool = True) -> None:
        self.system = system
        self.coordinated = coordinated  # type: ignore[misc]
        self.reload: Dict[str, Any] = {}
        self.logged: Set[str] = set()
        self.restarts_each = 0  # times an action reported the EPERM fallback
        self.record: Dict[str, Any] = {}  # the master's record, for ``update``

    def update(self, change: Any) -> Dict[str, Any]:
        new = change(dict(self.record))
        if new is not None:
            self.record = new
        return self.record

    def last_reload(self) -> Dict[str, Any]:
        return dict(self.reload)

    def reloading(self, chain: bool = False) -> None:
        self.reload = {"n": 1, "at": self.system.monotonic(), "chain": chain}

    def first_to_log(self, name: str) -> bool:
        first = name not in self.logged
        self.logged.add(name)
        return first or not self.coordinated

    def restart_each_worker(self) -> None:
        self.restarts_each += 1
        self.reload = {}  # the engine forgets the reload noted before the refused signal


class FakeUwsgi(types.ModuleType):
    """The parts of the ``uwsgi`` module wsgireload reads (set as attributes by the test)."""

    def __init__(self, opt: Optional[Dict[Any, Any]] = None, master: int = 4100, worker: int = 1,
                 version: bytes = b"2.0.31") -> None:
        super().__init__("uwsgi")
        self.opt = opt if opt is not None else {}
        self.master, self.worker, self.version = master, worker, version
        self.reloads = 0

    def masterpid(self) -> int:
        return self.master

    def worker_id(self) -> int:
        return self.worker

    def reload(self) -> bool:
        self.reloads += 1
        return True


def install_uwsgi(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> FakeUwsgi:
    """A FakeUwsgi as ``sys.modules["uwsgi"]``, as inside uWSGI (a test's ``fake_uwsgi``)."""
    fake = FakeUwsgi(**kw)
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    return fake


def fake_stack(monkeypatch: pytest.MonkeyPatch, *frames: Tuple[str, str, Dict[str, Any]],
               modules: Tuple[str, ...] = ()) -> None:
    """The main thread's stack as the servers layer reads it: (file, function, locals) frames,
    innermost first (``wsgireload.servers.base.main_frames``), with the
    server's ``modules`` imported (stand-ins where missing)."""
    for name in modules:
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    stack = [types.SimpleNamespace(f_code=types.SimpleNamespace(co_filename=path, co_name=name),
                                   f_locals=local) for path, name, local in frames]
    monkeypatch.setattr("wsgireload.servers.base.main_frames", lambda: iter(stack))
