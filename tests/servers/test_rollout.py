"""Real gunicorn, an app whose import takes 2 s: the rollout replaces one worker at a time, each
new one ready before an old one leaves, so no visitor waits for a boot.

Sync workers, 4 client threads opening a new connection per request, one edit of an imported
module. The worker processes are sampled from /proc every 50 ms.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pytest

from wsgireload._system import SYSTEM

from . import test_field_deployments as field
from . import test_gunicorn as gunicorn_tests
from .harness import ChildSampler, Load, Server, free_port, wait_for, write

nobody_tree = field.nobody_tree  # a fixture: a directory nobody can read

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform != "linux", reason="/proc")]

BOOT = 2.0  # seconds the app's import takes
INTERVAL, SETTLE = 0.2, 0.5
SLOWEST = 0.5  # seconds: the slowest request started after the edit

APP = """\
import fcntl, logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [%(process)d] wsgireload-test %(levelname)s %(message)s")


def import_delay(path={delays!r}, default={boot!r}):
    # Each import (a worker's, the boot check's) takes the next delay listed, else the default.
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        delays = handle.read().split()
        handle.seek(0)
        handle.truncate()
        handle.write(" ".join(delays[1:]))
    return float(delays[0]) if delays else default


time.sleep(import_delay())
import mod
from wsgireload import Reloader


def app(environ, start_response):
    body = ("pid=%d value=%s" % (os.getpid(), mod.VALUE)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = Reloader(app, interval={interval}, settle={settle}, boot_timeout={timeout},
                       rollout={rollout!r})
"""


def make_app(directory: Path, *, timeout: float = 30.0, rollout: str = "one-by-one") -> None:
    write(directory / "mod.py", "VALUE = 'v1'\n")
    write(directory / "delays.txt", "")
    os.chmod(directory / "delays.txt", 0o666)  # workers running as nobody take delays too
    write(directory / "wsgi.py", APP.format(
        delays=str(directory / "delays.txt"), boot=BOOT, interval=INTERVAL, settle=SETTLE,
        timeout=timeout, rollout=rollout,
    ))


def new_code_within(workers: int) -> float:
    """settle + N x (boot + 1 s), plus the boot check's own boot before the first signal."""
    return INTERVAL + SETTLE + (workers + 1) * (BOOT + 1.0)


@dataclass
class Outcome:
    failed: int
    errors: List[str]
    slowest: float
    peak: int
    took: float
    replaced: int  # workers booted for the edit
    old: set
    new: set


def edit_under_load(
    server: Server, app_dir: Path, workers: int, value: str, previous: str,
    during: Optional[Callable[[Load], None]] = None, label: str = "",
) -> Outcome:
    """One edit of mod.py under load; returns what the clients and /proc saw."""
    master = server.proc.pid if server.proc is not None else 0
    assert wait_for(lambda: len(SYSTEM.children(master)) == workers, 20), server.log()
    booted = gunicorn_tests.boots(server)
    with Load(server.port, threads=4, max_seconds=90) as load:
        served = lambda: gunicorn_tests.pids_serving(load.result.bodies_since(0.0), previous)  # noqa: E731
        assert wait_for(lambda: len(served()) >= workers, 20), server.log()
        old = served()
        sampler = ChildSampler(master)
        edited = time.monotonic()
        write(app_dir / "mod.py", f"VALUE = {value!r}\n")
        os.chmod(app_dir / "mod.py", 0o644)
        if during is not None:
            during(load)
        took = gunicorn_tests.wait_all_workers_serve(
            load, edited, value, workers, timeout=new_code_within(workers) + 15
        )
        assert wait_for(lambda: len(SYSTEM.children(master)) == workers, 20), server.log()
        gunicorn_tests.assert_stays(workers, lambda: len(SYSTEM.children(master)), 1.0)
        peak = sampler.stop()
    result = load.stop()
    outcome = Outcome(
        result.failed, result.errors, result.slowest_since(edited), peak, took,
        gunicorn_tests.boots(server) - booted, old,
        gunicorn_tests.pids_serving(result.bodies_since(edited), value),
    )
    print(
        f"\n{label}: {result.ok + result.failed} requests, {result.failed} failed; slowest "
        f"started after the edit {outcome.slowest:.3f}s; peak {peak} worker processes; new "
        f"code everywhere {took:.2f}s after the edit; {outcome.replaced} workers booted"
    )
    return outcome


def assert_smooth(outcome: Outcome, workers: int) -> None:
    assert outcome.failed == 0, outcome.errors[:5]
    assert outcome.slowest <= SLOWEST, f"a request took {outcome.slowest:.2f}s"
    assert outcome.peak <= workers + 1, f"{outcome.peak} worker processes at once"
    assert outcome.replaced == workers, f"{outcome.replaced} boots for {workers} workers"
    assert len(outcome.new) == workers and not outcome.new & outcome.old, (outcome.old, outcome.new)
    assert outcome.took <= new_code_within(workers), f"new code everywhere after {outcome.took}s"


def start(tmp_path: Path, servers: List[Server], workers: int, extra: Sequence[str] = (),
          **app: object) -> Server:
    make_app(tmp_path, **app)  # type: ignore[arg-type]
    server = gunicorn_tests.gunicorn(tmp_path, free_port(), workers=workers, extra=extra)
    servers.append(server.start(timeout=30 + BOOT * workers))
    return server


def record(tmp_path: Path, server: Server) -> dict:
    assert server.proc is not None
    found = glob.glob(str(tmp_path / f"wsgireload-{os.getuid()}" /
                          f"gunicorn-{server.proc.pid}-*.master.json"))
    assert len(found) == 1, found
    return json.loads(Path(found[0]).read_text())


def signals(server: Server, name: str) -> int:
    return server.log().count(f"Handling signal: {name}")


def test_three_workers_rollout_then_scanner_killed_then_a_worker_never_ready(
    tmp_path: Path, servers: List[Server]
) -> None:
    # --graceful-timeout: at the end a worker is still in its 30 s import (step 3), and gunicorn's
    # stop would wait for it 30 s by default.
    server = start(tmp_path, servers, 3, ("--graceful-timeout", "2"), timeout=BOOT + 2.0)
    # 1. One edit: each worker replaced once, one at a time.
    assert_smooth(edit_under_load(server, tmp_path, 3, "v2", "v1", label="3 workers"), 3)
    assert (signals(server, "ttin"), signals(server, "ttou"), signals(server, "hup")) == (3, 3, 0)

    # 2. The scanner is SIGKILLed once the rollout has retired one old worker.
    def kill_scanner(load: Load) -> None:
        assert wait_for(lambda: signals(server, "ttou") >= 4, 15), server.log()
        scanner = int(record(tmp_path, server)["lease"]["pid"])
        # The kill happens with no request in flight: a SIGKILLed worker loses the request it
        # was serving (the kernel resets it), which is the test's doing, not the rollout's.
        with load.held():
            os.kill(scanner, signal.SIGKILL)
        print(f"\nkilled the scanner {scanner}")

    outcome = edit_under_load(server, tmp_path, 3, "v3", "v2", kill_scanner, "scanner killed")
    assert outcome.failed == 0, outcome.errors[:5]
    assert outcome.peak <= 4
    assert signals(server, "ttin") == signals(server, "ttou")  # count where it began

    # 3. The boot check passes (its import takes 0.5 s), the new worker's never ends in time.
    write(tmp_path / "delays.txt", "0.5 30")
    ttin = signals(server, "ttin")
    with Load(server.port, threads=4, max_seconds=60) as load:
        write(tmp_path / "mod.py", "VALUE = 'v4'\n")
        assert wait_for(lambda: "rollout of reload 3 stopped" in server.log(), 20), server.log()
        master = server.proc.pid if server.proc is not None else 0
        assert wait_for(lambda: len(SYSTEM.children(master)) == 3, 10)  # the retired one left
        gunicorn_tests.assert_stays(3, lambda: len(SYSTEM.children(master)), 2.0)
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    assert (signals(server, "ttin"), signals(server, "ttou")) == (ttin + 1, ttin + 1)
    assert server.log().count("was not ready within boot_timeout") == 1


def test_one_worker_rollout_has_no_gap(tmp_path: Path, servers: List[Server]) -> None:
    server = start(tmp_path, servers, 1)
    assert_smooth(edit_under_load(server, tmp_path, 1, "v2", "v1", label="1 worker"), 1)
    assert (signals(server, "ttin"), signals(server, "ttou"), signals(server, "hup")) == (1, 1, 0)


def test_nobody_workers_restart_one_at_a_time(
    tmp_path: Path, servers: List[Server], nobody_tree: Path
) -> None:
    server, app_dir = field.nobody_gunicorn(tmp_path, nobody_tree, make_app)
    servers.append(server)
    outcome = edit_under_load(server, app_dir, 3, "v2", "v1", label="--user nobody, 3 workers")
    assert outcome.failed == 0, outcome.errors[:5]
    assert outcome.slowest <= SLOWEST, f"a request took {outcome.slowest:.2f}s"
    assert outcome.replaced == 3 and len(outcome.new) == 3 and not outcome.new & outcome.old
    assert server.log().count("each worker restarts itself after its response") == 1


def test_a_changed_gunicorn_config_file_is_reloaded_with_the_hup_that_rereads_it(
    tmp_path: Path, servers: List[Server]
) -> None:
    conf = tmp_path / "gunicorn_conf.py"
    write(conf, "graceful_timeout = 15\n")
    server = start(tmp_path, servers, 2, extra=["-c", str(conf)])
    master = server.proc.pid if server.proc is not None else 0
    assert wait_for(lambda: len(SYSTEM.children(master)) == 2, 20)
    write(conf, "graceful_timeout = 16\n")
    assert wait_for(lambda: signals(server, "hup") == 1, 20), server.log()
    assert wait_for(lambda: gunicorn_tests.boots(server) == 4, 20), server.log()
    log = server.log()
    assert f"the gunicorn configuration file {conf} changed: reloading with SIGHUP" in log
    assert signals(server, "ttin") == 0
