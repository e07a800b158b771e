"""What changed: the files a process depends on and how they look on disk.

Pure code: no threads, no signals, no clocks. A Detector lists the watched files and reports
which of them differ from the baseline it recorded; deciding what to do is policy's job.
"""

from __future__ import annotations

import fnmatch
import glob
import importlib.machinery
import importlib.util
import os
import site
import sys
import sysconfig
import time
import zipimport
from operator import attrgetter
from types import ModuleType
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

# A file's identity on disk. Compared with != only: clocks go backwards and rsync/cp -p keep
# mtimes, so "newer" means nothing; the inode catches replace-by-rename and symlink swaps.
Identity = Tuple[int, int, int]  # (st_mtime_ns, st_size, st_ino)
Snapshot = Dict[str, Optional[Identity]]  # None: the file is missing or unreadable

# One C call builds the identity tuple: cheaper per file than three attribute reads.
_identity_of = attrgetter("st_mtime_ns", "st_size", "st_ino")

# A glob's matches are re-listed only when a directory it can reach changed its
# (st_mtime_ns, st_ino). Directory mtimes tick coarsely (a few ms on Linux, 1-2 s on some
# filesystems): a directory modified within _RACY_NS of the listing may change again
# unseen, so such a listing is not trusted. _GLOB_REFRESH_SCANS bounds what a filesystem
# with a skewed clock (NFS) could hide.
_RACY_NS = 2_000_000_000
_GLOB_REFRESH_SCANS = 60


def stat_or_none(path: str) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except (OSError, ValueError):  # ValueError: embedded NUL byte
        return None


def identity(path: str) -> Optional[Identity]:
    """Return the identity of ``path`` (following symlinks), or None if it cannot be stat'ed."""
    st = stat_or_none(path)
    return None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino)


def norm_dir(path: str) -> str:
    """``path`` absolute and case-normalised, ending in a separator: a prefix to match."""
    return os.path.join(os.path.normcase(os.path.abspath(path)), "")


def config_dirs(*keys: str) -> Set[str]:
    """The directories ``sysconfig`` names by ``keys`` (``"stdlib"``, ``"purelib"``...)."""
    paths = sysconfig.get_paths()
    return {norm_dir(paths[key]) for key in keys if paths.get(key)}


def stdlib_dirs() -> Tuple[str, ...]:
    """Directories holding the interpreter's own standard library."""
    return tuple(sorted(config_dirs("stdlib", "platstdlib")))


def site_dirs() -> Tuple[str, ...]:
    """Directories third-party packages install into (they may sit inside the stdlib dir)."""
    found = [*site.getsitepackages(), getattr(site, "USER_SITE", None)]
    return tuple(sorted(config_dirs("purelib", "platlib") | {norm_dir(p) for p in found if p}))


def module_file(module: ModuleType) -> Optional[str]:
    """The file a deploy would change to change ``module``, or None (builtin, frozen, namespace).

    ``.pyc`` maps back to its source, a zip import to its archive.
    """
    spec = getattr(module, "__spec__", None)
    loader = getattr(spec, "loader", None) or getattr(module, "__loader__", None)
    if isinstance(loader, zipimport.zipimporter):
        return loader.archive
    path = getattr(spec, "origin", None)
    if not path or not getattr(spec, "has_location", True):
        path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path or path in ("built-in", "frozen"):
        return None
    if not path.endswith((".pyc", ".pyo")):
        return path
    try:
        source = importlib.util.source_from_cache(path)
    except ValueError:  # legacy layout: foo.pyc beside foo.py
        source = path[:-1]
    # A sourceless deploy ships only bytecode: then the bytecode is what changes.
    return source if os.path.exists(source) else path


class Detector:
    """Lists the watched files and reports those whose identity changed since the last scan.

    :param extra_files: paths or glob patterns (``**`` recurses) watched besides the modules,
        for templates and configuration. A new file matching a pattern is a change.
    :param exclude: ``fnmatch`` patterns matched against the full path; matches are not watched.
    :param modules: watch the source files of ``sys.modules``.
    :param include_stdlib: also watch the interpreter's standard library (off: a deploy does
        not change it, and skipping it halves a typical scan).
    :param changed_since_ns: wall-clock time (``time.time_ns()``) the baseline stands for: a
        module file first seen later whose mtime is after it (and not in the future) is
        reported as changed rather than silently adopted.
    """

    def __init__(
        self,
        *,
        extra_files: Iterable[str] = (),
        exclude: Iterable[str] = (),
        modules: bool = True,
        include_stdlib: bool = False,
        changed_since_ns: Optional[int] = None,
    ) -> None:
        patterns = [os.fspath(p) for p in extra_files]
        listed = [os.path.abspath(p) for p in patterns if not glob.has_magic(p)]
        # Read-only outside (the event backend watches their directories).
        self.extra_globs = [os.path.abspath(p) for p in patterns if glob.has_magic(p)]
        self._exclude = tuple(os.fspath(p) for p in exclude) + ("*/__pycache__/*",)
        self._extra_wanted = [p for p in listed if self._wanted(p)]  # excludes never change
        self._modules = modules
        self.changed_since_ns = changed_since_ns
        self._skip_dirs = () if include_stdlib else stdlib_dirs()
        self._keep_dirs = site_dirs()
        # Module files are cached and rebuilt only when sys.modules grows or shrinks: listing
        # them costs more than stat'ing them. (Read-only outside: a new count, a new listing.)
        self.module_count = -1
        self._module_paths: List[str] = []
        # Every file ever seen stays watched: a module whose re-import failed leaves
        # sys.modules, but its broken file is exactly the one the fix will touch.
        self._baseline: Snapshot = {}
        self._scanned = False
        self._orphans: List[str] = []
        self._orphans_key: object = None  # the listing and baseline size they were made from
        self._glob_result: List[str] = []
        self._glob_dirs: Optional[Dict[str, Optional[Tuple[int, int]]]] = None
        self._glob_scans = 0
        self._glob_version = 0
        self._extra = list(self._extra_wanted)  # and the globbed files

    # -- listing --------------------------------------------------------------------------
    def _wanted(self, path: str) -> bool:
        return not any(fnmatch.fnmatchcase(path, pattern) for pattern in self._exclude)

    def module_paths(self) -> List[str]:
        """Source files of the loaded modules (cached while ``len(sys.modules)`` is unchanged)."""
        if not self._modules:
            return []
        count = len(sys.modules)
        if count != self.module_count:
            seen: Set[str] = set()
            for module in list(sys.modules.values()):  # copy: imports happen in other threads
                try:
                    path = module_file(module)
                except Exception:  # an exotic module object must not break the scan
                    continue
                if path is None or path in seen:
                    continue
                if not os.path.isabs(path):
                    path = os.path.abspath(path)
                norm = os.path.normcase(path)
                if norm.startswith(self._skip_dirs) and not norm.startswith(self._keep_dirs):
                    continue
                if self._wanted(path):
                    seen.add(path)
            self._module_paths = sorted(seen)
            self.module_count = count
        return self._module_paths

    def glob_paths(self) -> List[str]:
        """Files currently matching the ``extra_files`` patterns (directories skipped),
        re-listed only when a directory the patterns reach changed since the last listing."""
        if not self.extra_globs:
            return []
        self._glob_scans += 1  # a listing too old is redone even if no directory seems changed
        dirs = self._glob_dirs
        if dirs is not None and self._glob_scans < _GLOB_REFRESH_SCANS and all(
            _dir_key(directory) == old for directory, old in dirs.items()
        ):
            return self._glob_result
        # Read the clock before listing: a directory touched after this instant is racy.
        started = time.time_ns()
        found: Set[str] = set()
        for pattern in self.extra_globs:
            try:
                matches = _glob(pattern)
            except (OSError, RecursionError):  # symlink loops, vanished directories
                continue
            found.update(p for p in matches if self._wanted(p) and not os.path.isdir(p))
        result = sorted(found)
        if result != self._glob_result:
            self._glob_result = result
            self._glob_version += 1
            self._extra = self._extra_wanted + result
        # The (mtime, inode) of every directory the patterns can reach; none if one is racy.
        dirs = {d: _dir_key(d) for pattern in self.extra_globs for d in glob_dirs(pattern)}
        racy = any(key is not None and key[0] > started - _RACY_NS for key in dirs.values())
        self._glob_dirs = None if racy else dirs
        self._glob_scans = 0
        return self._glob_result

    def watched(self) -> List[str]:
        """Every file watched right now."""
        self.glob_paths()  # brings the listed and globbed extra files up to date
        return sorted({*self.module_paths(), *self._extra, *self._baseline})

    def add(self, paths: Iterable[str]) -> None:
        """Watch more files from now on (for example a file whose import failed)."""
        for path in paths:
            path = os.path.abspath(path)
            if path not in self._baseline and self._wanted(path):
                self._baseline[path] = identity(path)

    # -- scanning -------------------------------------------------------------------------
    def scan(self) -> List[str]:
        """Stat every watched file; return those that differ from the baseline, and adopt them.

        The first scan only records the baseline. Later, a file seen for the first time is
        baseline too (a module imported late), except a new file matching an ``extra_files``
        pattern, or a listed extra file that appears: a deploy added it.
        """
        changed: List[str] = []
        try:
            self._scan(changed)
        except BaseException:
            # Interrupted (a signal handler raised in the main thread): the changes this scan
            # already adopted would be lost, so make the next scan report them again.
            for path in changed:
                self._baseline[path] = _FORGOTTEN
            raise
        return changed

    def _scan(self, changed: List[str]) -> None:
        baseline = self._baseline
        first = not self._scanned
        since = self.changed_since_ns
        now = time.time_ns() if since is not None else 0

        def modified_late(ident: Optional[Identity]) -> bool:
            # First seen, yet modified after the process took its baseline: the module may
            # have been imported before that edit (a lazy import, Django's URLconf at the
            # first request). At worst one reload too many; an mtime in the future never
            # counts, so clock skew cannot make a reload loop.
            return since is not None and ident is not None and since < ident[0] <= now

        _stat_into(self.module_paths(), baseline, changed, modified_late)
        self.glob_paths()
        extra = self._extra
        _stat_into(extra, baseline, changed, lambda ident: not first and ident is not None)
        # Files no longer listed (a module dropped from sys.modules, a file that left a glob,
        # a file added after a failed import) stay watched. The set is recomputed only when
        # the listing changed, so a steady scan costs one stat per file and nothing more.
        key = (self.module_count, self._glob_version, len(baseline))
        if key != self._orphans_key:
            listed = {*self._module_paths, *extra}
            self._orphans = [p for p in baseline if p not in listed]
            self._orphans_key = key
        _stat_into(self._orphans, baseline, changed, bool)  # in the baseline: never first seen
        self._scanned = True

    def modified_since(self, since_ns: int) -> List[str]:
        """Watched files whose recorded mtime is after ``since_ns`` (``time.time_ns()``) and
        not in the future: an mtime ahead of the clock never counts, or every new process
        would reload again (clock skew, a tarball from a fast machine)."""
        now = time.time_ns()
        return sorted(path for path, ident in self._baseline.items()
                      if ident is not None and since_ns < ident[0] <= now)

    @property
    def baseline(self) -> Snapshot:
        """The identity of every watched file as last scanned (read it, do not change it)."""
        return self._baseline


class SearchPath:
    """What a module search path offers to import (an install adds or renames a module, a
    package, its ``.dist-info``, a ``.pth``): one stat per entry per look, a listing only once
    its mtime moved, and only names the import system can use count (not a sqlite journal)."""

    def __init__(self, entries: Callable[[], Iterable[str]]) -> None:
        self.entries = entries  # read at each look; '' is the working directory
        self._seen: Dict[str, Tuple[object, object]] = {}  # entry: (its _dir_key, its offer)

    def changed(self) -> List[str]:
        """Entries offering other names than at the last look (none at the first look)."""
        seen, changed = {}, []
        for entry in self.entries():
            path = entry or os.curdir
            key, old = _dir_key(path), self._seen.get(entry)
            seen[entry] = old if old and old[0] == key else (key, self._offer(path, key))
            if old is not None and old[1] != seen[entry][1]:
                changed.append(path)
        self._seen = seen
        return changed

    @staticmethod
    def _offer(path: str, key: object) -> object:
        """A directory's importable names; a file's (a zip's) identity; None if missing."""
        suffixes = (*importlib.machinery.all_suffixes(), ".pth")
        try:
            with os.scandir(path) as found:
                return frozenset(e.name for e in found if not e.name.startswith(".") and (
                    e.name.endswith(suffixes) or (e.is_dir() and e.name != "__pycache__")))
        except OSError as exc:
            return key if isinstance(exc, NotADirectoryError) else None


def _dir_key(path: str) -> Optional[Tuple[int, int]]:
    st = stat_or_none(path)
    return None if st is None else (st.st_mtime_ns, st.st_ino)


def _stat_into(
    paths: Iterable[str],
    baseline: Snapshot,
    changed: List[str],
    first_seen_counts: Callable[[Optional[Identity]], bool],
) -> None:
    """Adopt each path's identity into ``baseline``; list in ``changed`` those that differ,
    and those first seen for which ``first_seen_counts(identity)``."""
    get = baseline.get
    stat = os.stat
    identity_of = _identity_of
    unseen = _UNSEEN
    # The hot loop: one stat, one C call, one lookup and one compare per file. An unseen
    # path compares unequal to any identity, so the steady state takes a single branch.
    for path in paths:
        try:
            ident: Optional[Identity] = identity_of(stat(path))
        except (OSError, ValueError):
            ident = None
        old = get(path, unseen)
        if old != ident:
            baseline[path] = ident
            if old is not unseen or first_seen_counts(ident):
                changed.append(path)


def _glob(pattern: str) -> List[str]:
    """``glob.glob(pattern, recursive=True)``, except that ``**`` enters each directory once:
    glob follows directory symlinks under ``**`` without noticing loops (two links to ``..``
    made it walk 2**40 aliases and hang the watcher). Symlinked directories are still followed.
    """
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    i = parts.index("**")
    head, tail = os.sep.join(parts[:i]) or os.sep, parts[i + 1 :]
    found: List[str] = []
    for top in glob.glob(head) if glob.has_magic(head) else [head]:
        for dirpath, dirnames in _walk_once(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # as glob's ``**``
            found.extend(_glob(os.path.join(glob.escape(dirpath), *(tail or ["*"]))))
    return found


def _walk_once(top: str) -> Iterator[Tuple[str, List[str]]]:
    """``os.walk(top, followlinks=True)`` entering each real directory once: a symlink loop
    or a second alias is pruned (its files are listed already)."""
    seen: Set[Tuple[int, int]] = set()
    for dirpath, dirnames, _ in os.walk(top, followlinks=True):
        st = stat_or_none(dirpath)
        if st is None or (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        yield dirpath, dirnames


_UNSEEN = object()  # compares by identity: unequal to every Identity and to None
_FORGOTTEN: Identity = (-1, -1, -1)  # equals no file's identity: reported at the next scan


def glob_root(pattern: str) -> str:
    """The deepest directory of ``pattern`` without a wildcard (where its matches live)."""
    parts = pattern.split(os.sep)
    for index, part in enumerate(parts):
        if glob.has_magic(part):
            return os.sep.join(parts[:index]) or os.sep
    return os.path.dirname(pattern)


def glob_dirs(pattern: str) -> List[str]:
    """Directories whose listing decides what an absolute ``pattern`` matches (a superset).

    The deepest wildcard-free directory of the pattern and the directories below it down to
    the pattern's depth (all of them for ``**``), hidden ones included; symlinks followed,
    each real directory once.
    """
    root = glob_root(pattern)
    rest = pattern[len(root) :].lstrip(os.sep).split(os.sep)
    depth = None if "**" in rest else len(rest) - 1
    found = [root]
    for current, dirs in _walk_once(root):
        level = 0 if current == root else current[len(root) :].strip(os.sep).count(os.sep) + 1
        if depth is not None and level >= depth:
            dirs[:] = []
        found.extend(os.path.join(current, d) for d in dirs)
    return found


def fingerprint(snapshot: Snapshot, paths: Sequence[str]) -> str:
    """A short stable digest of ``paths`` as ``snapshot`` saw them (same deploy, same digest)."""
    import hashlib

    digest = hashlib.sha1(usedforsecurity=False)
    for path in sorted(paths):
        digest.update(repr((path, snapshot.get(path))).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]
