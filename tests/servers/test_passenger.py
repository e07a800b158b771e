"""Real Phusion Passenger (Debian's ``passenger``, standalone, builtin engine), two app processes,
4 client threads opening a new connection per request: an edit reloads every app process well
before Passenger's own 10 s restart.txt throttle, a deploy that cannot import never reaches a
visitor, and its fix reloads.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional, Set

import pytest

from .harness import Load, LoadResult, Server, free_port, wait_for, write

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform != "linux", reason="/proc")]

INTERVAL, SETTLE = 0.2, 0.5
PROCESSES = 2
NEW_CODE_WITHIN = 15.0  # seconds after an edit
THROTTLE = 10.0  # Passenger's stat_throttle_rate: how often it looks at tmp/restart.txt
BOOT = 1.0  # seconds an app process takes to import the app
# No request waits for a boot: a process stops only once another is ready to serve (all at
# once, every request in flight then would wait one boot, 1.3 s or more).
SLOWEST = 0.6  # seconds

APP = """\
import logging, os, time
import mod
from wsgireload import Reloader

logging.getLogger("wsgireload").setLevel(logging.INFO)  # the loader logs WARNING and up
time.sleep({boot})  # an app's import takes a while


def app(environ, start_response):
    body = ("pid=%d value=%s" % (os.getpid(), mod.VALUE)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = Reloader(app, interval={interval}, settle={settle})
"""


def loader_python() -> Optional[str]:
    """A Python for Passenger's wsgi-loader.py, which imports ``imp`` (gone in 3.12): this one
    if it can, else a ``python3.11`` (wsgireload itself is stdlib-only: PYTHONPATH finds it)."""
    for python in (sys.executable, shutil.which("python3.11"), "/usr/bin/python3.11"):
        if python and subprocess.run([python, "-W", "ignore", "-c", "import imp"],
                                     capture_output=True, timeout=30).returncode == 0:
            return python
    return None


def passenger_argv(app: Path, base: Path, registry: Path, port: int, python: str,
                   processes: int) -> List[str]:
    """``passenger start`` with everything it writes under ``base`` (pid file, log; its temp
    directory follows TMPDIR) and ``registry`` (its sockets: a short path)."""
    (base / "tmp").mkdir(exist_ok=True)
    return [
        "passenger", "start", str(app), "--engine", "builtin", "--address", "127.0.0.1",
        "--port", str(port), "--app-type", "wsgi", "--startup-file", "passenger_wsgi.py",
        "--python", python, "--environment", "production",
        "--min-instances", str(processes), "--max-pool-size", str(processes),
        "--pid-file", str(base / "passenger.pid"), "--log-file", str(base / "passenger.log"),
        "--instance-registry-dir", str(registry),
        "--disable-security-update-check", "--disable-anonymous-telemetry",
    ]


@pytest.fixture
def passenger(tmp_path: Path) -> Iterator[Server]:
    if shutil.which("passenger") is None:
        pytest.fail("Debian's passenger is not installed (.ci/run installs it: apt-get install "
                    "passenger)")
    python = loader_python()
    if python is None:
        pytest.skip("Passenger's wsgi-loader.py imports `imp`: it needs Python 3.11 or older")
    app = tmp_path / "app"
    write(app / "mod.py", "VALUE = 'v1'\n")
    write(app / "passenger_wsgi.py", APP.format(interval=INTERVAL, settle=SETTLE, boot=BOOT))
    (app / "tmp").mkdir()
    port = free_port()
    registry = Path(tempfile.mkdtemp(prefix="psg-"))  # a Unix socket's path has 107 bytes
    server = Server(passenger_argv(app, tmp_path, registry, port, python, PROCESSES), app, port,
                    tmp_path / "out.log", env={"TMPDIR": str(tmp_path / "tmp")})
    try:
        server.start(timeout=60)
        yield server
    finally:
        server.stop()  # SIGTERM: `passenger start` stops its (daemonised) watchdog and core
        stop_watchdog(tmp_path / "passenger.pid")
        leftover = list(registry.iterdir())
        shutil.rmtree(registry, ignore_errors=True)
    assert not any((tmp_path / "tmp").iterdir()), "Passenger left its temp directory"
    assert not leftover, "Passenger left its instance directory"


def stop_watchdog(pid_file: Path) -> None:
    """The watchdog leaves `passenger start`'s session: if it outlived it, end it (it stops
    the core and the app processes), by its own pid."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10):
            return


def serving(result: LoadResult, since: float, value: str) -> Set[str]:
    """The pids that answered ``value`` at ``since`` or later."""
    pids = set()
    for when, body in result.bodies:
        pid, _, found = body.decode().removeprefix("pid=").partition(" value=")
        if when >= since and found == value:
            pids.add(pid)
    return pids


def app_processes(server: Server) -> Set[int]:
    core = subprocess.run(["pgrep", "-f", "^Passenger core"], capture_output=True, text=True)
    children: Set[int] = set()
    for pid in core.stdout.split():
        out = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout
        children.update(int(child) for child in out.split())
    return {pid for pid in children if _cwd(pid) == str(server.cwd)}


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def all_new(load: Load, edited: float, value: str, server: Server) -> float:
    """Seconds from ``edited`` until every app process alive serves ``value`` (each has
    answered it, and no response since carries another value)."""
    def done() -> bool:
        live = {str(pid) for pid in app_processes(server)}
        bodies = [b for w, b in load.result.bodies if w >= edited]
        latest = [b.decode() for b in bodies[-20:]]
        return (len(live) == PROCESSES and live <= serving(load.result, edited, value)
                and all(body.endswith("value=" + value) for body in latest))

    assert wait_for(done, NEW_CODE_WITHIN), (
        f"{app_processes(server)} {serving(load.result, edited, value)} "
        f"{load.result.bodies[-3:]}\n{server.log()}")
    return time.monotonic() - edited


def test_passenger_reloads_every_process_and_never_a_refused_deploy(passenger: Server) -> None:
    server, app = passenger, passenger.cwd
    log = server.log_path.parent / "passenger.log"
    with Load(server.port, threads=4, max_seconds=50) as load:
        assert wait_for(lambda: len(serving(load.result, 0.0, "v1")) == PROCESSES, 15), server.log()
        first = app_processes(server)
        edited = time.monotonic()
        write(app / "mod.py", "VALUE = 'v2'\n")
        took = all_new(load, edited, "v2", server)
        second = app_processes(server)
        assert not first & second, "an app process kept the old code"

        # A deploy that cannot import: refused by the boot check, no process restarted, the
        # old code served for longer than Passenger's own restart.txt throttle.
        broken = time.monotonic()
        write(app / "mod.py", "import not_installed_anywhere\nVALUE = 'broken'\n")
        assert wait_for(lambda: "not_installed_anywhere" in log.read_text(), 5), server.log()
        time.sleep(THROTTLE + 1.0 - (time.monotonic() - broken))
        assert app_processes(server) == second
        assert serving(load.result, broken, "broken") == set()
        assert serving(load.result, time.monotonic() - 1.0, "v2") == {str(p) for p in second}
        assert not (app / "tmp" / "restart.txt").exists()

        fixed = time.monotonic()
        write(app / "mod.py", "VALUE = 'v3'\n")
        took_fix = all_new(load, fixed, "v3", server)
    result = load.result
    print(f"passenger: new code everywhere {took:.2f}s after the edit, {took_fix:.2f}s after "
          f"the fix; {result.ok} requests, {result.failed} failed, slowest "
          f"{result.slowest_since(edited):.3f}s")
    assert result.failed == 0, result.errors[:5]
    assert result.slowest_since(edited) < SLOWEST, server.log()
    text = log.read_text()
    assert "not reloading, the new code is broken" in text, text[-5000:]
    assert "passenger: each app process in turn stops accepting" in text, text[-5000:]
