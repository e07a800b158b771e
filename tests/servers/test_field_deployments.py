"""Real servers deployed the way production runs them: as pid 1 of a container, and gunicorn
as root with unprivileged workers (``--user nobody``). One edit under load in each.

Containers are reproduced with ``unshare --pid --fork --mount-proc`` (root): inside, the server
is pid 1 and ``/proc`` shows the namespace, as under Docker without an init.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Sequence, Set, Tuple

import pytest

from wsgireload._system import read_process

from . import test_gunicorn as gunicorn_tests
from . import test_uwsgi as uwsgi_tests
from .harness import (
    HOST,
    Load,
    Server,
    _repo_root,
    assert_no_failed_requests,
    bin_path,
    free_port,
    wait_for,
    write,
)

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform != "linux", reason="Linux")]

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]  # the server becomes pid 1
WORKERS = 3
NEW_CODE_WITHIN = 10.0  # seconds from the edit until every worker serves the new code


def pids(bodies: Sequence[bytes], value: str) -> Set[str]:
    return gunicorn_tests.pids_serving(list(bodies), value)


def gunicorn_reload_under_load(server: Server, app_dir: Path, label: str) -> Tuple[float, int]:
    """One edit of mod.py under load: 0 failed, each worker replaced once, new code everywhere.

    Returns (seconds until every worker served the new code, worker boots).
    """
    assert wait_for(lambda: gunicorn_tests.boots(server) == WORKERS, 20), server.log()
    with Load(server.port, threads=4, max_seconds=60) as load:
        assert wait_for(lambda: len(pids(load.result.bodies_since(0.0), "v1")) == WORKERS, 20)
        old = pids(load.result.bodies_since(0.0), "v1")
        edited = time.monotonic()
        write(app_dir / "mod.py", "VALUE = 'v2'\n")
        os.chmod(app_dir / "mod.py", 0o644)
        took = gunicorn_tests.wait_all_workers_serve(load, edited, "v2", WORKERS, NEW_CODE_WITHIN)
        gunicorn_tests.assert_stays(2 * WORKERS, lambda: gunicorn_tests.boots(server), 1.5)
    result = load.stop()
    new = pids(result.bodies_since(edited), "v2")
    booted = gunicorn_tests.boots(server)
    print(
        f"\n{label}: {result.ok + result.failed} requests, {result.failed} failed; new code on "
        f"every worker {took:.2f}s after the edit; {booted} worker boots ({booted - WORKERS} new)"
    )
    assert result.failed == 0, result.errors[:5]
    assert len(new) == WORKERS and not new & old, (old, new)  # each worker replaced, once
    return took, booted


# -- containers: the master is pid 1 ----------------------------------------------------------
def test_gunicorn_as_pid_1_reloads_each_worker_once(
    tmp_path: Path, servers: List[Server]
) -> None:
    gunicorn_tests.make_app(tmp_path)
    server = gunicorn_tests.gunicorn(tmp_path, free_port())
    server.argv = [*UNSHARE, *server.argv]
    servers.append(server.start())
    assert "[1] [INFO] Starting gunicorn" in server.log()  # the master is pid 1
    gunicorn_reload_under_load(server, tmp_path, "gunicorn as pid 1")
    # One rollout of master 1, driven by the workers ("sending SIGTTIN" itself is DEBUG).
    log = server.log()
    assert log.count("Handling signal: ttin") == WORKERS == log.count("Handling signal: ttou")
    assert log.count("one new worker ready before each old one leaves (master 1)") == 1, log


class NamespacedUwsgi(Server):
    """uWSGI under unshare: SIGINT to the whole group is uWSGI's immediate shutdown (unshare
    itself, the group leader, does not pass a signal on to the server)."""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        super().stop()


def test_uwsgi_master_as_pid_1_reloads_each_worker_once(
    tmp_path: Path, servers: List[Server]
) -> None:
    app_dir = uwsgi_tests.make_app(tmp_path)
    port = free_port()
    argv = uwsgi_tests.uwsgi_argv(port, app_dir, binary=[*UNSHARE, bin_path("uwsgi")])
    server = NamespacedUwsgi(
        argv, cwd=app_dir, port=port, log_path=tmp_path / "uwsgi.log",
        env={"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": ""},
    )
    servers.append(server)
    server.start()
    assert "spawned uWSGI master process (pid: 1)" in server.log()
    seen: Set[bytes] = set()

    def all_workers_seen() -> bool:
        seen.update(body.split()[-1] for _, body in load.result.bodies)
        return len(seen) >= WORKERS

    with uwsgi_tests.TimedLoad(port, threads=4, max_seconds=60) as load:
        assert wait_for(all_workers_seen, 20), f"workers seen: {seen}"
        edited = time.monotonic()
        write(app_dir / "mod.py", uwsgi_tests.module("v2"))
        uwsgi_tests.wait_served_everywhere(load, b"v2", since=edited, workers=WORKERS)
        took = time.monotonic() - edited
        last_old = max(when for when, body in load.result.bodies if body.startswith(b"v1 "))
        booted = uwsgi_tests.stable_boots(server, 2 * WORKERS, timeout=10)
    result = load.stop()
    log = server.log()
    print(
        f"\nuWSGI --master as pid 1: {result.ok + result.failed} requests, {result.failed} "
        f"failed; new code on every worker {took:.2f}s after the edit (last old response "
        f"{last_old - edited:.2f}s); {booted} worker boots; max latency {load.max_latency:.3f}s"
    )
    assert_no_failed_requests(result, uwsgi_full_reloads=1)
    assert took < NEW_CODE_WITHIN, f"new code everywhere only after {took:.2f}s"
    assert booted == 2 * WORKERS, f"{booted} worker boots for one edit"
    assert log.count("binary reloading uWSGI") == 1  # one full reload of the stack
    assert log.count("spawned uWSGI master process (pid: 1)") == 2  # re-executed as pid 1


# -- gunicorn as root, workers as nobody --------------------------------------------------------
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike a pyenv under /root
CACHE = Path("/var/tmp/wsgireload-tests")


def _readable_by_all(top: Path) -> None:
    """Whatever the umask was: directories o+rx, files o+r (o+x where the owner has x)."""
    for root, dirs, files in os.walk(top):
        for name in [root, *(os.path.join(root, d) for d in dirs)]:
            os.chmod(name, os.stat(name).st_mode | 0o755)
        for name in (os.path.join(root, f) for f in files):
            if not os.path.islink(name):
                mode = os.stat(name).st_mode
                os.chmod(name, mode | 0o044 | (0o011 if mode & 0o100 else 0))


def nobody_venv() -> Path:
    """A virtualenv on the system Python with gunicorn, readable by nobody; cached.

    ``$WSGIRELOAD_NOBODY_VENV`` names it; else ``/var/tmp/wsgireload-tests/nobody-venv-<X.Y>``
    (outside /root, whose Pythons nobody cannot read). Built on first use, so a fresh machine
    needs nothing prepared.
    """
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is needed: workers running as nobody must read Python")
    version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()
    venv = Path(os.environ.get("WSGIRELOAD_NOBODY_VENV") or CACHE / f"nobody-venv-{version}")
    probe = [str(venv / "bin" / "python"), "-c", "import gunicorn"]
    if not venv.parent.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)  # (two test processes may race here)
        os.chmod(venv.parent, 0o755)  # whatever the umask: nobody must reach the venv
    with open(venv.with_name(f"{venv.name}.lock"), "a") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if venv.exists() and subprocess.run(probe, capture_output=True, timeout=30).returncode:
            shutil.rmtree(venv)  # half-built or broken: build afresh
        if not venv.exists():
            building = venv.with_name(f"{venv.name}.building-{os.getpid()}")
            shutil.rmtree(building, ignore_errors=True)
            try:
                subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(building)], check=True,
                               capture_output=True, timeout=120)
                subprocess.run([str(building / "bin" / "pip"), "install", "-q", "gunicorn"],
                               check=True, capture_output=True, timeout=300)
            except subprocess.CalledProcessError as exc:
                shutil.rmtree(building, ignore_errors=True)
                pytest.fail(f"cannot build {venv}: {exc}\n{exc.stderr!r}")
            _readable_by_all(building)
            os.rename(building, venv)  # `bin/python` links to the system one: no paths inside
    return venv


@pytest.fixture
def nobody_tree() -> Iterator[Path]:
    """A 0755 directory outside /root and pytest's 0700 tmp dir, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="wsgireload-nobody-", dir="/var/tmp"))
    try:
        os.chmod(base, 0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def nobody_gunicorn(
    tmp_path: Path, nobody_tree: Path, make_app: Callable[[Path], None], workers: int = WORKERS
) -> Tuple[Server, Path]:
    """gunicorn as root with ``--user nobody --group nogroup`` workers, serving the app that
    ``make_app`` writes into a directory nobody can read; (server started, app directory)."""
    venv = nobody_venv()
    python = str(venv / "bin" / "python")
    site, app_dir, run = nobody_tree / "site", nobody_tree / "app", nobody_tree / "tmp"
    shutil.copytree(Path(_repo_root()) / "wsgireload", site / "wsgireload",
                    ignore=shutil.ignore_patterns("__pycache__"))
    make_app(app_dir)
    run.mkdir()
    os.chown(run, 65534, 65534)  # the workers' TMPDIR: their private reload records go here
    os.chmod(run, 0o700)
    _readable_by_all(site)
    _readable_by_all(app_dir)
    has_control_socket = subprocess.run(
        [python, "-c", "import gunicorn.config as c; print(hasattr(c, 'ControlSocket'))"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip() == "True"
    port = free_port()
    argv = [
        python, "-m", "gunicorn",
        *(["--no-control-socket"] if has_control_socket else []),
        "-w", str(workers),
        "-b", f"{HOST}:{port}",
        "--graceful-timeout", "15",
        "--timeout", "30",
        "--user", "nobody",
        "--group", "nogroup",
        "wsgi:application",
    ]
    server = Server(
        argv, cwd=app_dir, port=port, log_path=tmp_path / "gunicorn.log",
        env={"TMPDIR": str(run), "XDG_RUNTIME_DIR": ""},
        pythonpath=[str(app_dir), str(site)],  # this repository is not nobody's to read
    )
    return server.start(timeout=60), app_dir


def test_gunicorn_root_master_with_nobody_workers_restarts_each_worker_once(
    tmp_path: Path, servers: List[Server], nobody_tree: Path
) -> None:
    server, app_dir = nobody_gunicorn(tmp_path, nobody_tree, gunicorn_tests.make_app)
    servers.append(server)
    master = server.proc.pid if server.proc is not None else 0
    master_info = read_process(master)
    assert master_info is not None and master_info.uid == 0, master_info
    gunicorn_reload_under_load(server, app_dir, "gunicorn root master, --user nobody workers")
    log = server.log()
    worker_pids = {
        int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if gunicorn_tests.BOOT in line
    }
    alive = [info for info in map(read_process, worker_pids) if info is not None]
    assert len(alive) == WORKERS and all(info.uid == 65534 for info in alive), alive
    assert log.count("each worker restarts itself after its response") == 1, log  # once
    assert "PermissionError" not in log and "Operation not permitted" not in log
