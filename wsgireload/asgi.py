"""The Reloader as ASGI 3 middleware: the WSGI Reloader's gate, engine, options and master
record, counting the HTTP responses in flight.

How the gate tells the servers layer about an ASGI process (the contract a server module
relies on): the servers layer reads WSGI-style mappings (``servers.detect_server(environ)``,
``master_of(environ)``, ``threads_available(environ)``, the action's
``ProcessContext.environ``). An ASGI scope names no server, so ``asgi_environ(scope)`` builds
that mapping once per process, when the gate starts watching in it:

- ``"wsgireload.asgi"``: the scope that started it (the ``lifespan`` scope, or the first
  ``http`` scope when the server runs no lifespan). Only an ASGI gate sets this key: a
  server module that serves ASGI only recognises its process by it plus what the process
  shows (``sys.modules``, ``sys.argv``, its parent), never by a request's headers.
- the keys of ``servers.early_environ()``: each server module's ``early_environ()`` names
  the server when this process is one of its workers. gunicorn's gives
  ``{"gunicorn.socket": None}`` in any gunicorn worker, whatever its class (``-k asgi``,
  ``uvicorn_worker.UvicornWorker``), so gunicorn's actions and rollout serve ASGI workers
  unchanged.

The gate starts watching in a worker when the app reports ``lifespan.startup.complete`` (the
worker is ready to serve: the rollout waits for that), when the app's lifespan ends or raises
without reporting (the server then serves it without lifespan), or at the first HTTP request (no
lifespan). A worker whose app reports ``lifespan.startup.failed`` never starts: it is about to
exit. Lifespan messages pass through untouched.
"""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable, Dict, MutableMapping

from . import servers
from ._options import documented
from .errors import ConfigurationError
from .middleware import Gate
from .servers.base import ASGI_KEY

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["Reloader"]


def asgi_environ(scope: Scope) -> Dict[str, Any]:
    """The servers layer's mapping for this ASGI process (see the module's docstring)."""
    return {**(servers.early_environ() or {}), ASGI_KEY: scope}


@documented
class Reloader(Gate):
    """ASGI 3 middleware that reloads the server gracefully when the app's code changes.

    ::

        from wsgireload.asgi import Reloader
        app = Reloader(app)

    The same options, engine and guarantees as :class:`wsgireload.Reloader`. An HTTP
    response counts as in flight from the call until its last body message is sent (or the
    call ends). Websockets do not count: a reload does not wait for them, and the server's
    graceful shutdown of the old worker closes them (the client reconnects to a new one).
    A streamed response that never ends holds a due reload for at most ``drain_timeout``.
    The watcher starts as the worker reports its lifespan startup complete, else at the
    first HTTP request; lifespan messages pass through untouched.

    :param app: the ASGI 3 application to wrap.
    :param action: ``"auto"``, another action name, an Action, or a callable taking the ChangeSet.
    {options}
    :param clock: monotonic clock in seconds (tests inject one).
    """

    app: ASGIApp
    protocol = "an ASGI"

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        if options.get("smoke") is not None:
            raise ConfigurationError("smoke is for WSGI apps only: the boot check of an ASGI "
                                     "app runs its lifespan startup instead; drop smoke=")
        super().__init__(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._steady:
            try:
                return await self.app(scope, receive, send)
            except (ImportError, SyntaxError) as exc:
                self._note_import_failure(exc)
                raise
        kind = scope["type"]
        if kind == "lifespan" and not self.closed and self._pid != os.getpid():
            return await self._lifespan(scope, receive, send)
        if kind != "http" or not self._request_started(scope):
            return await self.app(scope, receive, send)
        return await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's call, counted in flight until its last body message (or its end).
        (Apart from ``__call__``: closures there would cost every steady request.)"""
        done = False

        def finish() -> None:
            nonlocal done
            if not done:
                done = True
                self._response_closed()

        async def counted(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finish()

        try:
            await self.app(scope, receive, counted)
        except (ImportError, SyntaxError) as exc:
            self._note_import_failure(exc)
            raise
        finally:
            finish()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the lifespan through; start watching once the worker is ready to serve."""
        failed = False

        async def watching(message: Message) -> None:
            nonlocal failed
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                self._start_in_worker(scope)
            failed = failed or message["type"] == "lifespan.startup.failed"

        try:
            await self.app(scope, receive, watching)
        finally:
            if not failed:  # ended without reporting: the server serves without lifespan
                self._start_in_worker(scope)

    def _start_in_worker(self, scope: Scope) -> None:
        if self.closed or self._pid == os.getpid():
            return
        try:
            self._start_process(asgi_environ(scope))
        except Exception as exc:  # the first request tries again
            self._early_failed(exc)

    def _start_process(self, environ: Dict[str, Any]) -> None:
        super()._start_process(environ)
        servers.accept_nothing_before_exit()

    def _environ(self, request: Any) -> Dict[str, Any]:
        return asgi_environ(request)

    def _start_early(self) -> None:
        """Not at import: an ASGI worker is ready once its lifespan startup completes."""

    def _tick(self) -> None:
        super()._tick()
        # A response streaming for ever must not hold the reload when no other one closes:
        # once overdue, fire from here too (the server's graceful shutdown ends the stream).
        if self._inflight and self._due is not None and not self.action.after_close_only:
            self._fire_when_idle(closing=True)

    def __repr__(self) -> str:
        return f"<asgi.Reloader {self.app!r} action={self.action.describe()!r}>"
