"""How to reload: the action names and classes, each defined in its server's module
(``wsgireload.servers``); ``resolve()`` turns the ``action=`` option into an Action.

An action is given a settled, validated ChangeSet once no response is in flight.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Union

from ..errors import ConfigurationError
from ..policy import ChangeSet
from ..servers import SERVERS, AutoAction, detect_server
from ..servers.base import Action, CallbackAction, LogOnlyAction, ProcessContext
from ..servers.granian import GranianAction
from ..servers.gunicorn import GunicornAction, RestartWorkerAction
from ..servers.hypercorn import HypercornAction
from ..servers.mod_wsgi import ModWsgiAction
from ..servers.passenger import PassengerAction
from ..servers.standalone import ExecAction, ExitAction, StandaloneAction
from ..servers.uvicorn import UvicornAction
from ..servers.uwsgi import UwsgiAction

__all__ = [
    "Action",
    "AutoAction",
    "CallbackAction",
    "ExecAction",
    "ExitAction",
    "GranianAction",
    "GunicornAction",
    "HypercornAction",
    "LogOnlyAction",
    "ModWsgiAction",
    "PassengerAction",
    "ProcessContext",
    "REGISTRY",
    "RestartWorkerAction",
    "StandaloneAction",
    "UvicornAction",
    "UwsgiAction",
    "detect_server",
    "registry",
    "resolve",
]

ActionSpec = Union[str, Action, Callable[[ChangeSet], object]]

def registry(servers: Sequence[Any] = SERVERS) -> Dict[str, Callable[[], Action]]:
    """{action= name: factory taking no arguments}: these and each server module's ACTIONS."""
    return {action.name: action for action in (
        AutoAction, LogOnlyAction, StandaloneAction, ExitAction, ExecAction,
        *(action for server in servers for action in server.ACTIONS))}


REGISTRY = registry()


def resolve(spec: ActionSpec) -> Action:
    """Turn an ``action=`` value into an Action, or raise ConfigurationError saying why not."""
    if isinstance(spec, Action):
        return spec
    if isinstance(spec, str):
        factory = REGISTRY.get(spec)
        if factory is None:
            names = ", ".join(repr(name) for name in sorted(REGISTRY))
            raise ConfigurationError(
                f"action={spec!r} is not a known action; use one of {names}, "
                "or pass a callable that takes the ChangeSet"
            )
        return factory()
    if callable(spec):
        return CallbackAction(spec)
    raise ConfigurationError(
        f"action must be an action name, an Action or a callable, not {type(spec).__name__}"
    )
