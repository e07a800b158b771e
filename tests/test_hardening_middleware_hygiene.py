"""Resource hygiene: no thread, file descriptor, temp file or warning outlives a Reloader.

``close()`` is documented and idempotent; a Reloader dropped without ``close()`` stops too.
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, List

import pytest

from wsgireload import Reloader

from .conftest import Recorder, environ, force_due, make_reloader, serve


def ok_app(env: Any, start_response: Any) -> List[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def watcher_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wsgireload-watcher"]


def open_fds() -> List[str]:
    try:
        return sorted(os.listdir("/proc/self/fd"))
    except FileNotFoundError:  # pragma: no cover - not Linux
        pytest.skip("needs /proc/self/fd")


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    path = tmp_path / "watched.py"
    path.write_text("x = 1\n")
    return path


def lifecycle(watched: Path) -> None:
    """Create, serve, reload (with compile validation), close."""
    recorder = Recorder()
    reloader, clock = make_reloader(ok_app, watched, recorder, validate="compile")
    serve(reloader, environ())
    watched.write_text("x = 2\n")
    force_due(reloader, watched, clock)
    serve(reloader, environ())
    assert recorder.count == 1
    reloader.close()


def test_close_leaves_no_thread(watched: Path) -> None:
    before = set(threading.enumerate())
    lifecycle(watched)
    assert set(threading.enumerate()) == before
    assert not watcher_threads()


def test_close_is_idempotent_and_safe_in_any_state(watched: Path) -> None:
    never_used = Reloader(ok_app, action=Recorder())
    never_used.close()
    never_used.close()
    reloader, _ = make_reloader(ok_app, watched, Recorder())
    serve(reloader, environ())
    assert len(watcher_threads()) == 1
    reloader.close()
    reloader.close()
    assert not watcher_threads()
    # Requests after close() still work, and start nothing.
    assert serve(reloader, environ()) == ([b"ok"], [])
    assert not watcher_threads()
    reloader.close()


def test_no_action_after_close(watched: Path) -> None:
    """A closed Reloader never acts, even for a reload that was due while responses ran."""
    recorder = Recorder()
    reloader, clock = make_reloader(ok_app, watched, recorder)
    serve(reloader, environ())
    force_due(reloader, watched, clock)
    result = reloader(environ(), lambda *a: None)  # a response in flight
    reloader.close()
    list(result)
    result.close()  # type: ignore[attr-defined]
    assert recorder.count == 0


class CloseFirst:
    """A lock stand-in that lets another thread call close() before it is first taken."""

    def __init__(self, reloader: Reloader, at: int) -> None:
        self.reloader, self.at, self.n = reloader, at, 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        self.n += 1
        if self.n == self.at:
            closer = threading.Thread(target=self.reloader.close)
            closer.start()
            closer.join(5)
        self.lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


@pytest.mark.parametrize("where", ["before-setup", "during-setup"])
def test_close_racing_the_first_request_leaves_no_thread(watched: Path, where: str) -> None:
    """close() from another thread while the first request sets the process up."""
    reloader, _ = make_reloader(ok_app, watched, Recorder())
    if where == "before-setup":
        # The request passed the closed check; close() lands before the process state is made.
        reloader._lock = CloseFirst(reloader, at=1)  # type: ignore[assignment]  # noqa: SLF001
    else:
        real_setup = reloader.action.setup

        def setup_then_close(context: Any) -> None:
            real_setup(context)
            closer = threading.Thread(target=reloader.close)
            closer.start()
            closer.join(5)

        reloader.action.setup = setup_then_close  # type: ignore[method-assign]
    assert serve(reloader, environ()) == ([b"ok"], [])
    deadline = time.monotonic() + 5
    while watcher_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watcher_threads(), "a watcher started after close()"


def test_discarded_reloader_stops_its_thread_and_is_freed(watched: Path) -> None:
    """Dropping the last reference without close() ends the watcher (no leak per Reloader)."""
    reloader, _ = make_reloader(ok_app, watched, Recorder())
    serve(reloader, environ())
    (thread,) = watcher_threads()
    import weakref

    ref = weakref.ref(reloader)
    del reloader
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the watcher of a discarded Reloader kept running"
    assert ref() is None, "the watcher kept the discarded Reloader alive"


def test_no_file_descriptor_or_temp_file_left(
    watched: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    lifecycle(watched)  # warm caches (imports, logging) before counting
    gc.collect()
    before = open_fds()
    for _ in range(3):
        lifecycle(watched)
    gc.collect()
    assert open_fds() == before
    assert list(private_tmp.iterdir()) == []


def test_no_resource_warning(watched: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lifecycle(watched)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
