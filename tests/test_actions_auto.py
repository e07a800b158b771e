"""action="auto": each server's own action, chosen from what only the server sets."""

from __future__ import annotations

import logging
import sys
from typing import Any, Dict, Optional

import pytest

from wsgireload.actions import (
    REGISTRY,
    AutoAction,
    GunicornAction,
    ModWsgiAction,
    ProcessContext,
    StandaloneAction,
    UwsgiAction,
    resolve,
)
from wsgireload.policy import ChangeSet

GUNICORN_ENV = {"gunicorn.socket": object(), "SERVER_SOFTWARE": "gunicorn/27.0.1"}


def context(environ: Optional[Dict[str, Any]] = None) -> ProcessContext:
    return ProcessContext(5000, 5000, environ if environ is not None else {"uwsgi.version": b"2"})


def changes() -> ChangeSet:
    return ChangeSet(("/srv/app/mod.py",), "fp1", 0.0, 0.0)


def test_registered_and_chosen_by_auto_for_uwsgi(caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(resolve("uwsgi"), UwsgiAction)
    assert REGISTRY["mod_wsgi"] is ModWsgiAction
    auto = AutoAction()
    auto.setup(context())  # no uwsgi module in the test process: set up, never raise
    assert isinstance(auto.delegate, UwsgiAction)
    with caplog.at_level(logging.WARNING, "wsgireload"):
        auto(changes())
    assert "cannot be imported" in caplog.text



def test_auto_chooses_mod_wsgi() -> None:
    auto = AutoAction()
    auto.setup(context({"mod_wsgi.process_group": "g"}))
    assert isinstance(auto.delegate, ModWsgiAction) and auto.delegate.daemon


def test_auto_under_gunicorn_falls_back_by_itself() -> None:
    auto = AutoAction()
    auto.setup(ProcessContext(5000, 5000, GUNICORN_ENV))
    assert isinstance(auto.delegate, GunicornAction) and auto.delegate.restart_fallback
    assert not GunicornAction().restart_fallback  # an explicit action='gunicorn' stays HUP



def test_auto_picks_gunicorn_under_gunicorn() -> None:
    auto = AutoAction()
    auto.setup(ProcessContext(5000, 5000, GUNICORN_ENV))
    assert isinstance(auto.delegate, GunicornAction)
    assert not auto.requires_drain



def test_auto_picks_the_warning_standalone_action_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "gunicorn.workers.base", raising=False)
    auto = AutoAction()
    auto.setup(ProcessContext(5000, 5000, {"SERVER_SOFTWARE": "waitress"}))
    assert isinstance(auto.delegate, StandaloneAction)
    assert not auto.requires_drain
