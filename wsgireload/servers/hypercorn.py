"""hypercorn: recognising a worker of its supervisor (``hypercorn --workers N``, N >= 1, the
default) and its reload. On SIGHUP the supervisor stops *every* worker, waits for them all to
exit, then starts new ones: nobody serves for one shutdown plus one boot, and connections the
old workers had just accepted are dropped (docs/servers/asgi-servers.md has the figures). So
``action="auto"`` does not reload under hypercorn: one WARNING per master saying so;
``action="hypercorn"`` asks for that SIGHUP (to the verified supervisor, once per deploy).
``hypercorn --workers 0`` has no supervisor and dies on SIGHUP: never signalled.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any, List, Mapping, Optional, Tuple

from .._system import SYSTEM, System
from ..boot import Target
from . import base
from .base import ASGI_KEY, Action, HupAction, app_targets, frame_locals

NAME = "hypercorn"
SCRIPT_PREFIX = ""
# The rest of a server module's interface, as every worker of these servers needs it:
checker_stubs, threads_available = base.checker_stubs, base.threads_available
early_environ, before_workers = base.early_environ, base.before_workers
WORKERS = ("asyncio_worker", "uvloop_worker", "trio_worker")
STOPS_ALL = (
    "hypercorn reloads on SIGHUP by stopping every worker before it starts new ones (every "
    "request waits for a shutdown and a boot, and connections the old workers had just "
    "accepted are dropped), so action='auto' leaves it alone. Pass action='hypercorn' to "
    "reload that way, or restart hypercorn yourself"
)


def config() -> Tuple[bool, Any]:
    """(a worker of hypercorn's supervisor, hypercorn's Config), from the main thread's
    stack; (False, Config) in ``hypercorn --workers 0``; (False, None) elsewhere."""
    if "hypercorn" not in sys.modules:
        return False, None
    found = frame_locals("hypercorn/asyncio/run.py", WORKERS) or frame_locals(
        "hypercorn/trio/run.py", WORKERS)
    spawned = multiprocessing.parent_process() is not None
    return (found is not None and spawned), (found or {}).get("config")


class HypercornAction(HupAction):
    name = "hypercorn"
    summary = (
        "auto: no reload, one WARNING (hypercorn's SIGHUP stops every worker, then starts new "
        "ones); action='hypercorn': SIGHUP to the verified supervisor; --workers 0: never "
        "signalled (it dies on SIGHUP)"
    )

    def __init__(self, *, stop_all: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.stop_all = stop_all  # False: what auto does, warn instead of the SIGHUP

    def why_no_master(self) -> Optional[str]:
        supervised, found = config()
        if not supervised:
            return ("hypercorn runs without a supervisor (--workers 0), and SIGHUP would stop "
                    "it: run it with --workers 1 or more, or restart hypercorn yourself"
                    if found is not None else "this process is not a hypercorn worker")
        return None if self.stop_all else STOPS_ALL


def serves(environ: Mapping[str, Any]) -> bool:
    return ASGI_KEY in environ and config()[1] is not None


def master_of(environ: Mapping[str, Any], system: System = SYSTEM) -> Optional[Tuple[str, int]]:
    """The supervisor's workers are its children (spawned): one record per supervisor."""
    return (NAME, system.parent_at_start()) if serves(environ) and config()[0] else None


def auto_action() -> Action:
    return HypercornAction(stop_all=False)


def boot_targets() -> List[Target]:
    """The app as hypercorn's command line names it (``module:attribute``)."""
    return app_targets(getattr(config()[1], "application_path", None))


ACTIONS = (HypercornAction,)
