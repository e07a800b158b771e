"""Option checks and construction shared by Reloader and Watcher.

One place says what a valid interval, settle or validate value is, and logs a reload.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, List, Optional, Union

from .actions import Action
from .boot import BootCheck, Target, check_options
from .detect import Detector
from .errors import ConfigurationError
from .policy import VALIDATE_CHOICES, ChangeSet, Policy

log = logging.getLogger("wsgireload")

PathSpec = Union[str, "os.PathLike[str]"]


def positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"{name} must be a number of seconds greater than 0 (got {value!r}); "
            "0 would make the watcher spin"
        )


def non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigurationError(f"{name} must be a number of seconds, 0 or more (got {value!r})")


def as_list(name: str, value: Any) -> List[Any]:
    """A path, a pattern or a list of them, as a list (a lone string is one pattern)."""
    if isinstance(value, (str, os.PathLike)):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise ConfigurationError(
            f"{name} must be a path or pattern, or a list of them (got {type(value).__name__})"
        ) from None
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise ConfigurationError(
                f"{name} entries must be paths or patterns (got {type(item).__name__}: {item!r})"
            )
    return items


def build_detector(
    extra_files: Union[PathSpec, Iterable[PathSpec]],
    exclude: Union[str, Iterable[str]],
    *,
    modules: bool = True,
    include_stdlib: bool = False,
    changed_since_ns: Optional[int] = None,
) -> Detector:
    return Detector(
        extra_files=[os.fspath(p) for p in as_list("extra_files", extra_files)],
        exclude=[os.fspath(p) for p in as_list("exclude", exclude)],
        modules=modules,
        include_stdlib=include_stdlib,
        changed_since_ns=changed_since_ns,
    )


def build_policy(
    *,
    interval: float,
    settle: float,
    settle_max: float,
    validate: Optional[str],
    import_name: Optional[str],
    import_timeout: float,
    boot_app: Optional[str] = None,
    boot_timeout: Optional[float] = None,
    smoke: Optional[str] = None,
    creator: Optional[Target] = None,
) -> Policy:
    """Check the timing and validation options; the Policy they describe.

    ``import_name``/``import_timeout`` are the 0.1 names of ``boot_app``/``boot_timeout``.
    """
    positive("interval", interval)
    non_negative("settle", settle)
    non_negative("settle_max", settle_max)
    positive("import_timeout", import_timeout)
    if settle_max < settle:
        raise ConfigurationError(
            f"settle_max ({settle_max}) must be at least settle ({settle}): it caps how "
            "long a change set may keep growing"
        )
    if validate not in VALIDATE_CHOICES:
        raise ConfigurationError(
            f"validate={validate!r} is not allowed; use 'boot' (the default), 'compile' or None"
        )
    if validate == "import":
        validate = "boot"
    if import_name is not None and boot_app is not None and import_name != boot_app:
        raise ConfigurationError(
            f"import_name={import_name!r} and boot_app={boot_app!r} disagree: import_name is "
            "the old name of boot_app, give only boot_app"
        )
    app_spec = boot_app if boot_app is not None else import_name
    timeout = import_timeout if boot_timeout is None else boot_timeout
    app = check_options(app=app_spec, smoke=smoke, timeout=timeout)
    if validate != "boot" and (boot_app is not None or smoke is not None):
        raise ConfigurationError(
            f"boot_app and smoke need validate='boot' (got validate={validate!r})"
        )
    return Policy(
        settle=float(settle),
        settle_max=float(settle_max),
        validate=validate,
        import_name=app_spec,
        import_timeout=float(timeout),
        boot=BootCheck(app=app, creator=creator, timeout=float(timeout), smoke=smoke),
    )


def run_action(action: Action, changes: ChangeSet) -> Optional[Exception]:
    """Log the one INFO line of a reload and run the action; its failure is logged, returned."""
    try:
        log.info(
            "wsgireload: %d file%s changed (%s); reloading with %s",
            len(changes.files),
            "" if len(changes.files) == 1 else "s",
            changes.describe(),
            action.describe(),
        )
        action(changes)
    except Exception as exc:
        log.error("wsgireload: the reload action %s failed: %r", action.describe(), exc)
        return exc
    return None
