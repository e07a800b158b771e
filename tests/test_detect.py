"""Detection: which files are watched and which changes are reported."""

from __future__ import annotations

import importlib
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import List

import pytest

from wsgireload import detect
from wsgireload.detect import Detector, glob_dirs, identity, module_file, stdlib_dirs

from .conftest import bump


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
