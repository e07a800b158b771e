"""Phusion Passenger (cPanel / CloudLinux "Setup Python App"): recognising its wsgi-loader, the
app's root and ``passenger_wsgi.py``, and its reload: one app process at a time stops accepting
once a fresh one is ready; Passenger's loader ends it, and Passenger spawns new ones from disk.

Never signals the Passenger core (the app processes' parent, shared by every app it serves) nor
touches ``tmp/restart.txt``: the core looks at it only on a request, at most every
``stat_throttle_rate`` seconds, and then drops every process at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .._record import section
from .._system import SYSTEM, System
from ..boot import Target
from ..policy import ChangeSet
from .base import ALONE, Action, ProcessContext

log = logging.getLogger("wsgireload")

NAME = "passenger"
SCRIPT_PREFIX = "passenger_wsgi"  # the module name the loader gives the startup file
APP_ROOT = "passenger.app_root"  # the key wsgireload's own early environ carries
TURN_GAP = 0.2  # seconds between two looks at the record while waiting for a turn


def loader_options() -> Dict[str, Any]:
    """The options (``app_root``, ``startup_file``...) of Passenger's ``wsgi-loader.py``, if it
    runs as ``__main__`` in this process; else {}."""
    options = getattr(sys.modules.get("__main__"), "options", None)
    if os.environ.get("IN_PASSENGER") != "1" or not isinstance(options, dict):
        return {}
    return options if isinstance(options.get("app_root"), str) else {}


class _Stopped:
    """The loader's listening socket once shut down: its loop's next ``accept`` takes a
    connection already queued, else ends the loop (and the process)."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.fileno = listener.fileno

    def accept(self) -> Tuple[Optional[socket.socket], Any]:
        self.listener.setblocking(False)  # (an accepted socket is blocking again)
        try:
            return self.listener.accept()
        except OSError:  # nothing queued (EAGAIN), or shut down (EINVAL)
            return None, None


class PassengerAction(Action):
    """Each app process, in its turn, shuts its listening socket down for reading: the core's
    next connection to it is refused and goes to another process (the core retries), and the
    loader's loop ends after the request it may be serving. Passenger spawns new processes
    from the code on disk (which the boot check booted). An unknown loader: one WARNING.
    """

    name = "passenger"
    summary = (
        "one app process at a time stops accepting after its response and Passenger's loader "
        "ends it; Passenger spawns fresh ones (tmp/restart.txt untouched)"
    )
    per_process = True

    def __init__(self, *, system: System = SYSTEM) -> None:
        self.system = system
        self.siblings = ALONE
        self.stopped = False
        self.waiting = False  # for its turn
        self._warned = False

    def setup(self, context: ProcessContext) -> None:
        self.siblings = context.siblings

    def __call__(self, changes: ChangeSet) -> None:
        if self.stopped or self.waiting:
            return
        handler = getattr(sys.modules["__main__"], "handler", None) if loader_options() else None
        if not isinstance(getattr(handler, "server", None), socket.socket):
            if not self._warned:
                self._warned = True
                log.warning(
                    "wsgireload: code changed (%s) but Passenger's loader in this process is "
                    "not one wsgireload knows (no handler.server socket); touch "
                    "tmp/restart.txt in the app's root to restart it", changes.describe(),
                )
            return
        self._stop_in_turn(handler)

    def _stop_in_turn(self, handler: Any) -> None:
        try:
            self.waiting = not self.may_stop()
            if self.waiting:
                self.system.later(TURN_GAP, lambda: self._stop_in_turn(handler))
                return
            self.stopped = True
            listener = handler.server
            handler.server = _Stopped(listener)
            listener.shutdown(socket.SHUT_RD)  # wakes the loader's select; refuses new connects
        except Exception as exc:  # from a timer thread: say it, never raise
            self.waiting = False
            log.warning("wsgireload: could not stop this Passenger process: %r", exc)

    def may_stop(self) -> bool:
        """Whether this process may stop now (then noted in the app's record): one-by-one, once
        as many other ready processes stay as the app had at the reload's start, less one, or
        none came for two boots' time (Passenger spawns on demand: maybe never)."""
        verdict, me = [True], str(self.system.getpid())

        def change(data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            now, generation = self.system.monotonic(), section(data, "generation")
            live = {pid: w for pid, w in section(data, "workers").items() if isinstance(w, dict)
                    and self.system.alive(int(pid), w.get("start"))}
            state = section(data, "leaving")
            if state.get("n") != generation.get("n"):
                state = {"n": generation.get("n"), "count": len(live), "at": now, "pids": []}
            gone = list(state.get("pids", ()))
            staying = [pid for pid, w in live.items() if pid != me and pid not in gone
                       and "ready" in w]
            boots = [float(w["ready"]) - float(w["born"]) for w in live.values()
                     if "ready" in w and "born" in w]
            patience = min(self.siblings.boot_timeout, 2 * max(boots, default=0.0) + 2.0)
            if (len(staying) >= int(state["count"]) - 1
                    or now - float(state["at"]) > patience):
                return {**data, "leaving": {**state, "pids": [*gone, me], "at": now}}
            verdict[0] = False
            return None

        if self.siblings.rollout == "one-by-one":
            self.siblings.update(change)
        return verdict[0]

    def describe(self) -> str:
        return "passenger: each app process in turn stops accepting and exits"


def serves(environ: Mapping[str, Any]) -> bool:
    return str(environ.get("SERVER_SOFTWARE")).startswith("Phusion_Passenger/") or (
        APP_ROOT in environ)


def master_of(environ: Mapping[str, Any], system: System = SYSTEM) -> Optional[Tuple[str, int]]:
    """The processes of one app are the workers of the Passenger core; one core serves many
    apps, so the app's root is part of the record's name."""
    root = loader_options().get("app_root")
    if not serves(environ) or root is None:
        return None
    digest = hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{NAME}.{digest}", system.parent_at_start()


def auto_action() -> Action:
    return PassengerAction()


def boot_targets() -> List[Target]:
    """The startup file the loader loads (``passenger_wsgi.py`` by default), ``application``."""
    options = loader_options()
    if not options:
        return []
    path = os.path.join(options["app_root"], options.get("startup_file") or "passenger_wsgi.py")
    return [Target(path=path, attr="application", spec=path)]


def checker_stubs() -> None:
    """An app under Passenger imports nothing of Passenger's."""


def threads_available(environ: Mapping[str, Any]) -> bool:
    return True


def early_environ() -> Optional[Dict[str, Any]]:
    """An app process of Passenger is a serving process already while it imports the app
    (Python apps are spawned directly, never forked from a preloader)."""
    root = loader_options().get("app_root")
    return {APP_ROOT: root} if root else None


def before_workers(hook: Callable[[], None]) -> bool:
    return False


def why_here(name: str) -> Optional[str]:
    """``wsgireload check passenger_wsgi``: its module name is Passenger's startup file's."""
    if "passenger_wsgi" in sys.modules:
        return "passenger_wsgi is Passenger's startup file: under Passenger, see below"
    return None


ACTIONS = (PassengerAction,)
