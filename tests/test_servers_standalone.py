"""Standalone actions: warn once, exit for a supervisor, re-exec (with the listening socket)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import types
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import webtest

from wsgireload import Reloader
from wsgireload.actions import REGISTRY
from wsgireload.servers import standalone
from wsgireload.servers.standalone import (
    LISTEN_FDS_ENV,
    ExecAction,
    ExitAction,
    StandaloneAction,
    inherited_sockets,
    listening_sockets,
    reexec_argv,
)

from .fakes import CHANGES


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


class FakeTrigger:
    """waitress's trigger: thunks queued from any thread, run by the test as the main loop."""

    def __init__(self) -> None:
        self.thunks: List[Callable[[], None]] = []
        self.queued = threading.Event()

    def pull_trigger(self, thunk: Optional[Callable[[], None]] = None) -> None:
        if thunk is not None:
            self.thunks.append(thunk)
            self.queued.set()

    def next_round(self) -> None:
        """Wait for the quiesce's next count, then run it (between two handlers)."""
        assert self.queued.wait(5), "the quiesce did not ask the main loop to count"
        self.queued.clear()
        thunks, self.thunks = self.thunks, []
        for thunk in thunks:
            thunk()


def test_quiesce_counts_in_the_main_loop_and_needs_two_idle_rounds() -> None:
    listener, trigger = FakeListener(), FakeTrigger()
    listener.trigger = trigger  # type: ignore[attr-defined]
    channel = Channel(None)  # its request read from the socket, not parsed yet: looks idle
    socket_map: Dict[int, object] = {3: listener, 7: channel}
    result: List[int] = []
    thread = threading.Thread(
        target=lambda: result.append(standalone._waitress_quiesce(socket_map, timeout=10.0))
    )
    thread.start()
    channel.requests.append("parsed")  # the main loop finishes that read before it counts
    trigger.next_round()  # busy
    channel.requests.clear()  # answered
    trigger.next_round()  # idle once
    socket_map[8] = late = Channel(None)  # accepted in the round before accepting stopped
    late.creation_time = time.time()
    trigger.next_round()  # busy again: just accepted
    late.creation_time -= 60.0  # its client sent nothing: idle
    trigger.next_round()
    trigger.next_round()  # idle twice in a row
    thread.join(5)
    assert result == [0] and not thread.is_alive()


def test_quiesce_counts_from_its_own_thread_when_the_main_loop_does_not_run_the_count() -> None:
    listener, trigger = FakeListener(), FakeTrigger()  # a trigger nobody runs
    listener.trigger = trigger  # type: ignore[attr-defined]
    busy = Channel(None)
    busy.requests = ["in the app"]
    assert standalone._waitress_quiesce({3: listener, 7: busy}, timeout=0.0) == 1
    assert len(trigger.thunks) == 1  # asked, then counted without waiting past the deadline


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
