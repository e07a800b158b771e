"""What the boot check costs per deploy: seconds to boot an app in a fresh interpreter.

Run from the repository root: ``python benchmarks/boot_check.py`` (``--runs N``). Measures the
Django example (``examples.django_wsgi:application``, its URLconf walked), with and without a
smoke request, against a bare interpreter start, and N workers checking at once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing

from wsgireload.boot import find_python, parse_target, run_checker  # noqa: E402

DJANGO = "examples.django_wsgi:application"


def timed(fn: Callable[[], Optional[str]], runs: int) -> List[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        problem = fn()
        times.append(time.perf_counter() - started)
        if problem is not None:
            raise SystemExit(f"the boot check failed: {problem}")
    return times


def line(name: str, times: List[float]) -> None:
    print(f"{name:48s} median {statistics.median(times):6.3f} s   min {min(times):6.3f} s   "
          f"max {max(times):6.3f} s   ({len(times)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    python = find_python()
    if python is None:
        raise SystemExit("no interpreter found for the boot check")
    os.chdir(ROOT)
    path = [ROOT, *sys.path]
    target = parse_target(DJANGO)

    def bare() -> Optional[str]:
        subprocess.run([python, "-c", "pass"], check=True)
        return None

    def django(smoke: Optional[str] = None) -> Optional[str]:
        return run_checker(python, [target], timeout=60, path=path, smoke=smoke).problem

    print(f"python {python} ({sys.version.split()[0]}), {os.cpu_count()} CPUs")
    django()  # warm the .pyc files and the page cache, as a running server has
    line("bare interpreter start (python -c pass)", timed(bare, args.runs))
    line(f"boot check, {DJANGO}", timed(django, args.runs))
    line("boot check + smoke request GET /", timed(lambda: django("/"), args.runs))

    def concurrent() -> Optional[str]:
        problems: List[Optional[str]] = []
        threads = [threading.Thread(target=lambda: problems.append(django()))
                   for _ in range(args.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return next((p for p in problems if p), None)

    line(f"{args.workers} workers checking at once (wall time)", timed(concurrent, args.runs))


if __name__ == "__main__":
    main()
