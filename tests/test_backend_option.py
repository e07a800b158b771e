"""The Reloader's backend option: validation, fallback, and the event thread's lifecycle.

The lifecycle test starts a real watchfiles thread and checks it is gone after close().
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from wsgireload import ConfigurationError, Reloader
from wsgireload.detect import Detector
from wsgireload.events import EventDetector


def test_reloader_backend_option(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = lambda environ, start_response: [b""]  # noqa: E731
    with pytest.raises(ConfigurationError, match="backend"):
        Reloader(app, backend="inotify", action=lambda changes: None)
    assert isinstance(Reloader(app, action=lambda c: None).detector, Detector)
    if importlib.util.find_spec("watchfiles") is not None:
        auto = Reloader(app, backend="auto", action=lambda c: None).detector
        assert isinstance(auto, EventDetector)
    monkeypatch.setitem(sys.modules, "watchfiles", None)
    assert isinstance(Reloader(app, backend="auto", action=lambda c: None).detector, Detector)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        reloader = Reloader(app, backend="events", action=lambda c: None)
    assert isinstance(reloader.detector, Detector)
    assert "watchfiles" in caplog.text


def _hello(environ: Any, start_response: Any) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_reloader_stops_the_event_thread_on_close(tmp_path: Path) -> None:
    pytest.importorskip("watchfiles")
    conf = tmp_path / "conf.ini"
    conf.write_text("a")
    seen: List[Tuple[str, ...]] = []
    reloader = Reloader(
        _hello,
        backend="events",
        extra_files=[str(conf)],
        action=lambda changes: seen.append(changes.files),
        mode="thread",
        interval=3600,  # its own ticks stay out of the way: the test scans by itself
    )
    detector = reloader.detector
    assert isinstance(detector, EventDetector)
    body = reloader({"REQUEST_METHOD": "GET"}, lambda status, headers: None)
    list(body)
    try:
        assert detector.scan() == []  # what the watcher thread does at its first tick
        assert not detector.polling
        assert any(t.name == "wsgireload-events" for t in threading.enumerate())
    finally:
        reloader.close()
    assert detector.polling
    assert not any(t.name == "wsgireload-events" for t in threading.enumerate())
