"""Watcher: the middleware-free loop of detect, settle, validate and act (injected clock)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from wsgireload.errors import ConfigurationError
from wsgireload.policy import ChangeSet
from wsgireload.watcher import Watcher

from .conftest import edit


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "mod.py").write_text("X = 1\n")
    (tmp_path / "page.html").write_text("<p>1</p>\n")
    return tmp_path


def make(project: Path, **kw: Any) -> Tuple[Watcher, List[ChangeSet], List[Tuple[str, Any]]]:
    acted: List[ChangeSet] = []
    events: List[Tuple[str, Any]] = []
    kw.setdefault("settle", 1.0)
    watcher = Watcher(
        modules=False,
        extra_files=[str(project / "*.py"), str(project / "*.html")],
        action=acted.append,
        on_event=lambda kind, detail: events.append((kind, detail)),
        **kw,
    )
    return watcher, acted, events


def test_acts_once_after_settle(project: Path) -> None:
    watcher, acted, events = make(project)
    assert watcher.step(0.0) is None
    edit(project / "mod.py", "X = 2\n")
    assert watcher.step(10.0) is None  # seen, not yet settled
    assert watcher.step(10.5) is None
    changes = watcher.step(11.0)
    assert changes is not None and acted == [changes]
    assert changes.files == (str(project / "mod.py"),)
    assert [kind for kind, _ in events] == ["changed", "settling", "due", "acted"]
    assert watcher.step(20.0) is None and len(acted) == 1


def test_new_change_restarts_settle(project: Path) -> None:
    watcher, acted, _ = make(project)
    edit(project / "mod.py", "X = 2\n")
    watcher.step(10.0)
    edit(project / "page.html", "<p>2</p>\n")
    watcher.step(10.9)
    assert watcher.step(11.5) is None  # only 0.6 s quiet
    changes = watcher.step(12.0)
    assert changes is not None and len(changes.files) == 2


def test_syntax_error_blocks_then_fix_acts(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher, acted, events = make(project)
    edit(project / "mod.py", "def broken(:\n")
    watcher.step(10.0)
    assert watcher.step(12.0) is None and acted == []
    assert ("rejected", (str(project / "mod.py"),)) in events
    assert "mod.py:1" in caplog.text
    assert watcher.step(13.0) is None  # still broken: reported once only
    assert [kind for kind, _ in events].count("rejected") == 1
    edit(project / "mod.py", "X = 3\n")
    watcher.step(14.0)
    assert watcher.step(15.0) is not None and len(acted) == 1


def test_failing_action_is_logged_not_raised(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(changes: ChangeSet) -> None:
        raise RuntimeError("nope")

    events: List[str] = []
    watcher = Watcher(modules=False, extra_files=[str(project / "*.py")], action=boom,
                      on_event=lambda kind, _: events.append(kind))
    edit(project / "mod.py", "X = 2\n")
    watcher.step(10.0)
    assert watcher.step(11.0) is not None
    assert events[-1] == "failed" and "nope" in caplog.text


def test_step_never_raises(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher, _, _ = make(project)

    def broken_scan() -> List[str]:
        raise OSError("disk gone")

    watcher.detector.scan = broken_scan  # type: ignore[method-assign]
    assert watcher.step(1.0) is None
    assert "disk gone" in caplog.text


def test_modules_are_watched_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "wr_watcher_probe.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import wr_watcher_probe  # noqa: F401

    acted: List[ChangeSet] = []
    watcher = Watcher(action=acted.append)
    assert str(tmp_path / "wr_watcher_probe.py") in watcher.detector.watched()
    edit(tmp_path / "wr_watcher_probe.py", "Y = 2\n")
    watcher.step(5.0)
    assert watcher.step(6.0) is not None


def test_setup_gets_created_pid(project: Path) -> None:
    from wsgireload.actions import Action, ProcessContext

    seen: List[ProcessContext] = []

    class Probe(Action):
        def setup(self, context: ProcessContext) -> None:
            seen.append(context)

        def __call__(self, changes: ChangeSet) -> None:
            pass

    watcher = Watcher(modules=False, action=Probe(), created_pid=1234)
    watcher.step(0.0)
    watcher.step(1.0)
    assert len(seen) == 1 and seen[0].created_pid == 1234 and seen[0].preloaded


def test_thread_runs_steps(project: Path) -> None:
    done = threading.Event()
    watcher = Watcher(modules=False, extra_files=[str(project / "*.py")], interval=0.01,
                      settle=0.0, action=lambda changes: done.set())
    watcher.start()
    try:
        assert watcher.start() is watcher  # idempotent
        edit(project / "mod.py", "X = 2\n")
        assert done.wait(10)
    finally:
        watcher.stop()
    watcher.stop()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"interval": 0}, "interval"),
        ({"settle": -1}, "settle"),
        ({"settle": 5, "settle_max": 1}, "settle_max"),
        ({"validate": "lint"}, "validate"),
        ({"validate": "compile", "smoke": "/"}, "need validate='boot'"),
        ({"boot_app": "not a module"}, "is not a module name"),
        ({"action": "nope"}, "not a known action"),
    ],
)
def test_bad_configuration(kw: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Watcher(modules=False, **kw)


def test_changed_since_flags_files_edited_after_the_fork(project: Path) -> None:
    """A file edited between a worker's fork and its baseline may be newer than its code."""
    old = 1_000_000_000 * 1_000_000_000  # year 2001, in ns
    new = old + 60 * 1_000_000_000
    os.utime(project / "mod.py", ns=(new, new))
    os.utime(project / "page.html", ns=(old, old))
    watcher, acted, events = make(project, changed_since=(old + new) / 2 / 1e9)
    watcher.step(10.0)
    assert ("changed", str(project / "mod.py")) in events
    changes = watcher.step(11.0)
    assert changes is not None and changes.files == (str(project / "mod.py"),)
    assert watcher.step(20.0) is None  # looked at once, at the first step


def test_without_changed_since_a_late_edit_is_baseline(project: Path) -> None:
    watcher, acted, _ = make(project)
    watcher.step(10.0)
    assert watcher.step(11.0) is None and acted == []


def test_changed_since_ignores_mtimes_in_the_future(project: Path) -> None:
    """A file dated ahead of the clock would make every new worker reload again: never."""
    import time

    far = time.time_ns() + 3600 * 1_000_000_000
    os.utime(project / "mod.py", ns=(far, far))
    old = 1_000_000_000 * 1_000_000_000  # year 2001: unchanged since long before the fork
    os.utime(project / "page.html", ns=(old, old))
    watcher, acted, events = make(project, changed_since=time.time() - 60)
    watcher.step(10.0)
    assert watcher.step(11.0) is None and acted == []
