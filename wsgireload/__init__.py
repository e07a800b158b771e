"""Production-safe code reloading for any WSGI app: ``application = Reloader(app)``.

Detect (``detect``), decide (``policy``), act (``actions``); the middleware ties them together.
"""

from __future__ import annotations

from .classic import code_changed
from .errors import ConfigurationError, WsgiReloadError
from .middleware import Reloader

__all__ = ["Reloader", "code_changed", "ConfigurationError", "WsgiReloadError"]
__version__ = "0.1.0"
