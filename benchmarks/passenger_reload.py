"""Passenger: wsgireload's reload against Passenger's own (``touch tmp/restart.txt`` by hand),
side by side in one run.

Run from the repository root: ``python benchmarks/passenger_reload.py [--repeat N]`` (about
25 s per repeat). Needs Debian's ``passenger`` and a Python 3.11 or older for its loader.

Each run starts Passenger standalone (builtin engine) with 2 app processes (min-instances =
max-pool-size = 2) of an app whose import takes 0.3 s, under 4 client threads opening a new
connection per request; one edit of an imported module, then either nothing (wsgireload:
``interval=0.2, settle=0.5``) or, with ``action="log-only"``, a touch of ``tmp/restart.txt``
right after the edit (its mtime max(now, old + 1): Passenger compares whole seconds).
"New code everywhere": every live app process has answered the new version and no response
since carries the old one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing

from tests.servers import test_passenger as psg  # noqa: E402
from tests.servers.harness import Load, Server, free_port, wait_for, write  # noqa: E402

BOOT = 0.3  # seconds the app's import takes
APP = psg.APP.replace("settle={settle})", "settle={settle},\n                       "
                      "action=os.environ['BENCH_ACTION'])")


def run(kind: str, python: str) -> Dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="psg-bench-"))
    registry = Path(tempfile.mkdtemp(prefix="psg-"))
    app = base / "app"
    write(app / "mod.py", "VALUE = 'v1'\n")
    write(app / "passenger_wsgi.py", APP.format(interval=psg.INTERVAL, settle=psg.SETTLE,
                                                boot=BOOT))
    (app / "tmp").mkdir()
    port = free_port()
    action = "auto" if kind == "wsgireload" else "log-only"
    server = Server(psg.passenger_argv(app, base, registry, port, python, psg.PROCESSES), app,
                    port, base / "out.log",
                    env={"TMPDIR": str(base / "tmp"), "BENCH_ACTION": action})
    try:
        server.start(timeout=60)
        with Load(server.port, threads=4, max_seconds=40) as load:
            assert wait_for(lambda: len(psg.serving(load.result, 0.0, "v1")) == 2, 15)
            peak = len(psg.app_processes(server))
            edited = time.monotonic()
            write(app / "mod.py", "VALUE = 'v2'\n")
            if kind == "restart.txt":
                restart = app / "tmp" / "restart.txt"
                when = max(time.time(), restart.stat().st_mtime + 1 if restart.exists() else 0)
                restart.touch()
                os.utime(restart, (when, when))

            def everywhere() -> bool:
                nonlocal peak
                live = {str(pid) for pid in psg.app_processes(server)}
                peak = max(peak, len(live))
                latest = [b.decode() for w, b in load.result.bodies[-20:] if w >= edited]
                return (len(live) == 2 and live <= psg.serving(load.result, edited, "v2")
                        and len(latest) == 20 and all(b.endswith("=v2") for b in latest))

            assert wait_for(everywhere, 20, interval=0.025), server.log()
            took = time.monotonic() - edited
            time.sleep(0.5)
        result = load.result
        return {"failed": result.failed, "slowest": result.slowest_since(edited),
                "before": max((t for s, t in result.timings if s < edited), default=0.0),
                "new_code": took, "peak": peak}
    finally:
        server.stop()
        psg.stop_watchdog(base / "passenger.pid")
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(registry, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    python = psg.loader_python()
    if python is None or shutil.which("passenger") is None:
        sys.exit("needs Debian's passenger and a Python 3.11 or older")
    rows: Dict[str, List[Dict[str, float]]] = {"wsgireload": [], "restart.txt": []}
    for _ in range(args.repeat):
        for kind in rows:  # interleaved: both see the same machine load
            rows[kind].append(run(kind, python))
            print(kind, {k: round(v, 3) for k, v in rows[kind][-1].items()}, flush=True)
    print("\n| reload | failed | slowest request (s) | new code everywhere (s) | "
          "app processes at most |")
    print("|---|---|---|---|---|")
    for kind, runs in rows.items():
        def span(key: str) -> str:
            values = [r[key] for r in runs]
            return f"{min(values):.2f}-{max(values):.2f} (median {statistics.median(values):.2f})"
        print(f"| {kind} | {sum(int(r['failed']) for r in runs)} | {span('slowest')} | "
              f"{span('new_code')} | {max(int(r['peak']) for r in runs)} |")


if __name__ == "__main__":
    main()
