"""gunicorn config hooks: a watcher thread in every worker, for apps you cannot wrap.

In ``gunicorn.conf.py``: ``from wsgireload.contrib.gunicorn import post_worker_init``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from .._system import SYSTEM
from ..servers.gunicorn import app_uri_of
from ..watcher import Watcher

log = logging.getLogger("wsgireload")

__all__ = ["post_worker_init", "make_post_worker_init", "start_watcher"]


def start_watcher(worker: Any, **options: Any) -> Watcher:
    """Start a :class:`~wsgireload.watcher.Watcher` thread in this gunicorn worker.

    Call it from your own ``post_worker_init(worker)`` hook; ``options`` are the Watcher's
    (``extra_files``, ``settle``, ``action``...). The worker has loaded the app by then, so its
    modules are the baseline. Acting right away is safe: gunicorn's reload (SIGHUP to the
    master) lets in-flight requests finish.
    """
    master = getattr(worker, "ppid", None)
    # With --preload the master imported the app: tell the action, which must not expect a
    # HUP to load new code there.
    preload = getattr(getattr(worker, "cfg", None), "preload_app", False)
    # The worker imported the app before this hook ran: a file edited in between would be
    # recorded as it is now, while the worker runs the older code; its fork bounds that.
    options.setdefault("changed_since", time.time() - (SYSTEM.monotonic() - SYSTEM.started()))
    if isinstance(master, int) and master > 1:
        options.setdefault("master", ("gunicorn", master))
    uri = app_uri_of(worker)
    if uri and options.get("validate", "boot") == "boot" and options.get("boot_app") is None:
        options["boot_app"] = uri  # boot exactly what this master boots
    watcher = Watcher(created_pid=master if preload else None, **options)
    watcher.start()
    log.debug("wsgireload: watcher started in gunicorn worker %d", os.getpid())
    return watcher


def make_post_worker_init(**options: Any) -> Callable[[Any], None]:
    """A ``post_worker_init`` hook that starts a watcher with ``options`` in every worker::

        # gunicorn.conf.py
        from wsgireload.contrib.gunicorn import make_post_worker_init
        post_worker_init = make_post_worker_init(extra_files=["templates/**/*.html"])

    ``options`` are the :class:`~wsgireload.watcher.Watcher`'s, checked once here, in the
    master, when gunicorn loads the config file.
    """
    # Fail in the master at config load, not silently in every worker.
    Watcher(**{**options, "modules": False})

    def post_worker_init(worker: Any) -> None:
        worker.wsgireload_watcher = start_watcher(worker, **options)

    return post_worker_init


post_worker_init = make_post_worker_init()
