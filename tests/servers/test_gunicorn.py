"""Real gunicorn under load: one graceful reload per deploy, 0 failed requests, no storms.

Worker boots are counted from gunicorn's own log line "Booting worker with pid".
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

import pytest

from .harness import (
    Load,
    Server,
    free_port,
    get,
    gunicorn_no_control_socket,
    wait_for,
    write,
    xfail_old_gthread_resets,
)

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")]

BOOT = "Booting worker with pid"
SETTLE_OPTS = "interval=0.2, settle=0.5"

APP = """\
import logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [%(process)d] wsgireload-test %(levelname)s %(message)s")
import {modules}
from wsgireload import Reloader

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        start_response("200 OK", [("Content-Type", "text/plain")])
        def stream():
            for _ in range(20):
                yield b"."
                time.sleep(0.1)
            yield ("pid=%d end=%r" % (os.getpid(), time.time())).encode()
        return stream()
    body = ("pid=%d value=%s" % (os.getpid(), {value_expr})).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

{extra}
application = Reloader(app, {settle}, action={action})
"""


def make_app(
    directory: Path,
    *,
    action: str = "'auto'",
    modules: str = "mod",
    value_expr: str = "mod.VALUE",
    extra: str = "",
    value: str = "v1",
) -> None:
    write(directory / "mod.py", f"VALUE = {value!r}\n")
    write(
        directory / "wsgi.py",
        APP.format(
            modules=modules, value_expr=value_expr, extra=extra, settle=SETTLE_OPTS, action=action
        ),
    )


def gunicorn(
    tmp_path: Path,
    port: int,
    *,
    workers: int = 3,
    extra: Sequence[str] = (),
    chdir: Optional[Path] = None,
    name: str = "gunicorn",
) -> Server:
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        *gunicorn_no_control_socket(),
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "15",
        "--timeout",
        "30",
        *extra,
        "wsgi:application",
    ]
    if chdir is not None:
        argv[3:3] = ["--chdir", str(chdir)]
    env = {"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": ""}  # private reload records per test
    # cwd stays outside any release: `python -m` puts the *resolved* cwd first on sys.path,
    # which would pin imports to the old release whatever the symlink says.
    return Server(argv, cwd=tmp_path, port=port, log_path=tmp_path / f"{name}.log", env=env)


def boots(server: Server) -> int:
    return server.log().count(BOOT)


def pids_serving(bodies: List[bytes], value: str) -> Set[str]:
    return {body.split()[0].decode() for body in bodies if body.endswith(f"value={value}".encode())}


def serve_everywhere(load: Load, workers: int, value: str = "v1") -> None:
    """Wait until each of ``workers`` workers has served ``value`` to ``load``."""
    assert wait_for(
        lambda: len(pids_serving(load.result.bodies_since(0.0), value)) == workers, 20
    ), f"not every one of {workers} workers served {value}"


def wait_all_workers_serve(
    load: Load, since: float, value: str, workers: int, timeout: float = 10.0
) -> float:
    """Seconds until every one of ``workers`` new workers served ``value`` and none the old."""

    def done() -> bool:
        recent = load.result.bodies_since(time.monotonic() - 0.3)
        return (
            len(pids_serving(load.result.bodies_since(since), value)) >= workers
            and bool(recent)
            and all(b.endswith(f"value={value}".encode()) for b in recent)
        )

    assert wait_for(done, timeout), (
        f"new code {value!r} not served by {workers} workers within {timeout}s: "
        f"{sorted(set(load.result.bodies_since(since)))[:10]}"
    )
    return time.monotonic() - since


def assert_stays(predicate_value: int, read: "callable", seconds: float) -> None:  # type: ignore[valid-type]
    """Negative checks cannot be polled: watch for ``seconds`` that a count does not move."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert read() == predicate_value, f"count moved to {read()}, expected {predicate_value}"
        time.sleep(0.1)


# -- issue 2 smoke test ---------------------------------------------------------------------
CALLBACK = """
def record(changes):
    with open(os.environ["CALLBACK_LOG"], "a") as handle:
        handle.write("%d %r\\n" % (os.getpid(), time.time()))
"""


def test_callback_runs_in_each_worker_after_the_response_in_flight(
    tmp_path: Path, servers: List[Server]
) -> None:
    make_app(tmp_path, action="record", extra=CALLBACK)
    callback_log = tmp_path / "callbacks.txt"
    port = free_port()
    server = gunicorn(tmp_path, port, workers=2)
    server.env["CALLBACK_LOG"] = str(callback_log)
    servers.append(server.start())
    with Load(port, threads=2, pause=0.02) as load:
        serve_everywhere(load, 2)
        slow: Dict[str, bytes] = {}
        import threading

        slow_thread = threading.Thread(target=lambda: slow.update(body=get(port, "/slow")[1]))
        slow_thread.start()
        time.sleep(0.3)  # let /slow start streaming before the change lands
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        slow_thread.join(15)
        assert wait_for(
            lambda: callback_log.exists() and len(callback_log.read_text().split("\n")) > 2, 10
        )
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    lines = [line.split() for line in callback_log.read_text().splitlines()]
    by_pid = {pid: float(when) for pid, when in lines}
    assert len(lines) == 2 and len(by_pid) == 2, lines  # each worker noticed it, once
    tail = slow["body"].split(b"pid=")[1].split()
    slow_pid, slow_end = tail[0].decode(), float(tail[1].split(b"=")[1])
    assert slow_pid in by_pid, (slow_pid, lines)
    assert by_pid[slow_pid] >= slow_end, "the callback ran before the in-flight response ended"
    assert boots(server) == 2  # a callback reloads nothing


# -- issue 3: one graceful reload per deploy ---------------------------------------------------
@pytest.mark.parametrize(
    "worker_args",
    [[], ["-k", "gthread", "--threads", "4"], ["-k", "gevent"]],
    ids=["sync", "gthread", "gevent"],
)
def test_one_edit_under_load_reloads_each_worker_once(
    tmp_path: Path, servers: List[Server], worker_args: List[str]
) -> None:
    make_app(tmp_path)
    port = free_port()
    server = gunicorn(tmp_path, port, extra=worker_args)
    servers.append(server.start())
    assert wait_for(lambda: boots(server) == 3, 10)
    with Load(port, threads=4) as load:
        serve_everywhere(load, 3)
        t0 = time.monotonic()
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        took = wait_all_workers_serve(load, t0, "v2", 3)
        assert_stays(6, lambda: boots(server), 1.5)  # 3 new workers, never 9
    result = load.stop()
    print(
        f"\n{worker_args or 'sync'}: new code on every worker after {took:.2f}s; "
        f"{result.ok} ok, {result.failed} failed"
    )
    log = server.log()  # one rollout per master: one new worker at a time, no HUP
    assert log.count("reloading with auto: gunicorn: one new worker ready before each") == 1
    assert log.count("Handling signal: ttin") == 3 and "Handling signal: hup" not in log
    xfail_old_gthread_resets(result, gthread="gthread" in worker_args)
    assert result.failed == 0, result.errors[:5]


def test_restart_worker_replaces_each_worker_once(tmp_path: Path, servers: List[Server]) -> None:
    make_app(tmp_path, action="'restart-worker'")
    port = free_port()
    server = gunicorn(tmp_path, port)
    servers.append(server.start())
    with Load(port, threads=4) as load:
        serve_everywhere(load, 3)
        t0 = time.monotonic()
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        took = wait_all_workers_serve(load, t0, "v2", 3)
        assert_stays(6, lambda: boots(server), 1.0)
    result = load.stop()
    print(f"\nrestart-worker: new code on every worker after {took:.2f}s; {result.ok} ok")
    assert result.failed == 0, result.errors[:5]
    assert "Hang up" not in server.log()  # the master was never signalled


def test_a_deploy_of_100_modules_over_2s_reloads_each_worker_once(
    tmp_path: Path, servers: List[Server]
) -> None:
    names = [f"m{n:03d}" for n in range(100)]
    for name in names:
        write(tmp_path / "pkg" / f"{name}.py", "VALUE = 'v1'\n")
    write(tmp_path / "pkg" / "__init__.py", "")
    make_app(
        tmp_path,
        modules=", ".join(f"pkg.{name}" for name in names),
        value_expr="'-'.join(sorted({%s}))" % ", ".join(f"pkg.{n}.VALUE" for n in names),
    )
    port = free_port()
    server = gunicorn(tmp_path, port)
    servers.append(server.start())
    with Load(port, threads=4) as load:
        serve_everywhere(load, 3)
        t0 = time.monotonic()
        for name in names:  # one file every 20 ms: a slow rsync
            write(tmp_path / "pkg" / f"{name}.py", "VALUE = 'v2'\n")
            time.sleep(0.02)
        wait_all_workers_serve(load, t0, "v2", 3, timeout=12)
        assert_stays(6, lambda: boots(server), 1.5)
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    assert not any(b.endswith(b"v1-v2") for b in result.bodies_since(t0)[-50:])


def test_a_symlink_swap_deploy_serves_the_new_release(
    tmp_path: Path, servers: List[Server]
) -> None:
    releases = tmp_path / "releases"
    make_app(releases / "1", value="r1")
    make_app(releases / "2", value="r2")
    current = tmp_path / "current"
    current.symlink_to(releases / "1")
    port = free_port()
    server = gunicorn(tmp_path, port, chdir=current)
    servers.append(server.start())
    with Load(port, threads=4) as load:
        assert wait_for(lambda: len(pids_serving(load.result.bodies_since(0.0), "r1")) == 3, 10)
        t0 = time.monotonic()
        tmp_link = tmp_path / "current.tmp"
        tmp_link.symlink_to(releases / "2")
        os.replace(tmp_link, current)  # the atomic switch deploy tools do
        wait_all_workers_serve(load, t0, "r2", 3)
        assert_stays(6, lambda: boots(server), 1.5)
    result = load.stop()
    assert result.failed == 0, result.errors[:5]


def test_a_syntax_error_never_reloads_and_the_fix_does(
    tmp_path: Path, servers: List[Server]
) -> None:
    make_app(tmp_path)
    port = free_port()
    server = gunicorn(tmp_path, port)
    servers.append(server.start())
    with Load(port, threads=4) as load:
        serve_everywhere(load, 3)
        write(tmp_path / "mod.py", "VALUE = 'broken\n")
        # one worker scans and validates for the master: one refusal
        assert wait_for(lambda: server.log().count("the new code is broken") >= 1, 10)
        t_broken = time.monotonic()
        assert_stays(3, lambda: boots(server), 1.0)
        assert server.log().count("the new code is broken") == 1
        assert all(b.endswith(b"value=v1") for b in load.result.bodies_since(t_broken))
        t0 = time.monotonic()
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        wait_all_workers_serve(load, t0, "v2", 3)
        assert_stays(6, lambda: boots(server), 1.0)
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    assert "mod.py:1:" in server.log()


@pytest.mark.parametrize(
    "action, phrase",
    [("auto", "auto: gunicorn: nothing"), ("restart-worker", "restart-worker: nothing")],
)
def test_preload_never_storms_and_says_why_once(
    tmp_path: Path, servers: List[Server], action: str, phrase: str
) -> None:
    make_app(tmp_path, action=repr(action))
    port = free_port()
    server = gunicorn(tmp_path, port, extra=["--preload"])
    servers.append(server.start())
    with Load(port, threads=4) as load:
        serve_everywhere(load, 3)
        t0 = time.monotonic()
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        # the master's scanner reaches the point where it would reload, and does nothing
        assert wait_for(
            lambda: server.log().count(f"reloading with {phrase}") >= 1, 10
        )
        assert_stays(3, lambda: boots(server), 2.0)
        assert server.log().count(f"reloading with {phrase}") == 1
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    assert all(b.endswith(b"value=v1") for b in result.bodies_since(t0))  # documented outcome
    assert server.log().count("gunicorn runs with --preload") == 1


ORPHAN_SCRIPT = r"""
import ctypes, os, signal, sys, time
hups = []
signal.signal(signal.SIGHUP, lambda *a: hups.append(1))
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
out = sys.argv[1]
ready_r, ready_w = os.pipe()
master = os.fork()
if master == 0:
    worker = os.fork()
    if worker == 0:
        import logging
        logging.basicConfig(filename=out + ".log", level=logging.INFO)
        from wsgireload.actions import GunicornAction, ProcessContext
        from wsgireload.policy import ChangeSet
        action = GunicornAction(server_names=("python",))
        action.setup(ProcessContext(os.getpid(), os.getpid(), {"gunicorn.socket": None}))
        parent = os.getppid()
        os.write(ready_w, b"x")  # the master was recorded alive: now it may die
        while os.getppid() == parent:  # wait for the master to die
            time.sleep(0.01)
        action(ChangeSet(("x.py",), "f", 0.0, 0.0))
        os._exit(0)
    os.read(ready_r, 1)
    os._exit(0)  # the master dies: its worker is orphaned to us
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
    except InterruptedError:
        pass
with open(out, "w") as handle:
    handle.write(str(len(hups)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux")
def test_an_orphaned_worker_signals_nobody_real_processes(tmp_path: Path) -> None:
    import subprocess

    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN_SCRIPT)
    out = tmp_path / "hups"
    env = dict(
        os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), TMPDIR=str(tmp_path)
    )
    subprocess.run([sys.executable, str(script), str(out)], env=env, timeout=30, check=True)
    assert out.read_text() == "0"
    log = Path(str(out) + ".log").read_text()
    assert "no longer this worker's parent" in log
