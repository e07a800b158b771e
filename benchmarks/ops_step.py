"""The scanner's step with and without what operators see (metrics_file, systemd_notify),
side by side in one run: the steady state, where nothing changes and nothing is written.

    python benchmarks/ops_step.py [--files 600] [--steps 2000] [--rounds 7]

The scanner shares its master's record here as under a real server (a master = this
process's parent); the figures are per step, interleaved round by round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wsgireload.watcher import Watcher  # noqa: E402


def make_tree(root: str, files: int) -> str:
    for i in range(files):
        with open(os.path.join(root, f"m{i}.py"), "w") as handle:
            handle.write(f"X = {i}\n")
    return os.path.join(root, "*.py")


def per_step(watcher: Watcher, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        watcher.engine.step(1000.0 + i)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        os.environ["XDG_RUNTIME_DIR"] = tmp
        pattern = make_tree(tmp, args.files)
        variants: Dict[str, Dict[str, Any]] = {
            "plain": {},
            "metrics_file": {"metrics_file": os.path.join(tmp, "w.prom")},
            "metrics_file + systemd_notify": {"metrics_file": os.path.join(tmp, "w2.prom"),
                                              "systemd_notify": True},
        }
        watchers = {name: Watcher(modules=False, extra_files=[pattern], validate=None,
                                  action="log-only", master=(f"bench{i}", os.getppid()),
                                  **options)
                    for i, (name, options) in enumerate(variants.items())}
        for watcher in watchers.values():  # each the scanner of a master of its own
            watcher.engine.step(0.0)
            share = watcher.engine.share
            assert share is not None and share.scanning, "no shared record: nothing measured"
        times: Dict[str, List[float]] = {name: [] for name in watchers}
        for _ in range(args.rounds):
            for name, watcher in watchers.items():
                times[name].append(per_step(watcher, args.steps))
        base = statistics.median(times["plain"])
        print(f"# python benchmarks/ops_step.py --files {args.files} --steps {args.steps} "
              f"--rounds {args.rounds}   ({time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
              f"{os.cpu_count()} CPUs, shared)")
        print(f"python {sys.version.split()[0]}; one scanner step = a scan of {args.files} "
              "files + its share of the master's record")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:32s} median {median * 1e6:8.1f} µs per step   "
                  f"{median / base:5.3f}x plain   (min {min(values) * 1e6:.1f} µs)")
        # The part of a step that serves operators, alone (a stat of the record; the figures
        # built and compared; nothing written when nothing changed).
        engine = watchers["metrics_file + systemd_notify"].engine
        share = engine.share
        start = time.perf_counter()
        for _ in range(args.steps * 5):
            engine._operate(share)  # noqa: SLF001 (measured alone)
        took = (time.perf_counter() - start) / (args.steps * 5)
        print(f"{'its operators part alone':32s}         {took * 1e6:8.1f} µs per step   "
              f"{took / base:5.3f}x plain's step")
        for watcher in watchers.values():
            watcher.stop()


if __name__ == "__main__":
    main()
