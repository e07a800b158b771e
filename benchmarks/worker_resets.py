"""Connections a server's own reload drops as it retires old workers, with and without
wsgireload in the app: the same hand-sent SIGHUPs, no code change.

Run from the repository root: ``python benchmarks/worker_resets.py --server uvicorn --hups 40``
(about 5 minutes; ``--server granian``: about 2). For each app (plain, then wrapped in
``wsgireload.asgi.Reloader``): one ``uvicorn --workers 3`` (or ``granian --workers 2
--respawn-interval 1``) on 127.0.0.1, 4 client threads opening a new connection per request,
a SIGHUP every few seconds (each replaces every worker, one at a time).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

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
# server: (its command line after the program, workers, seconds between two SIGHUPs, the line
# its log has per worker retired)
SERVERS = {
    "uvicorn": (["app:app", "--workers", "3", "--no-access-log"], 3, 3.5,
                "Terminated child process"),
    "granian": (["--interface", "asgi", "--workers", "2", "--respawn-interval", "1",
                 "--no-access-log", "app:app"], 2, 3.0, "Stopped old worker"),
}


def run(server_name: str, wrapped: bool, hups: int, threads: int) -> tuple:
    """(requests answered, the errors the clients saw, workers retired) over ``hups``
    SIGHUPs."""
    args, _, every, retired = SERVERS[server_name]
    with tempfile.TemporaryDirectory(prefix="wsgireload-resets-") as tmp:
        directory = Path(tmp)
        write(directory / "app.py", APP + (WRAPPED if wrapped else ""))
        port = free_port()
        server = Server([bin_path(server_name), *args, "--port", str(port)], cwd=directory,
                        port=port, log_path=directory / "server.log",
                        env={"TMPDIR": str(directory), "XDG_RUNTIME_DIR": ""})
        server.start()
        try:
            assert server.proc is not None
            with Load(port, threads=threads, max_seconds=hups * every + 30) as load:
                time.sleep(1.0)
                for _ in range(hups):
                    os.kill(server.proc.pid, signal.SIGHUP)
                    time.sleep(every)
            result = load.stop()
            return result.ok, result.errors, server.log().count(retired)
        finally:
            server.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=sorted(SERVERS), default="uvicorn")
    parser.add_argument("--hups", type=int, default=40)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--only", choices=("plain", "wrapped"))
    args = parser.parse_args(argv)
    workers = SERVERS[args.server][1]
    for wrapped in (False, True):
        label = "wrapped in wsgireload.asgi.Reloader" if wrapped else "plain app"
        if args.only and args.only not in label:
            continue
        ok, errors, retired = run(args.server, wrapped, args.hups, args.threads)
        print(f"{args.server} --workers {workers}, {label}: {len(errors)} failed requests "
              f"({ok} answered) in {args.hups} SIGHUPs ({retired} workers retired, by its "
              f"log): {errors[:3]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
