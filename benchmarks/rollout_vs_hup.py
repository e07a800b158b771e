"""The gunicorn rollout against a HUP sent by hand, side by side on real gunicorn.

An app whose import takes 2 s, sync workers, 4 client threads opening a new connection per
request, one edit of an imported module. For each worker count: failed requests, the slowest
request started after the edit, the most worker processes at once (/proc, every 50 ms) and the
seconds until every worker serves the new code. "HUP by hand" serves the same app without
wsgireload and sends SIGHUP to the master right after the edit.

    PYTHONPATH=$PWD python benchmarks/rollout_vs_hup.py [--workers 3 1] [--boot 2]
        [--all-at-once]

``--worker-class asgi`` (or ``uvicorn_worker.UvicornWorker``): the same with gunicorn's ASGI
worker and a Starlette app in ``wsgireload.asgi.Reloader`` (tests/servers/test_asgi.py);
``--worker-class gthread`` (or ``gevent``): the WSGI app under that worker class.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import test_asgi as asgi_tests  # noqa: E402
from tests.servers import test_gunicorn as gunicorn_tests  # noqa: E402
from tests.servers import test_rollout as rollout_tests  # noqa: E402
from tests.servers.harness import ChildSampler, Load, free_port, wait_for, write  # noqa: E402
from tests.servers.test_rollout import make_app  # noqa: E402
from wsgireload._system import SYSTEM  # noqa: E402

ASGI_CLASSES = ("asgi", "uvicorn_worker.UvicornWorker")


def measure(workers: int, mode: str, worker_class: str = "") -> Dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="wsgireload-rollout-bench-"))
    asgi = worker_class in ASGI_CLASSES
    rollout = "all-at-once" if "all-at-once" in mode else "one-by-one"
    try:
        if asgi:
            asgi_tests.make_app(tmp, boot=rollout_tests.BOOT, wrapped=mode != "HUP by hand")
            text = (tmp / "wsgi.py").read_text()
            write(tmp / "wsgi.py", text.replace("Reloader(starlette_app, ",
                                                f"Reloader(starlette_app, rollout={rollout!r}, "))
        else:
            make_app(tmp, rollout=rollout)
        if mode == "HUP by hand" and not asgi:  # the same app, without wsgireload
            text = (tmp / "wsgi.py").read_text()
            write(tmp / "wsgi.py", text[: text.index("application = Reloader(")] +
                  "application = app\n")
        extra = ["-k", worker_class] if worker_class else []
        server = gunicorn_tests.gunicorn(tmp, free_port(), workers=workers, extra=extra)
        server.start(timeout=60)
        try:
            master = server.proc.pid if server.proc is not None else 0
            with Load(server.port, threads=4, max_seconds=120) as load:
                served = lambda: gunicorn_tests.pids_serving(  # noqa: E731
                    load.result.bodies_since(0.0), "v1")
                assert wait_for(lambda: len(served()) >= workers, 30), server.log()
                sampler = ChildSampler(master)
                edited = time.monotonic()
                write(tmp / "mod.py", "VALUE = 'v2'\n")
                if mode == "HUP by hand":
                    os.kill(master, signal.SIGHUP)
                took = gunicorn_tests.wait_all_workers_serve(load, edited, "v2", workers, 60)
                assert wait_for(lambda: len(SYSTEM.children(master)) == workers, 30)
                time.sleep(1.0)
                peak = sampler.stop()
            result = load.stop()
        finally:
            server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"requests": result.ok + result.failed, "failed": result.failed,
            "slowest": result.slowest_since(edited), "peak": peak, "took": took}


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[3, 1])
    parser.add_argument("--worker-class", default="", help="gunicorn -k: asgi, "
                        "uvicorn_worker.UvicornWorker (a Starlette app)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each row")
    parser.add_argument("--boot", type=float, default=rollout_tests.BOOT,
                        help="seconds the app's import takes (default 2)")
    parser.add_argument("--all-at-once", action="store_true",
                        help="also wsgireload with rollout='all-at-once' (one HUP)")
    args = parser.parse_args(argv)
    rollout_tests.BOOT = args.boot  # (make_app reads it)
    modes = ("rollout (one-by-one)",) + ("wsgireload, all-at-once",) * args.all_at_once
    print("| workers | reload | requests | failed | slowest after the edit | peak workers "
          "| new code everywhere |")
    print("|---|---|---|---|---|---|---|")
    for workers in args.workers:
        for mode in (*modes, "HUP by hand") * args.runs:
            row = measure(workers, mode, args.worker_class)
            print(f"| {workers} | {mode} | {row['requests']:.0f} | {row['failed']:.0f} | "
                  f"{row['slowest']:.3f} s | {row['peak']:.0f} | {row['took']:.2f} s |",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
