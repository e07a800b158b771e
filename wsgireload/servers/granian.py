"""granian: recognising a worker process of its Python supervisor (``granian --interface asgi``,
any ``--workers``) and its reload, SIGHUP to the verified supervisor, which starts each
worker's replacement, waits ``--respawn-interval`` (3.5 s by default, whether the new worker
is ready or not), then stops the old one.

A new worker that fails (its lifespan startup reports failure) takes the whole server down:
the boot check refuses such a deploy before any signal.
"""

from __future__ import annotations

import sys
from typing import Any, List, Mapping, Optional, Tuple

from .._system import SYSTEM, System
from ..boot import Target
from . import base
from .base import ASGI_KEY, Action, HupAction, app_targets, frame_locals

NAME = "granian"
SCRIPT_PREFIX = ""
# The rest of a server module's interface, as every worker of these servers needs it:
checker_stubs, threads_available = base.checker_stubs, base.threads_available
early_environ, before_workers = base.early_environ, base.before_workers


def supervisor() -> Optional[Any]:
    """granian's server object (``MPServer``) on this worker's stack: a worker forks from its
    supervisor as it spawns workers, and keeps those frames."""
    found = frame_locals("granian/server/common.py", ("_spawn_workers", "_respawn_workers"))
    return (found or {}).get("self")


def worker() -> bool:
    """This process is a worker process granian's supervisor started."""
    return "granian.server.mp" in sys.modules and frame_locals(
        "granian/server/mp.py", ("wrapped",)) is not None


class GranianAction(HupAction):
    name = "granian"
    summary = (
        "SIGHUP to the verified granian supervisor, which replaces one worker at a time, "
        "waiting --respawn-interval (3.5 s) before it stops each old one"
    )

    def why_no_master(self) -> Optional[str]:
        if worker():
            return None
        return ("this granian process is not a worker of granian's supervisor (embedded "
                "server, or worker threads): restart granian yourself")


def serves(environ: Mapping[str, Any]) -> bool:
    return ASGI_KEY in environ and "granian" in sys.modules and worker()


def master_of(environ: Mapping[str, Any], system: System = SYSTEM) -> Optional[Tuple[str, int]]:
    """The supervisor's workers are its children: one record per supervisor."""
    return (NAME, system.parent_at_start()) if serves(environ) else None


def auto_action() -> Action:
    return GranianAction()


def boot_targets() -> List[Target]:
    """The app as granian's command line names it (``module:attribute``)."""
    return app_targets(getattr(supervisor(), "target", None))
