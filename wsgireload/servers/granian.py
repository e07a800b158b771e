"""granian: recognising a worker process of its Python supervisor (``granian --interface asgi``,
any ``--workers``) and its reload, SIGHUP to the verified supervisor, which starts each
worker's replacement, waits ``--respawn-interval`` (3.5 s by default, whether the new worker
is ready or not), then stops the old one.

A new worker that fails (its lifespan startup reports failure) takes the whole server down:
the boot check refuses such a deploy before any signal.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .._system import SYSTEM, System
from ..boot import Target, parse_target
from ..errors import ConfigurationError
from .base import ASGI_KEY, Action, HupAction, main_frames

NAME = "granian"
SCRIPT_PREFIX = ""


def supervisor() -> Optional[Any]:
    """granian's server object (``granian.server.mp.MPServer``) on this worker's stack: a
    worker forks from its supervisor inside ``_spawn_workers`` and keeps those frames."""
    if "granian.server.mp" not in sys.modules:
        return None
    for frame in main_frames():
        server = frame.f_locals.get("self")
        if "granian" in frame.f_code.co_filename and hasattr(server, "respawn_interval"):
            return server
    return None


def worker() -> bool:
    """This process is a worker process granian's supervisor started."""
    return "granian.server.mp" in sys.modules and any(
        frame.f_code.co_name == "wrapped" and frame.f_code.co_filename.endswith("mp.py")
        and "granian" in frame.f_code.co_filename for frame in main_frames())


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
    target = getattr(supervisor(), "target", None)
    try:
        return [parse_target(target)] if isinstance(target, str) else []
    except ConfigurationError:
        return []


def checker_stubs() -> None:
    """granian's workers import nothing the boot checker must stand in for."""


def threads_available(environ: Mapping[str, Any]) -> bool:
    return True


def early_environ() -> Optional[Dict[str, Any]]:
    return None  # the ASGI gate starts at the worker's lifespan startup


def before_workers(hook: Callable[[], None]) -> bool:
    return False
