"""The servers wsgireload knows, one module each, and ``action="auto"`` picking among them.

A server module holds everything about its server: ``serves(environ)`` (recognising it from a
request's environ), ``master_of(environ)`` (the master whose workers share one record),
``auto_action()``, ``boot_targets()`` (the app its options name), ``SCRIPT_PREFIX`` and
``checker_stubs()`` (what the boot checker needs to boot it as the server would),
``threads_available(environ)``, ``early_environ()`` and ``before_workers(hook)`` (starting
before the first request), ``ACTIONS`` (its ``action=`` names) and, where a HUP reloads it,
``PIDFILE_MASTER = True`` (a default of ``wsgireload watch --pidfile``). A server that is none
of them is "standalone": no master to reload it. Adding a server is adding its module to
``SERVERS``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..boot import Target
from ..policy import ChangeSet
from . import granian, gunicorn, hypercorn, mod_wsgi, passenger, uvicorn, uwsgi
from .base import Action, ProcessContext, released_through_link
from .standalone import StandaloneAction

log = logging.getLogger("wsgireload")

Environ = Mapping[str, Any]

# In the order they are recognised: the keys of uWSGI and mod_wsgi are their own, while
# gunicorn is also recognised by its worker module, which an embedding app may have loaded.
# The ASGI servers come after gunicorn: its UvicornWorker runs uvicorn's modules too.
SERVERS = (uwsgi, mod_wsgi, passenger, gunicorn, uvicorn, granian, hypercorn)


def _serving(environ: Environ) -> Any:
    """The module of the server this environ comes from, or None (standalone)."""
    return next((server for server in SERVERS if server.serves(environ)), None)


def detect_server(environ: Environ) -> str:
    """Name the server from keys only the server sets (clients only reach ``HTTP_*`` keys)."""
    server = _serving(environ)
    return server.NAME if server is not None else "standalone"


def master_of(environ: Environ) -> Optional[Tuple[str, int]]:
    """(record name, master pid) of a preforking server this process is a worker of, or None."""
    return next((found for server in SERVERS if (found := server.master_of(environ))), None)


def boot_targets() -> List[Target]:
    """The app as the server's own options name it (uWSGI's, gunicorn's app URI), if any."""
    return next((found for server in SERVERS if (found := server.boot_targets())), [])


def environ_targets(environ: Environ) -> List[Target]:
    """The app as a request's environ names it (mod_wsgi's script), if any."""
    none: Callable[[Environ], List[Target]] = lambda environ: []  # noqa: E731
    return next((found for server in SERVERS
                 if (found := getattr(server, "environ_targets", none)(environ))), [])


def why_here(name: str) -> Optional[str]:
    """Why ``wsgireload check`` sees a server from its own process (no request), if it does."""
    none: Callable[[str], Optional[str]] = lambda name: None  # noqa: E731
    return next((why for server in SERVERS if (why := getattr(server, "why_here", none)(name))),
                None)


# The module names a server gives a script file it loads (``site.wsgi``, uWSGI's wsgi-file).
SCRIPT_PREFIXES = tuple(server.SCRIPT_PREFIX for server in SERVERS if server.SCRIPT_PREFIX)


def checker_stubs() -> Optional[Tuple[str, Dict[str, Any]]]:
    """(server, data) for the stand-ins of the server's own modules that the boot checker
    installs, as this process sees them; None where the app imports no server module."""
    return next(((s.NAME, data) for s in SERVERS if (data := s.checker_stubs()) is not None), None)


def lifespan_off() -> bool:
    """The server runs no ASGI lifespan in this worker (``uvicorn --lifespan off``, ``granian
    --interface asginl``, ``gunicorn --asgi-lifespan off``): the boot check runs none either."""
    return any(getattr(server, "lifespan_off", bool)() for server in SERVERS)


def accept_nothing_before_exit() -> None:
    """In an ASGI worker: stop accepting on SIGTERM, before the server's own shutdown, which
    drops just-accepted connections (uvicorn's, granian's own way); elsewhere nothing."""
    for server in SERVERS:
        getattr(server, "accept_nothing_before_exit", lambda: None)()


def install_stubs(name: str, data: Dict[str, Any]) -> None:
    """In the boot checker: install the stand-ins ``checker_stubs`` named."""
    next(server for server in SERVERS if server.NAME == name).install_stubs(data)


def traps(environ: Environ, app_file: Optional[str]) -> Dict[str, str]:
    """{name: what goes wrong on reload and the fix} for this setup (``wsgireload check``)."""
    found = released_through_link(app_file)
    return {**found, **getattr(_serving(environ), "traps", lambda environ: {})(environ)}


def log_target(environ: Environ) -> Optional[logging.Logger]:
    """The logger whose handlers write the server's own log, if it has one."""
    return getattr(_serving(environ), "log_target", lambda: None)()


def threads_available(environ: Environ) -> bool:
    """Whether Python threads run in this server's workers (else the inline mode)."""
    return all(server.threads_available(environ) for server in SERVERS)


def early_environ() -> Optional[Dict[str, Any]]:
    """The server's keys if this process is known to be one of its serving workers without a
    request (see each module's ``early_environ``), else None."""
    return next((found for server in SERVERS if (found := server.early_environ())), None)


def start_early(start: Callable[[Dict[str, Any]], None], after_fork: Callable[[], None]) -> bool:
    """Call ``start`` with the server's keys if this process is a serving worker already, or
    have ``after_fork`` called in each worker a master forks after importing the app; False:
    neither (wait for the first request)."""
    environ = early_environ()
    if environ is not None:
        start(environ)
        return True
    return any(server.before_workers(after_fork) for server in SERVERS)


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
        found = next((module for module in SERVERS if module.NAME == server), None)
        return found.auto_action() if found is not None else StandaloneAction()

    @property
    def requires_drain(self) -> bool:  # type: ignore[override]
        return bool(self.delegate and self.delegate.requires_drain)

    @property
    def per_process(self) -> bool:  # type: ignore[override]
        return bool(self.delegate and self.delegate.per_process)

    @property
    def runtime_dir(self) -> Optional[str]:  # type: ignore[override]
        return self.delegate.runtime_dir if self.delegate is not None else None

    @property
    def rolling(self) -> bool:  # type: ignore[override]
        return bool(self.delegate and self.delegate.rolling)

    def advance(self) -> None:
        if self.delegate is not None:
            self.delegate.advance()

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
