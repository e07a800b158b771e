"""The Reloader's watcher starting before any request: where a process is known to be a
worker (gunicorn without --preload, uWSGI), from a context that needs no environ."""

from __future__ import annotations

import os
import sys
import threading
import types
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import pytest
import webtest

from wsgireload import Reloader, engine
from wsgireload import middleware as mw
from wsgireload.actions import Action, ProcessContext
from wsgireload.actions._process import boot_ppid
from wsgireload.policy import ChangeSet

from .conftest import FakeClock

HOUR = 3600.0  # an interval no test waits for: the watcher thread never ticks


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


class Worker:
    """Stands for gunicorn's Worker class (``created_in(worker_class=Worker)``)."""

    def __init__(self, pid: Any, ppid: int) -> None:
        self.pid = pid
        self.ppid = ppid


class Arbiter:
    pass


class FakeUwsgi(types.ModuleType):
    """The parts of the ``uwsgi`` module that the start and setup read."""

    def __init__(self, *, worker: int, master: int, version: bytes = b"2.0.31") -> None:
        super().__init__("uwsgi")
        self.worker = worker
        self.master = master
        self.version = version
        self.opt: Dict[str, Any] = {}

    def worker_id(self) -> int:
        return self.worker

    def masterpid(self) -> int:
        return self.master


@pytest.fixture
def reloaders() -> Iterable[List[Reloader]]:
    made: List[Reloader] = []
    yield made
    for reloader in made:
        reloader.close()


@pytest.fixture
def fake_uwsgi(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeUwsgi]:
    def install(**kw: Any) -> FakeUwsgi:
        fake = FakeUwsgi(**kw)
        monkeypatch.setitem(sys.modules, "uwsgi", fake)
        return fake

    return install


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


def counter(reloader: Reloader) -> SetupCounter:
    action = reloader.action
    assert isinstance(action, SetupCounter)
    return action


def no_uwsgi() -> None:
    return None


# -- where the Reloader is created -----------------------------------------------------------
def created_in(objects: List[Any], **kw: Any) -> Optional[str]:
    kw.setdefault("find_uwsgi", no_uwsgi)
    return mw.created_in(frame_objects=lambda: objects, worker_class=Worker, **kw)


def test_a_gunicorn_worker_importing_the_app_is_seen() -> None:
    worker = Worker(os.getpid(), os.getppid())
    assert created_in([worker, Arbiter()]) == mw.IN_GUNICORN_WORKER


def test_the_arbiter_importing_the_app_is_not_a_worker_preload() -> None:
    assert created_in([None, Arbiter(), object()]) is None


def test_a_worker_object_of_another_process_is_not_this_process() -> None:
    # An arbiter holds Worker objects (pid: the child's), and a worker whose parent changed
    # is not one its arbiter forked.
    assert created_in([Worker(os.getpid() + 1, os.getppid())]) is None
    assert created_in([Worker("[booting]", os.getppid())]) is None
    assert created_in([Worker(os.getpid(), os.getppid() + 1)]) is None


def test_outside_any_server_nothing_starts_early(monkeypatch: pytest.MonkeyPatch) -> None:
    assert created_in([]) is None
    monkeypatch.delitem(sys.modules, "gunicorn.workers.base", raising=False)
    assert mw.created_in(frame_objects=lambda: [Worker(os.getpid(), os.getppid())],
                         find_uwsgi=no_uwsgi) is None  # gunicorn is not running here


def test_real_frames_of_a_gunicorn_worker_and_of_an_arbiter() -> None:
    """boot.gunicorn_frame_objects walks the main thread's stack: frames compiled as if from
    gunicorn's own files, each with its ``self``."""
    import gunicorn  # noqa: F401  (the walk looks only where gunicorn is loaded)

    source = (
        "def load_wsgi(self, detect):\n"
        "    return detect()\n"
    )
    namespace: Dict[str, Any] = {}
    exec(compile(source, "/venv/lib/gunicorn/workers/base.py", "exec"), namespace)

    def detect() -> Optional[str]:
        return mw.created_in(worker_class=Worker, find_uwsgi=no_uwsgi)

    assert namespace["load_wsgi"](Worker(os.getpid(), os.getppid()), detect) == "gunicorn"
    assert namespace["load_wsgi"](Arbiter(), detect) is None
    assert detect() is None  # this test's own frames are not gunicorn's


def test_uwsgi_worker_master_and_others(fake_uwsgi: Callable[..., FakeUwsgi]) -> None:
    me = os.getpid()
    fake_uwsgi(worker=2, master=me + 1)
    assert mw.created_in() == mw.IN_UWSGI_WORKER  # --lazy-apps, or just forked
    fake_uwsgi(worker=0, master=me)
    assert mw.created_in() == mw.IN_UWSGI_MASTER  # imports before forking
    fake_uwsgi(worker=0, master=me + 1)
    assert mw.created_in() is None  # a mule or a spooler
    fake_uwsgi(worker=1, master=0)
    assert mw.created_in() is None  # no --master: nobody to reload, first request as before


# -- starting early ------------------------------------------------------------------------
def test_nothing_starts_at_construction_outside_a_server(
    reloaders: List[Reloader], tmp_path: Path
) -> None:
    reloader = make(reloaders, tmp_path)
    assert reloader._thread is None and counter(reloader).contexts == []
    webtest.TestApp(reloader).get("/")
    assert len(counter(reloader).contexts) == 1  # the first request, as before


def test_an_early_start_sets_up_once_and_the_first_request_does_not_again(
    reloaders: List[Reloader], tmp_path: Path
) -> None:
    reloader = make(reloaders, tmp_path)
    reloader._start_early(mw.IN_GUNICORN_WORKER)
    (context,) = counter(reloader).contexts
    assert dict(context.environ) == {"gunicorn.socket": None} and not context.preloaded
    assert reloader._thread is not None and reloader._thread.is_alive()
    assert reloader._steady  # the request path is the flag check from the first request on
    app = webtest.TestApp(reloader)
    assert app.get("/").body == b"hello"
    app.get("/")
    assert len(counter(reloader).contexts) == 1
    assert reloader.engine._master == ("gunicorn", boot_ppid())  # the parent is the master


def test_auto_sees_gunicorn_without_an_environ(reloaders: List[Reloader], tmp_path: Path) -> None:
    reloader = make(reloaders, tmp_path, action="auto")
    reloader._start_early(mw.IN_GUNICORN_WORKER)
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


# -- uWSGI's post-fork hook: the user's keep running -----------------------------------------
def test_the_hook_already_set_runs_first_then_ours() -> None:
    calls: List[str] = []
    fake = FakeUwsgi(worker=0, master=1)
    fake.post_fork_hook = lambda: calls.append("user")  # type: ignore[attr-defined]
    mw._after_uwsgi_fork(fake, lambda: calls.append("wsgireload"))
    fake.post_fork_hook()  # type: ignore[attr-defined]
    assert calls == ["user", "wsgireload"]


def test_a_failing_user_hook_does_not_stop_ours() -> None:
    calls: List[str] = []

    def user() -> None:
        raise RuntimeError("user hook")

    fake = FakeUwsgi(worker=0, master=1)
    fake.post_fork_hook = user  # type: ignore[attr-defined]
    mw._after_uwsgi_fork(fake, lambda: calls.append("wsgireload"))
    with pytest.raises(RuntimeError):
        fake.post_fork_hook()  # type: ignore[attr-defined]  (uWSGI logs it, as before)
    assert calls == ["wsgireload"]


def test_uwsgidecorators_chain_is_joined_not_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    decorators = types.ModuleType("uwsgidecorators")
    chain: List[Callable[[], None]] = []

    def chain_hook() -> None:
        for function in chain:
            function()

    decorators.postfork_chain = chain  # type: ignore[attr-defined]
    decorators.postfork_chain_hook = chain_hook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgidecorators", decorators)
    fake = FakeUwsgi(worker=0, master=1)
    fake.post_fork_hook = chain_hook  # type: ignore[attr-defined]

    def ours() -> None:
        pass

    mw._after_uwsgi_fork(fake, ours)
    assert fake.post_fork_hook is chain_hook and chain == [ours]  # type: ignore[attr-defined]


# -- on any failure, the first request starts the watcher --------------------------------------
def test_a_failing_detection_falls_back_to_the_first_request(
    reloaders: List[Reloader], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Optional[str]:
        raise RuntimeError("odd server")

    monkeypatch.setattr(mw, "created_in", broken)
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
    reloader._start_early(mw.IN_GUNICORN_WORKER)
    assert reloader._pid is None and reloader._thread is None
    monkeypatch.undo()
    webtest.TestApp(reloader).get("/")
    assert reloader._thread is not None and reloader._thread.is_alive()
    assert len(counter(reloader).contexts) == 2  # early (failed), then the first request


def test_a_missing_uwsgi_module_in_a_master_falls_back(
    reloaders: List[Reloader], tmp_path: Path
) -> None:
    reloader = make(reloaders, tmp_path)
    reloader._start_early(mw.IN_UWSGI_MASTER)  # uwsgi_module() is None here: no hook to set
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
