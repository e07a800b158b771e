"""Connections uvicorn's supervisor resets as it retires old workers, with and without
wsgireload in the app: the same hand-sent SIGHUPs, no code change.

Run from the repository root: ``python benchmarks/uvicorn_resets.py`` (``--hups 40``, about 5
minutes). For each app (plain, then wrapped in ``wsgireload.asgi.Reloader``): one
``uvicorn --workers 3`` on 127.0.0.1, 4 client threads opening a new connection per request,
a SIGHUP every 3.5 s (each replaces the 3 workers one at a time).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing

from tests.servers.harness import Load, Server, bin_path, free_port, write  # noqa: E402

APP = """\
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await asyncio.sleep(0.01)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""
WRAPPED = "\nfrom wsgireload.asgi import Reloader\napp = Reloader(app)\n"
EVERY = 3.5  # seconds between two SIGHUPs


def run(wrapped: bool, hups: int) -> List[str]:
    """The errors the clients saw over ``hups`` SIGHUPs."""
    with tempfile.TemporaryDirectory(prefix="wsgireload-resets-") as tmp:
        directory = Path(tmp)
        write(directory / "app.py", APP + (WRAPPED if wrapped else ""))
        port = free_port()
        server = Server([bin_path("uvicorn"), "app:app", "--workers", "3", "--port", str(port),
                         "--no-access-log"], cwd=directory, port=port,
                        log_path=directory / "server.log",
                        env={"TMPDIR": str(directory), "XDG_RUNTIME_DIR": ""})
        server.start()
        try:
            assert server.proc is not None
            with Load(port, threads=4, max_seconds=hups * EVERY + 30) as load:
                time.sleep(1.0)
                for _ in range(hups):
                    os.kill(server.proc.pid, signal.SIGHUP)
                    time.sleep(EVERY)
            return load.stop().errors
        finally:
            server.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hups", type=int, default=40)
    args = parser.parse_args(argv)
    for wrapped in (False, True):
        errors = run(wrapped, args.hups)
        label = "wrapped in wsgireload.asgi.Reloader" if wrapped else "plain app"
        print(f"uvicorn --workers 3, {label}: {len(errors)} failed requests in {args.hups} "
              f"SIGHUPs ({3 * args.hups} workers retired): {errors[:3]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
