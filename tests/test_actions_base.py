"""The actions that need no server: a user callback, and log-only."""

from __future__ import annotations

import logging
from typing import List

import pytest

from wsgireload.actions import CallbackAction, LogOnlyAction
from wsgireload.policy import ChangeSet

CHANGES = ChangeSet(("/srv/app/views.py",), "abc", 1.0, 1.0)


def test_callback_gets_the_change_set_and_runs_in_every_worker() -> None:
    seen: List[ChangeSet] = []
    action = CallbackAction(seen.append)
    action(CHANGES)
    assert seen == [CHANGES]
    assert action.per_process and action.after_close_only
    assert "append" in action.describe()


def test_log_only_warns_what_to_do_and_does_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        LogOnlyAction()(CHANGES)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "restart the server" in record.getMessage()
    assert "views.py" in record.getMessage()
