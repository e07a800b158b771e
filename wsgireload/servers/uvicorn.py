"""uvicorn: recognising a worker of its supervisor (``uvicorn --workers N``, N > 1) and its
reload, SIGHUP to the verified supervisor, which replaces one worker at a time, each once its
replacement has started (its lifespan startup complete), and keeps the old ones if a new one
fails. A lone uvicorn (no ``--workers``, or ``--workers 1``) dies on SIGHUP: never signal it.

uvicorn's shutdown closes every connection that has not sent its request yet, so a client
whose connection an old worker had just accepted sees it reset: each supervised worker stops
accepting ``STOP_ACCEPTING_FOR`` seconds before its SIGTERM reaches uvicorn (the ASGI gate
installs this in every worker uvicorn runs: its own, and gunicorn's UvicornWorker).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .._system import SYSTEM, System
from ..boot import Target
from . import base
from .base import ASGI_KEY, STOP_ACCEPTING_FOR, Action, HupAction, app_targets, frame_locals

log = logging.getLogger("wsgireload")
NAME = "uvicorn"
SCRIPT_PREFIX = ""
# The rest of a server module's interface, as every worker of these servers needs it:
checker_stubs, threads_available = base.checker_stubs, base.threads_available
early_environ, before_workers = base.early_environ, base.before_workers
SUPERVISED, RELOADER, LONE = "supervised", "--reload", "lone"


def role() -> Tuple[Optional[str], Any]:
    """(what this process is to uvicorn, uvicorn's Config): SUPERVISED (a worker of
    ``uvicorn --workers``), RELOADER (a worker of ``uvicorn --reload``), LONE (``uvicorn``
    without ``--workers``, or ``uvicorn.run()``); None elsewhere (gunicorn's UvicornWorker,
    ``Server.serve()`` from a script). Read from the main thread's stack."""
    if "uvicorn" not in sys.modules:
        return None, None
    started = frame_locals("uvicorn/_subprocess.py", ("subprocess_started",))
    if started is not None:  # a process uvicorn spawned: its supervisor's, or --reload's
        config = started.get("config")
        return (RELOADER if getattr(config, "should_reload", False) else SUPERVISED), config
    run = frame_locals("uvicorn/main.py", ("run",))
    return (LONE, run.get("config")) if run is not None else (None, None)


def lone_advice(argv: Optional[List[str]] = None) -> str:
    """What the one WARNING of a lone uvicorn says, with the command line that can reload."""
    words = [os.path.basename(word) if i == 0 else word
             for i, word in enumerate(sys.argv if argv is None else argv)]
    if words and words[0].startswith("uvicorn"):
        while "--workers" in words:  # uvicorn --workers 1 runs no supervisor either
            at = words.index("--workers")
            del words[at:at + 2]
        command = shlex.join([*words, "--workers", "2"])
    else:
        command = "uvicorn <app> --workers 2"
    return (
        "uvicorn runs without a supervisor (no --workers, or --workers 1), and SIGHUP would "
        f"stop it. Run `{command}` (its supervisor replaces the workers one at a time on "
        "SIGHUP), or gunicorn -k uvicorn_worker.UvicornWorker, to reload on deploy; or "
        "restart uvicorn yourself"
    )


class UvicornAction(HupAction):
    name = "uvicorn"
    summary = (
        "uvicorn --workers N (N > 1): SIGHUP to the verified supervisor, which replaces one "
        "worker at a time once its replacement has started; a lone uvicorn (no --workers, or "
        "--workers 1) dies on SIGHUP: one WARNING with the command line that can reload, no "
        "signal; --reload: nothing (it reloads by itself)"
    )

    def why_no_master(self) -> Optional[str]:
        found = role()[0]
        if found == SUPERVISED:
            return None
        if found == RELOADER:
            return "uvicorn runs with --reload, which reloads the code by itself"
        return lone_advice()


def accept_nothing_before_exit() -> None:
    """In this worker's main thread, with uvicorn's loop running: on SIGTERM, stop accepting
    at once, and hand the signal to uvicorn's own handler ``STOP_ACCEPTING_FOR`` seconds later,
    once every connection accepted before has sent its request. Elsewhere: nothing."""
    if "uvicorn" not in sys.modules:  # its own workers, or gunicorn's UvicornWorker
        return
    import asyncio  # (only in a uvicorn worker)
    import threading

    original = signal.getsignal(signal.SIGTERM)
    server = getattr(original, "__self__", None)  # uvicorn's Server, by its handle_exit
    if not callable(original) or not hasattr(server, "should_exit"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop running in this thread
        return

    def stop_accepting() -> None:
        for listener in getattr(server, "servers", ()):
            for sock in listener.sockets:
                # The reader only: Server.close() would fail a connection being set up.
                loop.remove_reader(sock.fileno())

    def on_term(sig: int, frame: Any) -> None:
        loop.call_soon_threadsafe(stop_accepting)
        loop.call_soon_threadsafe(loop.call_later, STOP_ACCEPTING_FOR, original, sig, None)

    signal.signal(signal.SIGTERM, on_term)


def lifespan_off() -> bool:
    """uvicorn's Config says ``lifespan="off"`` (its own workers, or gunicorn's UvicornWorker)."""
    worker = frame_locals("uvicorn_worker/_workers.py", ("run",)) or {}
    config = role()[1] or getattr(worker.get("self"), "config", None)
    return getattr(config, "lifespan", None) == "off"


def serves(environ: Mapping[str, Any]) -> bool:
    """An ASGI gate's process that uvicorn itself runs (not gunicorn's UvicornWorker)."""
    return ASGI_KEY in environ and "gunicorn.socket" not in environ and role()[0] is not None


def master_of(environ: Mapping[str, Any], system: System = SYSTEM) -> Optional[Tuple[str, int]]:
    """A supervisor's workers are its children (spawned): one record per supervisor."""
    return (NAME, system.parent_at_start()) if serves(environ) and role()[0] == SUPERVISED else None


def auto_action() -> Action:
    return UvicornAction()


def traps(environ: Mapping[str, Any]) -> Dict[str, str]:
    """A lone uvicorn, under the name of the action's WARNING: one line says it, not two."""
    return {f"{UvicornAction.name}-unsupervised": lone_advice()} if role()[0] == LONE else {}


def boot_targets() -> List[Target]:
    """The app as uvicorn's command line names it (``module:attribute``)."""
    return app_targets(getattr(role()[1], "app", None))


ACTIONS = (UvicornAction,)
