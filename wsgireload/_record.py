"""One record per master, shared by its workers: who scans, what was decided, what was refused.

A JSON file in the private runtime directory, replaced atomically under a lock file, so a
reader never sees half of it and a crash at any point leaves either the old or the new record.

One protocol: the worker holding the lease scans, and its decision for a change set is a new
*generation* (``n``), published under the lock; that is the claim, so one worker of a master
acts per change set. The other workers follow the generations: a per-process action runs in
each worker born before the generation. The action that asks the master to reload notes it
as the master's last reload (``reloaded``: its generation, time, chain or not), which serves
the minimum interval between two reloads and uWSGI's chain wake window; the lines logged once
per master are kept too (``logged``). Per-worker state sits under ``workers[pid]`` (start,
birth, exit): a worker reporting "ready for generation n" is one more key there.

One clock: every time in the record is ``time.monotonic()``. CLOCK_MONOTONIC is one clock for
every process of the machine and never steps (an NTP correction or a manual date change would
otherwise reorder a birth and a reload); a record dies with its master, so it is never compared
across a reboot; ``wsgireload status`` converts to wall time only to display it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._system import SYSTEM, System
from .detect import identity

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no preforking servers either
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("wsgireload")

Data = Dict[str, Any]
SUFFIX = ".master.json"
_VALIDATIONS_KEPT = 20
_GONE_KEPT = 3600.0  # seconds a worker that exited stays listed (for "workers replaced")
_GONE_MAX = 256  # workers that exited kept at most
_ONCE_KEPT = 32  # names of lines already logged for the master
_WHERE = re.compile(r"(/[^\s:'\"]+\.py)(?::|\", line )(\d+)")


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


def where(error: str) -> str:
    """The last ``file:line`` an error text names ("" if none): the user's line, usually."""
    found = _WHERE.findall(error)
    return f"{found[-1][0]}:{found[-1][1]}" if found else ""


class Record:
    """The record file of one master: ``update`` under the lock, ``read`` without it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: Optional[Tuple[int, int, int]] = None
        self.data: Data = {}

    def read(self) -> Data:
        try:
            with open(self.path, "rb") as handle:
                data = json.loads(handle.read().decode("utf-8"))
        except (OSError, ValueError):  # missing, torn or foreign: as if empty
            return {}
        return data if isinstance(data, dict) else {}

    def poll(self) -> Optional[Data]:
        """The record if it changed since the last poll (one ``os.stat``), else None."""
        seen = identity(self.path) or (0, 0, 0)
        if seen == self._seen:
            return None
        self._seen = seen
        self.data = self.read()
        return self.data

    def update(self, change: Callable[[Data], Optional[Data]]) -> Data:
        """Run ``change(record)`` under the lock; store what it returns. Raises OSError."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path + ".lock", flags, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read and a rename
            data = self.read()
            new = change(data)
            if new is not None:
                write_atomically(self.path, json.dumps(new))
                data = new
            return data
        finally:
            os.close(fd)


def write_atomically(path: str, text: str) -> None:
    """A reader (this record's, node_exporter's textfile collector) sees the old file or the
    new, never half."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def open_record(
    server: str, master: int, directory: Optional[str] = None, system: System = SYSTEM
) -> Tuple[Optional[Record], str]:
    """The record of ``master`` (created if missing), or None and why there is none.

    Records of masters that are gone are removed on the way (they are never needed again).
    """
    if fcntl is None:  # pragma: no cover
        return None, "file locks are not available here"
    info = system.process(master)
    start = info.start_time if info is not None else None
    directory = directory or default_runtime_dir()
    problem = ensure_private_dir(directory)
    if problem is not None:
        return None, problem
    forget_dead(directory, system)
    record = Record(os.path.join(directory, f"{server}-{master}-{start or 'na'}{SUFFIX}"))

    def init(data: Data) -> Optional[Data]:
        if data.get("master") == master:
            return None
        return {"server": server, "master": master, "master_start": start, "workers": {}}

    try:
        record.update(init)
    except OSError as exc:
        return None, f"cannot write {record.path}: {exc.strerror or exc}"
    return record, ""


def forget_dead(directory: str, system: System = SYSTEM) -> None:
    """Remove the records of masters whose identity (pid and start time) no longer matches a
    live process (best effort, never raises)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.endswith(".tmp"):  # a writer that died between writing and renaming
            writer = name.rsplit(".", 2)[-2]
            if writer.isdigit() and not system.alive(int(writer), None):
                _unlink(os.path.join(directory, name))
            continue
        if not name.endswith(SUFFIX):
            continue
        parts = name[: -len(SUFFIX)].rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        start = None if parts[2] in ("na", "unknown") else parts[2]  # no /proc when made
        if not system.alive(int(parts[1]), start):
            _unlink(os.path.join(directory, name))
            _unlink(os.path.join(directory, name + ".lock"))


def read_all(directory: Optional[str] = None, system: System = SYSTEM) -> List[Data]:
    """Every readable record of a running master (or process alone) in ``directory`` (for
    ``wsgireload status`` and ``check``); those of masters that are gone are removed."""
    directory = directory or default_runtime_dir()
    forget_dead(directory, system)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for name in names:
        if name.endswith(SUFFIX):
            data = Record(os.path.join(directory, name)).read()
            if data and system.alive(int(data.get("master", 0)), data.get("master_start")):
                found.append(data)
    return found


@dataclass
class Share:
    """This process as one worker of a master: scanner (holds the lease) or follower.

    :param born: ``monotonic()`` when this process started running its code (its fork): a
        generation decided after it is already loaded here.
    :param lease: seconds a lease lasts without renewal; renewed at half of it.
    """

    record: Record
    pid: int
    start: Optional[str]
    born: float
    lease: float
    system: System = SYSTEM
    scanning: bool = False
    took_over: bool = False  # just became the scanner: drop what was already decided
    acted: int = 0  # the last generation this process acted on or was born after
    _renew_at: float = 0.0
    _scan: Tuple[int, float] = (0, 0.0)  # files watched, milliseconds of the last scan

    def join(self) -> None:
        """List this worker; a generation decided before it was born is not its to act on."""
        # Joined once its app is loaded: "ready" is what a rollout waits for before an old
        # worker leaves.
        me = {"start": self.start, "born": self.born, "ready": self.system.monotonic()}
        data = self.record.update(lambda d: {**d, "workers": {**_workers(d), str(self.pid): me}})
        generation = section(data, "generation")
        number = int(generation.get("n", 0))
        self.acted = number if float(generation.get("at", 0.0)) < self.born else number - 1
        self.record.poll()

    def turn(self) -> bool:
        """Whether this process scans now: at most one ``os.stat`` while following."""
        now = self.system.monotonic()
        if self.scanning:
            if now >= self._renew_at:
                self.record.update(self._take)
            return self.scanning
        self.record.poll()  # one os.stat: the record is read again only when it changed
        if self._free(self.record.data, now):
            self.record.update(self._take)
            self.took_over = self.scanning
            if self.scanning:
                log.debug("wsgireload: worker %d now scans for its master", self.pid)
        return self.scanning

    def _take(self, data: Data) -> Optional[Data]:
        now = self.system.monotonic()
        holder = section(data, "lease")
        mine = holder.get("pid") == self.pid and holder.get("start") == self.start
        if not (mine or self._free(data, now)):
            self.scanning = False
            return None
        self.scanning = True
        self._renew_at = now + self.lease / 2
        workers = _workers(data)
        for pid, worker in workers.items():
            if "gone" not in worker and not self.system.alive(int(pid), worker.get("start")):
                worker["gone"] = now
        gone = sorted((w["gone"], p) for p, w in workers.items() if "gone" in w)
        for _, pid in gone[: max(0, len(gone) - _GONE_MAX)]:
            del workers[pid]  # a server restarting workers often must not grow the record
        workers = {p: w for p, w in workers.items() if now - w.get("gone", now) < _GONE_KEPT}
        lease = {"pid": self.pid, "start": self.start, "expires": now + self.lease}
        return {**self._stats(data), "lease": lease, "workers": workers}

    def _free(self, data: Data, now: float) -> bool:
        """Whether another worker may take the lease: there is none, it expired, its holder
        exited, or its holder is on its way out (born before the master's last reload, which
        replaces it, while this worker was born after it: an old worker can take a while to
        exit, gevent's up to a second, and a follower deferring to it would sleep meanwhile)."""
        holder = section(data, "lease")
        if not holder:
            return True
        pid = int(holder.get("pid", 0))
        expired = float(holder.get("expires", 0.0)) <= now
        if expired or not self.system.alive(pid, holder.get("start")):
            return True
        worker = section(section(data, "workers"), str(pid))
        if not worker or pid == self.pid:
            return False
        last_reload = float(section(data, "generation").get("at", 0.0))
        return float(worker.get("born", 0.0)) < last_reload <= self.born

    def note_scan(self, watched: int, seconds: float) -> None:
        """Remember the scan's size and cost for ``status`` (written with the next renewal)."""
        self._scan = (watched, round(seconds * 1000, 3))

    def _stats(self, data: Data) -> Data:
        watched, ms = self._scan
        return {**data, "watched": watched, "scan_ms": ms} if watched else data

    def validated(self, files: List[str], fingerprint: str, problem: Optional[str]) -> None:
        entry = {"at": self.system.monotonic(), "files": files, "fingerprint": fingerprint,
                 "verdict": "refused" if problem else "ok", "by": self.pid}

        def change(data: Data) -> Data:
            kept = [v for v in data.get("validations", []) if isinstance(v, dict)]
            data = {**self._stats(data), "validations": (kept + [entry])[-_VALIDATIONS_KEPT:]}
            if problem is not None:
                data["last_refusal"] = {"at": entry["at"], "files": files, "error": problem,
                                        "where": where(problem)}
            return data

        self.record.update(change)

    def decide(self, generation: Data, identities: Data) -> int:
        """Publish a new generation (the reload of this change set); return its number."""

        def change(data: Data) -> Data:
            number = int(section(data, "generation").get("n", 0)) + 1
            generation.update(n=number, at=self.system.monotonic(), by=self.pid)
            # Each file as it was when last decided: a new scanner must not decide it again. (A
            # refused file is not here: a new scanner checks it again, as an install may have
            # fixed it since.)
            known = {**section(data, "decided"), **identities}
            return {**self._stats(data), "generation": generation, "decided": known}

        data = self.record.update(change)
        self.acted = int(data["generation"]["n"])
        return self.acted

    def generation(self) -> Data:
        """The generation last read from the record ({} if none)."""
        return section(self.record.data or self.record.read(), "generation")

    def note_reload(self, chain: bool) -> None:
        """The master is asked to reload now, for the generation this process acted on."""
        entry = {"n": self.acted, "at": self.system.monotonic(), "chain": chain, "by": self.pid}
        self.record.update(lambda data: {**data, "reloaded": entry})

    def forget_reload(self) -> None:
        """The reload this process noted did not happen (the master refused the signal)."""
        self.record.update(self._drop("reloaded", "by"))

    def last_reload(self) -> Data:
        """The master's last reload: ``n``, ``at`` (``monotonic()``), ``chain``; {} if none."""
        reloaded = section(self.record.read(), "reloaded")
        return reloaded if isinstance(reloaded.get("at"), (int, float)) else {}

    def first_to_log(self, name: str) -> bool:
        """True for the first process of the master to log the line ``name``."""
        first = False

        def change(data: Data) -> Optional[Data]:
            nonlocal first
            logged = [n for n in data.get("logged", ()) if isinstance(n, str)]
            if name in logged:
                return None
            first = True
            return {**data, "logged": (logged + [name])[-_ONCE_KEPT:]}

        self.record.update(change)
        return first

    def leave(self) -> None:
        """Give the lease up (a process closing its watcher), so another worker scans at once."""
        if not self.scanning:
            return
        self.scanning = False
        with contextlib.suppress(OSError):
            self.record.update(self._drop("lease", "pid"))

    def _drop(self, key: str, owner: str) -> Callable[[Data], Optional[Data]]:
        """A change removing ``data[key]`` if this process put it there (its ``owner`` field)."""

        def change(data: Data) -> Optional[Data]:
            if section(data, key).get(owner) != self.pid:
                return None
            return {k: v for k, v in data.items() if k != key}

        return change


def section(data: Data, key: str) -> Data:
    """``data[key]`` if it is a dict (a record read back may hold anything), else {}."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _workers(data: Data) -> Dict[str, Any]:
    return {k: dict(v) for k, v in section(data, "workers").items() if isinstance(v, dict)}
