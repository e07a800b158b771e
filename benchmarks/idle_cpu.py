"""Idle CPU of real gunicorn workers watching 3,000 files: 6 workers against 1, side by side.

Run from the repository root: ``python benchmarks/idle_cpu.py`` (``--seconds`` to measure
longer, ``--django`` to add the Django example). Starts the servers at once on loopback, lets
every worker serve until its watcher thread runs (it starts with the worker), then reads
each worker's utime+stime from ``/proc/<pid>/stat`` over the same idle window and prints one
table. One server has no usable directory for the shared record, so each of its workers scans
for itself: what every worker did before. The "no wsgireload" rows serve the same app (and
Django) without it: gunicorn's own cost of idle workers. ``--refused`` adds one worker whose
last deploy the boot check refused (a missing module) before the window: while a refusal
stands, the scanner also watches the directories on ``sys.path``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Tuple

HOST = "127.0.0.1"
# The app without wsgireload (gunicorn's own idle cost) in a module of its own: a Reloader
# created at import starts watching with the worker, served or not.
PLAIN = """\
import os, time

def app(environ, start_response):
    time.sleep(0.05)  # a busy worker makes the others take the next requests
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
APP = PLAIN + """
from wsgireload import Reloader
application = Reloader(app, interval={interval}, extra_files=[{pattern!r}])
"""
DJANGO_PLAIN = """\
import os
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")
app = get_wsgi_application()
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def get(port: int) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def read(path: str) -> str:
    with open(path, errors="replace") as handle:
        return handle.read()


def no_control_socket() -> List[str]:
    """gunicorn 25+ binds one control socket per user: servers running at once would collide."""
    import gunicorn.config

    return ["--no-control-socket"] if hasattr(gunicorn.config, "ControlSocket") else []


def children(pid: int) -> List[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(p) for p in handle.read().split()]


def run_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of ``pid`` (schedstat: finer than clock ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                total += int(handle.read().split()[0])
        except OSError:
            continue  # a thread that ended meanwhile
    return total


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


class Gunicorn:
    def __init__(
        self, name: str, workers: int, cwd: str, env: Dict[str, str], target: str
    ) -> None:
        self.name, self.workers, self.port = name, workers, free_port()
        self.watching = not target.endswith(":app")
        app_dir = cwd
        # The log goes to the server's own temp dir: the Django example runs from the repo.
        self.log = open(os.path.join(env["TMPDIR"], f"{name}.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"{HOST}:{self.port}",
             *no_control_socket(), target],
            cwd=app_dir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def warmed(self) -> int:
        """Workers whose watcher thread runs (a sync worker has one thread until then)."""
        try:
            pids = children(self.proc.pid)
        except OSError:
            return 0
        threads = []
        for pid in pids:
            try:
                threads.append(len(os.listdir(f"/proc/{pid}/task")))
            except OSError:
                threads.append(0)
        return len([n for n in threads if n >= 2]) if len(pids) == self.workers else 0

    def warm(self, timeout: float = 60.0) -> None:
        """Requests from threads until every worker runs its watcher."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.watching and self.warmed() == self.workers:
                return

            def one() -> None:
                try:
                    get(self.port)
                except OSError:
                    time.sleep(0.1)

            threads = [threading.Thread(target=one) for _ in range(self.workers * 2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(15)
            if not self.watching:
                return
        raise RuntimeError(f"{self.name}: only {self.warmed()} of {self.workers} watchers run")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def django_base(servers: List["Gunicorn"], share: Dict[str, float]) -> float:
    return share[servers[4].name] or 1e-9  # the Django example's one-worker row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=20.0, help="idle window measured")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--per-worker", action="store_true", help="each worker's share too")
    parser.add_argument("--django", action="store_true",
                        help="also the Django example (examples/django_wsgi.py, its defaults)")
    parser.add_argument("--refused", action="store_true",
                        help="also 1 worker with a refused deploy standing (a missing module)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="wsgireload-idle-")
    servers: List[Gunicorn] = []
    try:
        files = os.path.join(root, "files")
        for n in range(args.files):
            directory = os.path.join(files, f"pkg{n // 100}")
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, f"m{n}.py"), "w") as handle:
                handle.write(f"VALUE = {n}\n")
        app_dir = os.path.join(root, "app")
        os.mkdir(app_dir)
        with open(os.path.join(app_dir, "wsgi.py"), "w") as handle:
            handle.write(APP.format(interval=args.interval,
                                    pattern=os.path.join(files, "**", "*.py")))
        for name, text in (("plain.py", PLAIN), ("django_plain.py", DJANGO_PLAIN)):
            with open(os.path.join(app_dir, name), "w") as handle:
                handle.write(text)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # A runtime directory other users could write to is refused: no record can be made.
        blocked = os.path.join(root, "tmp-shared")
        os.makedirs(os.path.join(blocked, f"wsgireload-{os.getuid()}"))
        os.chmod(os.path.join(blocked, f"wsgireload-{os.getuid()}"), 0o777)
        base = dict(os.environ, PYTHONPATH=os.pathsep.join([app_dir, repo]), XDG_RUNTIME_DIR="")
        n = args.workers
        plans: List[Tuple[str, int, str, str]] = [
            ("1 worker", 1, "tmp1", "wsgi:application"),
            (f"{n} workers", n, "tmpN", "wsgi:application"),
            # No directory for the record: each worker scans alone, as every worker did before.
            (f"{n} workers, no record", n, blocked, "wsgi:application"),
            (f"{n} workers, no wsgireload", n, "tmp0", "plain:app"),
        ]
        if args.django:
            plans += [
                ("Django example, 1 worker", 1, "tmpD1", "examples.django_wsgi:application"),
                (f"Django example, {n} workers", n, "tmpDN", "examples.django_wsgi:application"),
                (f"Django, {n} workers, no wsgireload", n, "tmpD0", "django_plain:app"),
            ]
        refused = "1 worker, refused deploy"
        if args.refused:  # the same app in a directory of its own, importing one more module
            shutil.copytree(app_dir, os.path.join(root, "app-refused"))
            with open(os.path.join(root, "app-refused", "wsgi.py"), "a") as handle:
                handle.write("import deployed\n")
            with open(os.path.join(root, "app-refused", "deployed.py"), "w") as handle:
                handle.write("VALUE = 1\n")
            plans.append((refused, 1, "tmpR", "wsgi:application"))
        for name, workers, tmp, target in plans:
            tmp = os.path.join(root, tmp)
            os.makedirs(tmp, exist_ok=True)
            cwd = repo if target.startswith(("examples.", "django_plain")) else app_dir
            env = dict(base, TMPDIR=tmp)
            if name == refused:
                cwd = os.path.join(root, "app-refused")
                env["PYTHONPATH"] = os.pathsep.join([cwd, repo])
            servers.append(Gunicorn(name, workers, cwd, env, target))
        for server in servers:
            server.warm()
        if args.refused:  # a deploy that compiles but cannot boot, refused before the window
            with open(os.path.join(root, "app-refused", "deployed.py"), "w") as handle:
                handle.write("import a_module_that_is_not_installed\nVALUE = 2\n")
            deadline = time.monotonic() + 60
            while "not reloading" not in read(os.path.join(root, "tmpR", f"{refused}.log")):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{refused}: no refusal logged")
                time.sleep(0.2)
        time.sleep(2 * args.interval + 1.0)  # leases settled, first scans done
        pids = {server.name: children(server.proc.pid) for server in servers}
        before = {pid: cpu_ticks(pid) for group in pids.values() for pid in group}
        before_ns = {pid: run_ns(pid) for group in pids.values() for pid in group}
        started = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - started
        after = {pid: cpu_ticks(pid) for group in pids.values() for pid in group}
        after_ns = {pid: run_ns(pid) for group in pids.values() for pid in group}
        precise = {
            name: sum(after_ns[p] - before_ns[p] for p in group) / 1e9 / elapsed
            for name, group in pids.items()
        }
        tick = os.sysconf("SC_CLK_TCK")
        share = {
            name: sum(after[p] - before[p] for p in group) / tick / elapsed
            for name, group in pids.items()
        }
        one = share[servers[0].name] or 1 / tick / elapsed  # never divide by zero
        print(f"gunicorn idle, {args.files} files watched, interval={args.interval}s, "
              f"{elapsed:.1f}s measured, all at once (worker CPU: utime+stime from "
              "/proc/<pid>/stat; schedstat: the same in nanoseconds)")
        print(f"{'server':30s} {'workers':>7s} {'worker CPU':>11s} {'per worker':>11s} "
              f"{'vs 1 worker':>11s} {'schedstat':>10s} {'vs 1':>6s}")
        for server in servers:
            total = share[server.name]
            base_share = django_base(servers, share) if "Django" in server.name else one
            first = servers[4 if "Django" in server.name else 0].name
            print(f"{server.name:30s} {server.workers:7d} {total * 100:10.2f}% "
                  f"{total / server.workers * 100:10.2f}% {total / base_share:10.2f}x "
                  f"{precise[server.name] * 100:9.3f}% "
                  f"{precise[server.name] / (precise[first] or 1e-9):5.2f}x")
        if args.per_worker:
            for name, group in pids.items():
                parts = ", ".join(
                    f"{(after_ns[p] - before_ns[p]) / 1e7 / elapsed:.4f}%" for p in group
                )
                print(f"  {name}: {parts}")
        # The verdict uses schedstat (nanoseconds): utime+stime count whole clock ticks (10 ms),
        # too coarse for the Django example's few ticks a minute.
        def verdict(label: str, many: str, single: str) -> None:
            ratio = precise[many] / (precise[single] or 1e-9)
            print(f"{label}: {args.workers} workers against 1 (schedstat): {ratio:.2f}x "
                  f"({'met' if ratio <= 1.2 else 'NOT met'}; target <= 1.2x)")

        verdict(f"{args.files:,} files", servers[1].name, servers[0].name)
        if args.refused:
            ratio = precise[refused] / (precise[servers[0].name] or 1e-9)
            print(f"{refused}: {ratio:.2f}x the CPU of 1 worker without (schedstat)")
        if args.django:
            verdict("Django example", servers[5].name, servers[4].name)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

