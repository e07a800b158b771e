"""Real gunicorn (and uWSGI) as operators see them: the metrics file, systemd's notify socket,
gunicorn's own log, and `wsgireload check` naming the traps of a setup.

One deploy story per server: a good edit, a deploy whose import fails, its fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wsgireload import _record, cli
from wsgireload._system import SYSTEM

from ..test_ops import assert_textfile_format, value
from . import test_gunicorn as gunicorn_tests
from .harness import (
    Load,
    Server,
    _repo_root,
    bin_path,
    free_port,
    gunicorn_no_control_socket,
    wait_for,
    write,
)
from .test_uwsgi import UwsgiServer, uwsgi_argv

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform != "linux", reason="/proc")]

WORKERS = 3
APP = """\
import os, time
time.sleep(0.2)
import mod
from wsgireload import Reloader


def app(environ, start_response):
    body = ("pid=%d value=%s" % (os.getpid(), mod.VALUE)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = Reloader(app, interval=0.2, settle=0.5{options})
"""


def make_app(directory: Path, options: str = "") -> None:
    write(directory / "mod.py", "VALUE = 'v1'\n")
    write(directory / "wsgi.py", APP.format(options=options))


def private_dir(path: Path) -> Path:
    """An XDG_RUNTIME_DIR for the records of this test's masters only (other tests' servers
    run meanwhile)."""
    path.mkdir(mode=0o700)
    return path


def records(run: Path) -> str:
    return str(run / "wsgireload")


def gunicorn(app_dir: Path, port: int, *extra: str) -> List[str]:
    return [bin_path("gunicorn"), "-w", str(WORKERS), "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "2", *gunicorn_no_control_socket(), *extra, "wsgi:application"]


class Notifications:
    """A fake systemd: a datagram socket that learns each sender's pid (SCM_CREDENTIALS)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.path = str(path)
        self.received: List[Tuple[int, float, Dict[str, str]]] = []  # (pid, monotonic, fields)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            pid = next(struct.unpack("3i", cdata)[0] for level, kind, cdata in ancillary
                       if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS))
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.received.append((pid, time.monotonic(), fields))

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()

    def from_workers(self, master: int) -> List[Tuple[int, float, Dict[str, str]]]:
        """What was sent by anyone but the master (gunicorn's own READY=1 at boot)."""
        return [entry for entry in self.received if entry[0] != master]


class Children:
    """Every child the master had, sampled every 20 ms."""

    def __init__(self, master: int) -> None:
        self.seen: Set[int] = set()
        self.stopped = threading.Event()

        def run() -> None:
            while not self.stopped.wait(0.02):
                self.seen.update(SYSTEM.children(master))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self) -> Set[int]:
        self.stopped.set()
        self.thread.join(5)
        return self.seen


class Reader:
    """Reads the metrics file every 10 ms and parses every read, as a scraper would."""

    def __init__(self, path: Path) -> None:
        self.path, self.reads, self.bad = path, 0, []  # type: ignore[var-annotated]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopped.wait(0.01):
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                continue
            self.reads += 1
            try:
                list(text_string_to_metric_families(text))
                assert_textfile_format(text)
            except Exception as exc:  # a torn file
                self.bad.append((repr(exc), text))

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


def figures(path: Path) -> Tuple[float, float, float]:
    text = path.read_text()
    return (value(text, "wsgireload_reloads_total"), value(text, "wsgireload_reloads_failed_total"),
            value(text, "wsgireload_last_reload_successful"))


def success(path: Path) -> float:
    return value(path.read_text(), "wsgireload_last_reload_success_timestamp_seconds")


def test_metrics_notify_and_the_log_through_a_good_a_refused_and_a_fixed_deploy(
        tmp_path: Path, servers: List[Server]) -> None:
    app_dir, metrics = tmp_path / "app", tmp_path / "wsgireload.prom"
    make_app(app_dir, f", metrics_file={str(metrics)!r}, systemd_notify=True")
    notes = Notifications(tmp_path / "notify")
    port = free_port()
    server = Server(gunicorn(app_dir, port), cwd=app_dir, port=port,
                    log_path=tmp_path / "gunicorn.log", env={
                        "NOTIFY_SOCKET": notes.path,
                        "XDG_RUNTIME_DIR": str(private_dir(tmp_path / "run"))})
    servers.append(server)
    try:
        server.start()
        master = server.proc.pid if server.proc is not None else 0
        children = Children(master)
        assert wait_for(metrics.exists, 20), server.log()
        reader = Reader(metrics)
        assert figures(metrics) == (0, 0, 1)
        with Load(port, threads=2, max_seconds=90) as load:
            edited = time.monotonic()
            write(app_dir / "mod.py", "VALUE = 'v2'\n")
            gunicorn_tests.wait_all_workers_serve(load, edited, "v2", WORKERS, timeout=30)
            new_code = time.time()
            assert wait_for(lambda: success(metrics) > 0, 15), metrics.read_text()
            assert figures(metrics) == (1, 0, 1) and abs(success(metrics) - new_code) < 5

            write(app_dir / "mod.py", "import wsgireload_no_such_module\nVALUE = 'v3'\n")
            assert wait_for(lambda: figures(metrics) == (1, 1, 0), 20), server.log()
            assert all(b.endswith(b"value=v2") for b in load.result.bodies_since(time.monotonic()
                                                                                 - 0.5))
            edited = time.monotonic()
            write(app_dir / "mod.py", "VALUE = 'v4'\n")
            gunicorn_tests.wait_all_workers_serve(load, edited, "v4", WORKERS, timeout=30)
            assert wait_for(lambda: figures(metrics) == (2, 1, 1), 15), metrics.read_text()
            assert abs(success(metrics) - time.time()) < 5
            # the last READY=1 comes when the last old worker exits
            assert wait_for(lambda: len(notes.from_workers(master)) >= 6, 15), notes.received
        result = load.result
        reader.stop()
        workers = children.stop()
    finally:
        notes.close()
    assert result.failed == 0, result.errors[:5]
    assert reader.reads > 100 and reader.bad == [], reader.bad[:1]

    sent = notes.from_workers(master)
    kinds = ["RELOADING" if "RELOADING" in f else "READY" if "READY" in f else "?"
             for _, _, f in sent]
    assert kinds == ["RELOADING", "READY"] * 3, sent
    assert {pid for pid, _, _ in sent} <= workers, (sent, workers)  # live workers, not the check
    for _, at, fields in sent[::2]:
        assert abs(int(fields["MONOTONIC_USEC"]) / 1e6 - at) < 2, fields
    statuses = [fields["STATUS"] for _, _, fields in sent[1::2]]
    assert "reloaded" in statuses[0] and "refused" in statuses[1] and "reloaded" in statuses[2]
    assert "wsgireload_no_such_module" in statuses[1]

    # No logging configured by the app: the lines are in gunicorn's log, in its format.
    log = server.log()
    assert re.search(r"\[\d+\] \[INFO\] wsgireload: 1 file changed \(.*mod\.py\); reloading", log)
    assert re.search(r"\[\d+\] \[ERROR\] wsgireload: not reloading, the new code is broken", log)


def test_a_clean_setup_notifies_nothing_and_check_names_no_trap(
        tmp_path: Path, servers: List[Server]) -> None:
    """Also: a HUP's reload ends once every worker is new and ready (the metrics say so)."""
    app_dir, run = tmp_path / "app", private_dir(tmp_path / "run")
    metrics = tmp_path / "wsgireload.prom"
    make_app(app_dir, f", metrics_file={str(metrics)!r}, rollout='all-at-once'")
    notes = Notifications(tmp_path / "notify")
    port = free_port()
    server = Server(gunicorn(app_dir, port), cwd=app_dir, port=port,
                    log_path=tmp_path / "gunicorn.log",
                    env={"NOTIFY_SOCKET": notes.path, "XDG_RUNTIME_DIR": str(run)})
    servers.append(server)
    try:
        server.start()
        master = server.proc.pid if server.proc is not None else 0
        assert wait_for(lambda: bool(_record.read_all(records(run))), 10), server.log()
        with Load(port, threads=2, max_seconds=60) as load:
            edited = time.monotonic()
            write(app_dir / "mod.py", "VALUE = 'v2'\n")
            gunicorn_tests.wait_all_workers_serve(load, edited, "v2", WORKERS, timeout=30)
            new_code = time.time()
            assert wait_for(lambda: "rollout_duration" in metrics.read_text(), 15), server.log()
        text = metrics.read_text()
        assert figures(metrics) == (1, 0, 1), text
        assert abs(success(metrics) - new_code) < 5
        assert 0 < value(text, "wsgireload_last_rollout_duration_seconds") < 10
        assert "Handling signal: hup" in server.log()
        out = check(app_dir, records(run))
    finally:
        notes.close()
    assert notes.from_workers(master) == []
    assert "\ntrap:" not in out, out  # (not "trap" anywhere: a checkout's path may say it)
    assert "wsgireload: trap:" not in server.log(), server.log()


def check(cwd: Path, runtime_dir: str, target: str = "wsgi:application") -> str:
    """`wsgireload check` of the app in ``cwd``, with the records in ``runtime_dir``."""
    proc = subprocess.run(
        [bin_path("wsgireload"), "check", target, "--runtime-dir", runtime_dir],
        cwd=str(cwd), capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), _repo_root()])})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def status(runtime_dir: str, capsys: pytest.CaptureFixture[str]) -> List[Any]:
    """The masters `wsgireload status --json` lists (it removes the records of those gone)."""
    capsys.readouterr()
    assert cli.main(["status", "--json", "--runtime-dir", runtime_dir]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


class NoHttp(Server):
    """A server in its own network namespace: ready once its record names it."""

    def wait_ready(self, path: str = "/", timeout: float = 30.0) -> None:
        pass


def in_new_network(argv: List[str]) -> List[str]:
    """argv in a network namespace of its own, where net.ipv4.tcp_migrate_req is 0."""
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        return argv  # no namespaces here: the host's value decides (see below)
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def test_check_names_each_trap_of_real_servers(tmp_path: Path, servers: List[Server]) -> None:
    run = private_dir(tmp_path / "run")
    env = {"XDG_RUNTIME_DIR": str(run)}
    # gunicorn --preload --max-requests, started in a release reached through `current`.
    release = tmp_path / "releases" / "1"
    make_app(release)
    (tmp_path / "current").symlink_to(release)
    port = free_port()
    preloaded = Server(gunicorn(tmp_path / "current", port, "--preload", "--max-requests", "1000"),
                       cwd=tmp_path / "current", port=port, log_path=tmp_path / "preload.log",
                       env=env, pythonpath=[_repo_root()])
    servers.append(preloaded)
    preloaded.start()
    # gunicorn --reuse-port with tcp_migrate_req = 0
    reuse_dir = tmp_path / "reuse"
    make_app(reuse_dir)
    port = free_port()
    argv = in_new_network(gunicorn(reuse_dir, port, "--reuse-port"))
    reuse = NoHttp(argv, cwd=reuse_dir, port=port, log_path=tmp_path / "reuse.log", env=env)
    servers.append(reuse)
    reuse.start()
    # uWSGI without --lazy-apps
    uwsgi_dir = tmp_path / "uwsgi" / "app"
    make_app(uwsgi_dir)
    port = free_port()
    uwsgi = UwsgiServer(uwsgi_argv(port, uwsgi_dir), cwd=uwsgi_dir, port=port,
                        log_path=tmp_path / "uwsgi.log", env=env)
    servers.append(uwsgi)
    uwsgi.start()

    def traps() -> Dict[Any, Set[str]]:
        return {(d["server"], d["master"]): set(_record.section(d, "traps"))
                for d in _record.read_all(records(run)) if _record.section(d, "traps")}

    expected_reuse = uses_namespace(argv) or migrate_req() == "0"
    masters = {("gunicorn", preloaded.proc.pid): {"preload-error", "max-requests", "release-link"},
               ("gunicorn", reuse.proc.pid): {"reuse-port"} if expected_reuse else set(),
               ("uwsgi", uwsgi.proc.pid): {"uwsgi-full-reload"}}
    expected = {k: v for k, v in masters.items() if v}
    assert wait_for(lambda: traps() == expected, 20), (traps(), expected, reuse.log())
    out = check(tmp_path / "current", records(run))
    lines = [line for line in out.splitlines() if line.startswith("trap:")]
    assert len(lines) == sum(len(v) for v in expected.values()), out
    for needle in ("--preload", "--max-requests-jitter 100", f"--chdir {tmp_path / 'current'}",
                   "--lazy-apps") + (("tcp_migrate_req=1",) if expected_reuse else ()):
        assert any(needle in line for line in lines), (needle, out)
    # ...and said once per master in the server's own log, at WARNING
    assert "[WARNING] wsgireload: trap: gunicorn --max-requests 1000" in preloaded.log()
    shutil.rmtree(tmp_path / "releases", ignore_errors=True)


def uses_namespace(argv: List[str]) -> bool:
    return argv[0] == "unshare"


def migrate_req() -> str:
    return Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip()
