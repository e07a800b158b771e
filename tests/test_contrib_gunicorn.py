"""The gunicorn hooks: a watcher per worker, bad options refused at config load."""

from __future__ import annotations

import types

import pytest

from wsgireload.contrib import gunicorn as gunicorn_hooks
from wsgireload.errors import ConfigurationError
from wsgireload.watcher import Watcher


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
    from wsgireload._system import SYSTEM

    forked_at = SYSTEM.started

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


