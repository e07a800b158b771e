"""The classic code_changed() function."""

from __future__ import annotations

import importlib
import threading
from typing import List

import pytest

from wsgireload import classic, code_changed

from .conftest import bump


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classic, "_detector", None)  # and the recorded state is restored after


def test_first_call_records_then_reports_each_change_once(pkg) -> None:  # type: ignore[no-untyped-def]
    path = pkg("wr_classic_a")
    importlib.import_module("wr_classic_a")
    assert code_changed() is False
    assert code_changed() is False
    bump(path)
    assert code_changed() is True
    assert code_changed() is False  # the new state is the baseline now
    path.unlink()
    assert code_changed() is True  # deleted counts


def test_thread_safe(pkg) -> None:  # type: ignore[no-untyped-def]
    path = pkg("wr_classic_b")
    importlib.import_module("wr_classic_b")
    code_changed()
    bump(path)
    results: List[bool] = []
    threads = [threading.Thread(target=lambda: results.append(code_changed())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results.count(True) == 1  # one change, reported to exactly one caller
