"""Signal the server named in a pidfile, from outside it, after checking it is that server.

The safe successor of ``kill -HUP $(cat pidfile)``: never init, never a stale pidfile's pid.
"""

from __future__ import annotations

import logging
import os
import signal as _signal
import subprocess
from typing import Any, Optional, Sequence, Tuple

from .._system import SYSTEM, System
from ..errors import ConfigurationError
from ..policy import ChangeSet
from ..servers import SERVERS
from ..servers.base import Action, matching_name, signal_denied

log = logging.getLogger("wsgireload")


def default_expect(servers: Sequence[Any] = SERVERS) -> Tuple[str, ...]:
    """The servers a HUP reloads (PIDFILE_MASTER): what a pidfile's process must be by default."""
    return tuple(sorted(s.NAME for s in servers if getattr(s, "PIDFILE_MASTER", False)))


DEFAULT_EXPECT = default_expect()
# A server writes its pidfile after it started; /proc start times have whole-second boot time
# and clock-tick precision, so allow this much before calling a process younger than its file.
_START_SLACK = 2.0  # seconds


def parse_signal(name: str) -> _signal.Signals:
    """``HUP``, ``SIGHUP`` or ``1`` -> signal.SIGHUP; ConfigurationError if unknown."""
    text = name.strip().upper()
    try:
        if text.isdigit():
            return _signal.Signals(int(text))
        return _signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise ConfigurationError(f"--signal {name!r} is not a signal name such as HUP") from None


class PidfileAction(Action):
    """Send ``signal`` to the process in ``pidfile`` once per change set, if it checks out.

    Checks, each time: the pidfile holds a pid (1 included: a container's server) that is
    neither this process nor its parent; the process is alive and ours (same uid, or we are
    root); its program is one of ``expect`` (``servers.base.program_name``: never a word among
    its arguments); it started before the pidfile was written (else the pid was recycled
    after the server died); and, for a pid seen before, its start time is unchanged.

    :param system: the operating system (tests pass a fake): without procfs at its
        ``proc_root`` the command line comes from ``ps`` and the start-time checks are skipped.
    """

    name = "pidfile"

    def __init__(
        self,
        pidfile: str,
        *,
        signal: _signal.Signals = _signal.SIGHUP,
        expect: Sequence[str] = DEFAULT_EXPECT,
        system: System = SYSTEM,
    ) -> None:
        self.pidfile = os.path.abspath(pidfile)
        self.signal = signal
        self.expect = tuple(name.lower() for name in expect if name)
        if not self.expect:
            raise ConfigurationError("--expect needs at least one server name, e.g. gunicorn")
        self.system = system
        self._known: Optional[Tuple[int, Optional[int]]] = None  # (pid, start ticks)
        self.sent = 0

    def target(self) -> Tuple[Optional[int], str]:
        """The pid to signal and a description, or None and the reason not to."""
        try:
            with open(self.pidfile, encoding="ascii", errors="replace") as handle:
                text = handle.read().strip()
            mtime = os.stat(self.pidfile).st_mtime
        except OSError as exc:
            return None, f"cannot read pidfile {self.pidfile}: {exc.strerror or exc}"
        if not text.isdigit():
            return None, f"pidfile {self.pidfile} does not hold a pid ({text[:20]!r})"
        pid = int(text)
        if pid < 1:
            return None, f"pidfile {self.pidfile} names pid {pid}: refusing to signal it"
        # Pid 1 is allowed: in a container without an init the server is pid 1. The checks
        # below (the program is the server, started before the pidfile) still apply to it.
        if pid in (self.system.getpid(), self.system.getppid()):
            return None, f"pidfile {self.pidfile} names this watcher or its parent ({pid})"
        try:
            self.system.kill(pid, 0)
        except ProcessLookupError:
            return None, f"pid {pid} from {self.pidfile} is not running (stale pidfile)"
        except PermissionError:
            return None, f"pid {pid} from {self.pidfile} belongs to another user"
        have_proc = os.path.isfile(os.path.join(self.system.proc_root, "stat"))
        info = self.system.process(pid) if have_proc else None
        if have_proc:
            if info is None:
                return None, f"pid {pid} vanished while being checked"
            if signal_denied(info, self.system) is not None:
                return None, (
                    f"pid {pid} runs as uid {info.uid}, not as this watcher "
                    f"({self.system.getuid()})"
                )
        argv = info.argv if info is not None else self._ps_argv(pid)
        if not argv:
            return None, f"cannot read the command line of pid {pid}"
        matched = matching_name(argv, self.expect)
        if matched is None:
            shown = " ".join(argv)[:80]
            names = " or ".join(self.expect)
            return None, (
                f"pid {pid} from {self.pidfile} is {shown!r}, not {names}: refusing to signal "
                "(a stale pidfile whose pid was reused? pass --expect NAME if the server is "
                "another one)"
            )
        ticks = info.start_time if info is not None else None
        start = int(ticks) if ticks is not None and ticks.isdigit() else None
        if start is not None:
            started_at = self._boot_time() + start / os.sysconf("SC_CLK_TCK")
            if started_at > mtime + _START_SLACK:
                return None, (
                    f"pid {pid} started after {self.pidfile} was written: the pidfile is stale "
                    "and its pid was reused; refusing to signal"
                )
        known = self._known
        if known is not None and known[0] == pid and known[1] != start:
            return None, f"pid {pid} was recycled (its start time changed); refusing to signal"
        self._known = (pid, start)
        return pid, f"{matched} pid {pid}"

    def _ps_argv(self, pid: int) -> Optional[Sequence[str]]:
        """The command line from ``ps``, on macOS and the BSDs (no procfs)."""
        try:
            out = subprocess.run(
                ["ps", "-p", str(pid), "-o", "command="],
                capture_output=True, timeout=5, check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = out.decode("utf-8", "replace").strip()
        return text.split() if text else None

    def _boot_time(self) -> float:
        try:
            with open(os.path.join(self.system.proc_root, "stat"), encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("btime "):
                        return float(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0.0

    def __call__(self, changes: ChangeSet) -> None:
        pid, about = self.target()
        if pid is None:
            log.error("wsgireload: not signalling: %s", about)
            return
        self.system.kill(pid, int(self.signal))
        self.sent += 1
        log.info("wsgireload: sent %s to %s", self.signal.name, about)

    def describe(self) -> str:
        return f"{self.signal.name} to the pid in {self.pidfile}"
