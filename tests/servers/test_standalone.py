"""Real plain servers (waitress, wsgiref): never signal the parent; warn, or re-exec on request."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest

from .harness import Load, LoadResult, Server, free_port, wait_for, write

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")]

APP = """\
import logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [%(process)d] wsgireload-test %(levelname)s %(message)s")
import mod
from wsgireload import Reloader

def hup_parent(changes):  # the classic recipe, for the control case only
    os.kill(os.getppid(), 1)

def app(environ, start_response):
    body = ("pid=%d value=%s" % (os.getpid(), mod.VALUE)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

application = Reloader(app, interval=0.2, settle=0.5, action={action})
"""

WSGIREF = """\
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server
import wsgi

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

make_server("127.0.0.1", int(sys.argv[1]), wsgi.application, handler_class=Quiet).serve_forever()
"""

# A launcher that keeps the port open across action="exec" (see ExecAction).
WAITRESS_KEEP_SOCKET = """\
import sys
from waitress import serve
from wsgireload.actions.standalone import inherited_sockets
import wsgi

sockets = inherited_sockets()
if sockets:
    serve(wsgi.application, sockets=sockets, threads=4)
else:
    serve(wsgi.application, listen="127.0.0.1:" + sys.argv[1], threads=4)
"""

# A shell-like parent: counts the SIGHUPs it receives while its child serves.
PARENT = """\
import signal, subprocess, sys
count_file = sys.argv[1]
hups = 0
def on_hup(signum, frame):
    global hups
    hups += 1
    with open(count_file, "w") as handle:
        handle.write(str(hups))
with open(count_file, "w") as handle:
    handle.write("0")
signal.signal(signal.SIGHUP, on_hup)
child = subprocess.Popen(sys.argv[2:])
while True:
    try:
        sys.exit(child.wait())
    except InterruptedError:
        pass
"""


def waitress_argv(port: int) -> List[str]:
    return [
        sys.executable,
        "-m",
        "waitress",
        f"--listen=127.0.0.1:{port}",
        "--threads=4",
        "wsgi:application",
    ]


def make_app(directory: Path, action: str) -> None:
    write(directory / "mod.py", "VALUE = 'v1'\n")
    write(directory / "wsgi.py", APP.format(action=action))
    write(directory / "wsgiref_serve.py", WSGIREF)
    write(directory / "keep_socket_serve.py", WAITRESS_KEEP_SOCKET)
    write(directory / "parent.py", PARENT)


def start(tmp_path: Path, servers: List[Server], argv: Sequence[str], port: int) -> Server:
    server = Server(
        argv,
        cwd=tmp_path,
        port=port,
        log_path=tmp_path / "server.log",
        env={"TMPDIR": str(tmp_path)},
    )
    servers.append(server.start())
    return server


def classify(result: LoadResult) -> Tuple[int, int, int]:
    """(refused, reset, other failures): refused while no socket listened; reset while
    queued in the kernel's backlog of a closing socket, never accepted by the server;
    other = a connection the server accepted that got no full response, or an HTTP error."""
    refused = sum("ConnectionRefusedError" in error for error in result.errors)
    reset = sum("ConnectionResetError" in error for error in result.errors)
    return refused, reset, result.failed - refused - reset


def longest_gap(result: LoadResult, since: float) -> float:
    """Longest pause between two successful responses after ``since`` (seconds)."""
    times = [when for when, _ in result.bodies if when >= since]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]  # noqa: B905
    return max(gaps, default=0.0)


@pytest.mark.parametrize("kind", ["waitress", "wsgiref"])
def test_plain_server_default_warns_once_keeps_serving_and_never_hups_the_parent(
    tmp_path: Path, servers: List[Server], kind: str
) -> None:
    make_app(tmp_path, "'auto'")
    port = free_port()
    child = (
        waitress_argv(port)
        if kind == "waitress"
        else [sys.executable, str(tmp_path / "wsgiref_serve.py"), str(port)]
    )
    count = tmp_path / "hups"
    server = start(
        tmp_path, servers, [sys.executable, str(tmp_path / "parent.py"), str(count), *child], port
    )
    with Load(port, threads=2 if kind == "wsgiref" else 4) as load:
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        assert wait_for(lambda: "has no master to reload it" in server.log(), 10)
        write(tmp_path / "mod.py", "VALUE = 'v3'\n")  # a second deploy: no second WARNING
        assert wait_for(lambda: server.log().count("reloading with") >= 2, 10)
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    assert count.read_text() == "0"
    # wsgireload's own WARNINGs: waitress may add its "Task queue depth" one under this load.
    assert server.log().count("WARNING wsgireload:") == 1, server.log()
    assert result.bodies[-1][1].endswith(b"value=v1")  # keeps serving what it loaded


def test_the_hup_counter_would_see_the_classic_recipe(
    tmp_path: Path, servers: List[Server]
) -> None:
    """Control: the same parent does count a worker's HUP to its parent (the classic bug)."""
    make_app(tmp_path, "hup_parent")
    port = free_port()
    count = tmp_path / "hups"
    start(
        tmp_path,
        servers,
        [sys.executable, str(tmp_path / "parent.py"), str(count), *waitress_argv(port)],
        port,
    )
    with Load(port, threads=2):
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        assert wait_for(lambda: count.read_text() == "1", 10)


@pytest.mark.parametrize("launcher", ["waitress-cli", "keep-socket"])
def test_waitress_exec_serves_new_code_and_counts_refused_connections(
    tmp_path: Path, servers: List[Server], launcher: str
) -> None:
    make_app(tmp_path, "'exec'")
    port = free_port()
    argv = (
        waitress_argv(port)
        if launcher == "waitress-cli"
        else [sys.executable, str(tmp_path / "keep_socket_serve.py"), str(port)]
    )
    server = start(tmp_path, servers, argv, port)
    with Load(port, threads=4) as load:
        assert wait_for(lambda: bool(load.result.bodies), 10)
        t0 = time.monotonic()
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        assert wait_for(
            lambda: any(b.endswith(b"value=v2") for b in load.result.bodies_since(t0)), 5
        )
        took = time.monotonic() - t0
        assert wait_for(lambda: len(load.result.bodies_since(time.monotonic() - 0.2)) > 5, 5)
    result = load.stop()
    refused, reset, other = classify(result)
    print(
        f"\nexec via {launcher}: new code after {took:.2f}s; {result.ok} ok, {refused} refused, "
        f"{reset} reset in backlog, {other} other failures; longest pause "
        f"{longest_gap(result, t0) * 1000:.0f} ms"
    )
    assert server.log().count("re-executing") == 1
    assert other == 0, result.errors[:5]  # every connection waitress accepted was answered
    if launcher == "keep-socket":
        assert result.failed == 0, result.errors[:5]  # the port never closed
