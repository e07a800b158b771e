"""Reload disturbance on real servers: what visitors see while new code replaces the old.

Run from the repository root: ``python benchmarks/reload_disturbance.py`` (about 8 minutes;
``--quick`` about 1; ``--repeat N``; ``--only uvicorn``; ``--out FILE`` also writes the table
there). Needs the test extras (gunicorn, uWSGI, uvicorn, granian, hypercorn, pytest: it starts
servers with the real-server test harness). The ASGI servers serve the same app as ASGI.

For each server and reload, one server at a time on 127.0.0.1: an app whose import takes 0.2 s
or 2 s (``time.sleep`` at import, as a Django project's settings and URLconf take 2-6 s) is
served to 4 client threads, each opening a new connection per request; each worker answers
with its pid and the code version. One edit of an imported module, then either the server's
own reload sent by hand at once (``kill -HUP <master>``, uWSGI's master FIFO ``c``) or nothing
(wsgireload notices, checks and reloads). A sampler reads the master's children from
``/proc`` every 25 ms; "new code everywhere" is the first sample at which the server has its
worker count again and every live worker has answered the new version. One Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing

from tests.servers.harness import (  # noqa: E402
    Load,
    Server,
    bin_path,
    free_port,
    get,
    gunicorn_no_control_socket,
    wait_for,
    write,
)

INTERVAL, SETTLE = 0.2, 0.5  # wsgireload's options here: a scan every 0.2 s, 0.5 s settle
CLIENTS = 4
SAMPLE = 0.025  # seconds between two samples of the master's children
BEFORE = 1.0  # seconds of load measured before the edit
TAIL = 0.5  # seconds of load after the new code is everywhere (late failures count too)
OLD, NEW = "old", "new code"  # of different sizes: a same-size edit in the same second
# would leave Python's .pyc check loading the old module

APP = """\
import logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [%(process)d] %(levelname)s %(message)s")
time.sleep({boot})  # what importing the app costs
import mod

def app(environ, start_response):
    time.sleep(0.01)  # some work, so that 4 clients keep every worker answering
    body = ("%d %s" % (os.getpid(), mod.VERSION)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

{wrap}
"""
PLAIN = "application = app"
WRAPPED = """\
from wsgireload import Reloader
application = Reloader(app, interval={interval}, settle={settle}{extra})
"""
NO_ROLLOUT = "n/a (this wsgireload has no rollout option)"
ASGI_APP = """\
import logging, os, sys, asyncio, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s [%(process)d] %(levelname)s %(message)s")
time.sleep({boot})  # what importing the app costs
import mod

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({{"type": message["type"] + ".complete"}})
            if message["type"] == "lifespan.shutdown":
                return
    await asyncio.sleep(0.01)  # some work
    body = ("%d %s" % (os.getpid(), mod.VERSION)).encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})

{wrap}
"""
ASGI_WRAPPED = """\
from wsgireload.asgi import Reloader
app = Reloader(app, interval={interval}, settle={settle}{extra})
"""
ASGI_SERVERS = ("uvicorn", "granian", "hypercorn")


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: a server set up one way, reloaded one way."""

    server: str  # what the table shows
    reload: str
    kind: str  # "gunicorn", "nobody" (gunicorn as root, workers as nobody) or "uwsgi"
    workers: int
    by_hand: Optional[str] = None  # "hup" or "chain" (uWSGI's master FIFO); None: wsgireload
    rollout: Optional[str] = None  # the Reloader's rollout option, where the row asks for it
    lazy: bool = False  # uWSGI: --lazy-apps --master-fifo
    action: Optional[str] = None  # the Reloader's action option, where the row asks for it

    @property
    def label(self) -> str:
        return f"{self.server}, {self.reload}"


@dataclasses.dataclass
class Figures:
    """What one run of a case measured (seconds; None: not reached within the bound)."""

    requests: int  # answered requests in flight during the reload (the edit to everywhere)
    failed: int  # over the whole load
    slowest_before: float  # the slowest request of the second before the edit
    slowest: float
    p99: float
    peak: int  # most worker processes alive at once
    new_workers: int  # distinct worker processes started after the edit
    began: Optional[float]  # the first new worker process, after the edit
    everywhere: Optional[float]
    errors: List[str]


def rollout_supported() -> bool:
    """Whether this wsgireload has the ``rollout`` option (issue 16)."""
    from wsgireload._options import Options

    return "rollout" in {field.name for field in dataclasses.fields(Options)}


def cases(quick: bool, nobody: bool) -> List[Case]:
    gunicorn: List[Case] = []
    for workers in (3,) if quick else (3, 1):
        server = f"gunicorn sync -w {workers}"
        gunicorn += [
            Case(server, "HUP by hand (no wsgireload)", "gunicorn", workers, by_hand="hup"),
            Case(server, "wsgireload, all-at-once", "gunicorn", workers, rollout="all-at-once"),
            Case(server, "wsgireload, one-by-one", "gunicorn", workers, rollout="one-by-one"),
        ]
    if nobody and not quick:
        server = "gunicorn sync -w 3 --user nobody"
        gunicorn += [
            Case(server, "wsgireload, all-at-once", "nobody", 3, rollout="all-at-once"),
            Case(server, "wsgireload, one-by-one", "nobody", 3, rollout="one-by-one"),
        ]
    lazy = "uWSGI --lazy-apps --master-fifo, 3 workers"
    uwsgi = [
        Case(lazy, "chain reload by hand (FIFO `c`)", "uwsgi", 3, by_hand="chain", lazy=True),
        Case(lazy, "wsgireload (chain reload)", "uwsgi", 3, lazy=True),
    ]
    if not quick:
        prefork = "uWSGI prefork, 3 workers"
        uwsgi += [
            Case(prefork, "HUP by hand (full reload)", "uwsgi", 3, by_hand="hup"),
            Case(prefork, "wsgireload (`uwsgi.reload()`)", "uwsgi", 3),
        ]
    asgi = [] if quick else [
        Case("uvicorn --workers 3", "HUP by hand (no wsgireload)", "uvicorn", 3, by_hand="hup"),
        Case("uvicorn --workers 3", "wsgireload", "uvicorn", 3),
        Case("granian --workers 2", "HUP by hand (no wsgireload)", "granian", 2, by_hand="hup"),
        Case("granian --workers 2", "wsgireload", "granian", 2),
        Case("hypercorn --workers 3", "HUP by hand (no wsgireload)", "hypercorn", 3,
             by_hand="hup"),
        Case("hypercorn --workers 3", "wsgireload, action='hypercorn' (auto: none)",
             "hypercorn", 3, action="hypercorn"),
    ]
    return gunicorn + uwsgi + asgi


def unavailable(case: Case, has_rollout: bool) -> Optional[str]:
    """Why ``case`` cannot run here, or None."""
    if case.rollout == "one-by-one" and not has_rollout:
        return NO_ROLLOUT
    if case.kind == "uwsgi" and shutil.which(bin_path("uwsgi")) is None:
        return "n/a (uWSGI is not installed)"
    if case.kind == "nobody" and (os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK)):
        return "n/a (needs root and /usr/bin/python3)"
    if case.kind in ASGI_SERVERS and shutil.which(bin_path(case.kind)) is None:
        return f"n/a ({case.kind} is not installed)"
    return None


def children(pid: int) -> List[int]:
    """The children of ``pid``'s main thread: gunicorn's arbiter and uWSGI's master fork there;
    multiprocessing's resource tracker (uvicorn's, hypercorn's) is not a worker."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            found = [int(p) for p in handle.read().split()]
    except OSError:
        return []
    return [child for child in found if b"resource_tracker" not in cmdline(child)]


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


class TimedLoad(Load):
    """The harness's load, with each request's start and end, and what each worker answered."""

    def __init__(self, port: int, max_seconds: float) -> None:
        super().__init__(port, threads=CLIENTS, max_seconds=max_seconds)
        self.requests: List[Tuple[float, float]] = []  # (start, end) of answered requests
        self.latest: Dict[int, str] = {}  # worker pid: the version it answered last

    def _loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            start = time.monotonic()
            try:
                status, body = get(self.port)
            except Exception as exc:  # a refused or reset connection is a failed request
                status, body = 0, repr(exc).encode()
            end = time.monotonic()
            with self._lock:
                if status == 200:
                    pid, version = body.decode().split(" ", 1)
                    self.latest[int(pid)] = version
                    self.requests.append((start, end))
                    self.result.ok += 1
                else:
                    self.result.failed += 1
                    self.result.errors.append(f"HTTP {status}: {body[:200]!r}" if status else
                                              body.decode())
            time.sleep(self.pause)

    def answered(self, version: str) -> int:
        with self._lock:
            return sum(1 for v in self.latest.values() if v == version)

    def all_answered(self, pids: Sequence[int], version: str) -> bool:
        with self._lock:
            return all(self.latest.get(pid) == version for pid in pids)


class Sampler:
    """The master's children every SAMPLE seconds, and when the new code was everywhere."""

    def __init__(self, master: int, workers: int, load: TimedLoad) -> None:
        self.master, self.workers, self.load = master, workers, load
        self.initial = set(children(master))
        self.peak = len(self.initial)
        self.seen: Set[int] = set(self.initial)
        self.began: Optional[float] = None
        self.everywhere: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE):
            now, live = time.monotonic(), children(self.master)
            self.peak = max(self.peak, len(live))
            if self.began is None and set(live) - self.initial:
                self.began = now
            self.seen.update(live)
            new = self.load.all_answered(live, NEW)
            if self.everywhere is None and new and len(live) == self.workers:
                self.everywhere = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def p99(values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else 0.0


def make_app(app_dir: Path, case: Case, boot: float, has_rollout: bool) -> None:
    asgi = case.kind in ASGI_SERVERS
    if case.by_hand:
        wrap = "" if asgi else PLAIN
    else:
        extra = f", rollout={case.rollout!r}" if case.rollout and has_rollout else ""
        extra += f", action={case.action!r}" if case.action else ""
        wrap = (ASGI_WRAPPED if asgi else WRAPPED).format(
            interval=INTERVAL, settle=SETTLE, extra=extra)
    write(app_dir / "mod.py", f"VERSION = {OLD!r}\n")
    write(app_dir / "wsgi.py", (ASGI_APP if asgi else APP).format(boot=boot, wrap=wrap))


def asgi_server(case: Case, directory: Path, port: int) -> Server:
    argv = {
        "uvicorn": [bin_path("uvicorn"), "--workers", str(case.workers), "--port", str(port),
                    "--no-access-log", "wsgi:app"],
        "granian": [bin_path("granian"), "--interface", "asgi", "--workers", str(case.workers),
                    "--port", str(port), "--no-access-log", "wsgi:app"],
        "hypercorn": [bin_path("hypercorn"), "--workers", str(case.workers), "--bind",
                      f"127.0.0.1:{port}", "wsgi:app"],
    }[case.kind]
    return Server(argv, cwd=directory / "app", port=port, log_path=directory / "server.log",
                  env={"TMPDIR": str(directory / "run"), "XDG_RUNTIME_DIR": ""})


def gunicorn_server(case: Case, directory: Path, port: int) -> Server:
    argv = [sys.executable, "-m", "gunicorn", *gunicorn_no_control_socket(),
            "-w", str(case.workers), "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "15", "--timeout", "30", "wsgi:application"]
    env = {"TMPDIR": str(directory / "run"), "XDG_RUNTIME_DIR": ""}  # a private reload record
    return Server(argv, cwd=directory / "app", port=port,
                  log_path=directory / "server.log", env=env)


def nobody_server(case: Case, directory: Path, port: int) -> Server:
    """gunicorn as root with ``--user nobody`` workers, from the real-server tests' virtualenv
    on the system Python (nobody cannot read a Python under /root), in a 0755 directory."""
    from tests.servers.test_field_deployments import _readable_by_all, nobody_venv

    python = str(nobody_venv() / "bin" / "python")
    site, app_dir, run = directory / "site", directory / "app", directory / "run"
    shutil.copytree(Path(ROOT) / "wsgireload", site / "wsgireload",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _readable_by_all(directory)
    os.chown(run, 65534, 65534)  # the workers' TMPDIR: their reload records go here
    os.chmod(run, 0o700)
    control = subprocess.run(
        [python, "-c", "import gunicorn.config as c; print(hasattr(c, 'ControlSocket'))"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip() == "True"
    argv = [python, "-m", "gunicorn", *(["--no-control-socket"] if control else []),
            "-w", str(case.workers), "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "15", "--timeout", "30",
            "--user", "nobody", "--group", "nogroup", "wsgi:application"]
    return Server(argv, cwd=app_dir, port=port, log_path=directory / "server.log",
                  env={"TMPDIR": str(run), "XDG_RUNTIME_DIR": ""},
                  pythonpath=[str(app_dir), str(site)])


def uwsgi_server(case: Case, directory: Path, port: int) -> Server:
    from tests.servers.test_uwsgi import UwsgiServer, uwsgi_argv

    extra = ["--lazy-apps", "--master-fifo", str(directory / "master.fifo")] if case.lazy else []
    argv = uwsgi_argv(port, directory / "app", extra)
    argv[argv.index("--processes") + 1] = str(case.workers)
    return UwsgiServer(argv, cwd=directory / "app", port=port,
                       log_path=directory / "server.log",
                       env={"TMPDIR": str(directory / "run"), "XDG_RUNTIME_DIR": ""})


SERVERS: Dict[str, Callable[[Case, Path, int], Server]] = {
    "gunicorn": gunicorn_server, "nobody": nobody_server, "uwsgi": uwsgi_server,
    **{kind: asgi_server for kind in ASGI_SERVERS},
}


def reload_by_hand(case: Case, master: int, directory: Path) -> None:
    if case.by_hand == "hup":
        os.kill(master, signal.SIGHUP)
    elif case.by_hand == "chain":
        fd = os.open(directory / "master.fifo", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"c")
        finally:
            os.close(fd)


@contextlib.contextmanager
def workdir(case: Case) -> Iterator[Path]:
    """A temporary directory for one run, removed afterwards; nobody's workers must reach
    theirs, so it is a 0755 one outside /root and any private temp dir."""
    top = "/var/tmp" if case.kind == "nobody" else None
    directory = Path(tempfile.mkdtemp(prefix="wsgireload-disturbance-", dir=top))
    try:
        os.chmod(directory, 0o755 if top else 0o700)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(case: Case, boot: float, directory: Path, has_rollout: bool) -> Figures:
    """Start the case's server, load it, edit once, reload; stop it whatever happens."""
    (directory / "app").mkdir(parents=True)
    (directory / "run").mkdir()
    make_app(directory / "app", case, boot, has_rollout)
    server = SERVERS[case.kind](case, directory, free_port())
    bound = 10.0 + 4 * case.workers * (boot + 1.0)  # seconds for the new code to be everywhere
    try:
        server.start(timeout=30 + 2 * boot)
        assert server.proc is not None
        master = server.proc.pid
        load = TimedLoad(server.port, max_seconds=60 + bound)
        with load:
            if not wait_for(lambda: load.answered(OLD) >= case.workers, 30):
                raise RuntimeError(f"{case.label}: not every worker answered\n{server.log()}")
            time.sleep(BEFORE)
            sampler = Sampler(master, case.workers, load)
            edited = time.monotonic()
            write(directory / "app" / "mod.py", f"VERSION = {NEW!r}\n")
            reload_by_hand(case, master, directory)
            wait_for(lambda: sampler.everywhere is not None, bound, interval=SAMPLE)
            time.sleep(TAIL)
            load.stop()
            sampler.stop()
        end = sampler.everywhere or edited + bound
        # In flight at any moment of the reload: a request sent just before the edit and
        # queued behind a worker that then leaves waits for the new one too.
        during = [e - s for s, e in load.requests if s <= end and e >= edited]
        before = [e - s for s, e in load.requests if s >= edited - BEFORE and e < edited]
        return Figures(
            requests=len(during), failed=load.result.failed,
            slowest_before=max(before, default=0.0), slowest=max(during, default=0.0),
            p99=p99(during), peak=sampler.peak,
            new_workers=len(sampler.seen - sampler.initial),
            began=None if sampler.began is None else sampler.began - edited,
            everywhere=None if sampler.everywhere is None else sampler.everywhere - edited,
            errors=load.result.errors[:5],
        )
    finally:
        server.stop()


# -- the table ------------------------------------------------------------------------------
HEADER = ("server", "reload", "app import", "requests during", "failed", "slowest before",
          "slowest during", "p99 during", "peak workers", "new workers", "reload began",
          "new code everywhere")


def seconds(values: Sequence[Optional[float]], bound: str = "") -> str:
    """``2.09 s``; with repeats the median and the range; a run that never got there: ``>``."""
    if any(v is None for v in values):
        return f"not within {bound}" if bound else "never"
    numbers = [float(v) for v in values if v is not None]
    text = f"{statistics.median(numbers):.3f} s"
    return text if len(numbers) == 1 else f"{text} ({min(numbers):.3f}-{max(numbers):.3f})"


def row(case: Case, boot: float, runs: Sequence[Figures], missing: Optional[str]) -> str:
    head = [case.server, case.reload, f"{boot:g} s"]
    if missing is not None:
        return "| " + " | ".join(head + [missing] + [""] * (len(HEADER) - 4)) + " |"
    bound = f"{10.0 + 4 * case.workers * (boot + 1.0):g} s"
    cells = head + [
        str(round(statistics.median(r.requests for r in runs))),
        str(sum(r.failed for r in runs)),
        seconds([r.slowest_before for r in runs]),
        f"**{seconds([r.slowest for r in runs])}**",
        seconds([r.p99 for r in runs]),
        f"{max(r.peak for r in runs)} (of {case.workers})",
        str(max(r.new_workers for r in runs)),
        seconds([r.began for r in runs]),
        seconds([r.everywhere for r in runs], bound),
    ]
    return "| " + " | ".join(cells) + " |"


def versions() -> str:
    import gunicorn

    uwsgi = bin_path("uwsgi")
    try:
        uwsgi_version = subprocess.run([uwsgi, "--version"], capture_output=True, text=True,
                                       timeout=30).stdout.strip() or "?"
    except OSError:
        uwsgi_version = "not installed"
    try:
        commit = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h %cs"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        commit = ""
    asgi = []
    for name in ASGI_SERVERS:
        try:
            asgi.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            asgi.append(f"{name} not installed")
    return (f"Python {platform.python_version()}, gunicorn {gunicorn.__version__}, "
            f"uWSGI {uwsgi_version}, {', '.join(asgi)}, wsgireload {commit or '(no git)'}, "
            f"{os.cpu_count()} CPUs, {platform.system()}")


def table(results: Sequence[Tuple[Case, float, List[Figures], Optional[str]]],
          command: str, has_rollout: bool) -> str:
    lines = [
        f"`{command}`",
        "",
        f"{versions()}; rollout option: "
        f"{'yes' if has_rollout else 'no (all-at-once rows: wsgireload with no option)'}; "
        f"wsgireload interval={INTERVAL}, settle={SETTLE}, its boot check on; "
        f"{CLIENTS} client threads, a new connection per request; "
        f"{max((len(r[2]) for r in results), default=0)} run(s) per row.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += [row(case, boot, runs, missing) for case, boot, runs, missing in results]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="gunicorn -w 3 and uWSGI's chain reload only (about 1 minute)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (default 1)")
    parser.add_argument("--boot", type=float, action="append",
                        help="seconds the app's import takes (repeatable; default 0.2 and 2)")
    parser.add_argument("--only", help="only the rows whose 'server, reload' holds this text")
    parser.add_argument("--no-nobody", action="store_true",
                        help="leave out gunicorn --user nobody (it needs root)")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--max-seconds", type=float,
                        help="rows not started by then are left out (default 420; --quick 150)")
    args = parser.parse_args(argv)
    boots = args.boot or [0.2, 2.0]
    has_rollout = rollout_supported()
    chosen = [c for c in cases(args.quick, not args.no_nobody)
              if args.only is None or args.only in c.label]
    results: Dict[Tuple[Case, float], List[Figures]] = {(c, b): [] for c in chosen for b in boots}
    missing = {key: unavailable(key[0], has_rollout) for key in results}
    stop_at = time.monotonic() + (args.max_seconds or (150 if args.quick else 420))
    for repeat in range(args.repeat):
        for case, boot in results:
            if missing[case, boot] is not None:
                continue
            if time.monotonic() > stop_at:
                if not results[case, boot]:
                    missing[case, boot] = "left out (the run's time bound, --max-seconds)"
                continue
            print(f"[{repeat + 1}/{args.repeat}] {case.label}, import {boot:g} s",
                  file=sys.stderr, flush=True)
            with workdir(case) as directory:
                try:
                    figures = measure(case, boot, directory, has_rollout)
                except Exception as exc:  # one broken row must not cost the others
                    log = directory / "server.log"
                    print(f"  failed: {exc!r}", file=sys.stderr)
                    if log.exists():
                        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
                    if not results[case, boot]:  # else the row shows the runs that worked
                        missing[case, boot] = f"failed to run ({type(exc).__name__})"
                    continue
            results[case, boot].append(figures)
            if figures.errors:
                print(f"  failed requests: {figures.errors}", file=sys.stderr)
    command = shlex.join(["python", "benchmarks/reload_disturbance.py",
                          *(sys.argv[1:] if argv is None else argv)])
    text = table([(c, b, runs, missing[c, b]) for (c, b), runs in results.items()],
                 command, has_rollout)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
