"""Real uWSGI servers under load: one graceful reload per edit, no failed request.

Each scenario starts uWSGI (master + 3 workers) on loopback and counts worker boots in its log.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import pytest

from .harness import (
    HOST,
    Load,
    Server,
    assert_no_failed_requests,
    bin_path,
    free_port,
    get,
    wait_for,
    write,
)

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        shutil.which(bin_path("uwsgi")) is None, reason="the compiled uwsgi package is needed"
    ),
]

WORKERS = 3
BOOT = re.compile(r"spawned uWSGI worker \d+")  # also matches "Respawned" (chain reload)

WSGI = """
    import logging, os, sys
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s [pid %(process)d] %(levelname)s %(message)s",
    )
    import mod
    from wsgireload import Reloader

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("%s %d" % (mod.VERSION, os.getpid())).encode()]

    application = Reloader(app, interval=0.2, settle=0.5)
"""


def module(version: str) -> str:
    return f'VERSION = "{version}"\n'


class TimedLoad(Load):
    """Load that also records the slowest request (seconds)."""

    max_latency = 0.0

    def _loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            start = time.monotonic()
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                try:
                    conn.request("GET", self.path, headers={"Connection": "close"})
                    resp = conn.getresponse()
                    status, body = resp.status, resp.read()
                finally:
                    conn.close()
            except Exception as exc:
                with self._lock:
                    self.result.failed += 1
                    self.result.errors.append(repr(exc))
            else:
                now = time.monotonic()
                with self._lock:
                    self.max_latency = max(self.max_latency, now - start)
                    if status == 200:
                        self.result.ok += 1
                        self.result.bodies.append((now, body))
                    else:
                        self.result.failed += 1
                        self.result.errors.append(f"HTTP {status}: {body[:200]!r}")
            time.sleep(self.pause)


class UwsgiServer(Server):
    """Stopped with SIGINT to the master: uWSGI's immediate shutdown. The harness's SIGTERM to
    the whole group made workers wait out the reload mercy (5-7 s per test here)."""

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGINT)
                proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        super().stop()


def make_app(root: Path) -> Path:
    app_dir = root / "app"
    write(app_dir / "wsgi.py", WSGI)
    write(app_dir / "mod.py", module("v1"))
    return app_dir


def uwsgi_argv(
    port: int, app_dir: Path, extra: Sequence[str] = (), binary: Optional[Sequence[str]] = None
) -> List[str]:
    """The uWSGI command line of these tests: WORKERS workers of app_dir's wsgi module."""
    return list(binary or [bin_path("uwsgi")]) + [
        "--http-socket", f"{HOST}:{port}",
        "--master",
        "--processes", str(WORKERS),
        "--die-on-term",
        "--need-app",
        "--pythonpath", str(app_dir),
        "--module", "wsgi",
        "--reload-mercy", "5",
        "--worker-reload-mercy", "5",
        "--disable-logging",  # no request lines: the log holds boots and wsgireload lines
        *extra,
    ]


def start_uwsgi(
    servers: List[Server],
    app_dir: Path,
    extra: Sequence[str] = (),
    binary: Optional[Sequence[str]] = None,
) -> Server:
    port = free_port()
    argv = uwsgi_argv(port, app_dir, extra, binary)
    server = UwsgiServer(argv, cwd=app_dir, port=port, log_path=app_dir.parent / "uwsgi.log")
    servers.append(server)
    server.start()
    # Every worker must have served (and so started its watcher) before the edit.
    seen: Set[bytes] = set()

    def all_workers_seen() -> bool:
        seen.add(get(port)[1].split()[-1])
        return len(seen) >= WORKERS

    assert wait_for(all_workers_seen, timeout=20, interval=0.01), f"workers seen: {seen}"
    return server


def boots(server: Server) -> int:
    return len(BOOT.findall(server.log()))


def stable_boots(server: Server, expected: int, timeout: float, quiet: float = 1.5) -> int:
    """Wait until ``expected`` boots are logged, then ``quiet`` seconds without another."""
    wait_for(lambda: boots(server) >= expected, timeout)
    count = boots(server)
    deadline = time.monotonic() + quiet
    while time.monotonic() < deadline:
        time.sleep(0.1)
        count = boots(server)
        if count > expected:
            break
    return count


def versions_by_pid(bodies: Sequence[bytes]) -> Dict[bytes, Set[bytes]]:
    out: Dict[bytes, Set[bytes]] = {}
    for body in bodies:
        version, pid = body.split()
        out.setdefault(pid, set()).add(version)
    return out


def wait_served_everywhere(
    load: Load, version: bytes, since: float, workers: int = WORKERS
) -> None:
    """Until (15 s at most) each of ``workers`` pids answered, in the last 0.3 s, with
    ``version`` only; else fail showing what each pid served after ``since``."""

    def everywhere() -> bool:
        recent = versions_by_pid(load.result.bodies_since(time.monotonic() - 0.3))
        return len(recent) >= workers and all(v == {version} for v in recent.values())

    assert wait_for(everywhere, timeout=15), versions_by_pid(load.result.bodies_since(since))


def deploy_everywhere(load: Load, server: Server, app_dir: Path, version: str) -> int:
    """Write ``version`` into mod.py, wait until every worker serves it; the worker boots
    logged once no further one comes (each worker replaced once makes 2 * WORKERS)."""
    edited = time.monotonic()
    write(app_dir / "mod.py", module(version))
    wait_served_everywhere(load, version.encode(), since=edited)
    return stable_boots(server, 2 * WORKERS, timeout=10)


def reload_once(servers: List[Server], tmp_path: Path, extra: Sequence[str]) -> Tuple[float, float]:
    """Edit one module under load; assert the issue's conditions; return (seconds, max latency)."""
    app_dir = make_app(tmp_path)
    server = start_uwsgi(servers, app_dir, extra)
    assert boots(server) == WORKERS
    with TimedLoad(server.port, threads=4, max_seconds=60) as load:
        time.sleep(0.3)
        edited = time.monotonic()
        write(app_dir / "mod.py", module("v2"))
        wait_served_everywhere(load, b"v2", since=edited)
        last_old = max(when for when, body in load.result.bodies if body.startswith(b"v1 "))
        total = stable_boots(server, 2 * WORKERS, timeout=10)
    result = load.result
    assert_no_failed_requests(result, uwsgi_full_reloads=0 if "--master-fifo" in extra else 1)
    assert total == 2 * WORKERS, f"{total} worker boots for one edit (expected {2 * WORKERS})"
    seconds = last_old - edited
    assert seconds < 5.0, f"old code still served {seconds:.2f}s after the edit"
    print(f"\nuWSGI {' '.join(extra) or 'prefork'}: {result.ok} ok, {result.failed} failed, "
          f"last old response {seconds:.2f}s after the edit, max latency {load.max_latency:.3f}s, "
          f"{total - WORKERS} new boots")
    return seconds, load.max_latency


def test_prefork_reload_under_load(servers: List[Server], tmp_path: Path) -> None:
    reload_once(servers, tmp_path, [])
    assert "uWSGI graceful reload (uwsgi.reload())" in servers[0].log()


def test_lazy_apps_chain_reload_through_master_fifo(servers: List[Server], tmp_path: Path) -> None:
    fifo = tmp_path / "master.fifo"
    seconds, _ = reload_once(servers, tmp_path, ["--lazy-apps", "--master-fifo", str(fifo)])
    # uWSGI's own pace is two 1 s master cycles per worker (~4.7 s for 3 workers here); the
    # newlines wsgireload writes to the FIFO wake the master and bring it to ~1.2 s.
    assert seconds < 3.0, f"chain reload took {seconds:.2f}s"
    log = servers[0].log()
    assert "uWSGI chain reload (master FIFO" in log
    assert "chain reloading complete" in log
    assert "binary reloading uWSGI" not in log  # workers only: the master was not re-executed


def test_syntax_error_keeps_old_code_then_fix_reloads(
    servers: List[Server], tmp_path: Path
) -> None:
    app_dir = make_app(tmp_path)
    server = start_uwsgi(servers, app_dir)
    with TimedLoad(server.port, threads=4, max_seconds=60) as load:
        time.sleep(0.3)
        write(app_dir / "mod.py", 'VERSION = "broken"\ndef oops(:\n')
        assert wait_for(lambda: "the new code is broken" in server.log(), timeout=10)
        broken_seen = time.monotonic()
        time.sleep(1.0)  # past interval + settle again: a reload would have started by now
        assert boots(server) == WORKERS
        assert server.log().count("the new code is broken") == 1  # one scanner per master
        assert set(b.split()[0] for b in load.result.bodies_since(broken_seen)) == {b"v1"}
        total = deploy_everywhere(load, server, app_dir, "v3")
    assert_no_failed_requests(load.result, uwsgi_full_reloads=1)
    assert total == 2 * WORKERS
    assert server.log().count("reloading with") == 1  # one line for the master's reload


# -- pyuwsgi (the wheel) in a virtualenv -----------------------------------------------------
def pyuwsgi_venv() -> Path:
    """A cached virtualenv with pyuwsgi, keyed by Python version; skip if it cannot be made.

    CI can prepare it ahead: ``python3 -m venv <dir> && <dir>/bin/pip install pyuwsgi``, with
    <dir> = $WSGIRELOAD_PYUWSGI_VENV or ~/.cache/wsgireload-tests/pyuwsgi-venv-<X.Y>.
    """
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    default = Path.home() / ".cache" / "wsgireload-tests" / f"pyuwsgi-venv-{version}"
    venv = Path(os.environ.get("WSGIRELOAD_PYUWSGI_VENV") or default)
    script = venv / "bin" / "uwsgi"
    if script.exists():
        return venv
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                       capture_output=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "pyuwsgi"], check=True,
                       timeout=300, capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.skip(f"cannot build a pyuwsgi virtualenv: {exc!r}")
    return venv


def test_pyuwsgi_in_venv_without_binary_path_refuses_and_keeps_serving(
    servers: List[Server], tmp_path: Path
) -> None:
    venv = pyuwsgi_venv()
    app_dir = make_app(tmp_path)
    server = start_uwsgi(servers, app_dir, binary=[str(venv / "bin" / "uwsgi")])
    with TimedLoad(server.port, threads=4, max_seconds=60) as load:
        time.sleep(0.3)
        write(app_dir / "mod.py", module("v2"))
        assert wait_for(lambda: "--binary-path" in server.log(), timeout=10)
        refused = time.monotonic()
        time.sleep(1.0)  # every worker has seen the change by now
        assert load.result.bodies_since(refused), "the server stopped answering"
        assert set(b.split()[0] for b in load.result.bodies_since(refused)) == {b"v1"}
    assert load.result.failed == 0, load.result.errors[:5]
    assert server.proc is not None and server.proc.poll() is None, "the server died"
    log = server.log()
    errors = [line for line in log.splitlines() if " ERROR " in line and "pyuwsgi" in line]
    assert len(errors) == 1, errors  # one ERROR for the change set, not one per worker
    assert f"--binary-path {venv}/bin/python" in errors[0]
    assert boots(server) == WORKERS


def test_pyuwsgi_in_venv_with_binary_path_reloads(servers: List[Server], tmp_path: Path) -> None:
    """The fix the ERROR gives really works: same server, --binary-path, new code served."""
    venv = pyuwsgi_venv()
    app_dir = make_app(tmp_path)
    server = start_uwsgi(
        servers, app_dir, ["--binary-path", f"{venv}/bin/python"],
        binary=[str(venv / "bin" / "uwsgi")],
    )
    with TimedLoad(server.port, threads=4, max_seconds=60) as load:
        time.sleep(0.3)
        total = deploy_everywhere(load, server, app_dir, "v2")
    assert_no_failed_requests(load.result, uwsgi_full_reloads=1)
    assert total == 2 * WORKERS
