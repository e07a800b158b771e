"""``action="auto"``: pick the server's own graceful reload, and stay safe where there is none."""

from __future__ import annotations

import logging
import sys
from typing import Any, Mapping, Optional

from ..policy import ChangeSet
from .base import Action, ProcessContext
from .gunicorn import GunicornAction

log = logging.getLogger("wsgireload")


def detect_server(environ: Mapping[str, Any]) -> str:
    """Name the server from keys only the server sets (clients only reach ``HTTP_*`` keys)."""
    if "uwsgi.version" in environ:
        return "uwsgi"
    if "mod_wsgi.process_group" in environ:
        return "mod_wsgi"
    if "gunicorn.socket" in environ or "gunicorn.workers.base" in sys.modules:
        return "gunicorn"
    return "standalone"


class AutoAction(Action):
    """Chooses the action for the server this process runs under, at ``setup``."""

    name = "auto"

    def __init__(self) -> None:
        self.server = "unknown"
        self.delegate: Optional[Action] = None

    def setup(self, context: ProcessContext) -> None:
        self.server = detect_server(context.environ)
        self.delegate = self.choose(self.server, context)
        if self.delegate is not None:
            self.delegate.setup(context)

    def choose(self, server: str, context: ProcessContext) -> Optional[Action]:
        """The action for ``server``; None means warn and do nothing."""
        from . import REGISTRY

        if server == "gunicorn":
            # A master out of this worker's reach (gunicorn --user) still gets new code: each
            # worker restarts itself instead.
            return GunicornAction(restart_fallback=True)
        factory = REGISTRY.get(server)
        return factory() if factory is not None else None

    @property
    def requires_drain(self) -> bool:  # type: ignore[override]
        return bool(self.delegate and self.delegate.requires_drain)

    @property
    def per_process(self) -> bool:  # type: ignore[override]
        return bool(self.delegate and self.delegate.per_process)

    def __call__(self, changes: ChangeSet) -> None:
        if self.delegate is None:
            log.warning(
                "wsgireload: code changed (%s) but no safe reload is known for this server "
                "(%s); restart it yourself, or pass action='exit' or action='exec'",
                changes.describe(),
                self.server,
            )
            return
        self.delegate(changes)

    def describe(self) -> str:
        if self.delegate is None:
            return f"auto: none for {self.server}"
        return f"auto: {self.delegate.describe()}"
