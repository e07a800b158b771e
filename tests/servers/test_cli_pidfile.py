"""`wsgireload watch --pidfile` against a real gunicorn started with --pid: one HUP per deploy.

The app is not wrapped at all; the watcher runs outside the server, as the classic
`watchmedo ... kill -HUP $(cat pidfile)` recipe did, but settled, validated and verified.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from .harness import (
    Load,
    Server,
    _repo_root,
    bin_path,
    free_port,
    get,
    gunicorn_no_control_socket,
    wait_for,
    write,
)
from .reloadhelp import boots, hups, write_plain_app

pytestmark = pytest.mark.server


def test_pidfile_watcher_reloads_gunicorn_once_per_change_set(
    tmp_path: Path, servers: List[Server], watchers: List["subprocess.Popen[str]"]
) -> None:
    app_dir = tmp_path / "app"
    write_plain_app(app_dir)
    pidfile = tmp_path / "gunicorn.pid"
    port = free_port()
    server = Server(
        [bin_path("gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}",
         *gunicorn_no_control_socket(), "--pid", str(pidfile), "app:application"],
        cwd=app_dir, port=port, log_path=tmp_path / "gunicorn.log",
    )
    servers.append(server.start())
    assert wait_for(lambda: boots(server.log()) == 2, timeout=30)
    out_path = tmp_path / "watch.out"
    with open(out_path, "w") as out:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "wsgireload", "watch", "--pidfile", str(pidfile),
             "--interval", "0.2", "--settle", "0.5", str(app_dir)],
            cwd=_repo_root(), stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    watchers.append(watcher)
    assert wait_for(lambda: "watching" in out_path.read_text(), timeout=30), out_path.read_text()
    assert "target    gunicorn pid " in out_path.read_text()

    with Load(port, threads=2, pause=0.02) as load:
        # A deploy of a broken file first: refused, nothing signalled, old code kept.
        write(app_dir / "mod.py", 'VERSION = "v2\n')
        assert wait_for(lambda: "refused" in out_path.read_text(), timeout=30), out_path.read_text()
        assert hups(server.log()) == 0
        # The fix, and a second file in the same change set: one HUP for both.
        write(app_dir / "mod.py", 'VERSION = "v2"\n')
        write(app_dir / "extra.txt", "config\n")
        assert wait_for(lambda: all(get(port)[1] == b"v2" for _ in range(6)), timeout=30), (
            out_path.read_text() + server.log()
        )
    result = load.stop()
    text = out_path.read_text()
    log = server.log()
    assert result.failed == 0, result.errors[:5]
    assert text.count("sent SIGHUP") == 1, text
    assert hups(log) == 1, log
    assert wait_for(lambda: boots(server.log()) == 4, timeout=10), server.log()  # 2 + 2, never 2x2
    # gunicorn rewrote its pidfile on reload: that is not a change set of its own.
    assert str(pidfile) not in text.split("Ctrl-C", 1)[1].replace(f"pid in {pidfile}", "")

    # Ctrl-C: a clean exit.
    watcher.send_signal(2)
    assert watcher.wait(timeout=15) == 0, out_path.read_text()
    assert "stopped" in out_path.read_text() and "Traceback" not in out_path.read_text()


def test_pidfile_watcher_refuses_a_non_server(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pidfile = tmp_path / "app.pid"
        pidfile.write_text(str(sleeper.pid))
        proc = subprocess.run(
            [sys.executable, "-m", "wsgireload", "watch", "--pidfile", str(pidfile), str(tmp_path)],
            cwd=_repo_root(), capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 1
        assert "not gunicorn or uwsgi: refusing to signal" in proc.stderr
        assert proc.stderr.count("\n") == 1 and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
