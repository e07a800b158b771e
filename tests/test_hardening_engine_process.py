"""Process faults: fork after the watcher started, an orphaned worker, signals mid-scan, exit.

Forked children report through a pipe and leave with os._exit; every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from wsgireload import Reloader

from .conftest import (
    FakeClock,
    Recorder,
    environ,
    force_due,
    make_reloader,
    run_in_child,
    serve,
)

REPO = str(Path(__file__).resolve().parents[1])


def ok_app(env: Any, start_response: Any) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    path = tmp_path / "watched.cfg"
    path.write_text("v1")
    return path


def test_fork_after_the_watcher_started(watched: Path) -> None:
    """The child never inherits the parent's (dead) thread; it starts its own at its first
    request, which then reloads in the child alone."""
    parent_calls = Recorder()
    child_calls: List[int] = []

    def action(changes: Any) -> None:
        if os.getpid() == parent_pid:
            parent_calls(changes)
        else:
            child_calls.append(os.getpid())

    parent_pid = os.getpid()
    reloader, clock = make_reloader(ok_app, watched, action)
    try:
        serve(reloader, environ())
        parent_thread = reloader._thread  # noqa: SLF001
        assert parent_thread is not None and parent_thread.is_alive()

        def child() -> Dict[str, Any]:
            before = {
                "thread": reloader._thread is not None,  # noqa: SLF001
                "watchers": [
                    t.name for t in threading.enumerate() if t.name == "wsgireload-watcher"
                ],
                "steady": reloader._steady,  # noqa: SLF001
            }
            got, errors = serve(reloader, environ())
            thread = reloader._thread  # noqa: SLF001
            after = {
                "alive": thread is not None and thread.is_alive(),
                "own": thread is not parent_thread,
                "watchers": sum(t.name == "wsgireload-watcher" for t in threading.enumerate()),
                "body": got[0].decode() if got else None,
            }
            force_due(reloader, watched, clock)
            serve(reloader, environ())
            reloader.close()
            return {
                "before": before,
                "after": after,
                "child_calls": len(child_calls),
                "alive_after_close": thread is not None and thread.is_alive(),
            }

        result = run_in_child(child)
        assert result["before"] == {"thread": False, "watchers": [], "steady": False}, result
        assert result["after"] == {"alive": True, "own": True, "watchers": 1, "body": "ok"}, result
        assert result["child_calls"] == 1 and result["alive_after_close"] is False
        # The parent is untouched: its thread runs, nothing fired here.
        assert parent_thread.is_alive() and reloader._thread is parent_thread  # noqa: SLF001
        assert parent_calls.count == 0
        serve(reloader, environ())
        assert parent_calls.count == 0
    finally:
        reloader.close()


def test_fork_while_a_reload_is_due_does_not_double_fire(watched: Path) -> None:
    """A change set due in the parent fires in the parent; the child does not repeat it."""
    calls: List[int] = []
    reloader, clock = make_reloader(ok_app, watched, lambda c: calls.append(os.getpid()))
    try:
        serve(reloader, environ())
        force_due(reloader, watched, clock)

        def child() -> Dict[str, Any]:
            serve(reloader, environ())
            serve(reloader, environ())
            reloader.close()
            return {"calls": len(calls), "due": reloader.reload_due is not None}

        assert run_in_child(child) == {"calls": 0, "due": False}
        serve(reloader, environ())
        assert calls == [os.getpid()]
    finally:
        reloader.close()


KILL_FUNCS = ("kill", "killpg")


@pytest.mark.parametrize(
    "server_keys",
    [{}, {"SERVER_SOFTWARE": "waitress"}, {"gunicorn.socket": object()}],
    ids=["standalone", "waitress", "gunicorn-looking"],
)
def test_auto_action_without_a_known_master_signals_nobody(
    watched: Path, monkeypatch: Any, caplog: Any, server_keys: Dict[str, Any]
) -> None:
    """An orphaned worker or a standalone server: action='auto' warns and sends no signal.

    (This process's parent is pytest's, not a server master, exactly like an orphan whose
    master died.)
    """
    sent: List[Any] = []
    for name in KILL_FUNCS:
        real = getattr(os, name)

        def fake(pid: int, sig: int, _real: Any = real, _name: str = name) -> None:
            if sig != 0:  # signal 0 only probes that a process exists
                sent.append((_name, pid, sig))
            else:
                _real(pid, sig)

        monkeypatch.setattr(os, name, fake)
    monkeypatch.setattr(signal, "pthread_kill", lambda *a: sent.append(("pthread_kill", a)))
    monkeypatch.setattr(os, "abort", lambda: sent.append(("abort",)))
    caplog.set_level(logging.WARNING, logger="wsgireload")
    reloader, clock = make_reloader(ok_app, watched, "auto")
    try:
        serve(reloader, environ(**server_keys))
        force_due(reloader, watched, clock)
        got, errors = serve(reloader, environ(**server_keys))
        assert (got, errors) == ([b"ok"], [])
        assert sent == []
        assert any(
            words in caplog.text
            for words in ("restart it yourself", "not reloading", "will be refused")
        )
    finally:
        reloader.close()


def test_only_the_action_signals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Middleware, engine, detector and policy send no signal of their own, even when a
    reload is due and fires: only the action (here a recording callback) acts."""
    signals: List[Tuple[str, Any]] = []
    for module, name in ((os, "kill"), (os, "killpg"), (signal, "pthread_kill"),
                         (signal, "raise_signal"), (os, "abort")):
        monkeypatch.setattr(module, name, lambda *a, n=name: signals.append((n, a)))
    watched = tmp_path / "watched.txt"
    watched.write_text("1")
    recorder = Recorder()
    reloader, clock = make_reloader(ok_app, watched, recorder)
    try:
        serve(reloader, environ())
        force_due(reloader, watched, clock)
        serve(reloader, environ())
    finally:
        reloader.close()
    assert recorder.count == 1 and signals == []


@pytest.mark.parametrize("handler_raises", [False, True], ids=["handler-returns", "handler-raises"])
def test_signal_during_a_scan_loses_no_change(tmp_path: Path, handler_raises: bool) -> None:
    """SIGALRM every 0.2 ms while the main thread scans 3,000 files (inline mode's situation).

    A handler that raises aborts that scan; the Reloader survives, and every changed file is
    still reported by a later scan (none silently adopted by the interrupted one).
    """
    root = tmp_path / "tree"
    files = []
    for i in range(30):
        sub = root / f"d{i:02d}"
        sub.mkdir(parents=True)
        for j in range(100):
            path = sub / f"f{j:02d}.tpl"
            path.write_bytes(b"")
            files.append(path)
    clock = FakeClock()
    reloader = Reloader(
        ok_app,
        extra_files=[str(root / "**" / "*.tpl")],
        settle=0,
        settle_max=0,
        action=Recorder(),
        clock=clock,
        interval=3600,
        mode="inline",
        validate=None,
    )
    for n, path in enumerate(files):
        os.utime(path, ns=(1, 10**18 + n))

    class Interrupted(Exception):
        pass

    hits = [0]
    raised_in: List[str] = []

    baseline = reloader.detector.baseline
    first, last = str(files[0]), str(files[-1])  # the scan stats in sorted order

    def handler(signum: int, frame: Any) -> None:
        hits[0] += 1
        # Raise once, in the middle of the stat loop: the first file already compared, the
        # last one not yet.
        mid_scan = (
            baseline[first] != (0, 0, 0)
            and baseline[first][0] == 10**18
            and (baseline[last] is None or baseline[last][0] != 10**18 + len(files) - 1)
        )
        if handler_raises and not raised_in and mid_scan:
            raised_in.append(frame.f_code.co_name if frame is not None else "?")
            raise Interrupted()

    old = signal.signal(signal.SIGALRM, handler)
    seen: List[str] = []
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        try:
            for _ in range(3):
                clock.now += 1
                changes = reloader.run_step(clock.now)
                if changes is not None:
                    seen.extend(changes.files)
                    reloader._due = None  # noqa: SLF001 - acknowledge it; no request here
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
        for _ in range(2):  # and once more without signals
            clock.now += 1
            changes = reloader.run_step(clock.now)
            if changes is not None:
                seen.extend(changes.files)
                reloader._due = None  # noqa: SLF001
    finally:
        signal.signal(signal.SIGALRM, old)
        reloader.close()
    assert hits[0] > 0, "the timer never fired during the scans"
    assert bool(raised_in) == handler_raises, "the signal never interrupted a stat loop"
    assert sorted(set(seen)) == sorted(str(p) for p in files)


SHUTDOWN_APP = """
import os, sys, threading, time
sys.path.insert(0, {repo!r})
from wsgireload import Reloader

def app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]

reloader = Reloader(app, interval=0.001, settle=0, settle_max=0, validate="compile",
                    extra_files=[{pattern!r}], action=lambda changes: None)
import io
env = {{"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO(),
       "wsgi.errors": sys.stderr}}
result = reloader(env, lambda *a: None)
list(result)
getattr(result, "close", lambda: None)()
assert any(t.name == "wsgireload-watcher" for t in threading.enumerate())
# Keep files changing so the watcher is mid-scan or mid-compile when the interpreter exits.
for n in range({touches}):
    p = os.path.join({root!r}, "m%d.py" % (n % 50))
    with open(p, "w") as f:
        f.write("x = %d\\n" % n)
time.sleep({linger})
{exit}
"""


@pytest.mark.parametrize(
    "exit_how",
    ["return", "sys.exit(0)", "raise SystemExit(0)"],
    ids=["fall-off", "sys-exit", "raise"],
)
def test_interpreter_shutdown_while_the_watcher_runs_is_silent(
    tmp_path: Path, exit_how: str
) -> None:
    root = tmp_path / "code"
    root.mkdir()
    for n in range(300):
        (root / f"m{n}.py").write_text(f"x = {n}\n")
    for attempt in range(3):
        script = tmp_path / f"app{attempt}.py"
        script.write_text(
            SHUTDOWN_APP.format(
                repo=REPO,
                pattern=str(root / "*.py"),
                root=str(root),
                touches=200 * (attempt + 1),
                linger=0.002 * attempt,
                exit="" if exit_how == "return" else exit_how,
            )
        )
        proc = subprocess.run(
            [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(script)],
            capture_output=True,
            timeout=60,
            env=dict(os.environ, PYTHONDEVMODE="1"),
        )
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr and "Exception" not in stderr, stderr
        assert stderr.strip() == "", stderr


def test_exit_from_a_request_thread_while_the_watcher_scans(tmp_path: Path) -> None:
    """os._exit is not needed: a plain exit with the daemon watcher mid-scan prints nothing."""
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {REPO!r})
        from wsgireload import Reloader
        reloader = Reloader(lambda e, s: [b""], interval=0.0001, include_stdlib=True,
                            action=lambda c: None)
        reloader({{}}, lambda *a: None)
        t = threading.Thread(target=sys.exit, args=(0,))
        t.start(); t.join()
    """)
    )
    proc = subprocess.run(
        [sys.executable, "-X", "dev", str(script)], capture_output=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode(errors="replace")


def test_code_changed_after_a_fork_while_another_thread_held_its_lock() -> None:
    """A gunicorn hook thread may be inside code_changed() when the master forks a worker."""
    from wsgireload import classic

    classic.code_changed()
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with classic._lock:  # noqa: SLF001 - what a concurrent scan looks like
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert inside.wait(5)
    try:
        result = run_in_child(lambda: {"changed": classic.code_changed()}, timeout=10)
    finally:
        release.set()
        holder.join(5)
    assert result == {"changed": False}


ORPHAN = """
import io, json, os, sys, time
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from conftest import FakeClock, force_due, environ, serve
from pathlib import Path
from wsgireload import Reloader

sent = []
real_kill, real_killpg = os.kill, os.killpg
os.kill = lambda pid, sig: sent.append(("kill", pid, sig)) if sig else real_kill(pid, sig)
os.killpg = lambda pid, sig: sent.append(("killpg", pid, sig)) if sig else real_killpg(pid, sig)

def app(env, start_response):
    start_response("200 OK", [])
    return [b"ok"]

watched = Path({watched!r})
clock = FakeClock()
reloader = Reloader(app, extra_files=[str(watched)], settle=0, settle_max=0, interval=3600,
                    validate=None, clock=clock, action="auto")
parent = int(sys.argv[1])  # the master's pid (it may be gone already)
first = serve(reloader, environ(**{{"gunicorn.socket": object(), "SERVER_SOFTWARE": "gunicorn"}}))
deadline = time.monotonic() + 20
while os.getppid() == parent and time.monotonic() < deadline:  # wait to be orphaned
    time.sleep(0.01)
force_due(reloader, watched, clock)
second = serve(reloader, environ(**{{"gunicorn.socket": object(), "SERVER_SOFTWARE": "gunicorn"}}))
reloader.close()
with open({result!r} + ".tmp", "w") as f:
    json.dump({{"sent": sent, "orphaned": os.getppid() != parent, "ok": [first[0], second[0]] ==
               [[b"ok"], [b"ok"]]}}, f)
os.replace({result!r} + ".tmp", {result!r})
"""


def test_orphaned_worker_whose_master_died_signals_nobody(tmp_path: Path) -> None:
    """A 'master' starts a worker and dies; the orphan then sees a change: no signal at all."""
    watched = tmp_path / "w.cfg"
    watched.write_text("1")
    result = tmp_path / "result.json"
    worker = tmp_path / "worker.py"
    worker.write_text(
        ORPHAN.format(
            repo=REPO,
            tests=str(Path(__file__).parent),
            watched=str(watched),
            result=str(result),
        )
    )
    master = (
        "import subprocess, sys\n"
        "import os\n"
        f"subprocess.Popen([sys.executable, {str(worker)!r}, str(os.getpid())],\n"
        "                 start_new_session=True,\n"
        "                 stdout=subprocess.DEVNULL, stderr=open({log!r}, 'wb'))\n".replace(
            "{log!r}", repr(str(tmp_path / "worker.log"))
        )
    )  # the master exits at once, without waiting: its worker is orphaned
    proc = subprocess.run([sys.executable, "-c", master], timeout=30, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 30
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert result.exists(), f"the orphaned worker did not report\n{log}"
    report = json.loads(result.read_text())
    assert report == {"sent": [], "orphaned": True, "ok": True}
