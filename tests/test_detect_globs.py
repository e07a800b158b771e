"""Detector glob caching: patterns are re-listed only when a directory they reach changed.

Directory mtimes are moved into the past with os.utime so listings count as settled.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List

import pytest

from wsgireload import detect
from wsgireload.detect import Detector, glob_dirs

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
