"""resolve(): an action= value (a name, an Action, a callable) becomes an Action, or a
ConfigurationError that lists the names."""

from __future__ import annotations

from typing import Any

import pytest

from wsgireload import ConfigurationError, Reloader
from wsgireload.actions import REGISTRY, CallbackAction, LogOnlyAction, resolve


def app(environ: dict, start_response: Any) -> list:
    start_response("200 OK", [])
    return [b""]


def test_actions_resolve() -> None:
    assert isinstance(Reloader(app, action="log-only").action, LogOnlyAction)
    assert isinstance(Reloader(app, action=print).action, CallbackAction)
    custom = LogOnlyAction()
    assert Reloader(app, action=custom).action is custom


def test_every_registered_name_resolves_to_its_action() -> None:
    for name, factory in REGISTRY.items():
        assert type(resolve(name)) is factory


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve("reboot")
    assert all(repr(name) in str(info.value) for name in REGISTRY)
