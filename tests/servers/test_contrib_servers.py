"""The gunicorn config hook and the uWSGI timer helper on real servers: no middleware at all.

A code edit must be noticed and acted on by the watcher each helper starts in the workers.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Dict, List

import pytest

from .harness import (
    Load,
    Server,
    bin_path,
    free_port,
    get,
    gunicorn_no_control_socket,
    wait_for,
    write,
)
from .reloadhelp import PLAIN_APP, boots, reloads, write_plain_app
from .test_uwsgi import UwsgiServer

pytestmark = pytest.mark.server

RECORD = """
import os


def record(changes):
    with open(os.environ["WR_ACTED"], "a") as out:
        out.write(f"{os.getpid()} {' '.join(changes.files)}\\n")
"""


def acted(path: Path) -> List[str]:
    return path.read_text().splitlines() if path.exists() else []


def make_app(tmp_path: Path) -> None:
    write_plain_app(tmp_path)
    write(tmp_path / "wr_record.py", RECORD)


def gunicorn(tmp_path: Path, conf: str, env: Dict[str, str]) -> Server:
    write(tmp_path / "gunicorn.conf.py", conf)
    port = free_port()
    return Server(
        [bin_path("gunicorn"), "-c", "gunicorn.conf.py", "--workers", "2",
         "--bind", f"127.0.0.1:{port}", *gunicorn_no_control_socket(), "app:application"],
        cwd=tmp_path, port=port, log_path=tmp_path / "server.log", env=env,
    )


def test_gunicorn_hook_notices_an_edit_without_any_request(
    tmp_path: Path, servers: List[Server]
) -> None:
    make_app(tmp_path)
    out = tmp_path / "acted.txt"
    booted = tmp_path / "booted.txt"
    # A user hook of one's own calling start_watcher; it also tells the test a worker is ready.
    server = gunicorn(tmp_path, """
        import os
        from wsgireload.contrib.gunicorn import start_watcher
        from wr_record import record

        def post_worker_init(worker):
            start_watcher(worker, interval=0.25, settle=0.5, action=record)
            with open(os.environ["WR_BOOTED"], "a") as out:
                out.write(f"{os.getpid()}\\n")
    """, {"WR_ACTED": str(out), "WR_BOOTED": str(booted)})
    servers.append(server.start())
    assert wait_for(lambda: len(acted(booted)) == 2, timeout=30), server.log()
    write(tmp_path / "mod.py", 'VERSION = "v2"\n')
    # Each worker's watcher thread acts on its own: no request is needed after the edit.
    assert wait_for(lambda: len(acted(out)) >= 2, timeout=30), (acted(out), server.log())
    lines = acted(out)
    assert len({line.split()[0] for line in lines}) == 2  # both workers
    assert all(line.endswith("mod.py") for line in lines)


def test_gunicorn_hook_reloads_once(tmp_path: Path, servers: List[Server]) -> None:
    make_app(tmp_path)
    booted = tmp_path / "booted.txt"
    server = gunicorn(tmp_path, """
        import os
        from wsgireload.contrib.gunicorn import make_post_worker_init

        start = make_post_worker_init(interval=0.25, settle=0.5)  # action="auto": a rollout

        def post_worker_init(worker):
            start(worker)
            with open(os.environ["WR_BOOTED"], "a") as out:
                out.write(f"{os.getpid()}\\n")
    """, {"WR_BOOTED": str(booted)})
    servers.append(server.start())
    assert wait_for(lambda: len(acted(booted)) == 2, timeout=30), server.log()
    assert get(server.port)[1] == b"v1"
    with Load(server.port, threads=2, pause=0.02) as load:
        write(tmp_path / "mod.py", 'VERSION = "v2"\n')
        assert wait_for(lambda: all(get(server.port)[1] == b"v2" for _ in range(6)), timeout=30)
        # v2 may be served six times in a row while the rollout still has an old worker
        assert wait_for(lambda: boots(server.log()) == 4, timeout=30), server.log()
    result = load.stop()
    log = server.log()
    assert result.failed == 0, result.errors[:5]
    assert reloads(log, 2) == 1 and boots(log) == 4, log


def uwsgi(tmp_path: Path, extra: List[str], env: Dict[str, str]) -> Server:
    port = free_port()
    return UwsgiServer(
        [bin_path("uwsgi"), "--master", "--workers", "2", "--http-socket", f"127.0.0.1:{port}",
         "--module", "app:application", "--die-on-term", "--disable-logging", *extra],
        cwd=tmp_path, port=port, log_path=tmp_path / "server.log", env=env,
    )


UWSGI_APP = PLAIN_APP + """
from wsgireload.contrib.uwsgi import register
from wr_record import record

register(settle=0.5, action=record)
register(settle=0.5, action=record)  # a second call must not add a second timer
"""


@pytest.mark.skipif(shutil.which(bin_path("uwsgi")) is None, reason="uwsgi not installed")
def test_uwsgi_timer_acts_in_every_worker(tmp_path: Path, servers: List[Server]) -> None:
    make_app(tmp_path)
    write(tmp_path / "app.py", UWSGI_APP)
    out = tmp_path / "acted.txt"
    server = uwsgi(tmp_path, [], {"WR_ACTED": str(out)})
    servers.append(server.start())
    assert server.log().count("[uwsgi-signal] signum 120 registered") == 1  # by the master
    write(tmp_path / "mod.py", 'VERSION = "v2"\n')
    assert wait_for(lambda: len(acted(out)) >= 2, timeout=30), server.log()
    assert len({line.split()[0] for line in acted(out)}) == 2


@pytest.mark.skipif(shutil.which(bin_path("uwsgi")) is None, reason="uwsgi not installed")
def test_uwsgi_register_under_lazy_apps_acts_in_every_worker_after_a_chain_reload(
    tmp_path: Path, servers: List[Server]
) -> None:
    # Under --lazy-apps uWSGI's master would tick one worker at a time whatever the target
    # (it routes by its own signal table, which a lazy app never fills): register() runs a
    # watcher thread in each worker instead, and a chain reload starts the new workers' own.
    make_app(tmp_path)
    write(tmp_path / "app.py", UWSGI_APP)
    out = tmp_path / "acted.txt"
    chain = tmp_path / "chain"
    chain.touch()
    server = uwsgi(tmp_path, ["--lazy-apps", "--touch-chain-reload", str(chain)],
                   {"WR_ACTED": str(out)})
    servers.append(server.start())
    ready = "WSGI app 0 (mountpoint='') ready"
    assert wait_for(lambda: server.log().count(ready) == 2, timeout=30), server.log()
    # uWSGI compares whole-second mtimes: move it clearly. Replaces both workers, one at a time.
    os.utime(chain, (chain.stat().st_mtime + 10, chain.stat().st_mtime + 10))
    # Generous: uWSGI replaces one worker at a time, slowly on a busy 2-core machine.
    assert wait_for(lambda: "chain reloading complete" in server.log(), timeout=90), server.log()
    assert wait_for(lambda: server.log().count(ready) == 4, timeout=30), server.log()
    new_workers = set(re.findall(r"Respawned uWSGI worker \d \(new pid: (\d+)\)", server.log()))
    write(tmp_path / "mod.py", 'VERSION = "v2"\n')
    assert wait_for(lambda: len(acted(out)) >= 2, timeout=30), server.log()
    assert {line.split()[0] for line in acted(out)} == new_workers  # each new worker, once
    assert len(acted(out)) == 2
    assert "signum 120 registered" not in server.log()  # no signal, no timer to pile up
