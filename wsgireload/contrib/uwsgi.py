"""A uWSGI timer that checks for changed code without the middleware (the classic recipe, safe).

Call ``register()`` once from the module uWSGI loads; it works with and without --lazy-apps.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigurationError
from ..servers.uwsgi import threads_available
from ..watcher import Watcher

log = logging.getLogger("wsgireload")

__all__ = ["register"]

TARGETS = ("worker", "workers", "active-workers")
DEFAULT_SIGNUM = 120  # a fixed number: a worker re-created under --lazy-apps must find its slot

# One registration per process (a prefork worker inherits the master's).
_registration: Optional["_Registration"] = None


@dataclass
class _Registration:
    signum: int
    watcher: Watcher

    def __call__(self, signum: int) -> None:
        # Runs in whichever worker uWSGI picked; each worker keeps its own baseline (forked
        # from the master, or its own import under --lazy-apps), so any one of them may scan.
        self.watcher.step(time.monotonic())


def register(
    *,
    interval: int = 1,  # seconds; uWSGI timers have whole-second resolution
    target: str = "workers",
    signum: int = DEFAULT_SIGNUM,
    **options: Any,
) -> Watcher:
    """Check for changed code every ``interval`` seconds from a uWSGI timer; return the Watcher.

    :param target: which processes run the check. ``"workers"`` (default): every worker is
        ticked, and as with the middleware one of them scans for the master while the others
        only look at the master's record (under ``--lazy-apps``, from a thread in each
        worker, as explained below). ``"worker"``: one worker per tick, whichever is
        free (each then scans for itself; a change set is settled across ticks that may land
        on different workers, so it can take a few ticks longer). ``"active-workers"``:
        every worker not being reloaded.
    :param signum: the uWSGI signal number to use (0-255); change it if your app uses 120.
    :param options: the :class:`~wsgireload.watcher.Watcher` options (``extra_files``,
        ``settle``, ``action``...).

    Call it at the top level of the module uWSGI loads. Registering twice in one process
    returns the first Watcher. Without ``--lazy-apps`` the master adds the one timer before
    forking. With it, uWSGI's master routes a timer's signal by its own signal table, which an
    app loaded in a worker never fills, so every tick goes to one worker of its choosing
    whatever the target: each worker then runs the check from a thread of its own instead
    (where Python threads run: uWSGI 2.0.27 or later, or ``--enable-threads``). Without threads
    every worker registers its handler, only the first worker's first incarnation adds the
    timer (a chain reload adds none), and each worker scans for itself when it is ticked.
    """
    global _registration
    uwsgi = importlib.import_module("uwsgi")  # only importable inside uWSGI

    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ConfigurationError(
            f"interval must be a whole number of seconds, 1 or more (got {interval!r}): "
            "uWSGI timers have one-second resolution"
        )
    if target not in TARGETS:
        raise ConfigurationError(
            f"target={target!r} is not allowed; use one of {', '.join(map(repr, TARGETS))}"
        )
    if isinstance(signum, bool) or not isinstance(signum, int) or not 0 <= signum <= 255:
        raise ConfigurationError(f"signum must be a uWSGI signal number, 0 to 255 (got {signum!r})")
    if _registration is not None:
        log.debug("wsgireload: uWSGI timer already registered (signal %d)", _registration.signum)
        return _registration.watcher
    options.setdefault("interval", float(interval))
    master = int(getattr(uwsgi, "masterpid", lambda: 0)())
    in_worker = uwsgi.worker_id() > 0  # the app is imported in a worker: --lazy-apps
    # A lazy app's ticks reach one worker at a time (see above): a thread per worker instead.
    threaded = in_worker and target != "worker" and threads_available(
        {"uwsgi.version": getattr(uwsgi, "version", b"")}
    )
    if master > 0 and (threaded or (target != "worker" and not in_worker)):
        # Every worker steps: they share one scanner. (Where ticks reach one worker at a
        # time, a lease holder might not be ticked for a while: each then scans for itself.)
        options.setdefault("master", ("uwsgi", master))
    watcher = Watcher(**options)
    registration = _Registration(signum, watcher)
    if threaded:
        _registration = registration
        log.debug("wsgireload: --lazy-apps: a watcher thread in this worker, no uWSGI timer")
        return watcher.start()
    taken = bool(uwsgi.signal_registered(signum))
    if taken and not in_worker:
        raise ConfigurationError(
            f"uWSGI signal {signum} is already registered; pass another signum= to register()"
        )
    uwsgi.register_signal(signum, target, registration)
    # A worker that finds its slot taken is a re-created worker (chain reload, respawn): its
    # predecessor's timer still runs, so another one would double the checks each reload.
    if not in_worker or (uwsgi.worker_id() == 1 and not taken):
        uwsgi.add_timer(signum, interval)
    _registration = registration
    log.debug("wsgireload: uWSGI check on signal %d every %ds, target %s", signum, interval, target)
    return watcher


def _reset() -> None:
    """Forget the registration (tests)."""
    global _registration
    _registration = None
