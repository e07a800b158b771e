"""mod_wsgi: in daemon mode the process sends itself SIGINT after its response; Apache
replaces it. Embedded mode cannot reload code: say so once and do nothing."""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable

from ..policy import ChangeSet
from .base import Action, ProcessContext

log = logging.getLogger("wsgireload")


class ModWsgiAction(Action):
    """mod_wsgi's documented reload: ``os.kill(os.getpid(), signal.SIGINT)`` in a daemon process.

    Only the process itself is signalled, never its parent: a daemon process's parent is
    Apache's own parent process. The signal is sent once no response is in flight (from the
    watcher thread, or the ``close()`` of the last one), and mod_wsgi lets other threads'
    requests finish (``shutdown-timeout``).

    :param kill: ``os.kill`` (tests inject a recorder).
    :param getpid: ``os.getpid``.
    """

    name = "mod_wsgi"
    summary = (
        "daemon mode: each process sends itself SIGINT once no response is in flight; "
        "embedded mode: a WARNING that reload needs daemon mode"
    )
    per_process = True

    def __init__(
        self,
        *,
        kill: Callable[[int, int], None] = os.kill,
        getpid: Callable[[], int] = os.getpid,
    ) -> None:
        self.kill = kill
        self.getpid = getpid
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
        pid = self.getpid()
        if pid <= 1:  # pragma: no cover - a daemon process is never init
            log.warning("wsgireload: not reloading: this process is pid %d", pid)
            return
        self.kill(pid, signal.SIGINT)

    def describe(self) -> str:
        if self.daemon:
            return f"mod_wsgi daemon restart (SIGINT to itself, group {self.process_group!r})"
        return "mod_wsgi: none (embedded mode)"
