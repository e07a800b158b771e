"""Bad configuration fails at construction with a message that says what to do."""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from wsgireload import ConfigurationError, Reloader, WsgiReloadError
from wsgireload.detect import Detector
from wsgireload.events import EventDetector


def app(environ: dict, start_response: Any) -> list:
    start_response("200 OK", [])
    return [b""]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"interval": 0}, "interval must be a number of seconds greater than 0"),
        ({"interval": -1}, "greater than 0"),
        ({"interval": "1"}, "interval must be a number"),
        ({"interval": True}, "interval must be a number"),
        ({"settle": -0.5}, "settle must be a number of seconds, 0 or more"),
        ({"settle": 5, "settle_max": 2}, "settle_max (2) must be at least settle (5)"),
        (
            {"validate": "lint"},
            "validate='lint' is not allowed; use 'boot' (the default), 'compile' or None",
        ),
        ({"mode": "fork"}, "mode='fork' is not allowed; use 'auto', 'thread' or 'inline'"),
        ({"action": "reboot"}, "action='reboot' is not a known action; use one of"),
        ({"action": 42}, "action must be an action name, an Action or a callable, not int"),
        ({"extra_files": 3}, "extra_files must be a path or pattern, or a list of them"),
        ({"extra_files": ["a", 3]}, "extra_files entries must be paths or patterns"),
        ({"exclude": [None]}, "exclude entries must be paths or patterns"),
        ({"rollout": "batch"}, "rollout='batch' is not allowed; use 'one-by-one' or 'all-at-once'"),
    ],
)
def test_bad_configuration(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Reloader(app, **kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, WsgiReloadError)


def test_app_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="app must be a WSGI callable"):
        Reloader("not an app")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["import_name", "import_timeout"])
def test_the_unreleased_0_1_spellings_are_refused(name: str) -> None:
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        Reloader(app, **{name: "wsgi" if name == "import_name" else 7})
    with pytest.raises(ConfigurationError, match="validate='import' is not allowed; use 'boot'"):
        Reloader(app, validate="import")


def test_boot_needs_no_module_name() -> None:
    # Created inside a function (a Flask factory): the server's app URI names the app later.
    reloader = Reloader(app)
    assert reloader.policy.validate == "boot"
    assert reloader.policy.boot is not None and reloader.policy.boot.targets() == []


def test_boot_validation_defaults_to_the_creating_module(tmp_path: Any, monkeypatch: Any) -> None:
    (tmp_path / "wr_wsgi_mod.py").write_text(
        "from wsgireload import Reloader\n"
        "def app(e, s):\n    return []\n"
        "application = Reloader(app)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    try:
        mod = importlib.import_module("wr_wsgi_mod")
        boot = mod.application.policy.boot
        assert [t.module for t in boot.targets()] == ["wr_wsgi_mod"]
    finally:
        sys.modules.pop("wr_wsgi_mod", None)


def test_single_string_extra_files_is_one_pattern(tmp_path: Any) -> None:
    f = tmp_path / "x.cfg"
    f.write_text("")
    reloader = Reloader(app, extra_files=str(f), exclude="*.log")
    assert str(f) in reloader.detector.watched()


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
