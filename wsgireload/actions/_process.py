"""Who may be signalled: one /proc reader and one rule, shared by every action that signals.

Nothing here signals anyone by itself; actions ask ``master_problem`` before they do. Its
``kind`` (a ``Refusal``) lets an action react: FOREIGN_USER is "our master, but a user this
process may not signal" (``gunicorn --user``).
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

PROC_ROOT = "/proc"

Names = Union[str, Sequence[str]]


@dataclass(frozen=True)
class ProcessInfo:
    """What identifies a process beyond its (reusable) pid."""

    pid: int
    start_time: Optional[str]  # /proc/<pid>/stat field 22: clock ticks since boot
    uid: Optional[int]  # real uid of the process
    argv: Optional[Tuple[str, ...]]  # /proc/<pid>/cmdline split at its NULs


ReadProcess = Callable[[int], Optional[ProcessInfo]]


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


_INTERPRETERS = ("python", "pypy")


def program_name(argv: Union[str, Sequence[str]]) -> str:
    """The program a command line runs: ``gunicorn`` for ``/venv/bin/gunicorn app:app``,
    ``python3 /venv/bin/gunicorn app:app``, ``python -m gunicorn app:app`` or gunicorn's
    process title ``gunicorn: master [app:app]``; ``uWSGI`` for the title ``uWSGI master``.

    Only the program counts, never its arguments: ``timeout 60 pytest -k gunicorn`` is
    ``timeout``, and ``python -c 'import gunicorn'`` is ``python``. A string is split at
    whitespace (``ps`` output).
    """
    words = argv.split() if isinstance(argv, str) else list(argv)
    if not words:
        return ""
    if len(words[0].split()) > 1:
        # A process title rewritten as one string ("gunicorn: master [/srv/app:app]"): its
        # first word is the program. (A path with spaces is refused this way: safe.)
        words = words[0].split() + words[1:]
    program = os.path.basename(words[0]).rstrip(":")
    if not program.lower().startswith(_INTERPRETERS):
        return program
    args = iter(words[1:])
    for token in args:
        if token == "--":
            return os.path.basename(next(args, program))
        if token.startswith("--"):
            continue  # --help, --version: no script follows them anyway
        if not token.startswith("-") or token == "-":
            return os.path.basename(token) if token != "-" else program
        # Short options, possibly combined: -u, -Bu, -um module, -Wignore, -X dev, -c code.
        flags = token[1:]
        for index, flag in enumerate(flags):
            rest = flags[index + 1 :]
            if flag == "c":
                return program  # inline code: the interpreter is the program
            if flag == "m":
                return (rest or next(args, "")).split(".")[0]
            if flag in "WX":
                if not rest:
                    next(args, None)  # the option's value is the next word
                break
    return program


def matching_name(argv: Union[str, Sequence[str]], names: Names) -> Optional[str]:
    """The one of ``names`` that the program of ``argv`` is (``gunicorn3`` is gunicorn; case
    does not matter: ``uWSGI master`` is uwsgi), or None."""
    program = program_name(argv).lower()
    return next((name for name in _names(names) if name and program.startswith(name.lower())), None)


def _names(names: Names) -> Tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def after_fork() -> None:
    """Take this process's start again: at import, and in a forked child (by
    ``wsgireload.engine``'s one fork hook)."""
    global _boot_time, _born, _boot_ppid
    _boot_time, _born, _boot_ppid = time.monotonic(), time.time(), os.getppid()


_boot_time, _born, _boot_ppid = 0.0, 0.0, 0
after_fork()


def born() -> float:
    """Wall-clock time this process forked (or imported wsgireload, if later)."""
    return _born


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

    None if there is none (pid 0) or it is already gone. Pid 1 is recorded like any pid: the
    checks before a signal decide whether it is a server (a container's) or init.
    """
    pid = boot_ppid() if pid is None else pid
    return read(pid) if pid >= 1 else None


class Refusal(enum.Enum):
    """Why a master may not be signalled, for callers that react differently to each."""

    UNKNOWN = "unknown"  # nothing was recorded at start
    ORPHANED = "orphaned"  # no longer our parent
    GONE = "gone"
    REUSED = "reused"  # the pid now belongs to another process
    UID_CHANGED = "uid-changed"
    NOT_THE_SERVER = "not-the-server"  # its program is not one of the names
    FOREIGN_USER = "foreign-user"  # it is our master, but runs as a user we may not signal


@dataclass(frozen=True)
class MasterProblem:
    kind: Refusal
    reason: str

    def __str__(self) -> str:
        return self.reason


def master_problem(
    recorded: Optional[ProcessInfo],
    names: Names,
    *,
    getppid: Callable[[], int] = os.getppid,
    read: ReadProcess = read_process,
    getuid: Callable[[], int] = os.getuid,
    geteuid: Callable[[], int] = os.geteuid,
) -> Optional[MasterProblem]:
    """Why signalling ``recorded`` now would be unsafe or impossible, or None when it is fine.

    Requires, in this order: a recorded master, still our parent (a worker re-parented to
    init or a subreaper after its master died signals nobody), the same start time and uid as
    recorded, (where /proc exists) a program that is one of ``names``, and a uid this process
    may signal. A FOREIGN_USER problem therefore means "our verified master, out of reach".
    """
    if recorded is None:
        return MasterProblem(
            Refusal.UNKNOWN,
            "this worker's master was already gone when the worker started, so it cannot "
            "be identified",
        )
    pid = recorded.pid
    parent = getppid()
    if parent != pid:
        return MasterProblem(
            Refusal.ORPHANED,
            f"the master {pid} is no longer this worker's parent (parent is now {parent}); "
            "it probably died and this worker was orphaned",
        )
    now = read(pid)
    if now is None:
        return MasterProblem(Refusal.GONE, f"the master {pid} no longer exists")
    if recorded.start_time is not None and now.start_time != recorded.start_time:
        return MasterProblem(
            Refusal.REUSED,
            f"pid {pid} was reused: its start time changed since this worker started",
        )
    if recorded.uid is not None and now.uid != recorded.uid:
        return MasterProblem(
            Refusal.UID_CHANGED, f"the master {pid} changed uid ({recorded.uid} -> {now.uid})"
        )
    if now.argv is not None and matching_name(now.argv, names) is None:
        return MasterProblem(
            Refusal.NOT_THE_SERVER,
            f"the master {pid} does not look like {' or '.join(_names(names))} "
            f"(command line {' '.join(now.argv)[:120]!r})",
        )
    denied = signal_denied(now, getuid=getuid, geteuid=geteuid)
    if denied is not None:
        return MasterProblem(Refusal.FOREIGN_USER, denied)
    return None


def signal_denied(
    info: ProcessInfo,
    *,
    getuid: Callable[[], int] = os.getuid,
    geteuid: Callable[[], int] = os.geteuid,
) -> Optional[str]:
    """Why this process may not signal ``info`` (the kernel would say EPERM), or None.

    Root may signal anyone; others only processes of their own uid.
    """
    if info.uid is None or geteuid() == 0 or info.uid in (getuid(), geteuid()):
        return None
    return (
        f"the master {info.pid} runs as uid {info.uid} and this worker as uid {geteuid()}, "
        "so the worker may not signal it"
    )
