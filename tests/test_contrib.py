"""contrib helpers in-process: gunicorn hook wiring, uWSGI registration rules, Django patterns.

uWSGI's module exists only inside uWSGI, so a recording fake stands in for the registration
rules here; tests/servers/test_contrib_servers.py runs the real thing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from wsgireload.contrib import gunicorn as gunicorn_hooks
from wsgireload.errors import ConfigurationError
from wsgireload.watcher import Watcher

REPO = Path(__file__).resolve().parents[1]


class FakeWorker:
    def __init__(self, preload: bool) -> None:
        self.cfg = types.SimpleNamespace(preload_app=preload)
        self.ppid = 4242


@pytest.mark.parametrize("preload", [False, True])
def test_gunicorn_hook_starts_a_watcher(preload: bool) -> None:
    hook = gunicorn_hooks.make_post_worker_init(interval=5, modules=False, action=lambda c: None)
    worker = FakeWorker(preload)
    hook(worker)
    watcher = worker.wsgireload_watcher  # type: ignore[attr-defined]
    try:
        assert isinstance(watcher, Watcher) and watcher._thread is not None
        assert watcher.engine.created_pid == (4242 if preload else watcher.engine.created_pid)
        if not preload:
            import os

            assert watcher.engine.created_pid == os.getpid()
    finally:
        watcher.stop()


def test_gunicorn_hook_rejects_bad_options_at_config_load() -> None:
    with pytest.raises(ConfigurationError, match="settle"):
        gunicorn_hooks.make_post_worker_init(settle=-1)


def test_the_fork_time_the_gunicorn_hook_uses_is_taken_again_in_a_forked_child() -> None:
    import os
    import time

    from wsgireload import engine  # noqa: F401  (installs the fork hook)
    from wsgireload.actions._process import born as forked_at

    before = forked_at()
    time.sleep(0.01)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(write, repr(forked_at()).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    value = os.read(read, 100).decode()
    os.close(read)
    assert float(value) > before and forked_at() == before


class FakeUwsgi(types.ModuleType):
    """Records register_signal/add_timer calls; one signal table slot per worker id."""

    def __init__(self, worker_id: int, taken: Tuple[int, ...] = ()) -> None:
        super().__init__("uwsgi")
        self.wid = worker_id
        self.taken = set(taken)
        self.calls: List[Tuple[str, Any]] = []

    def worker_id(self) -> int:
        return self.wid

    def signal_registered(self, signum: int) -> bool:
        return signum in self.taken

    def register_signal(self, signum: int, target: str, handler: Any) -> None:
        self.taken.add(signum)
        self.calls.append(("register_signal", (signum, target)))

    def add_timer(self, signum: int, seconds: int) -> None:
        self.calls.append(("add_timer", (signum, seconds)))


@pytest.fixture
def fake_uwsgi(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from wsgireload.contrib import uwsgi as helper

    def install(worker_id: int, taken: Tuple[int, ...] = ()) -> FakeUwsgi:
        fake = FakeUwsgi(worker_id, taken)
        monkeypatch.setitem(sys.modules, "uwsgi", fake)
        helper._reset()
        return fake

    yield install
    helper._reset()


def register(**kw: Any) -> Watcher:
    from wsgireload.contrib.uwsgi import register as reg

    kw.setdefault("modules", False)
    kw.setdefault("action", lambda changes: None)
    return reg(**kw)


def test_uwsgi_master_registers_one_timer(fake_uwsgi: Any) -> None:
    fake = fake_uwsgi(0)
    first = register()
    assert register() is first  # a second import in the same process
    assert fake.calls == [("register_signal", (120, "workers")), ("add_timer", (120, 1))]


def test_uwsgi_lazy_worker_one_adds_the_timer(fake_uwsgi: Any) -> None:
    fake = fake_uwsgi(1)
    register(target="worker", signum=7, interval=2)
    assert fake.calls == [("register_signal", (7, "worker")), ("add_timer", (7, 2))]


def test_uwsgi_lazy_other_workers_only_register(fake_uwsgi: Any) -> None:
    fake = fake_uwsgi(2)
    register()
    assert fake.calls == [("register_signal", (120, "workers"))]


def test_uwsgi_recreated_worker_reregisters_without_a_timer(fake_uwsgi: Any) -> None:
    fake = fake_uwsgi(1, taken=(120,))  # its predecessor's handler is in the slot
    register()
    assert fake.calls == [("register_signal", (120, "workers"))]


def test_uwsgi_master_refuses_a_taken_signal(fake_uwsgi: Any) -> None:
    fake_uwsgi(0, taken=(120,))
    with pytest.raises(ConfigurationError, match="signal 120 is already registered"):
        register()


@pytest.mark.parametrize(
    "kw, message",
    [({"interval": 0.5}, "whole number"), ({"target": "mule"}, "target"),
     ({"signum": 300}, "signum")],
)
def test_uwsgi_bad_options(fake_uwsgi: Any, kw: Dict[str, Any], message: str) -> None:
    fake_uwsgi(0)
    with pytest.raises(ConfigurationError, match=message):
        register(**kw)


def test_uwsgi_handler_steps_the_watcher(fake_uwsgi: Any, tmp_path: Path) -> None:
    from wsgireload.contrib import uwsgi as helper

    fake_uwsgi(0)
    watcher = register()
    steps: List[Any] = []
    watcher.step = lambda now=None: steps.append(now)  # type: ignore[method-assign]
    assert helper._registration is not None
    helper._registration(120)
    assert len(steps) == 1


DJANGO_PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ["DJANGO_SETTINGS_MODULE"] = "examples.django_project.settings"
import django
django.setup()
from wsgireload.contrib.django import django_extra_files
print(json.dumps(django_extra_files()))
"""


def test_django_extra_files_lists_templates_and_locales() -> None:
    pytest.importorskip("django")
    proc = subprocess.run([sys.executable, "-c", DJANGO_PROBE, str(REPO)], capture_output=True,
                          text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    patterns = json.loads(proc.stdout)
    project = REPO / "examples" / "django_project"
    assert str(project / "templates" / "**" / "*") in patterns
    assert str(project / "locale" / "**" / "*.mo") in patterns
    assert not any("site-packages/django" in p for p in patterns)  # Django's own: skipped


def test_django_reloader_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """DjangoReloader adds Django's patterns to the user's (Django is set up once per process)."""
    pytest.importorskip("django")
    import django
    from django.conf import settings

    wanted = "examples.django_project.settings"
    if settings.configured and getattr(settings, "SETTINGS_MODULE", None) != wanted:
        pytest.skip("Django already set up with other settings in this process")
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", wanted)
    django.setup()
    from wsgireload.contrib.django import DjangoReloader

    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        return []

    reloader = DjangoReloader(app, extra_files=[str(REPO / "pyproject.toml")], action="log-only")
    watched = reloader.detector.watched()
    assert str(REPO / "examples" / "django_project" / "templates" / "hello.html") in watched
    assert str(REPO / "pyproject.toml") in watched
