"""Real-server test harness: start a server subprocess on 127.0.0.1, drive load, clean up.

Everything is bounded in time; every process started is killed by its process group.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def bin_path(name: str) -> str:
    """A console script installed beside the running interpreter (the test venv's)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def gunicorn_no_control_socket() -> List[str]:
    """``--no-control-socket`` where gunicorn has a control socket (25+), else nothing.

    gunicorn 25+ binds ``~/.gunicorn/gunicorn.ctl`` by default, so test servers running at once
    would collide; Python 3.9 gets gunicorn 23, which rejects the option as unknown.
    """
    import gunicorn.config

    return ["--no-control-socket"] if hasattr(gunicorn.config, "ControlSocket") else []


# What a user on an older Python cannot have (CI's Python has both): the tests skip, saying so.
needs_gunicorn_asgi = pytest.mark.skipif(
    importlib.util.find_spec("gunicorn.workers.gasgi") is None,
    reason="gunicorn -k asgi needs gunicorn 27 (Python 3.10 or later)")
needs_granian = pytest.mark.skipif(
    importlib.util.find_spec("granian") is None,
    reason="granian 2.8 needs Python 3.10 or later (2.5.7, the last for 3.9, hangs stopping a "
    "worker that runs a thread)")


def write(path: Path, text: str) -> None:
    """Write a file atomically-ish (write then rename), as a deploy tool would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)


def get(port: int, path: str = "/", timeout: float = 10.0) -> Tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    """A server subprocess in its own session; ``stop()`` kills the whole process group."""

    argv: Sequence[str]
    cwd: Path
    port: int
    log_path: Path
    env: Dict[str, str] = field(default_factory=dict)
    # None: the app dir and this repository, then the caller's PYTHONPATH. A list replaces all
    # three (a server whose workers cannot read this repository needs its own copies).
    pythonpath: Optional[Sequence[str]] = None
    proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self, ready_path: str = "/", timeout: float = 30.0) -> "Server":
        env = dict(os.environ)
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        default = (str(self.cwd), _repo_root(), env.get("PYTHONPATH", ""))
        paths = default if self.pythonpath is None else self.pythonpath
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            list(self.argv),
            cwd=str(self.cwd),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self.wait_ready(ready_path, timeout)
        except BaseException:  # never appended to ``servers``: stop it (and close its log) here
            self.stop()
            raise
        return self

    def wait_ready(self, path: str = "/", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}\n{self.log()}")
            try:
                status, _ = get(self.port, path, timeout=2.0)
                if status < 500:
                    return
                last = status
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout}s ({last!r})\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:  # stragglers (workers of a master that is gone) share the group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        self._log.close()
        self.proc = None


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: List[str] = field(default_factory=list)
    bodies: List[Tuple[float, bytes]] = field(default_factory=list)  # (monotonic time, body)
    timings: List[Tuple[float, float]] = field(default_factory=list)  # (started, seconds)

    def bodies_since(self, t0: float) -> List[bytes]:
        return [body for when, body in self.bodies if when >= t0]

    def slowest_since(self, t0: float) -> float:
        """The longest request (seconds) among those started at ``t0`` or later."""
        return max((took for started, took in self.timings if started >= t0), default=0.0)


def assert_no_failed_requests(result: "LoadResult", uwsgi_full_reloads: int = 0) -> None:
    """Every request answered; the one exception is uWSGI's own full reload.

    ``uwsgi.reload()`` (SIGHUP to the master) SIGHUPs every worker at once, and a worker
    interrupted while it reads a request drops that connection (unbit/uwsgi#1371, #1375).
    Measured here: one reset in ~3,200 requests, in about one run of ten. That is the server's
    race, not wsgireload's: only a connection reset, at most one per full reload, is allowed;
    any other failure (a refused connection, an HTTP error, a timeout) fails the test. Chain
    reloads (``--lazy-apps`` with ``--master-fifo``) and gunicorn get no allowance.
    """
    resets = [e for e in result.errors if e.startswith("ConnectionResetError")]
    others = [e for e in result.errors if not e.startswith("ConnectionResetError")]
    assert len(result.errors) == result.failed, result.errors[:5]
    assert not others, others[:5]
    assert len(resets) <= uwsgi_full_reloads, result.errors[:5]


def gunicorn_version() -> Tuple[int, ...]:
    import gunicorn

    return tuple(gunicorn.version_info)


def xfail_old_gthread_resets(result: "LoadResult", gthread: bool) -> None:
    """Excuse gunicorn 23's own gthread bug, and only that: its gthread workers reset a few
    connections on *any* SIGHUP (measured with a HUP sent by hand, without wsgireload; see
    docs/servers/gunicorn.md, caveats); 24.0.0+ lose none. Python 3.9 cannot install 24+."""
    if not (gthread and result.failed and gunicorn_version() < (24,)):
        return
    dropped = ("ConnectionResetError", "RemoteDisconnected", "BrokenPipeError")
    if all(error.startswith(dropped) for error in result.errors):
        pytest.xfail(f"gunicorn {gunicorn_version()} gthread drops connections on HUP")


class Load:
    """Bounded client load from threads: each thread loops GETs until stopped or deadline."""

    def __init__(self, port: int, threads: int = 4, path: str = "/", max_seconds: float = 60.0,
                 pause: float = 0.005) -> None:
        self.port = port
        self.path = path
        self.pause = pause
        self.deadline = time.monotonic() + max_seconds
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open = threading.Event()  # cleared: no new request starts (``held``)
        self._open.set()
        self._busy = 0  # requests in flight
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        return self.result

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No request in flight meanwhile: a test's own SIGKILL of a worker must not be what
        fails a request (the kernel resets the connection the killed worker was serving)."""
        with self._lock:
            self._open.clear()
        try:
            assert wait_for(lambda: self._busy == 0, 15), "requests still in flight"
            yield
        finally:
            self._open.set()

    def _loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            self._open.wait(1.0)
            with self._lock:
                if not self._open.is_set():
                    continue
                self._busy += 1
            started = time.monotonic()
            try:
                status, body = get(self.port, self.path)
                with self._lock:
                    if status == 200:
                        self.result.ok += 1
                        self.result.bodies.append((time.monotonic(), body))
                    else:
                        self.result.failed += 1
                        self.result.errors.append(f"HTTP {status}: {body[:200]!r}")
            except Exception as exc:  # a refused or reset connection is a failed request
                with self._lock:
                    self.result.failed += 1
                    self.result.errors.append(repr(exc))
            with self._lock:
                self.result.timings.append((started, time.monotonic() - started))
                self._busy -= 1
            time.sleep(self.pause)


class ChildSampler:
    """The most child processes ``pid`` had at once, sampled from /proc every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        from wsgireload._system import SYSTEM

        self.peak, self._stop = 0, threading.Event()

        def run() -> None:
            while not self._stop.wait(every):
                self.peak = max(self.peak, len(SYSTEM.children(pid)))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])
