"""Process safety: who is this worker's master, and is it still the same process now?

Nothing here signals anyone by itself; actions call ``verify_master`` before they do.

API (small on purpose; other server actions import it):

- ``ProcessInfo``: pid, start time, uid and command line of a process as seen once.
- ``read_process(pid)``: a ProcessInfo from ``/proc`` (start time, uid and cmdline are None
  where there is no ``/proc``, e.g. macOS).
- ``record_master(pid=None)``: the master as seen when this worker started (the parent at
  fork, or at import when wsgireload was imported in the worker).
- ``master_problem(recorded, server_name)``: why signalling ``recorded`` now is unsafe, or None.
- ``verify_master(recorded, server_name)``: the same as a bool, logging a WARNING with the
  reason when it is unsafe.
- ``boot_time()``: the ``time.monotonic()`` at which this process started running its code
  (fork or import), comparable across processes of one machine.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

log = logging.getLogger("wsgireload")

PROC_ROOT = "/proc"


@dataclass(frozen=True)
class ProcessInfo:
    """What identifies a process beyond its (reusable) pid."""

    pid: int
    start_time: Optional[str]  # /proc/<pid>/stat field 22: clock ticks since boot
    uid: Optional[int]  # real uid of the process
    cmdline: Optional[str]  # NUL-separated argv joined with spaces


ReadProcess = Callable[[int], Optional[ProcessInfo]]


def read_process(pid: int, root: str = PROC_ROOT) -> Optional[ProcessInfo]:
    """Describe ``pid`` from ``root`` (``/proc``); None if the process does not exist.

    Without a ``/proc`` only the pid is known and the other fields are None.
    """
    if not os.path.isdir(root):
        return ProcessInfo(pid, None, None, None) if _exists(pid) else None
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
    uid: Optional[int] = None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():
                uid = int(parts[1])
            break
    cmdline = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return ProcessInfo(pid, start_time, uid, cmdline)


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


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# -- this process's own start: recorded at import and again in a forked child ------------
_boot_time = time.monotonic()
_boot_ppid = os.getppid()


def after_fork() -> None:
    """Called in a forked child (by ``wsgireload.engine``'s one fork hook)."""
    global _boot_time, _boot_ppid
    _boot_time = time.monotonic()
    _boot_ppid = os.getppid()


def boot_time() -> float:
    """``time.monotonic()`` when this process forked (or imported wsgireload, if later).

    CLOCK_MONOTONIC is one clock for the whole machine on Linux and macOS, so boot times of
    sibling workers and reload records written by them compare directly.
    """
    return _boot_time


def boot_ppid() -> int:
    """The parent pid when this process forked (or imported wsgireload)."""
    return _boot_ppid


def record_master(
    pid: Optional[int] = None, *, read: ReadProcess = read_process
) -> Optional[ProcessInfo]:
    """Describe the master (default: our parent when this process started) for later checks.

    None if it is already gone or is pid 1 (an orphan has no master to signal).
    """
    if pid is None:
        pid = boot_ppid()
    if pid <= 1:
        return None
    return read(pid)


def master_problem(
    recorded: Optional[ProcessInfo],
    server_name: Union[str, Sequence[str]],
    *,
    getppid: Callable[[], int] = os.getppid,
    read: ReadProcess = read_process,
) -> Optional[str]:
    """Why signalling ``recorded`` now would be unsafe, or None when it is safe.

    Requires: a recorded master, pid > 1, still our parent, the same start time and uid as
    recorded, and (where /proc exists) a command line naming the server.
    """
    names = (server_name,) if isinstance(server_name, str) else tuple(server_name)
    if recorded is None:
        return "no master was recorded when this worker started"
    pid = recorded.pid
    if pid <= 1:
        return f"the recorded master pid {pid} is init, not a server"
    parent = getppid()
    if parent != pid:
        return (
            f"the master {pid} is no longer this worker's parent (parent is now {parent}); "
            "it probably died and this worker was orphaned"
        )
    now = read(pid)
    if now is None:
        return f"the master {pid} no longer exists"
    if recorded.start_time is not None and now.start_time != recorded.start_time:
        return f"pid {pid} was reused: its start time changed since this worker started"
    if recorded.uid is not None and now.uid != recorded.uid:
        return f"the master {pid} changed uid ({recorded.uid} -> {now.uid})"
    if now.cmdline is not None and not names_program(now.cmdline, names):
        return (
            f"the master {pid} does not look like {' or '.join(names)} "
            f"(command line {now.cmdline[:120]!r})"
        )
    return None


def program_name(cmdline: str) -> str:
    """The program a command line runs: ``gunicorn`` for ``/venv/bin/gunicorn app:app``,
    ``python3 /venv/bin/gunicorn app:app``, ``python -m gunicorn app:app`` or gunicorn's
    process title ``gunicorn: master [app:app]``.

    Only the program counts, never its arguments: ``timeout 60 pytest -k gunicorn`` is
    ``timeout``, not gunicorn.
    """
    tokens = cmdline.split()
    if not tokens:
        return ""
    program = os.path.basename(tokens[0]).rstrip(":")
    if not program.startswith("python"):
        return program
    args = iter(tokens[1:])
    for token in args:
        if token == "-m":
            return next(args, "").split(".")[0]
        if token in ("-W", "-X", "-c"):
            if token == "-c":
                return program  # inline code: the interpreter is the program
            next(args, None)  # the option's value
            continue
        if token.startswith("-"):
            continue
        return os.path.basename(token)
    return program


def names_program(cmdline: str, names: Sequence[str]) -> bool:
    """True if the program ``cmdline`` runs is one of ``names`` (``gunicorn3`` counts too)."""
    program = program_name(cmdline)
    return any(program.startswith(name) for name in names)


def verify_master(
    recorded: Optional[ProcessInfo],
    server_name: Union[str, Sequence[str]],
    *,
    getppid: Callable[[], int] = os.getppid,
    read: ReadProcess = read_process,
) -> bool:
    """True if ``recorded`` may be signalled now; else log a WARNING saying why."""
    problem = master_problem(recorded, server_name, getppid=getppid, read=read)
    if problem is None:
        return True
    log.warning("wsgireload: not signalling the master: %s; restart the server yourself", problem)
    return False
