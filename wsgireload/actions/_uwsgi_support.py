"""What the uWSGI action needs besides the master check: options, its start, the FIFO, a record.

Small helpers with an injectable /proc root and functions: unit-tested without uWSGI. Whether
the master may be signalled is ``_process.master_problem``, the rule every action shares.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no uWSGI either
    fcntl = None  # type: ignore[assignment]

from ._claim import default_runtime_dir, ensure_private_dir
from ._process import proc_start_time

log = logging.getLogger("wsgireload")

PROC_ROOT = "/proc"
_FALSE_WORDS = frozenset({b"", b"0", b"false", b"no", b"off"})


# -- uwsgi.opt --------------------------------------------------------------------------
@dataclass(frozen=True)
class UwsgiOptions:
    """The few uWSGI options that decide how to reload."""

    lazy_apps: bool = False  # --lazy-apps or --lazy: each worker imports the app itself
    master_fifos: Tuple[str, ...] = ()  # --master-fifo paths; uWSGI reads the first one
    binary_path: Optional[str] = None  # --binary-path: what a full reload re-executes
    master: bool = False
    processes: int = 1  # --processes / --workers
    master_title: Optional[str] = None  # --procname-master / --procname, with its prefix

    @classmethod
    def parse(cls, opt: Mapping[Any, Any]) -> "UwsgiOptions":
        """Read ``uwsgi.opt``: keys are str or bytes, values bytes, True, or lists of those."""
        values: Dict[str, Any] = {}
        for key, value in opt.items():
            name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            values[name] = value
        return cls(
            lazy_apps=_flag(values.get("lazy-apps")) or _flag(values.get("lazy")),
            master_fifos=tuple(_strings(values.get("master-fifo"))),
            binary_path=next(iter(_strings(values.get("binary-path"))), None),
            master=_flag(values.get("master")),
            processes=_number(values.get("processes", values.get("workers"))),
            master_title=_title(values),
        )


def _title(values: Mapping[str, Any]) -> Optional[str]:
    """The command line uWSGI gives its master when told to rename it, or None."""
    name = next(iter(_strings(values.get("procname-master"))), None)
    name = name or next(iter(_strings(values.get("procname"))), None)
    if name is None and _flag(values.get("auto-procname")):
        name = "uWSGI master"
    if name is None:
        return None
    prefix = next(iter(_strings(values.get("procname-prefix"))), "")
    spaced = next(iter(_strings(values.get("procname-prefix-spaced"))), "")
    return (prefix or (spaced + " " if spaced else "")) + name


def _flag(value: Any) -> bool:
    if isinstance(value, list):
        return any(_flag(item) for item in value)
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if isinstance(value, bytes):
        return value.strip().lower() not in _FALSE_WORDS
    return bool(value)


def _number(value: Any) -> int:
    for text in _strings(value):
        try:
            return int(text)
        except ValueError:
            continue
    return 1


def _strings(value: Any) -> Iterator[str]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bytes):
            item = os.fsdecode(item)
        if isinstance(item, str) and item:
            yield item


def process_start(proc_root: str = PROC_ROOT, pid: str = "self") -> Optional[float]:
    """When this process started, on the ``time.monotonic()`` clock; None without /proc."""
    clock_boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_boottime is None:
        return None
    start = proc_start_time(pid, proc_root)
    if start is None:
        return None
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        age = time.clock_gettime(clock_boottime) - int(start) / ticks
    except (ValueError, OSError):
        return None
    return time.monotonic() - age


# -- the master FIFO --------------------------------------------------------------------
def write_fifo(path: str, command: bytes) -> None:
    """Write a command to a uWSGI master FIFO; raise OSError saying why it was not possible.

    Non-blocking: with nobody reading (the master is gone), opening fails with ENXIO at once
    instead of hanging the worker.
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


def first_fifo(paths: Tuple[str, ...]) -> Optional[str]:
    """The configured FIFO that exists. uWSGI creates only the active (first) one, and
    ``uwsgi.opt`` keeps only the last of repeated options, so check rather than trust."""
    for path in paths:
        try:
            if stat.S_ISFIFO(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return None


# -- the per-master record shared by workers --------------------------------------------
class MasterLedger:
    """A small JSON record per master, read and written under ``flock`` by its workers.

    It holds the time of the master's last reload request (``time.monotonic()``, one clock
    for the whole machine) and the fingerprints already reported, so that N workers seeing
    one deploy produce one reload and one log line.
    """

    def __init__(self, directory: Optional[str] = None) -> None:
        self.directory = directory

    def update(
        self, key: str, decide: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]
    ) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """Run ``decide(record)`` under the lock; store what it returns (None: no change).

        Returns (the record as decide saw it, None) or (None, why the record is unusable).
        """
        if fcntl is None:  # pragma: no cover
            return None, "file locks are not available here"
        directory = self.directory or default_runtime_dir()
        problem = ensure_private_dir(directory)
        if problem is not None:
            return None, problem
        path = os.path.join(directory, f"{key}.json")
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            return None, f"cannot open {path}: {exc.strerror or exc}"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for microseconds: read, decide, write
            raw = b""
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                raw += chunk
            try:
                record = json.loads(raw.decode("utf-8")) if raw else {}
            except ValueError:
                record = {}  # a torn or foreign record: start afresh rather than stop reloading
            if not isinstance(record, dict):
                record = {}
            new = decide(dict(record))
            if new is not None:
                data = json.dumps(new).encode("utf-8")
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
            return record, None
        except OSError as exc:
            return None, f"cannot use {path}: {exc.strerror or exc}"
        finally:
            os.close(fd)
