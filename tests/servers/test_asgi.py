"""Real gunicorn with its ASGI workers (``-k asgi``, ``uvicorn_worker.UvicornWorker``), a
Starlette app wrapped in ``wsgireload.asgi.Reloader``: a deploy whose lifespan startup fails is
refused (gunicorn would halt on it), and the fix's rollout replaces each worker once under load.

4 client threads opening a new connection per request, one edit of an imported module.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List

import pytest

from wsgireload._system import SYSTEM

from . import test_gunicorn as gunicorn_tests
from . import test_rollout as rollout
from .harness import Load, Server, free_port, needs_gunicorn_asgi, wait_for, write

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform != "linux", reason="/proc")]

BOOT = 0.3  # seconds the app's import takes
APP = """\
import logging, os, sys, time
from contextlib import asynccontextmanager
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [%(process)d] wsgireload-test %(levelname)s %(message)s")
time.sleep({boot})
import mod
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from wsgireload.asgi import Reloader


@asynccontextmanager
async def lifespan(app):
    getattr(mod, "startup", lambda: None)()  # a deploy's startup hook may raise
    yield


async def home(request):
    return PlainTextResponse("pid=%d value=%s" % (os.getpid(), mod.VALUE))


starlette_app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
application = Reloader(starlette_app, interval={interval}, settle={settle})
"""
FAILING = """\
VALUE = 'v3'


def startup():
    raise ConnectionError("database unreachable")
"""
UVICORN = "uvicorn_worker.UvicornWorker"
# Issue 17 asks for the new code everywhere within 5 s: 3.7-4.3 s measured on a quiet machine
# (docs/servers/asgi.md), the bound leaves room for a busy one. Per worker: the ASGI stack's
# import, the app's, and up to a second for the retired worker's heartbeat (-k asgi).
NEW_CODE_WITHIN = 7.0


def make_app(directory: Path, boot: float = BOOT, wrapped: bool = True) -> None:
    """The Starlette app in ``directory`` (``wrapped=False``: without wsgireload)."""
    write(directory / "mod.py", "VALUE = 'v1'\n")
    text = APP.format(boot=boot, interval=rollout.INTERVAL, settle=rollout.SETTLE)
    if not wrapped:
        text = text[: text.index("application = Reloader(")] + "application = starlette_app\n"
    write(directory / "wsgi.py", text)


def assert_no_failed(outcome: rollout.Outcome) -> None:
    """None failed, under UvicornWorker too: uvicorn's graceful shutdown closes a connection it
    accepted before its request was read, so the gate has each uvicorn-run worker stop
    accepting 0.2 s before uvicorn handles its SIGTERM (docs/servers/asgi.md)."""
    assert outcome.failed == 0, outcome.errors[:5]


@pytest.mark.parametrize("worker", [pytest.param("asgi", marks=needs_gunicorn_asgi), UVICORN])
def test_a_failing_lifespan_startup_is_refused_and_its_fix_rolled_out(
    tmp_path: Path, servers: List[Server], worker: str
) -> None:
    make_app(tmp_path)
    server = gunicorn_tests.gunicorn(tmp_path, free_port(), workers=3, extra=["-k", worker])
    servers.append(server.start(timeout=30))
    master = server.proc.pid if server.proc is not None else 0

    # 1. A deploy whose lifespan startup fails: refused before any signal, old code served.
    booted = gunicorn_tests.boots(server)
    with Load(server.port, threads=4, max_seconds=60) as load:
        serving = lambda: gunicorn_tests.pids_serving(load.result.bodies_since(0.0), "v1")  # noqa: E731
        assert wait_for(lambda: len(serving()) == 3, 20), server.log()
        write(tmp_path / "mod.py", FAILING)
        assert wait_for(lambda: "the new code is broken" in server.log(), 20), server.log()
        refused = time.monotonic()
        gunicorn_tests.assert_stays(booted, lambda: gunicorn_tests.boots(server), 2.0)
        assert len(SYSTEM.children(master)) == 3 and server.proc is not None
        assert server.proc.poll() is None
        served = load.result.bodies_since(refused)
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    assert served and all(body.endswith(b"value=v1") for body in served), set(served)
    log = server.log()
    assert "mod.py:5: ConnectionError: database unreachable (the ASGI lifespan startup" in log
    assert log.count("the new code is broken") == 1

    # 2. The fix, under load: each worker replaced once, a new one ready before an old leaves.
    outcome = rollout.edit_under_load(server, tmp_path, 3, "v2", "v1", label=worker)
    assert_no_failed(outcome)
    assert outcome.slowest <= rollout.SLOWEST, f"a request took {outcome.slowest:.2f}s"
    assert outcome.peak <= 4 and outcome.replaced == 3, outcome
    assert len(outcome.new) == 3 and not outcome.new & outcome.old, outcome
    assert outcome.took <= NEW_CODE_WITHIN, f"new code everywhere after {outcome.took:.1f}s"
    assert [rollout.signals(server, name) for name in ("ttin", "ttou", "hup")] == [3, 3, 0]
