"""Real gunicorn, one engine per master: one scanner, one validation, one log line and one
reload per deploy, reloads that need no traffic, and ``wsgireload status`` showing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from .harness import Load, Server, free_port, get, wait_for, write
from .test_gunicorn import (
    assert_stays,
    boots,
    gunicorn,
    make_app,
    serve_everywhere,
    wait_all_workers_serve,
)

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")]

SETTLE, INTERVAL = 0.5, 0.2  # the test app's options (test_gunicorn.SETTLE_OPTS)


def lines(server: Server, level: str) -> List[str]:
    """The app's log lines from wsgireload at ``level``."""
    tag = f"wsgireload-test {level} wsgireload:"
    return [line for line in server.log().splitlines() if tag in line]


def status(tmp_path: Path, *args: str) -> str:
    """``wsgireload status`` as the operator runs it, seeing the servers' records."""
    env = dict(os.environ, TMPDIR=str(tmp_path), XDG_RUNTIME_DIR="")
    proc = subprocess.run(
        [sys.executable, "-m", "wsgireload", "status", *args],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    return proc.stdout


def status_json(tmp_path: Path) -> List[Dict[str, Any]]:
    return json.loads(status(tmp_path, "--json"))  # type: ignore[no-any-return]


def started(tmp_path: Path, servers: List[Server], workers: int, action: str = "auto") -> Server:
    """gunicorn with the test app and ``workers`` sync workers, booted."""
    make_app(tmp_path, action=repr(action))
    server = gunicorn(tmp_path, free_port(), workers=workers)
    servers.append(server.start())
    assert wait_for(lambda: boots(server) == workers, 15)
    return server


def scanner_of(tmp_path: Path) -> Any:
    """The pid that scans for the (only) master, None while there is no record or lease."""
    masters = status_json(tmp_path)
    return masters[0]["scanner"] if masters else None


def test_six_workers_one_broken_deploy_then_its_fix_one_line_each(
    tmp_path: Path, servers: List[Server]
) -> None:
    server = started(tmp_path, servers, 6)
    with Load(server.port, threads=6) as load:
        serve_everywhere(load, 6)
        errors, infos = len(lines(server, "ERROR")), len(lines(server, "INFO"))
        write(tmp_path / "mod.py", "VALUE = 'broken\n")
        assert wait_for(lambda: len(lines(server, "ERROR")) > errors, 10)
        assert_stays(6, lambda: boots(server), 1.5)
        assert len(lines(server, "ERROR")) == errors + 1, lines(server, "ERROR")
        assert "mod.py:1:" in lines(server, "ERROR")[-1]
        t0 = time.monotonic()
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        took = wait_all_workers_serve(load, t0, "v2", 6, timeout=15)
        assert_stays(12, lambda: boots(server), 1.5)  # each of the 6 replaced once
        new_infos = lines(server, "INFO")[infos:]
        rollout = "reloading with auto: gunicorn: one new worker ready before each old one"
        assert len(new_infos) == 1 and rollout in new_infos[0], new_infos
        assert wait_for(lambda: status_json(tmp_path)[0]["last_deploy"]["workers_replaced"] == 6,
                        10), status_json(tmp_path)
        (master,) = status_json(tmp_path)
        text = status(tmp_path)
    result = load.stop()
    print(f"\n6 workers: new code everywhere {took:.2f}s after the fix; "
          f"{result.ok} ok, {result.failed} failed\n{text}")
    assert result.failed == 0, result.errors[:5]
    # validation ran once per change set for the whole master: the broken one, then the fix
    assert [v["verdict"] for v in master["validations"]] == ["refused", "ok"]
    assert master["server"] == "gunicorn" and master["master"] == server.proc.pid  # type: ignore[union-attr]
    assert len(master["workers"]) >= 1 and master["scanner"] in master["workers"]
    assert master["watched"] > 0 and master["scan_ms"] is not None
    assert master["last_deploy"]["files"] == [str(tmp_path / "mod.py")]
    assert "one new worker ready before each" in master["last_deploy"]["action"]
    assert master["last_refusal"]["where"] == f"{tmp_path / 'mod.py'}:1"
    assert "last deploy:" in text and "6 workers replaced" in text
    assert "last refusal: " in text and f"{tmp_path / 'mod.py'}:1" in text


@pytest.mark.parametrize("action", ["auto", "restart-worker"])
def test_an_edit_on_an_idle_site_replaces_every_worker_without_a_request(
    tmp_path: Path, servers: List[Server], action: str
) -> None:
    server = started(tmp_path, servers, 3, action)
    with Load(server.port, threads=3) as load:
        serve_everywhere(load, 3)
    time.sleep(0.5)  # the last responses are done: from here on, not one request
    t0 = time.monotonic()
    write(tmp_path / "mod.py", "VALUE = 'v2'\n")
    limit = SETTLE + INTERVAL + 3.0
    assert wait_for(lambda: boots(server) == 6, limit), f"not all replaced within {limit}s"
    took = time.monotonic() - t0
    assert_stays(6, lambda: boots(server), 1.5)  # each once: the new workers do not act again
    code, body = get(server.port)
    print(f"\n{action}: 3 idle workers replaced {took:.2f}s after the edit")
    assert code == 200 and body.endswith(b"value=v2"), body
    assert len([line for line in lines(server, "INFO") if "reloading with" in line]) == 1


def test_the_scanner_killed_another_worker_scans_and_the_next_deploy_reloads(
    tmp_path: Path, servers: List[Server]
) -> None:
    server = started(tmp_path, servers, 3)
    with Load(server.port, threads=3) as load:
        serve_everywhere(load, 3)
        assert wait_for(lambda: scanner_of(tmp_path) is not None, 10)
    # No load while the scanner is killed: a request it was serving would be reset by the
    # kill itself, not by anything wsgireload does.
    scanner = scanner_of(tmp_path)
    os.kill(scanner, 9)  # gone without a word: gunicorn replaces it
    assert wait_for(lambda: boots(server) == 4, 10)
    assert wait_for(lambda: scanner_of(tmp_path) not in (None, scanner), 15), status_json(
        tmp_path
    )
    with Load(server.port, threads=3) as load:
        serve_everywhere(load, 3)
        t0 = time.monotonic()
        write(tmp_path / "mod.py", "VALUE = 'v2'\n")
        took = wait_all_workers_serve(load, t0, "v2", 3, timeout=10)
        assert_stays(7, lambda: boots(server), 1.5)  # one reload of the 3 workers, once
    result = load.stop()
    print(f"\nscanner {scanner} killed; the next deploy served everywhere after {took:.2f}s")
    assert result.failed == 0, result.errors[:5]
