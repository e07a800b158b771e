"""mod_wsgi: recognising it, its process group, and its reload: in daemon mode the process
sends itself SIGINT after its response and Apache replaces it. Embedded mode cannot reload
code: say so once and do nothing."""

from __future__ import annotations

import logging
import re
import signal
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .._system import SYSTEM, System
from ..boot import Target
from ..policy import ChangeSet
from .base import Action, ProcessContext

log = logging.getLogger("wsgireload")


class ModWsgiAction(Action):
    """mod_wsgi's documented reload: ``os.kill(os.getpid(), signal.SIGINT)`` in a daemon process.

    Only the process itself is signalled, never its parent: a daemon process's parent is
    Apache's own parent process. The signal is sent once no response is in flight (from the
    watcher thread, or the ``close()`` of the last one), and mod_wsgi lets other threads'
    requests finish (``shutdown-timeout``).

    :param system: the operating system (tests pass a fake).
    """

    name = "mod_wsgi"
    summary = (
        "daemon mode: each process sends itself SIGINT once no response is in flight; "
        "embedded mode: a WARNING that reload needs daemon mode"
    )
    per_process = True

    def __init__(self, *, system: System = SYSTEM) -> None:
        self.system = system
        self.daemon = False
        self.process_group = ""
        self._warned = False

    def setup(self, context: ProcessContext) -> None:
        group = context.environ.get("mod_wsgi.process_group", "")
        self.process_group = group if isinstance(group, str) else ""
        # An empty process group means embedded mode: the code lives in Apache's children.
        self.daemon = self.process_group != ""

    def __call__(self, changes: ChangeSet) -> None:
        if not self.daemon:
            if not self._warned:
                self._warned = True
                log.warning(
                    "wsgireload: code changed (%s) but mod_wsgi runs this app in embedded "
                    "mode, where code cannot be reloaded: use daemon mode "
                    "(WSGIDaemonProcess + WSGIProcessGroup), or restart Apache",
                    changes.describe(),
                )
            return
        pid = self.system.getpid()
        if pid <= 1:  # pragma: no cover - a daemon process is never init
            log.warning("wsgireload: not reloading: this process is pid %d", pid)
            return
        self.system.kill(pid, signal.SIGINT)

    def describe(self) -> str:
        if self.daemon:
            return f"mod_wsgi daemon restart (SIGINT to itself, group {self.process_group!r})"
        return "mod_wsgi: none (embedded mode)"


NAME = "mod_wsgi"
SCRIPT_PREFIX = "_mod_wsgi_"  # the module name mod_wsgi gives a WSGIScriptAlias script


def checker_stubs() -> None:
    """An app under mod_wsgi may import ``mod_wsgi``; the checker's Python has it installed."""


def serves(environ: Mapping[str, Any]) -> bool:
    return "mod_wsgi.process_group" in environ


def master_of(environ: Mapping[str, Any], system: System = SYSTEM) -> Optional[Tuple[str, int]]:
    """The daemon processes of one process group are the workers of Apache's parent process;
    the group is part of the record's name, as two groups run two different apps."""
    group = environ.get("mod_wsgi.process_group")
    if isinstance(group, str) and group:
        return "mod_wsgi." + re.sub(r"[^A-Za-z0-9_.]", "_", group)[:64], system.parent_at_start()
    return None


def auto_action() -> Action:
    return ModWsgiAction()


def boot_targets() -> List[Target]:
    return []  # the script is named in the environ only (``environ_targets``)


def environ_targets(environ: Mapping[str, Any]) -> List[Target]:
    """mod_wsgi names its script only in a request's environ: the app the boot check boots."""
    script = environ.get("SCRIPT_FILENAME")
    if environ.get("mod_wsgi.version") is None or not isinstance(script, str) or not script:
        return []
    attr = environ.get("mod_wsgi.callable_object") or "application"
    return [Target(path=script, attr=str(attr), spec=script)]


def traps(environ: Mapping[str, Any]) -> Dict[str, str]:
    if environ.get("mod_wsgi.process_group"):
        return {}
    return {"mod_wsgi-embedded": (
        "mod_wsgi runs this app in embedded mode (in Apache's own children), where code "
        "cannot be reloaded. Fix: daemon mode, WSGIDaemonProcess + WSGIProcessGroup")}


def threads_available(environ: Mapping[str, Any]) -> bool:
    return True


def early_environ() -> Optional[Dict[str, Any]]:
    return None  # the first request tells the process group


def before_workers(hook: Callable[[], None]) -> bool:
    return False


ACTIONS = (ModWsgiAction,)
