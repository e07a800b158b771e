"""One reload per deploy across all workers of a master: a per-master reload record.

Workers lock a small file in a private runtime directory, compare the last reload of their
master with their own start, and only one of them gets to signal.

Why a record of the *last reload* rather than a claim per change-set fingerprint: workers
scan at different moments, so during a deploy one worker may settle on files 1-50 and
another on 1-100; their fingerprints differ and both would signal. What matters is simpler:
a worker that started before its master's latest reload will be replaced by that reload, so
it must not ask again. A worker started after it holds code loaded after that reload, so a
change it sees is genuinely new. A minimum interval between two reloads of one master bounds
the rate even if something else goes wrong.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no signals to send either
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("wsgireload")


class Outcome(enum.Enum):
    CLAIMED = "claimed"  # this worker signals now
    COVERED = "covered"  # a reload since this worker started will replace it: do nothing
    WAIT = "wait"  # the last reload was too recent: try again after ``wait`` seconds
    REFUSED = "refused"  # no safe place for the record: do nothing (reason in ``reason``)


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    wait: float = 0.0  # seconds, for WAIT
    reason: str = ""  # for REFUSED


def default_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/wsgireload`` if usable, else ``<tempdir>/wsgireload-<uid>``."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and _private_dir_problem(xdg) is None:
        return os.path.join(xdg, "wsgireload")
    return os.path.join(tempfile.gettempdir(), f"wsgireload-{os.getuid()}")


def ensure_private_dir(path: str) -> Optional[str]:
    """Create ``path`` 0700 if missing; return why it is unsafe to use, or None if it is ours."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror or exc}"
    return _private_dir_problem(path)


def _private_dir_problem(path: str) -> Optional[str]:
    try:
        info = os.lstat(path)  # lstat: a symlink planted by someone else is refused
    except OSError as exc:
        return f"cannot inspect {path}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a directory"
    if info.st_uid != os.getuid():
        return f"{path} belongs to uid {info.st_uid}, not to this process (uid {os.getuid()})"
    if info.st_mode & 0o077:
        return f"{path} is accessible to other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


class ReloadLedger:
    """The last reload time of each master, shared by its workers through locked files.

    :param directory: private directory for the records; default ``default_runtime_dir()``.
    :param min_interval: seconds that must pass between two reloads of one master.
    :param clock: a clock shared by all processes of the machine (``time.monotonic``).
    """

    def __init__(
        self,
        directory: Optional[str] = None,
        *,
        min_interval: float = 3.0,  # seconds
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.min_interval = float(min_interval)
        self.clock = clock

    def claim(self, key: str, booted: float) -> Claim:
        """Decide whether the worker started at ``booted`` may reload master ``key`` now."""
        if fcntl is None:  # pragma: no cover
            return Claim(Outcome.REFUSED, reason="file locks are not available on this platform")
        directory = self.directory or default_runtime_dir()
        problem = ensure_private_dir(directory)
        if problem is not None:
            return Claim(Outcome.REFUSED, reason=problem)
        path = os.path.join(directory, f"{key}.last-reload")
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return Claim(Outcome.REFUSED, reason=f"{path} is a symlink")
            return Claim(Outcome.REFUSED, reason=f"cannot open {path}: {exc.strerror or exc}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for microseconds: read, compare, write
            last = _read_time(fd)
            now = self.clock()
            if last is not None and last > now:
                last = None  # written before this machine booted (the clock restarted)
            if last is not None and last >= booted:
                return Claim(Outcome.COVERED)
            if last is not None and now - last < self.min_interval:
                return Claim(Outcome.WAIT, wait=self.min_interval - (now - last))
            data = repr(now).encode("ascii")
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            return Claim(Outcome.CLAIMED)
        except OSError as exc:
            return Claim(Outcome.REFUSED, reason=f"cannot update {path}: {exc.strerror or exc}")
        finally:
            os.close(fd)  # also releases the lock

    def forget_dead(self, alive: Callable[[int], bool]) -> None:
        """Remove records of masters that no longer exist (best effort, never raises)."""
        directory = self.directory or default_runtime_dir()
        try:
            names = os.listdir(directory)
        except OSError:
            return
        for name in names:
            if not name.endswith(".last-reload"):
                continue
            parts = name.split("-")
            if len(parts) < 2 or not parts[1].isdigit():
                continue
            if not alive(int(parts[1])):
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass


def _read_time(fd: int) -> Optional[float]:
    raw = os.pread(fd, 64, 0)
    try:
        return float(raw.decode("ascii").strip()) if raw.strip() else None
    except ValueError:  # a torn or foreign file: treat as no reload yet
        return None


def mark_once(directory: Optional[str], name: str) -> bool:
    """Create ``name`` in the private directory with O_CREAT|O_EXCL: True for the first caller.

    Used to log a per-master message once, not once per worker. On any problem returns True
    (better a repeated message than a lost one).
    """
    directory = directory or default_runtime_dir()
    if ensure_private_dir(directory) is not None:
        return True
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(os.path.join(directory, name), flags, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True
