"""Shared fixtures and helpers of the unit tests: a fake clock, file edits without sleeping,
a throwaway importable package, a Reloader whose reload can be made due on demand, a minimal
WSGI "server", a forked child reporting back, and a crafted /proc tree. Every test runs with
a private runtime directory, temp directory and home (see ``private_user_dirs``)."""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import pytest

from wsgireload import Reloader
from wsgireload._system import ProcessInfo, read_process
from wsgireload.actions import Action
from wsgireload.boot import CheckResult
from wsgireload.policy import ChangeSet


@pytest.fixture(scope="session", autouse=True)
def sigint_as_from_a_terminal() -> Iterator[None]:
    """Servers and watchers a test starts get SIGINT's default action, as from a terminal, even
    where the suite runs with SIGINT ignored (a script's background job, ``nohup ... &``): an
    ignored signal stays ignored across exec, a handled one is reset to its default."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="session", autouse=True)
def private_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the runtime directory, the temp directory and home into one private 0700
    directory for the whole session, removed at its end: no test, and no server a test starts
    (it inherits the environment), leaves a master record in the user's
    $XDG_RUNTIME_DIR/wsgireload or <tempdir>/wsgireload-<uid>, nor anything in their home."""
    tmp_path_factory.getbasetemp()  # pytest's own tmp_path directories stay where they are
    root = Path(tempfile.mkdtemp(prefix="wsgireload-tests-"))
    # Others may pass through (not list) root and the temp directory, as through /tmp: a test's
    # child that drops to nobody still reaches the 0755 directory it made there.
    root.chmod(0o711)
    dirs = {"XDG_RUNTIME_DIR": root / "run", "TMPDIR": root / "tmp", "HOME": root / "home"}
    saved = {name: os.environ.get(name) for name in [*dirs, "WSGIRELOAD_PYUWSGI_VENV"]}
    # The pyuwsgi virtualenv is a cache the uWSGI tests build once and keep (see test_uwsgi).
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    os.environ.setdefault(
        "WSGIRELOAD_PYUWSGI_VENV",
        str(Path.home() / ".cache" / "wsgireload-tests" / f"pyuwsgi-venv-{version}"),
    )
    for name, path in dirs.items():
        path.mkdir(mode=0o711 if name == "TMPDIR" else 0o700)
        os.environ[name] = str(path)
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(dirs["TMPDIR"])
    try:
        yield root
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """Run ``fn`` in a thread; fail (not hang) when it takes longer than ``seconds``."""
    box: List[Any] = []
    errors: List[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds}s (hang)"
    if errors:
        raise errors[0]
    return box[0]


class Alive:
    """Which fake (pid, start) processes run."""

    def __init__(self, *pids: int) -> None:
        self.pids = set(pids)

    def __call__(self, pid: int, start: Optional[str]) -> bool:
        return pid in self.pids


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], Path]]:
    """``pkg(name, source)`` writes ``<tmp>/<name>.py`` importable as ``name``; cleaned up after."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    names: List[str] = []

    def make(name: str, source: str = "VALUE = 1\n") -> Path:
        path = root.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.parents:
            if parent == root:
                break
            init = parent / "__init__.py"
            if not init.exists():
                init.write_text("")
        path.write_text(textwrap.dedent(source))
        names.append(name)
        importlib.invalidate_caches()
        return path

    yield make
    for name in names:
        for mod in [m for m in sys.modules if m == name or m.startswith(name.split(".")[0])]:
            sys.modules.pop(mod, None)


def bump(path: Path, seconds: int = 5) -> None:
    """Move a file's mtime without sleeping."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def install(directory: Path, name: str, text: str = "VALUE = 1\n") -> None:
    """Add ``name`` to ``directory`` and move its mtime on by a second (no waiting)."""
    before = directory.stat().st_mtime_ns
    target = directory / name
    if name.endswith("/"):
        target.mkdir()
    else:
        target.write_text(text)
    os.utime(directory, ns=(before + 1_000_000_000, before + 1_000_000_000))


def edit(path: Path, text: str) -> None:
    """Rewrite ``path`` and move its mtime on by a second, so no wall clock is needed."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def ok_app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
    """The smallest WSGI app: 200 OK, ``ok``."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    """A watched file of the test's own (``watched.cfg``), for a Reloader's ``extra_files``."""
    path = tmp_path / "watched.cfg"
    path.write_text("v1")
    return path


class Recorder:
    """An ``action=`` callback that records every call (thread-safe)."""

    def __init__(self, on_call: Optional[Callable[[ChangeSet], None]] = None) -> None:
        self.calls: List[ChangeSet] = []
        self.lock = threading.Lock()
        self.on_call = on_call

    def __call__(self, changes: ChangeSet) -> None:
        if self.on_call is not None:
            self.on_call(changes)
        with self.lock:
            self.calls.append(changes)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.calls)


class ServerReload(Action):
    """Stands for a server's graceful reload, which lets responses in flight finish (it may
    fire from the watcher thread); its calls go to ``recorder``."""

    name = "server-reload"

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def __call__(self, changes: ChangeSet) -> None:
        self.recorder(changes)


class DrainingRecorder(ServerReload):
    """A recording action that, like exit/exec, needs every in-flight response counted."""

    name = "draining-recorder"
    requires_drain = True


def make_reloader(
    app: Any, watched: Path, action: Any, clock: Optional[FakeClock] = None, **options: Any
) -> Tuple[Reloader, FakeClock]:
    """A Reloader watching ``watched`` that acts at once (settle 0) and never scans by itself."""
    clock = clock or FakeClock()
    options.setdefault("interval", 3600.0)  # the watcher thread sleeps; the test steps it
    options.setdefault("validate", None)
    options.setdefault("mode", "thread")
    reloader = Reloader(
        app,
        extra_files=[str(watched)],
        settle=0,
        settle_max=0,
        action=action,
        clock=clock,
        **options,
    )
    return reloader, clock


_bump = [0]
_bump_lock = threading.Lock()


def touch(path: Path) -> None:
    """Give ``path`` a new, never used mtime (no sleeping)."""
    with _bump_lock:
        _bump[0] += 1
        n = _bump[0]
    ns = 1_500_000_000_000_000_000 + n * 1_000_000_000
    os.utime(path, ns=(ns, ns))


def first_step_done(reloader: Reloader) -> None:
    """Wait (bounded) until a started watcher thread's first step (``FIRST_STEP`` after the
    thread starts) has ended."""
    engine = reloader.engine
    deadline = time.monotonic() + 10.0
    while reloader._thread is not None and time.monotonic() < deadline:  # noqa: SLF001
        if engine._stepped:  # noqa: SLF001
            break
        time.sleep(0.002)
    with engine._stepping:  # noqa: SLF001
        pass


def force_due(reloader: Reloader, watched: Path, clock: FakeClock) -> ChangeSet:
    """Change ``watched`` and step the watcher until a reload is due; return the change set."""
    if reloader.engine.pause(3600.0) == 0.0:  # a master's worker: its thread steps at once
        first_step_done(reloader)
    with reloader.engine._stepping:  # noqa: SLF001  (a step of the thread's own ends first)
        pass
    touch(watched)
    clock.now += 1.0
    changes = reloader.run_step(clock.now)
    assert changes is not None, "a changed watched file must make a reload due at settle=0"
    assert reloader.reload_due is changes
    return changes


def environ(**extra: Any) -> Dict[str, Any]:
    """A complete PEP 3333 environ for a GET /."""
    env: Dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    env.update(extra)
    return env


def serve(
    app: Callable[..., Iterable[bytes]],
    env: Dict[str, Any],
    before_close: Optional[Callable[[], None]] = None,
) -> Tuple[List[bytes], List[Tuple[str, BaseException]]]:
    """What a PEP 3333 server does with one request: call, iterate, always close.

    Returns the chunks received and the (stage, exception) pairs seen.
    """
    got: List[bytes] = []
    errors: List[Tuple[str, BaseException]] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        return got.append

    try:
        result = app(env, start_response)
    except Exception as exc:
        errors.append(("call", exc))
        return got, errors
    try:
        for chunk in result:
            got.append(chunk)
    except Exception as exc:
        errors.append(("iter", exc))
    finally:
        if before_close is not None:
            before_close()
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:
                errors.append(("close", exc))
    return got, errors


def serve_a_reload(app: Any, watched: Path, action: Any) -> None:
    """A Reloader of ``app`` serves a request (which starts its watcher), a reload is made due,
    and the next request fires it; the Reloader is closed after, whatever happened."""
    reloader, clock = make_reloader(app, watched, action)
    try:
        serve(reloader, environ())
        force_due(reloader, watched, clock)
        serve(reloader, environ())
    finally:
        reloader.close()


def thread_names() -> List[str]:
    return sorted(t.name for t in threading.enumerate())


def run_in_child(body: Any, timeout: float = 20.0) -> Dict[str, Any]:
    """Fork; run ``body()`` in the child, which returns a JSON-able dict; return that dict."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(read_fd)
            result = body()
        except BaseException as exc:
            result = {"error": repr(exc)}
            code = 1
        try:
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: List[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, "the forked child hung"
            done, status = os.waitpid(pid, os.WNOHANG)
            chunk = _read_nonblocking(read_fd)
            if chunk:
                chunks.append(chunk)
            if done:
                while True:
                    chunk = _read_nonblocking(read_fd)
                    if not chunk:
                        break
                    chunks.append(chunk)
                break
            time.sleep(0.01)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(read_fd)
    result = json.loads(b"".join(chunks) or b"{}")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, result
    return result


def _read_nonblocking(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


class ProcTree:
    """``/proc/<pid>/{stat,status,cmdline}`` for made-up processes.

    ``argv`` is a list (written NUL-separated, as the kernel shows a command line) or raw
    bytes (a process title such as ``b"uWSGI master\\0\\0\\0"``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "self").mkdir(parents=True, exist_ok=True)
        (root / "stat").write_text("cpu 0 0 0 0\nbtime 1700000000\n")

    def add(
        self,
        pid: int,
        argv: Union[Sequence[str], bytes],
        *,
        start: str = "1000",
        uid: int = 1001,
    ) -> Path:
        proc = self.root / str(pid)
        proc.mkdir(parents=True, exist_ok=True)
        # Field 2 with spaces and parentheses, as a renamed process may have: must not shift
        # field 22 (starttime, index 19 after the ")").
        fields = ["S"] + ["0"] * 18 + [start] + ["0"] * 20
        (proc / "stat").write_text(f"{pid} (we (ird) name) " + " ".join(fields) + "\n")
        (proc / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        raw = argv if isinstance(argv, bytes) else b"".join(a.encode() + b"\0" for a in argv)
        (proc / "cmdline").write_bytes(raw)
        return proc

    def remove(self, pid: int) -> None:
        for name in ("stat", "status", "cmdline"):
            (self.root / str(pid) / name).unlink()

    def read(self, pid: int) -> Optional[ProcessInfo]:
        return read_process(pid, str(self.root))


class NeedsNewdep:
    """A boot check's runner: the app boots once ``newdep.py`` is in ``lib``; counts its runs."""

    def __init__(self, lib: Path) -> None:
        self.lib, self.runs = lib, 0

    def __call__(self, python: str, targets: object, **kw: object) -> CheckResult:
        self.runs += 1
        booted = (self.lib / "newdep.py").exists()
        return CheckResult(None if booted else "ModuleNotFoundError: No module named 'newdep'", 0)
