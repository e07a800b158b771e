"""The exceptions wsgireload raises.

All of them derive from WsgiReloadError; configuration mistakes are also ValueErrors.
"""

from __future__ import annotations


class WsgiReloadError(Exception):
    """Base class of every error wsgireload raises."""


class ConfigurationError(WsgiReloadError, ValueError):
    """An option given to wsgireload is invalid; raised at construction, never per request."""
