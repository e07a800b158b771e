"""What the uWSGI action needs besides the master check: its options and the master FIFO.

Small helpers with an injectable /proc root and functions: unit-tested without uWSGI. Whether
the master may be signalled is ``_process.master_problem``, the rule every action shares.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

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
