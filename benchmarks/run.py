"""Benchmarks wsgireload against a pass-through middleware, Django's and Werkzeug's reloaders.

Run from the repository root: ``python benchmarks/run.py`` (``--quick`` for a fast smoke run).
Prints one table of medians and ratios, every ratio measured in this process with the two
sides interleaved (watcher CPU shares come from one subprocess per measurement).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import pkgutil
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import types
import warnings
from datetime import datetime, timezone
from importlib.machinery import ModuleSpec
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing

from wsgireload import Reloader  # noqa: E402
from wsgireload.detect import Detector  # noqa: E402
from wsgireload.events import EventDetector  # noqa: E402

SYNTH_PREFIX = "_wsgireload_bench_synth"

Row = Tuple[str, str, str, str, str, str, str]
ROWS: List[Row] = []


def row(
    section: str,
    subject: str,
    files: Any = "",
    median: str = "",
    per_file: str = "",
    ratio: str = "",
    target: str = "",
) -> None:
    ROWS.append((section, subject, str(files), median, per_file, ratio, target))


def fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def verdict(ratio: float, limit: float) -> str:
    return f"<= {limit:g}x {'met' if ratio <= limit else 'NOT met'}"


def interleaved(
    subjects: Sequence[Tuple[str, Callable[[], Any]]], repeats: int, inner: int = 1
) -> Dict[str, float]:
    """Median seconds per call of each subject; each repeat runs all subjects, order rotated."""
    times: Dict[str, List[float]] = {name: [] for name, _ in subjects}
    for r in range(repeats):
        order = list(subjects[r % len(subjects) :]) + list(subjects[: r % len(subjects)])
        for name, fn in order:
            gc.collect()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in times.items()}


# -- request path ---------------------------------------------------------------------------
class PassThrough:
    """The floor for any middleware: forwards the call and nothing else."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.app(environ, start_response)


def hello_app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def _no_start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
    return _no_write


def _no_write(data: bytes) -> None:
    pass


def _requests(app: Callable[..., Any], environ: Dict[str, Any], n: int, copy: bool) -> None:
    start_response = _no_start_response
    for _ in range(n):
        body = app(dict(environ) if copy else environ, start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()


def bench_requests(args: argparse.Namespace) -> None:
    from flask import Flask
    from werkzeug.test import EnvironBuilder

    flask_app = Flask("bench")

    @flask_app.route("/")
    def index() -> str:
        return "hello"

    cases = [
        # The hello environ is reused (the app never mutates it); Flask's is copied per call
        # for both sides, as a server builds a fresh one per request.
        ("hello", hello_app, {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, False, 1.35),
        ("flask", flask_app.wsgi_app, EnvironBuilder(path="/").get_environ(), True, 1.005),
    ]
    for name, app, environ, copy, limit in cases:
        passthrough = PassThrough(app)
        reloader = Reloader(app, action=lambda changes: None, mode="thread")
        try:
            _requests(reloader, environ, 1, copy)  # starts the watcher: steady state from here
            n = args.requests if name == "hello" else max(args.requests // 20, 10)
            medians = interleaved(
                [
                    ("pass", lambda: _requests(passthrough, environ, n, copy)),
                    ("reloader", lambda: _requests(reloader, environ, n, copy)),
                ],
                args.request_repeats,
            )
        finally:
            reloader.close()
        request_rows(name, "Reloader", medians, n, limit)
    bench_asgi_requests(args)


def request_rows(name: str, reloader: str, medians: Dict[str, float], n: int, limit: float) -> None:
    ratio = medians["reloader"] / medians["pass"]
    row("request", f"{name}: pass-through middleware", "", fmt_time(medians["pass"] / n))
    row(
        "request",
        f"{name}: {reloader} (thread mode, steady)",
        "",
        fmt_time(medians["reloader"] / n),
        "",
        f"{ratio:.3f}x pass",
        verdict(ratio, limit),
    )


class AsgiPassThrough:
    """The floor for any ASGI middleware: awaits the app and nothing else."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        return await self.app(scope, receive, send)


async def asgi_hello(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


async def _asgi_send(message: Dict[str, Any]) -> None:
    pass


def _asgi_requests(app: Callable[..., Any], scope: Dict[str, Any], n: int) -> None:
    # Driven without an event loop (nothing here suspends): the loop's own cost, the same on
    # both sides, would only hide the middleware's.
    for _ in range(n):
        try:
            app(scope, None, _asgi_send).send(None)
        except StopIteration:
            pass


def bench_asgi_requests(args: argparse.Namespace) -> None:
    from wsgireload.asgi import Reloader as AsgiReloader

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    passthrough = AsgiPassThrough(asgi_hello)
    reloader = AsgiReloader(asgi_hello, action=lambda changes: None, mode="thread")
    try:
        _asgi_requests(reloader, scope, 1)  # starts the watcher: steady state from here
        n = args.requests
        medians = interleaved(
            [
                ("pass", lambda: _asgi_requests(passthrough, scope, n)),
                ("reloader", lambda: _asgi_requests(reloader, scope, n)),
            ],
            args.request_repeats,
        )
    finally:
        reloader.close()
    request_rows("asgi hello", "asgi.Reloader", medians, n, 1.1)


# -- full scans ---------------------------------------------------------------------------------
_SKIP_IMPORTS = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "pydoc_data",
    "ensurepip",
    "test",
    "lib2to3",
}
_WALK = ["encodings", "email", "xml", "json", "http", "urllib", "unittest", "asyncio"]
_WALK += ["concurrent", "multiprocessing", "importlib", "sqlite3", "logging", "ctypes", "dbm"]
_WALK += ["html", "wsgiref", "xmlrpc", "django.utils", "django.db.models", "django.template"]
_WALK += ["django.core", "django.http", "django.forms", "flask", "werkzeug"]


def import_many() -> None:
    """Load a big process: the stdlib, Django, Flask, Werkzeug and their submodules."""
    warnings.simplefilter("ignore")
    names = sorted(getattr(sys, "stdlib_module_names", ()))
    for name in names + _WALK:
        if name not in _SKIP_IMPORTS and not name.startswith("_"):
            _try_import(name)
    for package in _WALK:
        module = sys.modules.get(package)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), package + "."):
            leaf = info.name.rsplit(".", 1)[-1]
            if "test" in leaf or leaf == "__main__" or ".tests" in info.name:
                continue
            _try_import(info.name)
    warnings.resetwarnings()


def _try_import(name: str) -> None:
    stdout, stderr = sys.stdout, sys.stderr
    try:
        with open(os.devnull, "w") as devnull:
            sys.stdout = sys.stderr = devnull
            importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - optional platform modules; keep going
        pass
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def make_tree(root: str, count: int) -> List[str]:
    """``count`` small .py files, 100 per directory."""
    paths = []
    for i in range(count):
        directory = os.path.join(root, f"pkg{i // 100:03d}")
        if i % 100 == 0:
            os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"mod{i:05d}.py")
        with open(path, "w") as handle:
            handle.write(f"VALUE = {i}\n")
        paths.append(path)
    return paths


def register_modules(paths: Iterable[str]) -> List[str]:
    """Module-like sys.modules entries pointing at ``paths``: every reloader lists them."""
    names = []
    for i, path in enumerate(paths):
        name = f"{SYNTH_PREFIX}.m{i:05d}"
        module = types.ModuleType(name)
        spec = ModuleSpec(name, None, origin=path)
        spec.has_location = True
        module.__spec__ = spec
        module.__file__ = path
        sys.modules[name] = module
        names.append(name)
    return names


def unregister_modules(names: Iterable[str]) -> None:
    for name in names:
        sys.modules.pop(name, None)


def stat_loop(paths: Sequence[str]) -> Callable[[], None]:
    def run() -> None:
        stat = os.stat
        for path in paths:
            try:
                stat(path)
            except OSError:
                pass

    return run


def werkzeug_step() -> Tuple[Callable[[], None], Callable[[], int]]:
    """Werkzeug's own ``StatReloaderLoop.run_step`` on a primed instance (not a replica)."""
    from werkzeug._reloader import StatReloaderLoop

    loop = StatReloaderLoop()
    loop.mtimes = {}
    loop.trigger_reload = lambda filename: None  # type: ignore[method-assign]
    loop.run_step()
    return loop.run_step, lambda: len(loop.mtimes)


def django_snapshot() -> Tuple[Callable[[], None], Callable[[], int]]:
    """Django's ``StatReloader().snapshot_files()``, consumed."""
    from django.utils.autoreload import StatReloader

    reloader = StatReloader()
    sizes = [0]

    def run() -> None:
        n = 0
        for _ in reloader.snapshot_files():
            n += 1
        sizes[0] = n

    run()
    return run, lambda: sizes[0]


def bench_scans(case: str, repeats: int, extra: Optional[Tuple[str, List[str]]] = None) -> None:
    from wsgireload import classic

    classic._detector = None  # a fresh baseline
    classic.code_changed()
    thread_mode = Detector()  # what Reloader() builds by default
    thread_mode.scan()
    everything = Detector(include_stdlib=True)  # the same module list as Django's
    everything.scan()
    werkzeug_run, werkzeug_files = werkzeug_step()
    try:
        django: Optional[Tuple[Callable[[], None], Callable[[], int]]] = django_snapshot()
    except ImportError:  # Django is optional: its rows and the ratios to it are left out
        django = None
    default_list = thread_mode.watched()
    all_list = everything.watched()
    subjects: List[Tuple[str, Callable[[], Any]]] = [
        ("stat_default", stat_loop(default_list)),
        ("stat_all", stat_loop(all_list)),
        ("detector", thread_mode.scan),
        ("detector_all", everything.scan),
        ("code_changed", classic.code_changed),
        ("werkzeug", werkzeug_run),
    ]
    counts = {
        "stat_default": len(default_list),
        "stat_all": len(all_list),
        "detector": len(thread_mode.baseline),
        "detector_all": len(everything.baseline),
        "code_changed": len(default_list),
        "werkzeug": werkzeug_files(),
    }
    if django is not None:
        subjects.append(("django", django[0]))
        counts["django"] = django[1]()
    if extra is not None:
        pattern, listed = extra
        glob_detector = Detector(modules=False, extra_files=[pattern])
        glob_detector.scan()
        list_detector = Detector(modules=False, extra_files=listed)
        list_detector.scan()
        subjects += [
            ("stat_synth", stat_loop(listed)),
            ("glob", glob_detector.scan),
            ("listed", list_detector.scan),
        ]
        counts.update(stat_synth=len(listed), glob=len(glob_detector.baseline), listed=len(listed))
    medians = interleaved(subjects, repeats)
    per_file = {name: medians[name] / max(counts[name], 1) for name in medians}
    django_scan = medians.get("django")

    def add(name: str, label: str, floor: Optional[str], scan_limit: Optional[float]) -> None:
        ratio = ""
        target = ""
        if floor is not None:
            r = per_file[name] / per_file[floor]
            ratio = f"{r:.2f}x stat/file"
            if name in ("detector", "detector_all", "listed", "glob"):
                target = verdict(r, 1.15)
        if scan_limit is not None and django_scan is not None:
            r2 = medians[name] / django_scan
            ratio += f"; {r2:.2f}x Django/scan"
            target += ("; " if target else "") + verdict(r2, scan_limit)
        row(
            f"scan {case}",
            label,
            counts[name],
            fmt_time(medians[name]),
            fmt_time(per_file[name]),
            ratio,
            target,
        )

    add("stat_all", "os.stat loop (all module files)", None, None)
    add("stat_default", "os.stat loop (non-stdlib module files)", None, None)
    add("detector", "Detector.scan() (thread mode default)", "stat_default", 0.65)
    add("detector_all", "Detector(include_stdlib).scan()", "stat_all", 0.65)
    add("code_changed", "code_changed()", "stat_default", None)
    if django_scan is not None:
        add("django", "Django StatReloader.snapshot_files()", "stat_all", None)
    add("werkzeug", "Werkzeug StatReloaderLoop.run_step()", "stat_all", None)
    if extra is not None:
        add("stat_synth", "os.stat loop (the synthetic files)", None, None)
        add("listed", "Detector(extra_files=[10k paths]).scan()", "stat_synth", None)
        add("glob", "Detector(extra_files=['…/**/*.py']).scan()", "stat_synth", None)


# -- watcher CPU (subprocesses) -------------------------------------------------------------
def cpu_child(spec: Dict[str, Any]) -> None:
    """One measurement: CPU time over wall time of this process while its watcher idles."""
    paths = [p for p in sorted(os.listdir(spec["root"]))]
    files: List[str] = []
    for directory in paths:
        full = os.path.join(spec["root"], directory)
        files.extend(os.path.join(full, name) for name in sorted(os.listdir(full)))
    kind = spec["kind"]
    stop = threading.Event()
    reloader = None
    if kind in ("poll", "events"):
        register_modules(files)
        backend = "poll" if kind == "poll" else "events"
        reloader = Reloader(hello_app, action=lambda c: None, mode="thread", backend=backend)
        _requests(reloader, {"REQUEST_METHOD": "GET"}, 1, False)
        watched = len(reloader.detector.baseline)
    elif kind == "poll-glob":
        pattern = os.path.join(spec["root"], "**", "*.py")
        reloader = Reloader(hello_app, action=lambda c: None, mode="thread", extra_files=[pattern])
        _requests(reloader, {"REQUEST_METHOD": "GET"}, 1, False)
        watched = len(reloader.detector.baseline)
    elif kind == "idle":  # what measuring costs: an interpreter that only sleeps
        watched = 0
    else:  # the floor: a thread that only stats the same files at the same interval
        register_modules(files)
        listing = Detector().watched()
        watched = len(listing)
        run = stat_loop(listing)

        def floor() -> None:
            while not stop.wait(1.0):
                run()

        threading.Thread(target=floor, daemon=True).start()
    time.sleep(spec["warmup"])
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(spec["seconds"])
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    stop.set()
    if reloader is not None:
        reloader.close()
    print(json.dumps({"share": cpu / wall, "files": watched}))


def bench_cpu(args: argparse.Namespace, tmp: str) -> None:
    kinds = ["idle", "floor", "poll", "poll-glob", "events"]
    for size in args.cpu_sizes:
        root = os.path.join(tmp, f"cpu{size}")
        make_tree(root, size)
        shares: Dict[str, List[float]] = {k: [] for k in kinds}
        files: Dict[str, int] = {}
        for r in range(args.cpu_repeats):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                spec = {
                    "root": root,
                    "kind": kind,
                    "seconds": args.cpu_seconds,
                    # The first watcher tick (and the events backend's first full scan)
                    # must be behind us before measuring.
                    "warmup": (2.5 if kind == "events" else 1.5) * args.warmup_scale,
                }
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--cpu-child", json.dumps(spec)],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                ).stdout
                result = json.loads(out.strip().splitlines()[-1])
                shares[kind].append(result["share"])
                files[kind] = result["files"]
        floor = statistics.median(shares["floor"])
        labels = {
            "idle": "an idle python process (measurement floor)",
            "floor": "os.stat floor: a thread statting the same files",
            "poll": "Reloader, backend='poll' (module files)",
            "poll-glob": "Reloader, backend='poll', extra_files='**/*.py'",
            "events": "Reloader, backend='events' (idle)",
        }
        for kind in kinds:
            share = statistics.median(shares[kind])
            ratio = target = ""
            if kind.startswith("poll"):
                ratio = f"{share / floor:.2f}x floor" if floor > 0 else ""
                target = verdict(share / floor, 1.2) if floor > 0 else ""
            elif kind == "events":
                target = f"<= 0.1% {'met' if share <= 0.001 else 'NOT met'}"
            row(
                f"watcher CPU {size}",
                labels[kind],
                files[kind],
                f"{share * 100:.3f}% core",
                "",
                ratio,
                target,
            )
        # The window above is shorter than the events backend's verification period: add
        # its full scan, amortized, from the polling share measured at the same size.
        verify = EventDetector(Detector(modules=False)).verify_every
        share = statistics.median(shares["events"]) + statistics.median(shares["poll"]) / verify
        row(
            f"watcher CPU {size}",
            f"  + one verification scan per {verify} s, amortized",
            files["events"],
            f"{share * 100:.3f}% core",
            "",
            "",
            f"<= 0.1% {'met' if share <= 0.001 else 'NOT met'}",
        )


# -- latency and memory -----------------------------------------------------------------------
def bench_latency(args: argparse.Namespace, tmp: str) -> None:
    target = os.path.join(tmp, "latency.py")
    with open(target, "w") as handle:
        handle.write("VALUE = 0\n")
    interval, settle = args.interval, args.settle
    for backend in ("poll", "events"):
        fired: List[float] = []
        reloader = Reloader(
            hello_app,
            extra_files=[target],
            interval=interval,
            settle=settle,
            action=lambda changes: fired.append(time.monotonic()),
            mode="thread",
            backend=backend,
        )
        latencies = []
        try:
            _requests(reloader, {"REQUEST_METHOD": "GET"}, 1, False)
            for i in range(args.latency_repeats):
                time.sleep(interval * (0.3 + 0.37 * i % 1))  # vary the phase against the tick
                with open(target, "w") as handle:
                    handle.write(f"VALUE = {i + 1}\n")
                edited = time.monotonic()
                deadline = edited + interval * 3 + settle * 3 + 10
                while reloader.reload_due is None and time.monotonic() < deadline:
                    time.sleep(0.002)
                if reloader.reload_due is None:
                    raise RuntimeError(f"no reload due after an edit ({backend})")
                latencies.append(time.monotonic() - edited)
                _requests(reloader, {"REQUEST_METHOD": "GET"}, 1, False)  # fires and clears
        finally:
            reloader.close()
        row(
            "latency",
            f"edit -> reload due, backend='{backend}'",
            1,
            fmt_time(statistics.median(latencies)),
            "",
            f"interval={interval:g}s settle={settle:g}s",
            # Seen at the first tick after the edit, due at the first tick a settle later.
            f"expected {settle:g}..{settle + interval:g} s (+ compile)",
        )


def bench_memory(tmp: str, count: int) -> None:
    paths = make_tree(os.path.join(tmp, "memory"), count)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    detector = Detector(modules=False, extra_files=paths)
    detector.scan()
    after = tracemalloc.get_traced_memory()[0]
    del detector
    gc.collect()
    baseline_only = after - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_1000 = (after - before) * 1000 / count
    row(
        "memory",
        "Detector state (paths, snapshot dict, identities)",
        count,
        f"{per_1000 / 1024:.0f} KiB per 1,000 files",
        f"{(after - before) / count:.0f} B",
        f"freed on del: {baseline_only * 1000 / count / 1024:.0f} KiB/1,000",
    )


# -- output -------------------------------------------------------------------------------------
def header() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"wsgireload benchmark  {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n"
        f"python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.system()} {platform.release()}; {cpu}; {os.cpu_count()} cpus; "
        f"load {load}\n"
        f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}"
    )


def print_table() -> None:
    titles = ("section", "subject", "files", "median", "per file", "ratio", "target")
    widths = [max(len(r[i]) for r in ROWS + [titles]) for i in range(len(titles))]
    line = "  ".join(t.ljust(w) for t, w in zip(titles, widths))
    print(line)
    print("-" * len(line))
    last = None
    for r in ROWS:
        if last is not None and r[0] != last:
            print()
        last = r[0]
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument("--files", type=int, default=10_000, help="synthetic tree size")
    parser.add_argument("--repeats", type=int, default=11, help="repeats per scan benchmark")
    parser.add_argument("--cpu-seconds", type=float, default=4.0)
    parser.add_argument("--cpu-repeats", type=int, default=3)
    parser.add_argument(
        "--skip", default="", help="comma-separated: request,scan,synthetic,cpu,latency,memory"
    )
    parser.add_argument("--cpu-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_child:
        cpu_child(json.loads(args.cpu_child))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    args.requests, args.request_repeats = 20_000, 15
    args.cpu_sizes = [1_000, args.files]
    args.interval, args.settle, args.latency_repeats = 1.0, 1.0, 3
    args.warmup_scale = 1.0
    if args.quick:
        args.files = min(args.files, 300)
        args.repeats = 3
        args.requests, args.request_repeats = 500, 3
        args.cpu_sizes, args.cpu_seconds, args.cpu_repeats = [200], 0.3, 1
        args.interval, args.settle, args.latency_repeats = 0.05, 0.05, 1
        args.warmup_scale = 0.1  # a smoke run: the CPU shares it prints mean nothing
    print(header())
    print()
    tmp = tempfile.mkdtemp(prefix="wsgireload-bench-")
    try:
        if "request" not in skip:
            bench_requests(args)
        if not args.quick and ("scan" not in skip or "synthetic" not in skip):
            import_many()
        if "scan" not in skip:
            bench_scans(f"real ({len(sys.modules)} modules)", args.repeats)
        if "synthetic" not in skip:
            synth = make_tree(os.path.join(tmp, "synth"), args.files)
            names = register_modules(synth)
            try:
                pattern = os.path.join(tmp, "synth", "**", "*.py")
                bench_scans(f"+{args.files} synthetic", args.repeats, (pattern, synth))
            finally:
                unregister_modules(names)
        if "cpu" not in skip:
            bench_cpu(args, tmp)
        if "latency" not in skip:
            bench_latency(args, tmp)
        if "memory" not in skip:
            bench_memory(tmp, args.files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
