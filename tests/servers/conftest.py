"""Fixtures for real-server tests: a temp app dir, servers that are always stopped, logs shown."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from .harness import Server


@pytest.fixture
def watchers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[List["subprocess.Popen[str]"]]:
    """Append started `wsgireload watch` processes; they are killed and reaped afterwards, and
    what they wrote to ``tmp_path/*.out`` is printed if the test failed."""
    started: List["subprocess.Popen[str]"] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for out in sorted(tmp_path.glob("*.out")):
            print(f"\n----- watcher output {out} -----\n{out.read_text(errors='replace')}")


@pytest.fixture
def servers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[List[Server]]:
    """Append started Servers to this list; they are stopped, and logged if the test failed."""
    started: List[Server] = []
    yield started
    for server in started:
        server.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for server in started:
            print(f"\n----- server log {server.log_path} -----\n{server.log()}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
