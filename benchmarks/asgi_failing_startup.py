"""A deploy whose ASGI lifespan startup fails, then its fix: wsgireload beside a HUP by hand.

Real gunicorn, 3 workers of the given class, the Starlette app of tests/servers/test_asgi.py,
4 client threads. The deploy's startup hook raises (Starlette reports
``lifespan.startup.failed``); 8 s later the fix is written. "HUP by hand" serves the app without
wsgireload and sends SIGHUP after each write, if the server is still there.

    PYTHONPATH=$PWD python benchmarks/asgi_failing_startup.py [asgi uvicorn_worker.UvicornWorker]
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import test_asgi as asgi_tests  # noqa: E402
from tests.servers import test_gunicorn as gunicorn_tests  # noqa: E402
from tests.servers.harness import Load, free_port, wait_for, write  # noqa: E402


def measure(worker: str, mode: str) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="wsgireload-asgi-bench-"))
    server = None
    try:
        asgi_tests.make_app(tmp, wrapped=mode == "wsgireload")
        server = gunicorn_tests.gunicorn(tmp, free_port(), workers=3, extra=["-k", worker])
        server.start(timeout=60)
        assert server.proc is not None
        with Load(server.port, threads=4, max_seconds=60) as load:
            time.sleep(1.0)
            write(tmp / "mod.py", asgi_tests.FAILING)
            if mode != "wsgireload":
                os.kill(server.proc.pid, signal.SIGHUP)
            time.sleep(8.0)
            alive = server.proc.poll() is None
            write(tmp / "mod.py", "VALUE = 'v4'\n")
            if mode != "wsgireload" and alive:
                os.kill(server.proc.pid, signal.SIGHUP)
            fixed = wait_for(lambda: any(body.endswith(b"value=v4") for body in
                                         load.result.bodies_since(time.monotonic() - 0.3)), 20)
        result = load.stop()
        state = "alive" if alive else f"exited ({server.proc.returncode})"
        return (f"| {worker} | {mode} | {result.ok + result.failed} | {result.failed} | {state} | "
                f"{'new code served' if fixed else 'never back'} |")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(workers: list) -> None:
    print("| worker | reload | requests | failed | server after the failing deploy | the fix |")
    print("|---|---|---|---|---|---|")
    for worker in workers or ["asgi", "uvicorn_worker.UvicornWorker"]:
        for mode in ("wsgireload", "HUP by hand"):
            print(measure(worker, mode), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
