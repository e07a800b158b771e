"""The event backend: event filtering, fallback to polling, and real watchfiles events.

Only the last tests start a watchfiles thread; they poll for the result with a bounded wait.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Set

import pytest

from wsgireload.detect import Detector
from wsgireload.events import EventDetector, glob_root, relevant

from .conftest import bump

WATCHED = frozenset({"/app/views.py", "/app/conf/settings.ini", "/app/build/cache.log"})
ROOTS = ("/app/templates/",)


@pytest.mark.parametrize(
    "path",
    [
        "/app/views.py",
        "/app/build/cache.log",  # watched explicitly: the ignore rules do not apply
        "/app/templates/new.html",  # a new file where an extra_files pattern looks
        "/app/templates/sub",  # a new directory there: its files may match later
    ],
)
def test_relevant_paths(path: str) -> None:
    assert relevant(path, WATCHED, ROOTS)


@pytest.mark.parametrize(
    "path",
    [
        "/app/other.py",  # not imported, not matched: polling would not report it either
        "/app/.views.py.swp",
        "/app/views.py~",
        "/app/.#views.py",
        "/app/4913",
        "/app/templates/error.log",
        "/app/templates/.page.html.swx",
        "/app/templates/__pycache__/x.cpython-311.pyc",
        "/app/templates/.git/index",
        "/app/templates/page.tmp",
    ],
)
def test_irrelevant_paths(path: str) -> None:
    assert not relevant(path, WATCHED, ROOTS)


def test_glob_root() -> None:
    assert glob_root("/srv/app/templates/**/*.html") == "/srv/app/templates"
    assert glob_root("/srv/app/conf/*.ini") == "/srv/app/conf"
    assert glob_root("/srv/app/conf/app.ini") == "/srv/app/conf"


def test_without_watchfiles_it_polls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # makes the import fail
    target = tmp_path / "conf.ini"
    target.write_text("a")
    detector = EventDetector(Detector(modules=False, extra_files=[str(target)]))
    assert detector.scan() == []
    assert detector.start() is False
    assert detector.polling
    bump(target)
    assert detector.scan() == [str(target)]


def _silent_watch(*dirs: str, stop_event: threading.Event, **options: Any) -> Iterator[Set[Any]]:
    """A filesystem that reports nothing (NFS): blocks until stopped."""
    stop_event.wait()
    return
    yield set()  # pragma: no cover - makes this a generator


def test_falls_back_when_a_change_comes_without_an_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "conf.ini"
    target.write_text("a")
    poller = Detector(modules=False, extra_files=[str(target)])
    detector = EventDetector(poller, verify_every=3, watch=_silent_watch)
    detector.scan()
    try:
        assert detector.start()
        assert detector.polling  # the next scan starts the thread
        assert detector.scan() == []
        assert not detector.polling
        assert detector.scan() == []  # the scan right after start is a full one
        calls: List[int] = []
        real_scan = poller.scan
        poller.scan = lambda: calls.append(1) or real_scan()  # type: ignore[method-assign]
        assert detector.scan() == []
        assert calls == []  # no event, no stat
        bump(target)
        # The verification scan still reports the change...
        assert detector.scan() == [str(target)]
        assert len(calls) == 1
        # ...and as no event ever announces it, the detector falls back to polling.
        with caplog.at_level(logging.WARNING, logger="wsgireload"):
            for _ in range(3):
                detector.scan()
        assert detector.polling
        assert "without a file event" in caplog.text
        bump(target)
        assert detector.scan() == [str(target)]
    finally:
        detector.stop()


@pytest.fixture
def quick_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """watchfiles looks at its stop event every step: a short one makes each restart and stop
    of a real events thread take ~50 ms instead of up to 500 ms."""
    monkeypatch.setattr("wsgireload.events._STEP_MS", 50)


def _wait_for_scan(detector: EventDetector, timeout: float = 10.0) -> List[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        changed = detector.scan()
        if changed:
            return changed
        time.sleep(0.02)
    return []


@pytest.mark.usefixtures("quick_stop")
def test_real_events_trigger_a_scan(tmp_path: Path) -> None:
    pytest.importorskip("watchfiles")
    conf = tmp_path / "conf.ini"
    conf.write_text("a")
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "base.html").write_text("<p>")
    poller = Detector(modules=False, extra_files=[str(conf), str(templates / "**" / "*.html")])
    detector = EventDetector(poller, verify_every=10_000)
    detector.scan()
    assert detector.start()
    try:
        detector.scan()  # starts the thread
        assert not detector.polling
        detector.scan()  # the full scan that follows a start
        (tmp_path / "server.log").write_text("noise")  # filtered out: no scan
        (tmp_path / ".conf.ini.swp").write_text("noise")
        conf.write_text("bb")
        assert _wait_for_scan(detector) == [str(conf)]
        (templates / "new.html").write_text("<p>")  # a new file matching the pattern
        assert _wait_for_scan(detector) == [str(templates / "new.html")]
        assert not detector.polling
    finally:
        detector.stop()
    assert detector.polling


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.usefixtures("quick_stop")
def test_event_thread_is_rebuilt_after_fork(tmp_path: Path) -> None:
    pytest.importorskip("watchfiles")
    conf = tmp_path / "conf.ini"
    conf.write_text("a")
    detector = EventDetector(Detector(modules=False, extra_files=[str(conf)]), verify_every=10_000)
    detector.scan()
    assert detector.start()
    detector.scan()
    try:
        assert not detector.polling
        pid = os.fork()
        if pid == 0:  # the child: its own watcher must see its own events
            code = 1
            try:
                if detector.polling and detector.start() and detector.scan() == []:
                    detector.scan()
                    assert not detector.polling
                    conf.write_text("child")
                    code = 0 if _wait_for_scan(detector) == [str(conf)] else 2
                detector.stop()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not detector.polling  # the parent's watcher is untouched
    finally:
        detector.stop()


@pytest.mark.usefixtures("quick_stop")
def test_a_replaced_directory_is_watched_again(tmp_path: Path) -> None:
    pytest.importorskip("watchfiles")
    app = tmp_path / "app"
    app.mkdir()
    conf = app / "conf.ini"
    conf.write_text("a")
    detector = EventDetector(Detector(modules=False, extra_files=[str(conf)]), verify_every=10_000)
    detector.scan()
    assert detector.start()
    try:
        detector.scan()
        detector.scan()
        # A deploy that swaps the whole directory: the old watch stays on the old inode.
        app.rename(tmp_path / "app.old")
        app.mkdir()
        conf.write_text("b")
        assert _wait_for_scan(detector) == [str(conf)]
        detector.scan()  # the rescan that follows the new watch
        conf.write_text("cc")
        assert _wait_for_scan(detector) == [str(conf)]
        assert not detector.polling
    finally:
        detector.stop()
