"""Concurrency: 32 client threads against a real threaded server while files keep changing.

A wsgiref ThreadingMixIn server runs in this process (loopback, every wait bounded), so the
action's calls can be counted directly: exactly one per settled change set, no failed request.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Iterator, List, Optional, Set
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from wsgireload import Reloader
from wsgireload.policy import ChangeSet

from .conftest import Recorder
from .servers.harness import Load, wait_for


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class Guard:
    """Outermost layer: records any exception the Reloader lets out (there must be none)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.errors: List[BaseException] = []

    def __call__(self, env: Any, start_response: Any) -> Iterator[bytes]:
        try:
            result = self.app(env, start_response)
        except BaseException as exc:
            self.errors.append(exc)
            raise
        try:
            yield from result
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException as exc:
                    self.errors.append(exc)
                    raise


def body(env: Any, start_response: Any) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok ", env.get("PATH_INFO", "").encode("latin-1")]


class Writer:
    """Rewrites files continuously (valid and broken code, new files) for ``seconds``."""

    def __init__(self, root: Path, seconds: float, tag: str) -> None:
        self.root, self.seconds, self.tag = root, seconds, tag
        self.touched: Set[str] = set()
        self.times: List[float] = []  # when each write happened
        self.thread = threading.Thread(target=self.run, daemon=True)

    def pauses(self, longer_than: float) -> int:
        """Pauses between two writes longer than this: with 64 threads on the GIL, a starved
        writer can pause longer than the settle time, and a deploy that pauses that long is
        two change sets."""
        return sum(b - a > longer_than for a, b in zip(self.times, self.times[1:]))

    def run(self) -> None:
        rng = random.Random(self.tag)
        deadline = time.monotonic() + self.seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            kind = rng.random()
            if kind < 0.4:
                path = self.root / f"mod{rng.randrange(10)}.py"
                # Half-written code on the way; the end state below is always valid.
                text = f"x = {n}\n" if rng.random() < 0.8 else "def broken(:\n"
            elif kind < 0.9:
                path = self.root / f"conf{rng.randrange(10)}.cfg"
                text = f"n={n}\n"
            else:
                path = self.root / f"new-{self.tag}-{n}.cfg"
                text = "new\n"
            path.write_text(text)
            self.times.append(time.monotonic())
            self.touched.add(str(path))
            time.sleep(0.005)
        for i in range(10):  # the deploy ends with valid code everywhere
            path = self.root / f"mod{i}.py"
            path.write_text(f"x = 'final {self.tag}'\n")
            self.times.append(time.monotonic())
            self.touched.add(str(path))


@pytest.mark.server
def test_32_threads_while_files_change_one_action_per_settled_change_set(
    tmp_path: Path, caplog: Any
) -> None:
    root = tmp_path / "code"
    root.mkdir()
    for i in range(10):
        (root / f"mod{i}.py").write_text("x = 0\n")
        (root / f"conf{i}.cfg").write_text("n=0\n")
    recorder = Recorder()
    reloader = Reloader(
        body,
        extra_files=[str(root / "*.py"), str(root / "*.cfg")],
        interval=0.05,
        settle=0.8,  # a writer pausing this long under load would split a burst in two
        settle_max=20.0,
        validate="compile",
        action=recorder,
        mode="thread",
    )
    due: List[ChangeSet] = []
    real_run_step = reloader.run_step

    def recording_run_step(now: float) -> Optional[ChangeSet]:
        changes = real_run_step(now)
        if changes is not None:
            due.append(changes)
        return changes

    reloader.run_step = recording_run_step  # type: ignore[method-assign]
    guard = Guard(reloader)
    caplog.set_level(logging.WARNING, logger="wsgireload")
    server = make_server(
        "127.0.0.1", 0, guard, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    port = server.server_address[1]
    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    serving.start()
    t_start = time.monotonic()
    try:
        with Load(port, threads=32, path="/load", max_seconds=40, pause=0.001) as load:
            assert wait_for(lambda: load.result.ok > 32, 10), "the server never answered"
            bursts = []  # (files touched, the actions it caused)
            for n, seconds in enumerate((2.5, 1.5)):
                before = recorder.count
                writer = Writer(root, seconds, tag=str(n))
                writer.thread.start()
                writer.thread.join(timeout=seconds + 10)
                assert not writer.thread.is_alive()
                assert wait_for(lambda b=before: recorder.count > b, 15), (
                    f"burst {n}: no action within 15 s (due: {len(due)})"
                )
                # Quiet for a while: nothing more may fire for this burst.
                time.sleep(reloader.policy.settle + 0.3)
                fired = recorder.count - before
                # One action per burst, or one more per pause of the writer near the settle
                # time (half of it: scans see writes late by up to an interval, or more when
                # starved themselves).
                allowed = 1 + writer.pauses(reloader.policy.settle / 2)
                assert fired <= allowed, f"burst {n} fired {fired} times ({allowed} allowed)"
                bursts.append((writer.touched, list(range(before, recorder.count))))
            result = load.stop()
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)
        reloader.close()
    elapsed = time.monotonic() - t_start
    assert not serving.is_alive(), "the server did not stop (deadlock?)"
    assert result.failed == 0, result.errors[:5]
    assert guard.errors == []
    assert [c.fingerprint for c in recorder.calls] == [c.fingerprint for c in due]
    assert len(due) == sum(len(actions) for _, actions in bursts)
    for touched, actions in bursts:  # every file a burst touched is in one of its actions
        files = {path for i in actions for path in due[i].files}
        assert touched <= files, sorted(touched - files)[:5]
    assert "watcher failed" not in caplog.text
    assert "reload action" not in caplog.text
    assert elapsed < 45
    print(f"\n{result.ok} requests, 0 failed, 2 bursts -> {len(due)} actions in {elapsed:.1f}s")


def test_inline_mode_on_a_threaded_server_reports_each_change_once(
    tmp_path: Path, caplog: Any
) -> None:
    """mode='inline' under 16 request threads: scans must not overlap.

    Two overlapping scans both saw the same new file; the second reported it again after the
    first change set had fired, so one change caused two actions.
    """
    from .conftest import environ, serve

    root = tmp_path / "conf"
    root.mkdir()
    for i in range(200):
        (root / f"f{i}.cfg").write_text("x")
    recorder = Recorder()
    reloader = Reloader(
        body,
        extra_files=[str(root / "*.cfg")],
        interval=0.0005,
        settle=0,
        settle_max=0,
        action=recorder,
        mode="inline",
        validate=None,
    )
    caplog.set_level(logging.ERROR, logger="wsgireload")
    stop = time.monotonic() + 2.0
    failures: List[Any] = []

    def requests() -> None:
        while time.monotonic() < stop:
            got, errors = serve(reloader, environ())
            if errors:
                failures.append(errors)

    def writer() -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            # Atomically, as a deploy does: a file seen half-written and then complete is
            # legitimately two changes.
            tmp = root / f"new{n}.cfg.tmp"
            tmp.write_text("n")
            os.replace(tmp, root / f"new{n}.cfg")
            time.sleep(0.002)

    threads = [threading.Thread(target=requests) for _ in range(16)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
        assert not thread.is_alive(), "deadlock"
    try:
        for _ in range(3):  # let the last writes be seen and fired
            time.sleep(0.01)
            serve(reloader, environ())
    finally:
        reloader.close()
    reported = [f for changes in recorder.calls for f in changes.files]
    duplicates = sorted({f for f in reported if reported.count(f) > 1})
    assert failures == []
    assert duplicates == [], f"{len(duplicates)} files reported in more than one change set"
    assert {str(p) for p in root.glob("new*.cfg")} == set(reported)
    assert "watcher failed" not in caplog.text


def test_overlapping_ticks_during_a_slow_validation_fire_once(tmp_path: Path) -> None:
    """Inline mode on a threaded server with a slow validate (an import check takes seconds).

    While one request thread validated a change set, the next one past the throttle
    validated the same pending files again; both became due one after the other, so one
    change fired the action twice.
    """
    from .conftest import FakeClock, environ, serve

    watched = tmp_path / "w.cfg"
    watched.write_text("1")
    clock = FakeClock()
    recorder = Recorder()
    reloader = Reloader(
        body,
        extra_files=[str(watched)],
        interval=1.0,
        settle=0,
        settle_max=0,
        action=recorder,
        clock=clock,
        mode="inline",
        validate=None,
    )
    entered, release = threading.Event(), threading.Event()
    real_validate = reloader.policy._validate  # noqa: SLF001
    calls = [0]

    def slow_validate(files: Any) -> Optional[str]:
        calls[0] += 1
        if calls[0] == 1:  # the first validation is slow, like an import check
            entered.set()
            release.wait(10)
        return real_validate(files)

    reloader.policy._validate = slow_validate  # type: ignore[method-assign]  # noqa: SLF001
    try:
        serve(reloader, environ())
        os.utime(watched, ns=(1, 2_000_000_000_000_000_000))
        clock.now += 1.0
        slow = threading.Thread(target=reloader.run_step, args=(clock.now,))
        slow.start()
        assert entered.wait(10)
        clock.now += 1.0
        reloader.run_step(clock.now)  # a second tick while the first still validates
        serve(reloader, environ())
        release.set()
        slow.join(10)
        assert not slow.is_alive()
        for _ in range(3):
            serve(reloader, environ())
        assert recorder.count == 1, f"one change fired the action {recorder.count} times"
    finally:
        release.set()
        reloader.close()
