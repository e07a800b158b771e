"""Standalone actions, the paths the main tests leave out: waitress connection states read
from a real socket, a drain that times out or fails, and the re-exec command line on 3.9."""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import types
from typing import Iterator, List, Optional, Tuple

import pytest

from wsgireload.actions import standalone
from wsgireload.actions.standalone import ExitAction, reexec_argv
from wsgireload.policy import ChangeSet

CHANGES = ChangeSet(("/srv/app/views.py",), "abc", 1.0, 1.0)


class Channel:
    """An idle waitress connection (old enough, nothing buffered) over a given socket."""

    def __init__(self, sock: Optional[socket.socket]) -> None:
        self.requests: List[object] = []
        self.request = None
        self.total_outbufs_len = 0
        self.creation_time = time.time() - 60.0
        self.socket = sock


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def test_a_connection_with_unread_input_is_busy(
    pair: Tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    assert not standalone._waitress_busy(Channel(server))  # nothing unread: idle
    client.sendall(b"GET / HTTP/1.1\r\n")  # a request on the wire, not read by waitress yet
    assert standalone._waitress_busy(Channel(server))
    assert server.recv(100) == b"GET / HTTP/1.1\r\n"  # only peeked: waitress still gets it


def test_a_closed_or_socketless_connection_is_not_busy(
    pair: Tuple[socket.socket, socket.socket],
) -> None:
    server, _ = pair
    assert not standalone._waitress_busy(Channel(None))
    server.close()  # recv on a closed socket raises OSError: nothing left to answer
    assert not standalone._waitress_busy(Channel(server))


def test_a_request_in_the_parser_is_busy() -> None:
    channel = Channel(None)
    channel.request = object()  # type: ignore[assignment]
    assert standalone._waitress_busy(channel)


def test_quiesce_polls_until_the_busy_connection_goes_idle() -> None:
    channel = Channel(None)
    channel.requests = ["in the app"]
    threading.Timer(0.05, channel.requests.clear).start()
    assert standalone._waitress_quiesce({7: channel}, timeout=5.0) == 0
    assert not channel.requests


def _restart_with(socket_map: object, drain_timeout: float) -> Tuple[ExitAction, threading.Event]:
    done = threading.Event()
    action = ExitAction(exit=lambda code: done.set(), drain_timeout=drain_timeout)
    action.socket_map = socket_map
    return action, done


def test_connections_still_busy_after_the_timeout_are_logged_then_it_exits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = Channel(None)
    channel.requests = ["stuck in the app"]
    action, done = _restart_with({7: channel}, drain_timeout=0.0)
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        action(CHANGES)
        assert done.wait(5)
    assert "1 connection still busy after 0s; restarting anyway" in caplog.text


def test_a_socket_map_it_cannot_read_still_ends_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    action, done = _restart_with(object(), drain_timeout=1.0)  # no .values(): not waitress's
    with caplog.at_level(logging.WARNING, logger="wsgireload"):
        action(CHANGES)
        assert done.wait(5)
    assert "could not wait for waitress's connections" in caplog.text


def test_setup_with_an_unknown_waitress_shape_ends_at_once() -> None:
    class Odd:
        @property
        def __self__(self) -> object:
            raise RuntimeError("not the waitress we know")

    codes: List[int] = []
    action = ExitAction(exit=codes.append)
    action.setup(standalone.ProcessContext(1, 1, {"waitress.client_disconnected": Odd()}))
    assert action.socket_map is None
    action(CHANGES)
    assert codes == [3]  # no thread: nothing to drain


def test_reexec_argv_without_orig_argv_runs_the_module_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.9 has no sys.orig_argv: ``python -m pkg`` is rebuilt from __main__.__spec__."""
    monkeypatch.delattr(sys, "orig_argv", raising=False)
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="myserver.__main__")  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/srv/myserver/__main__.py", "--port", "8000"])
    assert reexec_argv() == [sys.executable, "-m", "myserver", "--port", "8000"]


def test_reexec_argv_without_orig_argv_runs_the_script_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(sys, "orig_argv", raising=False)
    main = types.ModuleType("__main__")
    main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["serve.py", "--port", "8000"])
    assert reexec_argv() == [sys.executable, "serve.py", "--port", "8000"]
