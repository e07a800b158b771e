"""Real servers that get no request at all: each worker watches from its boot, so deploy after
deploy replaces every worker, and the first visitor afterwards gets the newest code.

No request is sent until the end: readiness is read from the server's log and from a file
each process writes when it imports the app.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, List, Sequence

import pytest

from .harness import HOST, Server, bin_path, free_port, get, wait_for, write
from .test_gunicorn import assert_stays, gunicorn, make_app
from .test_gunicorn import boots as gunicorn_boots
from .test_uwsgi import UwsgiServer

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")]

SETTLE, INTERVAL = 0.5, 0.2  # the test apps' options
LIMIT = SETTLE + INTERVAL + 3.0  # seconds from an edit to every worker replaced
ROLLOUT_LIMIT = LIMIT + 3.0  # gunicorn's rollout replaces one worker at a time
WORKERS = 3
UWSGI_BOOT = re.compile(r"spawned uWSGI worker \d+")  # also "Respawned" (chain reload)

# Written by every process that imports the app, just before it creates the Reloader.
MARK = """
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported-%d" % os.getpid()),
          "w"):
    pass
"""


class Unprobed(Server):
    """Started without the harness's readiness GET: this test must send no request."""

    ready: Callable[[], bool] = staticmethod(lambda: True)

    def wait_ready(self, path: str = "/", timeout: float = 30.0) -> None:
        assert self.proc is not None
        ok = wait_for(lambda: self.proc is not None and self.proc.poll() is None and self.ready(),
                      timeout)
        assert ok, f"server not booted after {timeout}s\n{self.log()}"


class UnprobedUwsgi(UwsgiServer, Unprobed):
    pass


def imports(directory: Path) -> int:
    return len(list(directory.glob("imported-*")))


def two_idle_deploys(
    server: Server, app_dir: Path, boots: Callable[[], int], *, new_imports: int,
    limit: float = LIMIT,
) -> List[float]:
    """Edit twice with no request; each time every worker is replaced within LIMIT. Returns
    the seconds each deploy took. ``new_imports``: app imports a reload makes."""
    took = []
    for n, value in enumerate(("v2", "v3"), start=1):
        expected, imported = (n + 1) * WORKERS, imports(app_dir)
        time.sleep(0.5)  # the workers are booted and idle: no request at all
        t0 = time.monotonic()
        write(app_dir / "mod.py", f"VALUE = {value!r}\n")
        done = wait_for(
            lambda e=expected, i=imported: boots() >= e and imports(app_dir) >= i + new_imports,
            limit + 10,
        )
        took.append(time.monotonic() - t0)
        assert done, f"deploy {n}: {boots()} boots, {imports(app_dir)} imports\n{server.log()}"
        assert took[-1] <= limit, f"deploy {n}: every worker replaced only after {took[-1]:.2f}s"
        assert_stays(expected, boots, 1.5)  # each worker once: the new ones do not act again
    return took


def first_request(port: int) -> bytes:
    code, body = get(port)
    assert code == 200, body
    return body


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent"])
def test_gunicorn_idle_workers_reload_twice_without_a_request(
    tmp_path: Path, servers: List[Server], worker_class: str
) -> None:
    make_app(tmp_path, extra=MARK)
    threads = ["--threads", "4"] if worker_class == "gthread" else []
    extra = ["--worker-class", worker_class, *threads]
    plain = gunicorn(tmp_path, free_port(), workers=WORKERS, extra=extra)
    server = Unprobed(plain.argv, cwd=tmp_path, port=plain.port, log_path=plain.log_path,
                      env=plain.env)
    server.ready = lambda: gunicorn_boots(server) == WORKERS and imports(tmp_path) == WORKERS
    servers.append(server.start())
    took = two_idle_deploys(server, tmp_path, lambda: gunicorn_boots(server),
                            new_imports=WORKERS, limit=ROLLOUT_LIMIT)
    body = first_request(server.port)
    print(f"\ngunicorn {worker_class} {WORKERS} workers, no request: all replaced "
          f"{took[0]:.2f}s and {took[1]:.2f}s after each edit; first request: {body!r}")
    assert body.endswith(b"value=v3"), body


UWSGI_APP = MARK.join(("""
import logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [pid %(process)d] %(levelname)s %(message)s")
import mod
from wsgireload import Reloader

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("pid=%d value=%s" % (os.getpid(), mod.VALUE)).encode()]
""", """
application = Reloader(app, interval=0.2, settle=0.5)
"""))


def uwsgi(tmp_path: Path, extra: Sequence[str]) -> UnprobedUwsgi:
    app_dir = tmp_path / "app"
    write(app_dir / "mod.py", "VALUE = 'v1'\n")
    write(app_dir / "wsgi.py", UWSGI_APP)
    port = free_port()
    argv = [
        bin_path("uwsgi"), "--http-socket", f"{HOST}:{port}", "--master",
        "--processes", str(WORKERS), "--die-on-term", "--need-app",
        "--pythonpath", str(app_dir), "--module", "wsgi",
        "--reload-mercy", "5", "--worker-reload-mercy", "5", *extra,
    ]
    env = {"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": ""}  # this test's own records
    return UnprobedUwsgi(argv, cwd=app_dir, port=port, log_path=tmp_path / "uwsgi.log", env=env)


needs_uwsgi = pytest.mark.skipif(
    shutil.which(bin_path("uwsgi")) is None, reason="the compiled uwsgi package is needed"
)


@needs_uwsgi
@pytest.mark.parametrize("fifo", [True, False], ids=["chain", "full"])
def test_uwsgi_lazy_apps_idle_workers_reload_twice_without_a_request(
    tmp_path: Path, servers: List[Server], fifo: bool
) -> None:
    extra = ["--lazy-apps"] + (["--master-fifo", str(tmp_path / "master.fifo")] if fifo else [])
    server = uwsgi(tmp_path, extra)
    app_dir = tmp_path / "app"

    def boots() -> int:
        return len(UWSGI_BOOT.findall(server.log()))

    server.ready = lambda: boots() == WORKERS and imports(app_dir) == WORKERS
    servers.append(server.start())
    took = two_idle_deploys(server, app_dir, boots, new_imports=WORKERS)
    body = first_request(server.port)
    log = server.log()
    how = "chain reload (master FIFO" if fifo else "graceful reload (uwsgi.reload())"
    print(f"\nuWSGI --lazy-apps {'--master-fifo' if fifo else ''}: {how}; all {WORKERS} "
          f"replaced {took[0]:.2f}s and {took[1]:.2f}s after each edit; first request: {body!r}")
    assert f"uWSGI {how}" in log
    assert body.endswith(b"value=v3"), body


@needs_uwsgi
def test_uwsgi_prefork_idle_workers_reload_twice_without_a_request(
    tmp_path: Path, servers: List[Server]
) -> None:
    """The master imports the app, then forks: each worker starts watching in uWSGI's
    post-fork hook."""
    server = uwsgi(tmp_path, [])
    app_dir = tmp_path / "app"

    def boots() -> int:
        return len(UWSGI_BOOT.findall(server.log()))

    server.ready = lambda: boots() == WORKERS and imports(app_dir) == 1
    servers.append(server.start())
    took = two_idle_deploys(server, app_dir, boots, new_imports=1)  # the re-executed master
    body = first_request(server.port)
    print(f"\nuWSGI prefork: all {WORKERS} replaced {took[0]:.2f}s and {took[1]:.2f}s after "
          f"each edit (full reload); first request: {body!r}")
    assert "uWSGI graceful reload (uwsgi.reload())" in server.log()
    assert body.endswith(b"value=v3"), body
