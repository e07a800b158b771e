"""The Reloader's watcher starting before any request: where a process is known to be a
worker (gunicorn without --preload, uWSGI), from a context that needs no environ."""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List

import pytest
import webtest

from wsgireload import Reloader, engine, servers
from wsgireload import middleware as mw
from wsgireload._system import SYSTEM
from wsgireload.actions import Action, ProcessContext
from wsgireload.policy import ChangeSet

from .conftest import FakeClock
from .fakes import FakeUwsgi, install_uwsgi

HOUR = 3600.0  # an interval no test waits for: the watcher thread never ticks


@pytest.fixture
def fake_uwsgi(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeUwsgi]:
    return functools.partial(install_uwsgi, monkeypatch)


def hello(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class SetupCounter(Action):
    """Records each setup's context; never reloads."""

    name = "counter"

    def __init__(self) -> None:
        self.contexts: List[ProcessContext] = []

    def setup(self, context: ProcessContext) -> None:
        self.contexts.append(context)

    def __call__(self, changes: ChangeSet) -> None:
        raise AssertionError("no change is made in these tests")


@pytest.fixture
def reloaders() -> Iterable[List[Reloader]]:
    made: List[Reloader] = []
    yield made
    for reloader in made:
        reloader.close()


def make(reloaders: List[Reloader], tmp_path: Path, **kw: Any) -> Reloader:
    watched = tmp_path / "template.html"
    watched.write_text("v1")
    kw.setdefault("action", SetupCounter())
    reloader = Reloader(
        hello, extra_files=[str(watched)], modules=False, validate="compile",
        interval=HOUR, clock=FakeClock(), **kw,
    )
    reloaders.append(reloader)
    return reloader


def as_gunicorn_worker(reloader: Reloader, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start the reloader early as if created in a gunicorn worker importing the app."""
    with monkeypatch.context() as patch:
        patch.setattr(servers.gunicorn, "early_environ", lambda: {"gunicorn.socket": None})
        reloader._start_early()


def counter(reloader: Reloader) -> SetupCounter:
    action = reloader.action
    assert isinstance(action, SetupCounter)
    return action


def no_uwsgi() -> None:
    return None


# -- starting early ------------------------------------------------------------------------
def test_nothing_starts_at_construction_outside_a_server(
    reloaders: List[Reloader], tmp_path: Path
) -> None:
    reloader = make(reloaders, tmp_path)
    assert reloader._thread is None and counter(reloader).contexts == []
    webtest.TestApp(reloader).get("/")
    assert len(counter(reloader).contexts) == 1  # the first request, as before


def test_an_early_start_sets_up_once_and_the_first_request_does_not_again(
    reloaders: List[Reloader], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reloader = make(reloaders, tmp_path)
    as_gunicorn_worker(reloader, monkeypatch)
    (context,) = counter(reloader).contexts
    assert dict(context.environ) == {"gunicorn.socket": None} and not context.preloaded
    assert reloader._thread is not None and reloader._thread.is_alive()
    assert reloader._steady  # the request path is the flag check from the first request on
    app = webtest.TestApp(reloader)
    assert app.get("/").body == b"hello"
    app.get("/")
    assert len(counter(reloader).contexts) == 1
    assert reloader.engine._master == ("gunicorn", SYSTEM.parent_at_start())  # its parent


def test_auto_sees_gunicorn_without_an_environ(
    reloaders: List[Reloader], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reloader = make(reloaders, tmp_path, action="auto")
    as_gunicorn_worker(reloader, monkeypatch)
    assert reloader.action.describe().startswith("auto: gunicorn")


def test_a_lazy_apps_uwsgi_worker_starts_at_construction(
    reloaders: List[Reloader], tmp_path: Path, fake_uwsgi: Callable[..., FakeUwsgi]
) -> None:
    fake_uwsgi(worker=1, master=os.getppid())
    reloader = make(reloaders, tmp_path, action="auto")
    assert reloader._thread is not None and reloader._steady
    assert reloader.action.describe().startswith("auto: uWSGI")
    assert reloader.engine._master == ("uwsgi", os.getppid())


def test_old_uwsgi_without_threads_keeps_the_inline_mode(
    reloaders: List[Reloader], tmp_path: Path, fake_uwsgi: Callable[..., FakeUwsgi]
) -> None:
    fake_uwsgi(worker=1, master=os.getppid(), version=b"2.0.26")
    reloader = make(reloaders, tmp_path)
    assert reloader._inline and reloader._thread is None
    assert len(counter(reloader).contexts) == 1
    webtest.TestApp(reloader).get("/")
    assert len(counter(reloader).contexts) == 1  # set up already: the request only scans


def test_a_uwsgi_master_starts_each_worker_after_its_fork(
    reloaders: List[Reloader], tmp_path: Path, fake_uwsgi: Callable[..., FakeUwsgi]
) -> None:
    fake = fake_uwsgi(worker=0, master=os.getpid())
    reloader = make(reloaders, tmp_path)
    assert reloader._thread is None and counter(reloader).contexts == []  # never in a master
    fake.worker, fake.master = 3, os.getppid()  # what a forked worker sees
    fake.post_fork_hook()  # type: ignore[attr-defined]
    (context,) = counter(reloader).contexts
    assert "uwsgi.version" in context.environ
    assert reloader._thread is not None and reloader._steady
    webtest.TestApp(reloader).get("/")
    assert len(counter(reloader).contexts) == 1


def test_a_post_fork_hook_in_a_mule_starts_nothing(
    reloaders: List[Reloader], tmp_path: Path, fake_uwsgi: Callable[..., FakeUwsgi]
) -> None:
    fake = fake_uwsgi(worker=0, master=os.getpid())
    reloader = make(reloaders, tmp_path)
    fake.master = os.getppid()  # a mule: forked, but worker_id() is 0
    fake.post_fork_hook()  # type: ignore[attr-defined]
    assert reloader._thread is None and counter(reloader).contexts == []


# -- on any failure, the first request starts the watcher --------------------------------------
def test_a_failing_detection_falls_back_to_the_first_request(
    reloaders: List[Reloader], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> bool:
        raise RuntimeError("odd server")

    monkeypatch.setattr(servers, "start_early", broken)
    reloader = make(reloaders, tmp_path)  # does not raise into the server's worker boot
    assert reloader._pid is None and reloader._thread is None
    webtest.TestApp(reloader).get("/")
    assert len(counter(reloader).contexts) == 1 and reloader._thread is not None


def test_a_thread_that_cannot_start_falls_back_to_the_first_request(
    reloaders: List[Reloader], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoThread(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    reloader = make(reloaders, tmp_path)
    monkeypatch.setattr(mw.threading, "Thread", NoThread)
    as_gunicorn_worker(reloader, monkeypatch)
    assert reloader._pid is None and reloader._thread is None
    monkeypatch.undo()
    webtest.TestApp(reloader).get("/")
    assert reloader._thread is not None and reloader._thread.is_alive()
    assert len(counter(reloader).contexts) == 2  # early (failed), then the first request


def test_a_missing_uwsgi_module_in_a_master_falls_back(
    reloaders: List[Reloader], tmp_path: Path
) -> None:
    reloader = make(reloaders, tmp_path)
    reloader._start_early()  # no uwsgi module here: no hook to set
    assert reloader._pid is None and reloader._thread is None


# -- a fork uWSGI made without Python's fork hooks -------------------------------------------
def test_the_per_process_reset_runs_where_the_fork_hooks_did_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resets: List[int] = []
    monkeypatch.setattr(engine, "_after_fork_in_child", lambda: resets.append(os.getpid()))
    engine.after_fork_if_missed()  # the hooks ran for this process: nothing to do
    assert resets == []
    monkeypatch.setattr(engine, "_reset_in", -1)  # as in a uWSGI worker
    engine.after_fork_if_missed()
    assert resets == [os.getpid()]


def test_the_post_fork_start_resets_the_copied_state_first(
    reloaders: List[Reloader], tmp_path: Path, fake_uwsgi: Callable[..., FakeUwsgi],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_uwsgi(worker=0, master=os.getpid())
    reloader = make(reloaders, tmp_path)
    reloader._pid = os.getpid()  # state copied from a master that had started (it never does)
    monkeypatch.setattr(engine, "_reset_in", -1)
    fake.worker, fake.master = 1, os.getppid()
    fake.post_fork_hook()  # type: ignore[attr-defined]
    assert engine._reset_in == os.getpid()
    assert reloader._thread is not None and len(counter(reloader).contexts) == 1
