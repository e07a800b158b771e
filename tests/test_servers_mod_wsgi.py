"""mod_wsgi: daemon mode restarts itself with SIGINT; embedded mode warns once, does nothing."""

from __future__ import annotations

import logging
import signal

import pytest

from wsgireload.policy import ChangeSet
from wsgireload.servers.base import ProcessContext
from wsgireload.servers.mod_wsgi import ModWsgiAction

from .fakes import FakeSystem


def context(environ: dict) -> ProcessContext:
    return ProcessContext(777, 777, environ)


def changes(fingerprint: str = "fp1") -> ChangeSet:
    return ChangeSet(("/srv/app/mod.py",), fingerprint, 0.0, 0.0)


def test_mod_wsgi_daemon_mode_sends_sigint_to_itself_only() -> None:
    system = FakeSystem(pid=777)
    action = ModWsgiAction(system=system)
    action.setup(context({"mod_wsgi.process_group": "myapp"}))
    assert "daemon" in action.describe()
    action(changes())
    assert system.killed == [(777, signal.SIGINT)]



def test_mod_wsgi_embedded_mode_warns_once_and_does_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    system = FakeSystem(pid=777)
    action = ModWsgiAction(system=system)
    action.setup(context({"mod_wsgi.process_group": ""}))
    with caplog.at_level(logging.WARNING, "wsgireload"):
        action(changes("fp1"))
        action(changes("fp2"))
    assert system.killed == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "daemon mode" in warnings[0].getMessage()
