"""The operating system as wsgireload uses it: signals, pids, uids, /proc and clocks.

Everything that signals, reads another process or the time goes through one ``System``
(``SYSTEM`` by default), so the tests replace the whole world with one fake.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

PROC_ROOT = "/proc"


@dataclass(frozen=True)
class ProcessInfo:
    """What identifies a process beyond its (reusable) pid."""

    pid: int
    start_time: Optional[str]  # /proc/<pid>/stat field 22: clock ticks since boot
    uid: Optional[int]  # real uid of the process
    argv: Optional[Tuple[str, ...]]  # /proc/<pid>/cmdline split at its NULs


def read_process(pid: int, root: str = PROC_ROOT) -> Optional[ProcessInfo]:
    """Describe ``pid`` from ``root`` (``/proc``); None if the process does not exist.

    Without a ``/proc`` only the pid is known and the other fields are None.
    """
    if not os.path.isdir(root):
        return ProcessInfo(pid, None, None, None) if exists(pid) else None
    base = os.path.join(root, str(pid))
    start_time = proc_start_time(pid, root)
    if start_time is None:
        return None
    try:
        with open(os.path.join(base, "cmdline"), "rb") as handle:
            raw = handle.read()
        with open(os.path.join(base, "status"), "rb") as handle:
            status = handle.read().decode("utf-8", "replace")
    except OSError:  # gone, or a pid that was never there
        return None
    # "Uid:\t<real>\t<effective>\t<saved>\t<filesystem>": the first Uid line, its real uid.
    real = next((line.split()[1:2] for line in status.splitlines() if line.startswith("Uid:")), [])
    uid = int(real[0]) if real and real[0].isdigit() else None
    # A process title (setproctitle, uWSGI's procname) pads the area with NULs: drop the
    # empty strings they leave.
    argv = tuple(os.fsdecode(part) for part in raw.split(b"\0") if part)
    return ProcessInfo(pid, start_time, uid, argv)


def proc_start_time(pid: Union[int, str], root: str = PROC_ROOT) -> Optional[str]:
    """Field 22 of ``<root>/<pid>/stat``: start time in clock ticks since boot, which tells a
    recycled pid from the process recorded earlier. None if unreadable."""
    try:
        with open(os.path.join(root, str(pid), "stat"), "rb") as handle:
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    # The command name in field 2 may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def exists(pid: int) -> bool:
    """Whether ``pid`` exists (another user's too), asked with signal 0."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def after_fork() -> None:
    """Take this process's start again: at import, and in a forked child (by
    ``wsgireload.engine``'s one fork hook)."""
    global _started, _started_ppid
    _started, _started_ppid = time.monotonic(), os.getppid()


_started, _started_ppid = 0.0, 0
after_fork()


class System:
    """Signals, pids, uids, /proc and clocks of the running machine (``SYSTEM``)."""

    def __init__(self, proc_root: str = PROC_ROOT) -> None:
        self.proc_root = proc_root

    kill = staticmethod(os.kill)
    getpid = staticmethod(os.getpid)
    getppid = staticmethod(os.getppid)
    getuid = staticmethod(os.getuid)
    geteuid = staticmethod(os.geteuid)

    def process(self, pid: int) -> Optional[ProcessInfo]:
        """``read_process`` from this system's /proc."""
        return read_process(pid, self.proc_root)

    def alive(self, pid: int, start: Optional[str]) -> bool:
        """Whether ``pid`` still runs and is the process that started at ``start`` (None:
        any); never asks about pid 0 or less (``os.kill(0, ...)`` is the process group)."""
        if pid <= 0:
            return False
        info = self.process(pid)
        return info is not None and (start is None or info.start_time in (None, start))

    def children(self, pid: int) -> List[int]:
        """The live child processes of ``pid`` (``/proc/<pid>/task/*/children``); [] if
        unreadable. A reaped child is gone; one that exited but is not reaped yet is listed."""
        found: List[int] = []
        # (closed however it ends: a thread that exits mid-scan makes open() fail)
        with contextlib.suppress(OSError), os.scandir(
                os.path.join(self.proc_root, str(pid), "task")) as tasks:
            for task in tasks:
                with open(os.path.join(task.path, "children"), "rb") as handle:
                    found += [int(word) for word in handle.read().split()]
        return sorted(set(found))

    # CLOCK_MONOTONIC: one clock for every process of the machine, never stepped.
    monotonic = staticmethod(time.monotonic)

    def started(self) -> float:
        """``monotonic()`` when this process forked (or imported wsgireload, if later)."""
        return _started

    def parent_at_start(self) -> int:
        """The parent pid when this process forked (or imported wsgireload)."""
        return _started_ppid

    def later(self, delay: float, function: Callable[[], None]) -> None:
        """Call ``function`` once, ``delay`` seconds from now, from a daemon thread."""
        timer = threading.Timer(delay, function)
        timer.daemon = True
        timer.name = "wsgireload-retry"
        timer.start()

    def repeat(self, every: float, until: float, function: Callable[[], None]) -> None:
        """Call ``function`` every ``every`` seconds from a daemon thread until ``monotonic()``
        reads ``until`` or it raises OSError."""

        def run() -> None:
            while self.monotonic() < until:
                try:
                    function()
                except OSError:
                    return
                time.sleep(every)

        threading.Thread(target=run, name="wsgireload-repeat", daemon=True).start()

    def write_fifo(self, path: str, command: bytes) -> None:
        """Write a command to a FIFO of this user; raise OSError saying why it was not possible.

        Non-blocking: with nobody reading (its reader is gone), opening fails with ENXIO at
        once instead of hanging the caller.
        """
        flags = os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
        try:
            info = os.fstat(fd)
            if not stat.S_ISFIFO(info.st_mode):
                raise OSError(errno.EINVAL, f"{path} is not a FIFO")
            if info.st_uid != os.getuid():
                raise OSError(errno.EPERM, f"{path} belongs to uid {info.st_uid}")
            os.write(fd, command)
        finally:
            os.close(fd)


SYSTEM = System()
