"""When to act: turn reported changes into one validated, settled change set.

No threads and no signals here: the caller passes the time in, so tests need no sleeps.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .boot import BootCheck
from .detect import SearchPath, Snapshot, fingerprint

log = logging.getLogger("wsgireload")

@dataclass(frozen=True)
class ChangeSet:
    """Files that changed together, settled and validated: one reload's worth."""

    files: Tuple[str, ...]
    fingerprint: str  # equal for equal content on disk: lets workers agree on one reload
    first_seen: float  # policy clock, seconds
    last_seen: float

    def describe(self, limit: int = 3) -> str:
        """``a.py, b.py and 3 more`` for log lines."""
        text = ", ".join(_short(path) for path in self.files[:limit])
        if len(self.files) > limit:
            text += f" and {len(self.files) - limit} more"
        return text


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        rel = ".."
    return printable(path if rel.startswith("..") else rel)


def printable(path: str) -> str:
    """A file name for a log line: bytes that are not UTF-8 as ``\\xe9``, never as the lone
    surrogates a strict log file (gunicorn's ``--error-logfile``) cannot encode."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class _Problem:
    path: str
    line: Optional[int]
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line or 0}: {self.message}"


def compile_errors(paths: Iterable[str]) -> List[_Problem]:
    """Compile every existing ``.py`` among ``paths``; return the ones that do not compile."""
    problems: List[_Problem] = []
    for path in paths:
        if not path.endswith(".py"):
            continue
        try:
            # O_NONBLOCK: opening a FIFO named like a module would otherwise wait for a writer
            # and wedge the watcher for good.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with open(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    problems.append(_Problem(path, None, "not a regular file"))
                    continue
                source = handle.read()
        except FileNotFoundError:
            continue  # a deleted module is a change, not an error
        except OSError as exc:
            problems.append(_Problem(path, None, f"cannot read: {exc.strerror or exc}"))
            continue
        try:
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            problems.append(_Problem(path, exc.lineno, exc.msg or "invalid syntax"))
        except (ValueError, TypeError) as exc:  # NUL bytes and the like
            problems.append(_Problem(path, None, str(exc)))
    return problems


def remove_stale_bytecode(paths: Iterable[str]) -> List[str]:
    """Delete cached bytecode of each changed ``.py`` and return what was removed.

    CPython trusts a ``.pyc`` whose recorded whole-second mtime and size match the source, so
    a same-size edit within one second would otherwise load the old code in the new process.
    """
    removed: List[str] = []
    for path in paths:
        if not path.endswith(".py"):
            continue
        for level in ("", 1, 2):
            try:
                cached = importlib.util.cache_from_source(path, optimization=level)
            except (ValueError, NotImplementedError):
                break
            try:
                os.unlink(cached)
            except FileNotFoundError:
                continue
            except OSError as exc:  # read-only deploy: python cannot write there either
                log.debug("wsgireload: cannot remove %s: %s", cached, exc)
                continue
            removed.append(cached)
    return removed


@dataclass
class Policy:
    """Accumulates changes; hands out a change set once it settled and validated.

    :param settle: seconds without a new change before a change set is acted on.
    :param settle_max: seconds after the first change when it is acted on anyway, so that a
        file rewritten every second still reloads.
    :param validate: ``"boot"`` (compile, then boot the app in a fresh interpreter),
        ``"compile"`` or None (``Options.policy`` checks it).
    :param boot: the boot check (by default one that finds the server's app itself).
    """

    settle: float = 1.0
    settle_max: float = 30.0
    validate: Optional[str] = "boot"
    boot: BootCheck = field(default_factory=BootCheck)
    _pending: Dict[str, None] = field(default_factory=dict)
    _first: float = 0.0
    _last: float = 0.0
    _version: int = 0
    _rejected_version: int = -1
    refusal: Optional[str] = None  # why the last change set was refused (for the record)
    _compile_refused: bool = False  # only a file edit can fix that refusal

    def __post_init__(self) -> None:
        self._environment = SearchPath(self.boot.search_path)  # what the check imports

    @property
    def pending(self) -> Tuple[str, ...]:
        return tuple(self._pending)

    @property
    def unvalidated(self) -> bool:
        """True while the pending change set has not been validated yet (nor refused)."""
        return self._rejected_version != self._version

    def observe(self, changed: Iterable[str], now: float) -> None:
        """Record files reported changed at time ``now``."""
        paths = list(changed)
        if paths:
            if not self._pending:
                self._first = now
            self._pending.update(dict.fromkeys(paths))
            self._last = now
            self._version += 1
            self._compile_refused = False

    def recheck_if_environment_changed(self, now: float) -> None:
        """While a change set awaits or stands refused by the boot check, an install where it
        imports from restarts the settle period and lifts the refusal. Not after a compile
        error (only an edit fixes it), nor with nothing pending (no new code to reload)."""
        if not self._pending or self.validate != "boot" or self._compile_refused:
            return
        changed = self._environment.changed()
        if changed and not self.unvalidated:
            log.info("wsgireload: %s changed: checking the refused change set again once "
                     "it is quiet", _short(os.path.abspath(changed[0])))
            self._rejected_version, self._first = -1, now
        self._last = now if changed else self._last

    def settled(self, now: float) -> bool:
        if not self._pending:
            return False
        # A clock that stepped back restarts both periods from now instead of wedging them.
        self._last = min(self._last, now)
        self._first = min(self._first, now)
        return now - self._last >= self.settle or now - self._first >= self.settle_max

    def due(self, now: float, snapshot: Snapshot) -> Optional[ChangeSet]:
        """The change set to act on now, or None (nothing pending, unsettled, or invalid)."""
        if not self.settled(now):
            return None
        if self._rejected_version == self._version:
            return None  # still broken; wait for the next change before trying again
        files = tuple(self._pending)
        # A stale .pyc of a same-size edit within one second would load the old code, in the
        # boot check's fresh interpreter as in the reloaded workers.
        remove_stale_bytecode(files)
        problem = self._validate(files)
        if problem is not None:
            self._rejected_version = self._version
            self.refusal = problem
            log.error(
                "wsgireload: not reloading, the new code is broken (keeping the old code "
                "running; fix the file and the reload will follow): %s",
                problem,
                extra={"wsgireload_event": "refused", "files": list(files)},
            )
            return None
        changes = ChangeSet(files, fingerprint(snapshot, files), self._first, self._last)
        self._pending.clear()
        return changes

    def _validate(self, files: Sequence[str]) -> Optional[str]:
        if self.validate is None:
            return None
        problems = compile_errors(files)
        self._compile_refused = bool(problems)
        if problems:
            extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return f"{problems[0]}{extra}"
        return self.boot.check() if self.validate == "boot" else None
