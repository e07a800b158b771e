"""The event backend: filesystem events (``watchfiles``) say when to scan, polling says what.

Optional: without the ``watchfiles`` package, or when the filesystem delivers no events, it
polls exactly like the plain Detector, which remains the judge of what changed.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
import threading
import weakref
from typing import AbstractSet, Any, Callable, Iterable, List, Optional, Sequence, Set, Tuple, cast

from .detect import Detector, Snapshot, glob_dirs, glob_root, stat_or_none

log = logging.getLogger("wsgireload")

# Files editors and servers write next to code; an event on them never means a deploy.
_IGNORED_SUFFIXES = (".swp", ".swo", ".swx", ".swpx", "~", ".tmp", ".log", ".pyc", ".pyo")
_IGNORED_PREFIXES = (".#", "#")
_IGNORED_NAMES = frozenset({"4913", ".DS_Store"})  # 4913: vim's "can I write here" probe
_IGNORED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"})

# watchfiles checks its stop event every STEP milliseconds while idle; each check takes the
# GIL, so a long step keeps an idle watcher near 0% of a core at the price of a slower stop.
_STEP_MS = 500
_DEBOUNCE_MS = 50
# Scans during which an event must announce a change the verification scan found first.
_SUSPECT_SCANS = 3


def relevant(path: str, watched: AbstractSet[str], roots: Sequence[str]) -> bool:
    """Whether an event on ``path`` can change what the Detector reports.

    A watched file always counts. Otherwise editor swap files, logs, bytecode and version
    control directories never do; any other path under a glob root (``extra_files``
    pattern) does, because a new file matching the pattern is a change.
    """
    if path in watched:
        return True
    name = os.path.basename(path)
    if (
        name in _IGNORED_NAMES
        or name.endswith(_IGNORED_SUFFIXES)
        or name.startswith(_IGNORED_PREFIXES)
    ):
        return False
    if _IGNORED_DIRS.intersection(path.split(os.sep)):
        return False
    return bool(roots) and path.startswith(tuple(roots))


def _dir_inode(path: str) -> Optional[int]:
    st = stat_or_none(path)
    return st.st_ino if st is not None and stat.S_ISDIR(st.st_mode) else None


def _load_watch() -> Optional[Callable[..., Any]]:
    try:
        # Through importlib: the package is optional, so type checkers may not know it.
        return cast(Callable[..., Any], importlib.import_module("watchfiles").watch)
    except ImportError:
        return None


class EventDetector:
    """A Detector that scans only after a filesystem event (or every ``verify_every`` scans).

    Same interface as :class:`~wsgireload.detect.Detector`; ``start()`` runs the watchfiles
    thread (call it in the process that serves, after any fork), ``stop()`` ends it. Until
    started, or after falling back, ``scan()`` polls. A verification scan every
    ``verify_every`` calls catches what events missed: if it finds a change no event
    announced (NFS, some container mounts), the detector falls back to polling for good.

    :param detector: the polling Detector that decides what changed.
    :param verify_every: scans between two full verification scans (each costs what one
        polling scan costs; at the default 1 s interval, 1/120 of polling's CPU).
    :param watch: stands in for ``watchfiles.watch`` (tests).
    """

    def __init__(
        self,
        detector: Detector,
        *,
        verify_every: int = 120,
        watch: Optional[Callable[..., Any]] = None,
    ) -> None:
        if verify_every < 1:
            raise ValueError(f"verify_every must be 1 or more (got {verify_every!r})")
        self.poller = detector
        self.verify_every = verify_every
        self._watch = watch if watch is not None else _load_watch()
        self.after_fork()
        self._pid = -1  # the process the running thread belongs to
        self._wanted_pid = -1  # the process start() was called in
        self._failed = self._watch is None
        self._watched: AbstractSet[str] = frozenset()
        self._roots: Tuple[str, ...] = ()
        self._module_key: object = None
        self._ticks = 0
        self._suspects: Set[str] = set()
        self._suspect_scans = 0
        _detectors.add(self)

    def after_fork(self) -> None:
        """Fresh lock and thread state: at construction, and in a forked child."""
        self._lock = threading.Lock()
        self._dirty: Set[str] = set()
        self._running: Optional[Tuple[threading.Thread, threading.Event]] = None  # and its stop
        self._dirs: Set[Tuple[str, int]] = set()
        self._rescan = True

    # -- the Detector interface ---------------------------------------------------------------
    @property
    def baseline(self) -> Snapshot:
        return self.poller.baseline

    def watched(self) -> List[str]:
        return self.poller.watched()

    def modified_since(self, since_ns: int) -> List[str]:
        return self.poller.modified_since(since_ns)

    def add(self, paths: Iterable[str]) -> None:
        self.poller.add(paths)
        with self._lock:
            self._rescan = True  # new files may live in directories not watched yet

    @property
    def polling(self) -> bool:
        """True while scans poll (not started, started in another process, or fallen back)."""
        running = self._running  # read once: another thread may stop it meanwhile
        alive = running is not None and running[0].is_alive()
        return self._failed or not alive or self._pid != os.getpid()

    def scan(self) -> List[str]:
        """Changed paths, like ``Detector.scan()``; cheap while no event arrived."""
        pid = os.getpid()
        if self._failed or self._wanted_pid != pid:
            return self.poller.scan()
        if self._pid != pid:
            # The first scan after start() starts the thread: the caller is the watcher
            # thread, so listing directories never delays a request.
            changed = self.poller.scan()
            self._pid = pid
            self._running = None  # a thread inherited through fork does not run here
            self._refresh_dirs()
            return changed
        if self.polling:  # no thread: no directory to watch, or it ended
            return self.poller.scan()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            rescan, self._rescan = self._rescan, False
        self.poller.module_paths()  # re-lists the modules when sys.modules resized
        module_key = self.poller.module_count
        self._ticks += 1
        verify = self._ticks >= self.verify_every
        if self._suspects:
            if dirty & self._suspects:
                self._suspects = set()
            else:
                self._suspect_scans += 1
                if self._suspect_scans >= _SUSPECT_SCANS:
                    self._fall_back(sorted(self._suspects))
                    return self.poller.scan()
        if not (dirty or rescan or verify or module_key != self._module_key):
            return []
        changed = self.poller.scan()
        if verify:
            self._ticks = 0
            unannounced = set(changed) - dirty
            if unannounced:
                # Events may lag the stat by a debounce: judge over the next scans.
                self._suspects = unannounced
                self._suspect_scans = 0
        if dirty or rescan or changed or module_key != self._module_key:
            self._refresh_dirs()  # new modules, files or directories to watch
        self._module_key = module_key
        return changed

    # -- the watchfiles thread ------------------------------------------------------------------
    def start(self) -> bool:
        """Watch in this process from the next scan on; False (polling) without watchfiles.
        Call it in the process that serves (after any fork), then scan from one thread."""
        if self._failed:
            return False
        self._wanted_pid = os.getpid()
        return True

    def stop(self) -> None:
        """Stop the watchfiles thread (idempotent); later scans poll."""
        self._wanted_pid = -1
        running, self._running = self._running, None
        self._pid = -1
        _end(running)

    def _refresh_dirs(self) -> None:
        """Point the watcher at the directories of the watched files (restart if they moved)."""
        watched = frozenset(self.poller.watched())
        globs = self.poller.extra_globs
        roots = tuple(os.path.join(glob_root(p), "") for p in globs)
        dirs = {os.path.dirname(p) for p in watched}
        for pattern in globs:
            dirs.update(glob_dirs(pattern))
        # With its inode: a directory replaced by a deploy (rm -r, then copy) keeps its name
        # but not its watch, which stays on the deleted inode.
        existing: Set[Tuple[str, int]] = set()
        for directory in dirs:
            inode = _dir_inode(directory)
            if inode is not None:
                existing.add((directory, inode))
                continue
            # A listed file in a directory yet to be created: watch the nearest ancestor
            # that exists and treat anything below it as relevant.
            parent = os.path.dirname(directory)
            while parent != directory and _dir_inode(parent) is None:
                directory, parent = parent, os.path.dirname(parent)
            existing.add((parent, _dir_inode(parent) or 0))
            roots += (os.path.join(parent, ""),)
        with self._lock:
            # An event on a watched directory itself (moved, deleted) counts too.
            self._watched = watched.union(directory for directory, _ in existing)
            self._roots = roots
        if existing == self._dirs and self._running is not None:
            return
        self._dirs = existing
        self._restart(sorted(directory for directory, _ in existing))

    def _restart(self, dirs: List[str]) -> None:
        _end(self._running)
        self._running = None
        if not dirs:
            return
        stop = threading.Event()
        ready = threading.Event()
        thread = threading.Thread(
            target=self._run,
            args=(dirs, stop, ready),
            name="wsgireload-events",
            daemon=True,
        )
        self._running = (thread, stop)
        thread.start()
        ready.wait(timeout=5.0)  # the first events after start must not be lost
        with self._lock:
            self._rescan = True  # anything between the last scan and the watch is caught

    def _run(self, dirs: List[str], stop: threading.Event, ready: threading.Event) -> None:
        assert self._watch is not None
        try:
            changes_iter = self._watch(
                *dirs,
                watch_filter=None,
                debounce=_DEBOUNCE_MS,
                step=_STEP_MS,
                stop_event=stop,
                rust_timeout=0,
                raise_interrupt=False,
                recursive=False,
                ignore_permission_denied=True,
            )
            ready.set()  # RustNotify is created on the first next(); close enough, and bounded
            for changes in changes_iter:
                with self._lock:
                    watched, roots = self._watched, self._roots
                    self._dirty.update(
                        path for _, path in changes if relevant(path, watched, roots)
                    )
        except Exception as exc:
            if not stop.is_set():
                self._fall_back([], exc)
        finally:
            ready.set()

    def _fall_back(self, unannounced: Sequence[str], exc: Optional[BaseException] = None) -> None:
        self._failed = True
        if exc is not None:
            log.warning("wsgireload: file events stopped working (%r); polling from now on", exc)
        else:
            log.warning(
                "wsgireload: %s changed without a file event (this filesystem does not report "
                "them, e.g. NFS or a bind mount); polling from now on",
                ", ".join(unannounced[:3]),
            )
        running = self._running  # read once: the owner may restart it meanwhile
        if running is not None:
            running[1].set()


def _end(running: Optional[Tuple[threading.Thread, threading.Event]]) -> None:
    if running is not None:
        running[1].set()
        if running[0] is not threading.current_thread():
            running[0].join(timeout=5.0)


def available() -> bool:
    """Whether the ``watchfiles`` package can be imported."""
    return _load_watch() is not None


# A fork can happen while the events thread holds the lock; the child gets fresh ones.
_detectors: "weakref.WeakSet[EventDetector]" = weakref.WeakSet()


def after_fork() -> None:
    """Called in a forked child (by ``wsgireload.engine``'s one fork hook)."""
    for detector in list(_detectors):
        detector.after_fork()
