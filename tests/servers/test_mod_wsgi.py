"""Real Apache + mod_wsgi under load: daemon processes restart themselves once per edit;
embedded mode warns and keeps serving. Skipped unless apache2 and mod_wsgi are installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from .harness import HOST, Server, free_port, wait_for, write
from .test_ops import check, status
from .test_uwsgi import WSGI, TimedLoad, module, versions_by_pid, wait_served_everywhere

APACHE = shutil.which("apache2") or shutil.which("httpd")
MODULES = Path("/usr/lib/apache2/modules")
PROCESSES = 3
BOOT = re.compile(r"Starting process 'app'")
REPO = str(Path(__file__).resolve().parents[2])

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        APACHE is None or not (MODULES / "mod_wsgi.so").exists(),
        reason="needs apache2 and mod_wsgi (Debian: apache2 libapache2-mod-wsgi-py3)",
    ),
]

CONF = """
ServerRoot {root}
Listen {host}:{port}
PidFile {root}/run/httpd.pid
DefaultRuntimeDir {root}/run
ErrorLog {root}/error.log
LogLevel info
ServerName {host}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule wsgi_module {modules}/mod_wsgi.so
{user}
WSGISocketPrefix {root}/run/wsgi
{daemon}
WSGIApplicationGroup %{{GLOBAL}}
WSGIScriptAlias / {root}/app/wsgi.py
<Directory {root}/app>
  Require all granted
</Directory>
"""

DAEMON = """
WSGIDaemonProcess app processes={processes} threads=2 python-path={root}/app:{repo}
WSGIProcessGroup app
"""

EMBEDDED = """
WSGIPythonPath {root}/app:{repo}
"""


@pytest.fixture
def root() -> Iterator[Path]:
    # Apache started as root serves as www-data, which cannot enter pytest's 0700 tmp dirs.
    path = Path(tempfile.mkdtemp(prefix="wsgireload-apache-", dir="/tmp"))
    path.chmod(0o755)
    (path / "run").mkdir()
    (path / "tmp").mkdir()
    (path / "tmp").chmod(0o1777)  # the daemon processes' TMPDIR: their record is read below
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_apache(servers: List[Server], root: Path, daemon: bool) -> Server:
    write(root / "app" / "wsgi.py", WSGI)
    write(root / "app" / "mod.py", module("v1"))
    (root / "app").chmod(0o755)
    for name in ("wsgi.py", "mod.py"):
        (root / "app" / name).chmod(0o644)
    port = free_port()
    user = "User www-data\nGroup www-data" if os.getuid() == 0 else ""
    fmt = dict(root=root, repo=REPO, processes=PROCESSES)
    conf = CONF.format(
        root=root, host=HOST, port=port, modules=MODULES, user=user,
        daemon=(DAEMON if daemon else EMBEDDED).format(**fmt),
    )
    (root / "httpd.conf").write_text(conf)
    server = Server([str(APACHE), "-f", str(root / "httpd.conf"), "-DFOREGROUND"], cwd=root,
                    port=port, log_path=root / "error.log",
                    env={"TMPDIR": str(root / "tmp"), "XDG_RUNTIME_DIR": ""})
    servers.append(server)
    server.start()
    return server


def records(root: Path) -> str:
    """The runtime directory of the records of Apache's processes (TMPDIR: see ``root``)."""
    return str(next((root / "tmp").glob("wsgireload-*")))


def trap_lines(root: Path) -> List[str]:
    """The `trap:` lines `wsgireload check` prints for the app Apache runs."""
    out = check(root / "app", records(root))
    return [line for line in out.splitlines() if line.startswith("trap:")]


def test_daemon_mode_each_process_restarts_itself_once(
    root: Path, servers: List[Server]
) -> None:
    server = start_apache(servers, root, daemon=True)
    with TimedLoad(server.port, threads=4, max_seconds=60) as load:
        assert wait_for(lambda: len(versions_by_pid(load.result.bodies_since(0))) >= PROCESSES, 15)
        edited = time.monotonic()
        write(root / "app" / "mod.py", module("v2"))
        wait_served_everywhere(load, b"v2", since=edited, workers=PROCESSES)
        last_old = max(when for when, body in load.result.bodies if body.startswith(b"v1 "))
        wait_for(lambda: len(BOOT.findall(server.log())) >= 2 * PROCESSES, 10)
        time.sleep(1.5)  # any further restart would show up in the log by now
    assert load.result.failed == 0, load.result.errors[:5]
    assert len(BOOT.findall(server.log())) == 2 * PROCESSES
    assert "mod_wsgi daemon restart (SIGINT to itself" in server.log()
    # The processes of the group share one record: one scanned, one boot check ran, one INFO
    # line for the deploy (the others restart themselves, logging at DEBUG).
    reloading = [line for line in server.log().splitlines() if "reloading with" in line]
    assert len(reloading) == 1, reloading
    assert "(and so does every other worker of master" in reloading[0]
    (path,) = (root / "tmp").glob("wsgireload-*/mod_wsgi.app-*.master.json")
    record = json.loads(path.read_text())
    assert [v["verdict"] for v in record["validations"]] == ["ok"]
    assert record["generation"]["n"] == 1 and record["generation"]["per_process"]
    print(f"\nmod_wsgi daemon: {load.result.ok} ok, {load.result.failed} failed, last old "
          f"response {last_old - edited:.2f}s after the edit, max latency {load.max_latency:.3f}s")
    assert last_old - edited < 5.0
    assert trap_lines(root) == []  # a clean setup


def test_embedded_mode_warns_and_keeps_serving(
    root: Path, servers: List[Server], capsys: pytest.CaptureFixture[str]
) -> None:
    """...and `wsgireload check` names its trap, from records of Apache's children alone
    (never listed as masters by `status`, gone with Apache)."""
    server = start_apache(servers, root, daemon=False)
    with TimedLoad(server.port, threads=4, max_seconds=60) as load:
        assert wait_for(lambda: load.result.bodies_since(0), 20)  # (slow under a busy CPU)
        assert wait_for(lambda: any((root / "tmp").glob("wsgireload-*/mod_wsgi-*.json")), 10)
        (line,) = trap_lines(root)  # one line for every child that loaded the app
        with capsys.disabled():
            print(f"\n{line}")
        assert re.match(r"trap:      mod_wsgi process(es)? \d+(, \d+)*: mod_wsgi runs this app "
                        r"in embedded mode .* Fix: daemon mode, WSGIDaemonProcess", line), line
        assert status(records(root), capsys) == []  # none is a master
        before = set(versions_by_pid(load.result.bodies_since(0)))
        write(root / "app" / "mod.py", module("v2"))
        assert wait_for(lambda: "but mod_wsgi runs this app in embedded mode" in server.log(),
                        timeout=10)
        warned = time.monotonic()
        time.sleep(1.0)
    assert load.result.failed == 0, load.result.errors[:5]
    assert server.proc is not None and server.proc.poll() is None
    # Apache may start new children, which import the new code; the children that were
    # serving before the edit were left alone and still serve the old code.
    after = versions_by_pid(load.result.bodies_since(warned))
    survivors = {pid: versions for pid, versions in after.items() if pid in before}
    assert survivors and all(versions == {b"v1"} for versions in survivors.values()), after
    server.stop()
    assert status(records(root), capsys) == [] and not list(Path(records(root)).glob("*.json"))
