"""Standalone actions: warn once, exit for a supervisor, re-exec (with the listening socket)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Iterator, List

import pytest
import webtest

from wsgireload import Reloader
from wsgireload.actions import REGISTRY, standalone
from wsgireload.actions.standalone import (
    LISTEN_FDS_ENV,
    ExecAction,
    ExitAction,
    StandaloneAction,
    inherited_sockets,
    listening_sockets,
    reexec_argv,
)
from wsgireload.policy import ChangeSet

CHANGES = ChangeSet(("/srv/app/views.py",), "abc", 1.0, 1.0)


def test_standalone_warns_once_and_signals_nobody(caplog: pytest.LogCaptureFixture) -> None:
    action = StandaloneAction()
    with caplog.at_level(logging.DEBUG, logger="wsgireload"):
        action(CHANGES)
        action(CHANGES)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "action='exit'" in warnings[0].getMessage()
    assert not action.requires_drain


def test_exit_drains_then_exits_with_its_status() -> None:
    codes: List[int] = []
    action = ExitAction(exit_code=7, exit=codes.append)
    assert action.requires_drain
    action(CHANGES)
    assert codes == [7]


def test_names_are_registered() -> None:
    assert REGISTRY["standalone"] is StandaloneAction
    assert REGISTRY["exit"] is ExitAction
    assert REGISTRY["exec"] is ExecAction


def test_exit_waits_for_the_last_response_in_flight() -> None:
    """requires_drain: a response started before the reload was due still delays the exit."""
    codes: List[int] = []
    gate: List[bytes] = []

    def app(environ: dict, start_response):  # type: ignore[no-untyped-def,type-arg]
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            yield b"a"
            gate.append(b"x")
            yield b"b"

        return body()

    reloader = Reloader(app, action=ExitAction(exit=codes.append), mode="inline", interval=3600)
    try:
        client = webtest.TestApp(webtest.lint.middleware(reloader))
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "SERVER_NAME": "x",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "wsgi.input": sys.stdin,
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "SERVER_PROTOCOL": "HTTP/1.0",
        }
        client.get("/")  # first request: the process starts
        in_flight = reloader(dict(environ), lambda *a: None)
        reloader._due = CHANGES  # a reload became due while that response was streaming
        client.get("/")
        assert codes == []  # the streaming response is still open
        list(in_flight)
        in_flight.close()  # type: ignore[attr-defined]
        assert codes == [3]
    finally:
        reloader.close()


def test_reexec_argv_repeats_the_command_line() -> None:
    argv = reexec_argv()
    assert argv[0] == sys.executable
    orig = getattr(sys, "orig_argv", None)
    if orig:
        assert argv[1:] == orig[1:]


def test_exec_runs_the_same_command_line_without_passing_sockets_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(standalone, "_launcher_takes_sockets", False)
    monkeypatch.delenv(LISTEN_FDS_ENV, raising=False)
    calls: List[List[str]] = []
    action = ExecAction(
        execv=lambda path, argv: calls.append([path] + argv),
        argv=lambda: ["/usr/bin/python3", "serve.py"],
        find_sockets=lambda: [99],
    )
    assert action.requires_drain
    action(CHANGES)
    assert calls == [["/usr/bin/python3", "/usr/bin/python3", "serve.py"]]
    assert LISTEN_FDS_ENV not in os.environ  # a launcher that binds anew would hit EADDRINUSE


def test_exec_hands_listening_sockets_to_a_launcher_that_takes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(standalone, "_launcher_takes_sockets", False)
    monkeypatch.delenv(LISTEN_FDS_ENV, raising=False)
    assert inherited_sockets() == []  # the launcher asks: first start, nothing inherited
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        assert not listener.get_inheritable()
        action = ExecAction(
            execv=lambda path, argv: None,
            argv=lambda: ["python3"],
            find_sockets=lambda: [listener.fileno()],
        )
        action(CHANGES)
        assert listener.get_inheritable()
        assert os.environ[LISTEN_FDS_ENV] == str(listener.fileno())
    finally:
        os.environ.pop(LISTEN_FDS_ENV, None)
        listener.close()


def test_listening_sockets_finds_listeners_only() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    try:
        found = listening_sockets()
        assert listener.fileno() in found
        assert client.fileno() not in found
    finally:
        client.close()
        listener.close()


def test_inherited_sockets_adopts_the_fds_once(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    fd = os.dup(listener.fileno())
    port = listener.getsockname()[1]
    listener.close()
    monkeypatch.setenv(LISTEN_FDS_ENV, f"{fd},not-a-number")
    [sock] = inherited_sockets()
    try:
        assert sock.getsockname()[1] == port
        assert not sock.get_inheritable()
        assert LISTEN_FDS_ENV not in os.environ
        assert inherited_sockets() == []
    finally:
        sock.close()


class FakeListener:
    def __init__(self) -> None:
        self.accepting = True
        self.pulled = 0

    def accept_connections(self) -> None:  # marks a waitress listener
        pass

    def pull_trigger(self) -> None:
        self.pulled += 1


class FakeChannel:
    def __init__(self, requests: List[object], outbuf: int = 0, age: float = 60.0) -> None:
        import time as _time

        self.requests = requests
        self.request = None
        self.total_outbufs_len = outbuf
        self.creation_time = _time.time() - age
        self.socket = None
        self.server = type("Server", (), {"_map": {}})()

    def check_client_disconnected(self) -> bool:
        return False


def test_waitress_quiesce_stops_accepting_and_counts_busy_connections() -> None:
    listener = FakeListener()
    socket_map = {
        3: listener,
        4: FakeChannel(requests=["in the app"]),
        5: FakeChannel(requests=[], outbuf=120),  # response not flushed yet
        6: FakeChannel(requests=[], age=0.0),  # just accepted: its request may be on the wire
        7: FakeChannel(requests=[]),  # idle keep-alive connection
    }
    assert standalone._waitress_quiesce(socket_map, timeout=0.0) == 3
    assert listener.accepting is False and listener.pulled == 1


def test_waitress_quiesce_returns_once_all_connections_are_idle() -> None:
    assert standalone._waitress_quiesce({3: FakeListener(), 7: FakeChannel(requests=[])}, 0.0) == 0


def test_the_waitress_map_is_found_from_the_environ_only_under_waitress() -> None:
    channel = FakeChannel(requests=[])
    environ = {"waitress.client_disconnected": channel.check_client_disconnected}
    assert standalone._waitress_map(environ) is channel.server._map
    assert standalone._waitress_map({}) is None


def test_under_waitress_exit_waits_in_a_thread_then_exits() -> None:
    import threading

    done = threading.Event()
    codes: List[int] = []
    action = ExitAction(exit=lambda code: (codes.append(code), done.set()))
    listener = FakeListener()
    channel = FakeChannel(requests=[])
    channel.server._map.update({3: listener, 7: channel})
    action.setup(
        standalone.ProcessContext(
            1, 1, {"waitress.client_disconnected": channel.check_client_disconnected}
        )
    )
    action(CHANGES)
    action(CHANGES)  # a second change set while ending: ignored
    assert done.wait(5)
    assert codes == [3] and listener.accepting is False
