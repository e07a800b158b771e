"""granian: recognising a worker process of its Python supervisor (``granian --interface asgi``,
any ``--workers``) and its reload, SIGHUP to the verified supervisor, which starts each
worker's replacement, waits ``--respawn-interval`` (3.5 s by default, whether the new worker
is ready or not), then stops the old one.

A new worker that fails (its lifespan startup reports failure) takes the whole server down:
the boot check refuses such a deploy before any signal.

granian's worker shutdown (Rust) closes every connection whose first bytes it has not read yet:
a client whose connection the old worker had just accepted sees it dropped. Where no queued
connection is lost by it, each worker stops accepting ``STOP_ACCEPTING_FOR`` seconds before
its SIGTERM reaches granian.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .._system import SYSTEM, System
from ..boot import Target
from . import base
from .base import ASGI_KEY, STOP_ACCEPTING_FOR, Action, HupAction, app_targets, frame_locals

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


def port_or_path(address: Any) -> Any:
    return address if isinstance(address, str) else address[1]


def listening(key: Any) -> List[int]:
    """This process's descriptors of listening sockets at ``key`` (a port, a Unix path)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                with socket.socket(fileno=os.dup(int(name))) as sock:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and (
                            port_or_path(sock.getsockname()) == key):
                        found.append(int(name))
        except OSError:  # closed meanwhile, or not a socket Python knows
            pass
    return found


def accept_nothing_before_exit() -> None:
    """In a granian worker: on SIGTERM, stop accepting at once (its descriptors of the
    listening socket now name a placeholder nobody connects to), and hand the signal to
    granian ``STOP_ACCEPTING_FOR`` seconds later. Only where no queued connection is lost: a
    worker's own socket (``SO_REUSEPORT``, on Linux) closes, so only where the kernel hands
    its queue to the other workers' (``tcp_migrate_req=1``); a Unix socket the workers share
    (``--uds``) stays open in the others. Elsewhere: nothing."""
    if "granian.server.mp" not in sys.modules:
        return
    found = frame_locals("granian/server/mp.py",
                         ("_spawn_asgi_lifespan_worker", "_spawn_asgi_worker"))
    if found is None or not os.path.isdir("/proc/self/fd"):
        return
    loop, shutdown = found.get("loop"), getattr(found.get("shutdown_event"), "set", None)
    spec, shared = (list(found.get("sock") or ()) + [None, None])[:2]
    if loop is None or shutdown is None or not (shared or (spec and base.migrates())):
        return
    if shared is not None:
        with socket.socket(fileno=os.dup(shared.get_fd())) as sock:
            key = port_or_path(sock.getsockname())
    else:
        key = spec.__getstate__()[1]  # (host, port, backlog)

    def on_term() -> None:  # on granian's loop, in place of its own handler
        try:
            with socket.socket() as placeholder:  # non-blocking, as granian's: never waits
                placeholder.setblocking(False)
                placeholder.bind(("127.0.0.1", 0))
                placeholder.listen(0)
                for fd in listening(key):
                    os.dup2(placeholder.fileno(), fd)
        finally:
            loop.call_later(STOP_ACCEPTING_FOR, shutdown)

    if threading.current_thread() is threading.main_thread():
        loop.add_signal_handler(signal.SIGTERM, on_term)
    else:
        loop.call_soon_threadsafe(loop.add_signal_handler, signal.SIGTERM, on_term)


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


def lifespan_off() -> bool:
    """``granian --interface asginl``: its worker runs the app without lifespan."""
    return frame_locals("granian/server/mp.py", ("_spawn_asgi_worker",)) is not None


def traps(environ: Mapping[str, Any]) -> Dict[str, str]:
    """What in this setup makes a reload drop a request, with its fix."""
    if base.migrates() is not False or getattr(supervisor(), "bind_uds", None):
        return {}  # (a Unix socket the workers share: each stops accepting first anyway)
    return {"tcp-migrate-req": (
        "granian on Linux listens on a socket per worker (SO_REUSEPORT), and its shutdown drops "
        "a connection an old worker has just accepted (5 in 60 retired workers measured under "
        "heavy load). Fix: sysctl -w net.ipv4.tcp_migrate_req=1 (and set it in /etc/sysctl.d/): "
        "then each old worker stops accepting before granian's shutdown, and loses none")}


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


ACTIONS = (GranianAction,)
