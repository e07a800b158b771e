"""Detection: which files are watched and which changes are reported, filesystem faults included."""

from __future__ import annotations

import glob as glob_module
import importlib
import logging
import os
import shutil
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgireload import detect
from wsgireload.detect import (
    Detector,
    SearchPath,
    fingerprint,
    glob_dirs,
    identity,
    module_file,
    stdlib_dirs,
)
from wsgireload.policy import Policy, compile_errors

from .conftest import (
    IS_ROOT,
    Recorder,
    bounded,
    bump,
    environ,
    install,
    make_reloader,
    ok_app,
    run_in_child,
    serve,
)


def extra_detector(*paths: Path, **kw: object) -> Detector:
    det = Detector(extra_files=[str(p) for p in paths], modules=False, **kw)  # type: ignore[arg-type]
    det.scan()
    return det


def test_modify_is_a_change(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one")
    det = extra_detector(f)
    assert det.scan() == []
    bump(f)
    assert det.scan() == [str(f)]
    assert det.scan() == []  # adopted: reported once


def test_replace_by_rename_is_a_change_even_with_same_mtime_and_size(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one")
    det = extra_detector(f)
    st = f.stat()
    new = tmp_path / "a.txt.new"
    new.write_text("two")  # same size
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime (rsync -t)
    os.replace(new, f)
    assert det.scan() == [str(f)]  # the inode differs


def test_delete_is_a_change_and_reappearing_too(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one")
    det = extra_detector(f)
    f.unlink()
    assert det.scan() == [str(f)]
    assert det.scan() == []
    f.write_text("back")
    assert det.scan() == [str(f)]


def test_mtime_moved_backwards_is_a_change(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one")
    det = extra_detector(f)
    bump(f, seconds=-3600)
    assert det.scan() == [str(f)]


def test_same_second_same_size_edit_is_a_change(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("one")
    det = extra_detector(f)
    st = f.stat()
    f.write_text("two")
    # Same whole second, same size: only the nanoseconds differ (what .pyc checks miss).
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert det.scan() == [str(f)]


def test_new_file_matching_a_glob_is_a_change(tmp_path: Path) -> None:
    (tmp_path / "templates" / "sub").mkdir(parents=True)
    (tmp_path / "templates" / "a.html").write_text("a")
    det = Detector(extra_files=[str(tmp_path / "templates" / "**" / "*.html")], modules=False)
    assert det.scan() == []  # first scan is the baseline
    new = tmp_path / "templates" / "sub" / "b.html"
    new.write_text("b")
    assert det.scan() == [str(new)]
    (tmp_path / "templates" / "ignored.txt").write_text("x")
    assert det.scan() == []


def test_extra_file_that_appears_is_a_change(tmp_path: Path) -> None:
    f = tmp_path / "settings.ini"
    det = extra_detector(f)
    f.write_text("x=1")
    assert det.scan() == [str(f)]


def test_exclude_patterns(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text("a")
    (tmp_path / "a.log").write_text("a")
    det = Detector(extra_files=[str(tmp_path / "*")], exclude=["*.log"], modules=False)
    det.scan()
    assert det.watched() == [str(tmp_path / "a.html")]
    bump(tmp_path / "a.log")
    assert det.scan() == []


def test_pycache_is_never_watched(tmp_path: Path) -> None:
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"x")
    det = Detector(extra_files=[str(tmp_path / "**" / "*")], modules=False)
    det.scan()
    assert det.watched() == []


def test_imported_module_is_watched_and_edits_detected(pkg) -> None:  # type: ignore[no-untyped-def]
    path = pkg("wr_mod_a")
    importlib.import_module("wr_mod_a")
    det = Detector()
    det.scan()
    assert str(path) in det.watched()
    bump(path)
    assert det.scan() == [str(path)]


def test_module_imported_after_baseline_is_baselined_not_reported(pkg) -> None:  # type: ignore[no-untyped-def]
    det = Detector()
    det.scan()
    path = pkg("wr_mod_late")
    importlib.import_module("wr_mod_late")
    assert det.scan() == []  # first seen: baseline
    bump(path)
    assert det.scan() == [str(path)]


def test_module_whose_reimport_failed_stays_watched(pkg) -> None:  # type: ignore[no-untyped-def]
    path = pkg("wr_mod_broken")
    importlib.import_module("wr_mod_broken")
    det = Detector()
    det.scan()
    path.write_text("def broken(:\n")
    bump(path)
    del sys.modules["wr_mod_broken"]
    with pytest.raises(SyntaxError):
        importlib.import_module("wr_mod_broken")
    assert "wr_mod_broken" not in sys.modules
    assert det.scan() == [str(path)]
    assert str(path) in det.watched()
    path.write_text("VALUE = 2\n")
    bump(path, 10)
    assert det.scan() == [str(path)]  # the fix is seen


def test_add_watches_a_file_from_a_failed_import(tmp_path: Path) -> None:
    f = tmp_path / "never_imported.py"
    f.write_text("def x(:\n")
    det = Detector(modules=False)
    det.scan()
    det.add([str(f)])
    f.write_text("x = 1\n")
    bump(f)
    assert det.scan() == [str(f)]


def test_stdlib_excluded_by_default_and_included_on_request() -> None:
    stdlib_file = module_file(sys.modules["json"])
    assert stdlib_file is not None
    assert stdlib_file not in Detector().watched()
    assert stdlib_file in Detector(include_stdlib=True).watched()


def test_site_packages_are_watched_by_default() -> None:
    import pytest as pytest_module

    path = module_file(pytest_module)
    assert path is not None and "site-packages" in path
    assert path in Detector().watched()


def test_stdlib_dirs_nonempty() -> None:
    assert stdlib_dirs()


def test_module_file_maps_bytecode_to_source(tmp_path: Path) -> None:
    import types

    src = tmp_path / "m.py"
    src.write_text("")
    cache = tmp_path / "__pycache__" / f"m.{sys.implementation.cache_tag}.pyc"
    mod = types.ModuleType("m")
    mod.__file__ = str(cache)
    assert module_file(mod) == str(src)
    legacy = types.ModuleType("m2")
    legacy.__file__ = str(tmp_path / "m.pyc")
    assert module_file(legacy) == str(src)
    sourceless = types.ModuleType("m3")
    sourceless.__file__ = str(tmp_path / "only.pyc")
    assert module_file(sourceless) == str(tmp_path / "only.pyc")


def test_builtin_and_frozen_modules_are_skipped() -> None:
    assert module_file(sys.modules["sys"]) is None
    assert module_file(sys.modules["builtins"]) is None


def test_zip_import_maps_to_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("wr_zipped.py", "VALUE = 1\n")
    monkeypatch.syspath_prepend(str(archive))
    try:
        mod = importlib.import_module("wr_zipped")
        assert module_file(mod) == str(archive)
        det = Detector()
        det.scan()
        assert str(archive) in det.watched()
        bump(archive)
        assert str(archive) in det.scan()
    finally:
        sys.modules.pop("wr_zipped", None)


def test_symlink_swap_deploy_is_a_change(tmp_path: Path) -> None:
    for release in ("r1", "r2"):
        (tmp_path / release).mkdir()
        (tmp_path / release / "app.py").write_text("VALUE = 1\n")  # identical content
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "r1")
    watched = current / "app.py"  # the path as the app imported it
    det = extra_detector(watched)
    tmp_link = tmp_path / "current.tmp"
    tmp_link.symlink_to(tmp_path / "r2")
    os.replace(tmp_link, current)  # atomic swap, as deploy tools do
    assert det.scan() == [str(watched)]


def test_unreadable_paths_never_raise(tmp_path: Path) -> None:
    det = Detector(
        extra_files=[str(tmp_path / "missing" / "x.py"), "bad\0name", str(tmp_path / "f" / "**")],
        modules=False,
    )
    det.scan()
    assert det.scan() == []
    assert identity("bad\0name") is None


def test_dangling_symlink_in_glob(tmp_path: Path) -> None:
    (tmp_path / "dangling.html").symlink_to(tmp_path / "nowhere")
    det = Detector(extra_files=[str(tmp_path / "*.html")], modules=False)
    det.scan()
    assert det.scan() == []
    (tmp_path / "nowhere").write_text("now it exists")
    assert det.scan() == [str(tmp_path / "dangling.html")]


def test_file_leaving_a_glob_is_still_watched(tmp_path: Path) -> None:
    f = tmp_path / "a.html"
    f.write_text("a")
    det = Detector(extra_files=[str(tmp_path / "*.html")], modules=False)
    det.scan()
    f.unlink()
    assert det.scan() == [str(f)]  # a deleted watched file is a change


def test_module_list_is_cached_until_sys_modules_changes(pkg) -> None:  # type: ignore[no-untyped-def]
    det = Detector()
    first = det.module_paths()
    assert det.module_paths() is first  # same size: no rebuild
    pkg("wr_mod_cache")
    importlib.import_module("wr_mod_cache")
    assert det.module_paths() is not first


def test_late_import_edited_after_the_baseline_is_a_change(pkg) -> None:  # type: ignore[no-untyped-def]
    """A module imported lazily (Django's URLconf at the first request) after an edit that
    landed after the baseline: its first sighting must not adopt the edit silently."""
    import time

    det = Detector(changed_since_ns=time.time_ns() - 10_000_000_000)  # baseline 10 s ago
    det.scan()
    edited = pkg("wr_late_edited")  # written now: after the baseline
    old = pkg("wr_late_old")
    os.utime(old, ns=(1, 1_000_000_000))  # unchanged since long before the baseline
    future = pkg("wr_late_future")
    far = time.time_ns() + 3600 * 10**9
    os.utime(future, ns=(far, far))  # clock skew: never a change, or reloads would loop
    for name in ("wr_late_edited", "wr_late_old", "wr_late_future"):
        importlib.import_module(name)
    assert det.scan() == [str(edited)]
    assert det.scan() == []


def test_late_import_without_changed_since_is_baselined(pkg) -> None:  # type: ignore[no-untyped-def]
    det = Detector()
    det.scan()
    pkg("wr_late_plain")
    importlib.import_module("wr_late_plain")
    assert det.scan() == []


OLD_NS = 1_000_000_000_000_000_000  # 2001: long settled


def _age(*dirs: Path) -> None:
    for directory in dirs:
        os.utime(directory, ns=(OLD_NS, OLD_NS))


@pytest.fixture
def glob_calls(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """Counts the listings of the ``extra_files`` patterns (one per pattern per re-list)."""
    calls: List[str] = []
    real = detect._glob
    depth = [0]

    def counting(pattern: str) -> List[str]:
        if depth[0] == 0:  # _glob recurses per directory: count the top-level listing only
            calls.append(pattern)
        depth[0] += 1
        try:
            return real(pattern)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(detect, "_glob", counting)
    return calls


def _tree(tmp_path: Path) -> Path:
    templates = tmp_path / "templates"
    (templates / "sub").mkdir(parents=True)
    (templates / "a.html").write_text("a")
    (templates / "sub" / "b.html").write_text("b")
    return templates


def test_settled_directories_are_not_relisted(tmp_path: Path, glob_calls: List[str]) -> None:
    templates = _tree(tmp_path)
    _age(templates, templates / "sub")
    detector = Detector(modules=False, extra_files=[str(templates / "**" / "*.html")])
    assert detector.scan() == []
    assert len(glob_calls) == 1
    for _ in range(5):
        assert detector.scan() == []
    assert len(glob_calls) == 1
    (templates / "a.html").write_text("changed")  # content: a stat finds it, no listing
    os.utime(templates / "a.html", ns=(OLD_NS, OLD_NS))
    assert detector.scan() == [str(templates / "a.html")]
    assert len(glob_calls) == 1


def test_new_file_in_a_settled_directory_is_found(tmp_path: Path) -> None:
    templates = _tree(tmp_path)
    _age(templates, templates / "sub")
    detector = Detector(modules=False, extra_files=[str(templates / "**" / "*.html")])
    detector.scan()
    detector.scan()
    (templates / "sub" / "new.html").write_text("n")
    assert detector.scan() == [str(templates / "sub" / "new.html")]


def test_new_subdirectory_is_found(tmp_path: Path) -> None:
    templates = _tree(tmp_path)
    _age(templates, templates / "sub")
    detector = Detector(modules=False, extra_files=[str(templates / "**" / "*.html")])
    detector.scan()
    (templates / "sub" / "deeper").mkdir()
    detector.scan()
    _age(templates / "sub", templates / "sub" / "deeper")
    detector.scan()
    (templates / "sub" / "deeper" / "c.html").write_text("c")
    assert detector.scan() == [str(templates / "sub" / "deeper" / "c.html")]


def test_wildcard_directory_levels_are_watched(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    _age(conf)
    detector = Detector(modules=False, extra_files=[str(conf / "*" / "app.ini")])
    detector.scan()
    (conf / "prod").mkdir()
    assert detector.scan() == []
    _age(conf, conf / "prod")
    detector.scan()
    (conf / "prod" / "app.ini").write_text("x")
    assert detector.scan() == [str(conf / "prod" / "app.ini")]


def test_recently_modified_directories_are_relisted(tmp_path: Path, glob_calls: List[str]) -> None:
    templates = _tree(tmp_path)  # just created: its mtime may tick again unseen
    detector = Detector(modules=False, extra_files=[str(templates / "**" / "*.html")])
    detector.scan()
    detector.scan()
    detector.scan()
    assert len(glob_calls) == 3


def test_missing_root_is_watched_until_it_appears(tmp_path: Path) -> None:
    _age(tmp_path)
    detector = Detector(modules=False, extra_files=[str(tmp_path / "later" / "*.ini")])
    assert detector.scan() == []
    assert detector.scan() == []
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "a.ini").write_text("a")
    assert detector.scan() == [str(tmp_path / "later" / "a.ini")]


def test_listing_is_refreshed_periodically(tmp_path: Path, glob_calls: List[str]) -> None:
    templates = _tree(tmp_path)
    _age(templates, templates / "sub")
    detector = Detector(modules=False, extra_files=[str(templates / "*.html")])
    detector.scan()
    # A filesystem that hides the directory change (here: its mtime is put back).
    (templates / "hidden.html").write_text("h")
    _age(templates)
    for _ in range(detect._GLOB_REFRESH_SCANS - 1):
        assert detector.scan() == []
    assert detector.scan() == [str(templates / "hidden.html")]


def test_glob_dirs_depth_and_symlink_loops(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    flat = glob_dirs(str(tmp_path / "a" / "*.html"))
    assert flat == [str(tmp_path / "a")]
    one = glob_dirs(str(tmp_path / "a" / "*" / "x.ini"))
    assert sorted(one) == [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    deep = set(glob_dirs(str(tmp_path / "a" / "**" / "*.html")))
    assert str(tmp_path / "a" / "b" / "c") in deep
    assert str(tmp_path / "a" / "b" / "loop") in deep  # its target's identity is watched
    assert not any("loop/b" in d for d in deep)  # the loop is not followed twice


def test_the_clock_marks_listings_racy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, glob_calls: List[str]
) -> None:
    templates = _tree(tmp_path)
    _age(templates, templates / "sub")
    real_time_ns = time.time_ns
    # A filesystem clock ahead of ours: the aged directories look recent again.
    monkeypatch.setattr(detect.time, "time_ns", lambda: OLD_NS + 1)
    detector = Detector(modules=False, extra_files=[str(templates / "**" / "*.html")])
    detector.scan()
    detector.scan()
    assert len(glob_calls) == 2
    monkeypatch.setattr(detect.time, "time_ns", real_time_ns)
    detector.scan()
    detector.scan()
    assert len(glob_calls) == 3


# -- filesystem faults: vanishing and unreachable files, symlinks, odd names, sizes ----------
# (Tests run as root here: "cannot stat" and "cannot read" are made with tricks root cannot
# bypass: a path through a file, an over-long name, a symlink loop, a forked unprivileged child.)


def test_file_vanishing_between_listing_and_stat(tmp_path: Path, monkeypatch: Any) -> None:
    keep, doomed, fresh = (tmp_path / n for n in ("keep.cfg", "doomed.cfg", "fresh.cfg"))
    keep.write_text("k")
    doomed.write_text("d")
    d = extra_detector(tmp_path / "*.cfg")
    real_glob = glob_module.glob
    fresh.write_text("f")

    def glob_then_delete(pattern: str, **kw: Any) -> List[str]:
        found = real_glob(pattern, **kw)
        for path in (doomed, fresh):  # listed, then gone before the stat
            if path.exists():
                path.unlink()
        return found

    monkeypatch.setattr("wsgireload.detect.glob.glob", glob_then_delete)
    changed = d.scan()
    # The deleted watched file is a change; the file that appeared and vanished is not.
    assert changed == [str(doomed)]
    assert d.scan() == []


def test_module_file_vanishing(tmp_path: Path) -> None:
    path = tmp_path / "vanishing_mod.py"
    path.write_text("x = 1\n")
    module = types.ModuleType("vanishing_mod")
    module.__file__ = str(path)
    sys.modules["vanishing_mod"] = module
    try:
        d = Detector(modules=True)
        d.scan()
        path.unlink()
        assert str(path) in d.scan()
        path.write_text("x = 2\n")
        assert str(path) in d.scan()
    finally:
        del sys.modules["vanishing_mod"]


def test_path_through_a_file_is_a_missing_file_not_a_crash(tmp_path: Path) -> None:
    """ENOTDIR: the root-proof way to make a stat fail."""
    (tmp_path / "plain").write_text("not a directory")
    d = extra_detector(tmp_path / "plain" / "x.cfg", tmp_path / "plain" / "*.cfg")
    assert d.scan() == []
    assert d.baseline[str(tmp_path / "plain" / "x.cfg")] is None


def test_directory_replaced_by_a_file_and_back(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.cfg").write_text("a")
    d = extra_detector(conf / "a.cfg", conf / "*.cfg")
    (conf / "a.cfg").unlink()
    conf.rmdir()
    conf.write_text("now a file")
    assert d.scan() == [str(conf / "a.cfg")]
    conf.unlink()
    conf.mkdir()
    (conf / "a.cfg").write_text("a again")
    assert d.scan() == [str(conf / "a.cfg")]
    assert d.scan() == []


def test_very_long_paths(tmp_path: Path) -> None:
    """ENAMETOOLONG in a name and in a whole path: watched as missing, never raised."""
    long_name = tmp_path / ("n" * 300)
    long_path = tmp_path.joinpath(*(["d" * 200] * 30), "x.cfg")
    d = extra_detector(
        long_name, long_path, str(long_path.parent) + "/*.cfg", tmp_path / ("g" * 300) / "**" / "*"
    )
    assert d.scan() == []
    assert d.baseline[str(long_name)] is None


def test_permission_denied_as_an_unprivileged_child() -> None:
    """Permission faults, root-proof: the baseline is taken first, then a forked child (which
    drops to uid/gid 65534 when run as root, who could read anything) scans a locked
    directory and validates an unreadable module."""
    root = Path(tempfile.mkdtemp(prefix="wsgireload-perm-"))
    try:
        root.chmod(0o755)
        locked = root / "locked"
        locked.mkdir()
        (locked / "a.cfg").write_text("a")
        secret = root / "secret.py"
        secret.write_text("x = 1\n")
        d = extra_detector(locked / "a.cfg", locked / "*.cfg", root / "*.py")
        assert str(locked / "a.cfg") in d.baseline and d.baseline[str(locked / "a.cfg")]
        locked.chmod(0)
        secret.chmod(0)
        os.utime(secret, ns=(1, 2_000_000_000_000_000_000))

        def child() -> Dict[str, Any]:
            if IS_ROOT:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            changed = d.scan()
            policy = Policy(settle=0, validate="compile")
            policy.observe(changed, 1.0)
            return {
                "changed": sorted(changed),
                "problems": [p.message for p in compile_errors([str(secret)])],
                "due": policy.due(2.0, d.baseline) is not None,
            }

        result = run_in_child(child)
    finally:
        for path in (root / "locked", root / "secret.py"):
            path.chmod(0o700)
        shutil.rmtree(root)
    # Unreadable means missing for the Detector: a change, never an exception.
    assert result["changed"] == sorted([str(locked / "a.cfg"), str(secret)])
    assert result["problems"] == ["cannot read: Permission denied"]
    assert result["due"] is False  # validation refuses what it cannot read


def test_dangling_symlink_in_glob_then_target_appears(tmp_path: Path) -> None:
    target = tmp_path / "target.cfg"
    (tmp_path / "link.cfg").symlink_to(target)
    d = extra_detector(tmp_path / "*.cfg")
    assert d.baseline[str(tmp_path / "link.cfg")] is None
    target.write_text("now here")
    assert sorted(d.scan()) == [str(tmp_path / "link.cfg"), str(target)]


def test_symlink_loop_as_watched_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.cfg", tmp_path / "b.cfg"
    a.symlink_to(b)
    b.symlink_to(a)
    d = extra_detector(a, tmp_path / "*.cfg")  # ELOOP on stat
    assert d.scan() == []
    assert d.baseline[str(a)] is None


def test_symlink_loops_under_recursive_glob_are_bounded(tmp_path: Path) -> None:
    """Two directory loops under ``**`` made glob walk 2**40 aliases: the watcher hung."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    (tree / "sub" / "up1").symlink_to("..")
    (tree / "sub" / "up2").symlink_to("..")
    (tree / "self").symlink_to(".")
    d = bounded(lambda: extra_detector(tree / "**" / "*.txt"), 10.0)
    watched = d.watched()
    # Each real file once (aliases through the loops would report one change many times).
    assert sorted(watched) == [str(tree / "a.txt"), str(tree / "sub" / "b.txt")]
    bump(tree / "a.txt")
    assert bounded(d.scan, 10.0) == [str(tree / "a.txt")]


def test_recursive_glob_still_follows_a_symlinked_directory(tmp_path: Path) -> None:
    """Deploys often symlink shared templates in: those stay watched (once)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "base.html").write_text("x")
    app = tmp_path / "app"
    (app / "templates").mkdir(parents=True)
    (app / "templates" / "index.html").write_text("y")
    (app / "templates" / "shared").symlink_to(shared)
    d = extra_detector(app / "**" / "*.html")
    assert sorted(d.watched()) == [
        str(app / "templates" / "index.html"),
        str(app / "templates" / "shared" / "base.html"),
    ]
    bump(shared / "base.html")
    assert d.scan() == [str(app / "templates" / "shared" / "base.html")]


def test_recursive_glob_matches_like_glob_on_a_plain_tree(tmp_path: Path) -> None:
    """Without symlinks the recursive pattern finds exactly what glob.glob finds."""
    for rel in (
        "a.txt",
        "x/b.txt",
        "x/y/c.txt",
        "x/y/z/d.txt",
        ".hidden/e.txt",
        "x/.f.txt",
        "x/y/g.cfg",
        "top.txt",
    ):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    for pattern in (
        "**/*.txt",
        "x/**/*.txt",
        "**/y/*.txt",
        "**",
        "x/**",
        "*/**/c.txt",
        "**/z/**/*.txt",
        "x/**/*",
    ):
        full = str(tmp_path / pattern)
        expected = sorted(p for p in glob_module.glob(full, recursive=True) if not os.path.isdir(p))
        assert extra_detector(full).watched() == expected, pattern


def test_non_utf8_file_names(tmp_path: Path, caplog: Any) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.py"
    with open(raw, "wb") as handle:
        handle.write(b"x = 1\n")
    name = os.fsdecode(raw)  # surrogateescape'd str, as os.listdir returns it
    recorder = Recorder()
    reloader, clock = make_reloader(ok_app, tmp_path / "*.py", recorder, validate="boot")
    try:
        serve(reloader, environ())
        os.utime(raw, ns=(1, 2_000_000_000_000_000_000))
        clock.now += 1
        caplog.set_level(logging.DEBUG, logger="wsgireload")
        changes = reloader.run_step(clock.now)
        assert changes is not None and changes.files == (name,)
        assert len(fingerprint(reloader.detector.baseline, [name])) == 16
        serve(reloader, environ())
        assert recorder.count == 1
        # Logged as the bytes were, never as lone surrogates a strict log file cannot encode.
        assert "caf\\xe9-\\xff.py" in caplog.text
        assert "\udce9" not in caplog.text and "\udcff" not in caplog.text
    finally:
        reloader.close()


def test_ten_thousand_files(tmp_path: Path) -> None:
    root = tmp_path / "big"
    for i in range(100):
        sub = root / f"d{i:03d}"
        sub.mkdir(parents=True)
        for j in range(100):
            (sub / f"f{j:03d}.tpl").write_bytes(b"")
    t0 = time.perf_counter()
    d = extra_detector(root / "**" / "*.tpl")
    first = time.perf_counter() - t0
    assert len(d.baseline) == 10_000
    t0 = time.perf_counter()
    assert d.scan() == []
    steady = time.perf_counter() - t0
    victims = [root / "d007" / "f042.tpl", root / "d099" / "f099.tpl"]
    for victim in victims:
        bump(victim)
    (root / "d050" / "f000.tpl").unlink()
    (root / "d050" / "new.tpl").write_bytes(b"")
    changed = d.scan()
    assert sorted(changed) == sorted(
        [str(v) for v in victims]
        + [str(root / "d050" / "f000.tpl"), str(root / "d050" / "new.tpl")]
    )
    assert first < 10.0 and steady < 10.0, (first, steady)
    print(f"\n10,000 files: first scan {first * 1000:.0f} ms, steady scan {steady * 1000:.0f} ms")


def test_mtime_in_the_future_and_the_past(tmp_path: Path) -> None:
    path = tmp_path / "a.cfg"
    path.write_text("a")
    d = extra_detector(path)
    for ns in (4_102_444_800 * 10**9, 0, 10**9, 2**62, 1_600_000_000 * 10**9):
        os.utime(path, ns=(ns, ns))
        assert d.scan() == [str(path)], ns
        assert d.scan() == []


# -- model-based: random file operations; exactly the changed watched paths are reported ----

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = [f"{d}/f{i}.cfg" for d in ("a", "b/c") for i in range(3)] + ["a/skip.txt", "b/c/x.tmp"]
ops = st.tuples(
    st.sampled_from(["write", "delete", "rename", "noop"]),
    st.integers(0, len(NAMES) - 1),
    st.integers(0, len(NAMES) - 1),
)


@given(
    steps=st.lists(st.lists(ops, max_size=5), min_size=1, max_size=6),
    initial=st.sets(st.integers(0, len(NAMES) - 1)),
)
@SETTINGS
def test_detector_reports_exactly_what_changed(
    steps: List[List[Tuple[str, int, int]]], initial: Set[int]
) -> None:
    root = tempfile.mkdtemp(prefix="wsgireload-model-")
    try:
        for d in ("a", "b/c"):
            os.makedirs(os.path.join(root, d))
        state: Dict[str, Optional[int]] = {name: None for name in NAMES}  # name -> content token
        token = [0]

        def write(name: str) -> None:
            token[0] += 1
            path = os.path.join(root, name)
            with open(path, "w") as handle:
                handle.write(str(token[0]))
            ns = 1_000_000_000 * (1_600_000_000 + token[0])  # unique mtime, no sleeping
            os.utime(path, ns=(ns, ns))
            state[name] = token[0]

        for i in initial:
            write(NAMES[i])
        detector = Detector(extra_files=[os.path.join(root, "**", "*.cfg")], modules=False)
        detector.scan()
        for step in steps:
            before = dict(state)
            for op, i, j in step:
                src, dst = NAMES[i], NAMES[j]
                if op == "write":
                    write(src)
                elif op == "delete" and state[src] is not None:
                    os.unlink(os.path.join(root, src))
                    state[src] = None
                elif op == "rename" and state[src] is not None and src != dst:
                    os.replace(os.path.join(root, src), os.path.join(root, dst))
                    state[dst], state[src] = state[src], None
            expected = sorted(
                os.path.join(root, name)
                for name in NAMES
                if name.endswith(".cfg") and before[name] != state[name]
            )
            assert sorted(detector.scan()) == expected
        assert detector.scan() == []
    finally:
        shutil.rmtree(root)


# -- the search path, watched while a deploy waits for the boot check ------------------------
def test_search_path_reports_what_an_install_adds(tmp_path: Path) -> None:
    site, pth_dir = tmp_path / "site", tmp_path / "pth"
    site.mkdir(), pth_dir.mkdir()
    later = tmp_path / "later"  # on the path before it exists (PYTHONPATH set ahead)
    search = SearchPath(lambda: [str(site), str(pth_dir), str(later)])
    assert search.changed() == []  # the first look is the baseline
    install(site, "newdep.py")
    assert search.changed() == [str(site)]
    assert search.changed() == []  # reported once
    install(site, "pkg/")  # a package, as pip unpacks it
    install(pth_dir, "extra.pth", str(tmp_path) + "\n")
    assert search.changed() == [str(site), str(pth_dir)]
    later.mkdir()
    assert search.changed() == [str(later)]
    (site / "newdep.py").unlink()  # an uninstall too
    bump(site, 2)
    assert search.changed() == [str(site)]


def test_search_path_ignores_what_the_import_system_cannot_use(tmp_path: Path) -> None:
    code = tmp_path / "app"  # the app's own directory: a database and a log beside the code
    code.mkdir()
    search = SearchPath(lambda: [str(code)])
    search.changed()
    install(code, "db.sqlite3-journal", "")
    install(code, ".mod.py.tmp123", "")  # a deploy tool's temporary file
    install(code, "app.log", "")
    install(code, "__pycache__/")  # the boot check's own import may write it
    assert search.changed() == []
    install(code, "newdep.cpython-311-x86_64-linux-gnu.so" if sys.platform == "linux"
            else "newdep.so", "")
    assert search.changed() == [str(code)]


def test_search_path_lists_a_directory_only_when_its_mtime_moved(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    search = SearchPath(lambda: [str(site)])
    search.changed()
    before = site.stat().st_mtime_ns
    (site / "newdep.py").write_text("")
    os.utime(site, ns=(before, before))  # unchanged identity: one stat, no listing
    assert search.changed() == []
    bump(site, 1)
    assert search.changed() == [str(site)]


def test_search_path_sees_a_zip_replaced(tmp_path: Path) -> None:
    archive = tmp_path / "deps.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("newdep.py", "")
    search = SearchPath(lambda: ["", str(archive)])
    search.changed()
    bump(archive)
    assert search.changed() == [str(archive)]
