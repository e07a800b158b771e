"""A small Starlette app (ASGI) with production-safe reloading: edit greeting.py, reload.

Run it from the repository root, after ``pip install -e ".[examples]"``::

    gunicorn -k asgi --workers 2 --bind 127.0.0.1:8000 examples.starlette_app:app
    gunicorn -k uvicorn_worker.UvicornWorker --workers 2 --bind 127.0.0.1:8000 \\
        examples.starlette_app:app

then open http://127.0.0.1:8000/, edit ``examples/greeting.py`` and reload the page: a few
seconds after the last save gunicorn has replaced each worker, one at a time, with no
request failed. FastAPI apps are wrapped the same way (``app = Reloader(FastAPI(...))``).
"""

import logging
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from wsgireload.asgi import Reloader

from .greeting import greeting

# wsgireload logs through logging.getLogger("wsgireload") and adds no handler of its own.
logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(message)s")


async def index(request: Request) -> HTMLResponse:
    return HTMLResponse(f"<h1>{greeting('world')}</h1><p>Served by process {os.getpid()}.</p>")


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    # Open connection pools here. If this raises, Starlette reports lifespan.startup.failed
    # and gunicorn would stop altogether on it: wsgireload runs it in its boot check first
    # and keeps the old code serving instead.
    yield


app = Reloader(Starlette(routes=[Route("/", index)], lifespan=lifespan))
