"""The servers: which one this is, its master, and action="auto" choosing its action."""

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
from wsgireload.servers import master_of

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


def test_master_of_names_the_server_a_worker_belongs_to() -> None:
    from wsgireload._system import SYSTEM

    parent = SYSTEM.parent_at_start()
    assert master_of({"gunicorn.socket": None}) == ("gunicorn", parent)
    # mod_wsgi daemon mode: the processes of one group share the record of Apache's parent;
    # two groups (two apps) never share one, and a group name makes a safe file name.
    assert master_of({"mod_wsgi.process_group": "app"}) == ("mod_wsgi.app", parent)
    assert master_of({"mod_wsgi.process_group": "a/b c"})[0] == "mod_wsgi.a_b_c"  # type: ignore[index]
    assert master_of({"mod_wsgi.process_group": ""}) is None  # embedded mode
    assert master_of({"wsgi.version": (1, 0)}) is None  # waitress, a script
