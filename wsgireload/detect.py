"""What changed: the files a process depends on and how they look on disk.

Pure code: no threads, no signals, no clocks. A Detector lists the watched files and reports
which of them differ from the baseline it recorded; deciding what to do is policy's job.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import site
import sys
import sysconfig
import zipimport
from types import ModuleType
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

# A file's identity on disk. Compared with != only: clocks go backwards and rsync/cp -p keep
# mtimes, so "newer" means nothing; the inode catches replace-by-rename and symlink swaps.
Identity = Tuple[int, int, int]  # (st_mtime_ns, st_size, st_ino)
Snapshot = Dict[str, Optional[Identity]]  # None: the file is missing or unreadable

_MAGIC_GLOB = frozenset("*?[")


def identity(path: str) -> Optional[Identity]:
    """Return the identity of ``path`` (following symlinks), or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: embedded NUL byte
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _norm_dir(path: str) -> str:
    return os.path.join(os.path.normcase(os.path.abspath(path)), "")


def stdlib_dirs() -> Tuple[str, ...]:
    """Directories holding the interpreter's own standard library."""
    paths = sysconfig.get_paths()
    dirs = {_norm_dir(paths[key]) for key in ("stdlib", "platstdlib") if paths.get(key)}
    return tuple(sorted(dirs))


def site_dirs() -> Tuple[str, ...]:
    """Directories third-party packages install into (they may sit inside the stdlib dir)."""
    dirs: Set[str] = set()
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        if paths.get(key):
            dirs.add(_norm_dir(paths[key]))
    try:
        dirs.update(_norm_dir(p) for p in site.getsitepackages())
    except AttributeError:  # pragma: no cover - old virtualenv's site.py
        pass
    user_site = getattr(site, "USER_SITE", None)
    if user_site:
        dirs.add(_norm_dir(user_site))
    return tuple(sorted(dirs))


def module_file(module: ModuleType) -> Optional[str]:
    """The file a deploy would change to change ``module``, or None (builtin, frozen, namespace).

    ``.pyc`` maps back to its source, a zip import to its archive.
    """
    spec = getattr(module, "__spec__", None)
    loader = getattr(spec, "loader", None) or getattr(module, "__loader__", None)
    if isinstance(loader, zipimport.zipimporter):
        return loader.archive
    path = getattr(spec, "origin", None) if spec is not None else None
    if not path or not getattr(spec, "has_location", True):
        path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path or path in ("built-in", "frozen"):
        return None
    if path.endswith((".pyc", ".pyo")):
        path = _source_for_bytecode(path)
    return path


def _source_for_bytecode(path: str) -> str:
    import importlib.util

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
    """

    def __init__(
        self,
        *,
        extra_files: Iterable[str] = (),
        exclude: Iterable[str] = (),
        modules: bool = True,
        include_stdlib: bool = False,
    ) -> None:
        patterns = [os.fspath(p) for p in extra_files]
        self._extra_paths = [os.path.abspath(p) for p in patterns if not _MAGIC_GLOB & set(p)]
        self._extra_globs = [os.path.abspath(p) for p in patterns if _MAGIC_GLOB & set(p)]
        self._exclude = tuple(os.fspath(p) for p in exclude) + ("*/__pycache__/*",)
        self._modules = modules
        self._skip_dirs = () if include_stdlib else stdlib_dirs()
        self._keep_dirs = site_dirs()
        # Module files are cached and rebuilt only when sys.modules grows or shrinks: listing
        # them costs more than stat'ing them.
        self._module_count = -1
        self._module_paths: List[str] = []
        # Every file ever seen stays watched: a module whose re-import failed leaves
        # sys.modules, but its broken file is exactly the one the fix will touch.
        self._baseline: Snapshot = {}
        self._scanned = False
        self._orphans: List[str] = []
        self._orphans_key: object = None
        self._orphans_size = -1

    # -- listing --------------------------------------------------------------------------
    def _wanted(self, path: str) -> bool:
        for pattern in self._exclude:
            if fnmatch.fnmatchcase(path, pattern):
                return False
        return True

    def _is_stdlib(self, path: str) -> bool:
        norm = os.path.normcase(path)
        if not norm.startswith(self._skip_dirs):
            return False
        return not norm.startswith(self._keep_dirs)

    def module_paths(self) -> List[str]:
        """Source files of the loaded modules (cached while ``len(sys.modules)`` is unchanged)."""
        if not self._modules:
            return []
        count = len(sys.modules)
        if count != self._module_count:
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
                if self._skip_dirs and self._is_stdlib(path):
                    continue
                if self._wanted(path):
                    seen.add(path)
            self._module_paths = sorted(seen)
            self._module_count = count
        return self._module_paths

    def glob_paths(self) -> List[str]:
        """Files currently matching the ``extra_files`` patterns (directories skipped)."""
        found: Set[str] = set()
        for pattern in self._extra_globs:
            try:
                matches = _glob(pattern)
            except (OSError, RecursionError):  # symlink loops, vanished directories
                continue
            for path in matches:
                if self._wanted(path) and not os.path.isdir(path):
                    found.add(path)
        return sorted(found)

    def watched(self) -> List[str]:
        """Every file watched right now."""
        paths = set(self.module_paths())
        paths.update(p for p in self._extra_paths if self._wanted(p))
        paths.update(self.glob_paths())
        paths.update(self._baseline)
        return sorted(paths)

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
        stat = os.stat
        first = not self._scanned
        for path in self.module_paths():
            try:
                st = stat(path)
                ident: Optional[Identity] = (st.st_mtime_ns, st.st_size, st.st_ino)
            except (OSError, ValueError):
                ident = None
            old = baseline.get(path, _UNSEEN)
            if old is _UNSEEN:
                baseline[path] = ident
            elif old != ident:
                baseline[path] = ident
                changed.append(path)
        extra = [p for p in self._extra_paths if self._wanted(p)]
        extra.extend(self.glob_paths())
        for path in extra:
            ident = identity(path)
            old = baseline.get(path, _UNSEEN)
            if old is _UNSEEN:
                baseline[path] = ident
                if not first and ident is not None:
                    changed.append(path)
            elif old != ident:
                baseline[path] = ident
                changed.append(path)
        # Files no longer listed (a module dropped from sys.modules, a file that left a glob,
        # a file added after a failed import) stay watched. The set is recomputed only when
        # the listing changed, so a steady scan costs one stat per file and nothing more.
        key = (self._module_count, tuple(extra))
        if key != self._orphans_key or len(baseline) != self._orphans_size:
            listed = set(self._module_paths)
            listed.update(extra)
            self._orphans = [p for p in baseline if p not in listed]
            self._orphans_key = key
            self._orphans_size = len(baseline)
        for path in self._orphans:
            ident = identity(path)
            if baseline[path] != ident:
                baseline[path] = ident
                changed.append(path)
        self._scanned = True

    @property
    def baseline(self) -> Snapshot:
        """The identity of every watched file as last scanned (read it, do not change it)."""
        return self._baseline


def _glob(pattern: str) -> List[str]:
    """``glob.glob(pattern, recursive=True)``, except that ``**`` enters each directory once.

    glob follows directory symlinks under ``**`` without noticing loops: two links to ``..``
    made it walk 2**40 aliases and hang the watcher. Symlinked directories are still followed.
    """
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    i = parts.index("**")
    head, tail = os.sep.join(parts[:i]) or os.sep, parts[i + 1 :]
    found: List[str] = []
    for top in glob.glob(head) if _MAGIC_GLOB & set(head) else [head]:
        seen: Set[Tuple[int, int]] = set()
        for dirpath, dirnames, _ in os.walk(top, followlinks=True):
            try:
                st = os.stat(dirpath)
            except (OSError, ValueError):
                dirnames[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen:
                dirnames[:] = []  # a loop or a second alias: its files are listed already
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # as glob's ``**``
            found.extend(_glob(os.path.join(glob.escape(dirpath), *(tail or ["*"]))))
    return found


class _Unseen:
    __slots__ = ()


_UNSEEN: object = _Unseen()
_FORGOTTEN: Identity = (-1, -1, -1)  # equals no file's identity: reported at the next scan


def fingerprint(snapshot: Snapshot, paths: Sequence[str]) -> str:
    """A short stable digest of ``paths`` as ``snapshot`` saw them (same deploy, same digest)."""
    import hashlib

    digest = hashlib.sha1(usedforsecurity=False)
    for path in sorted(paths):
        digest.update(repr((path, snapshot.get(path))).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]
