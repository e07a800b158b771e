"""The options every entry point builds: one frozen, validated object, and what it builds.

One place says what a valid interval, settle or validate value is, and logs a reload.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, List, Optional, Tuple, Union

from .actions import Action
from .boot import BootCheck, Target, check_options
from .detect import Detector
from .errors import ConfigurationError
from .events import EventDetector
from .events import available as events_available
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


MODES = ("auto", "thread", "inline")
BACKENDS = ("poll", "events", "auto")


@dataclasses.dataclass(frozen=True)
class Options:
    """What to watch and when to act, checked once: build it with :meth:`build`."""

    interval: float = 1.0  # seconds between two scans
    settle: float = 1.0  # seconds without a further change before acting
    settle_max: float = 30.0  # seconds after the first change when acting anyway
    extra_files: Tuple[str, ...] = ()  # paths or glob patterns watched besides the modules
    exclude: Tuple[str, ...] = ()  # fnmatch patterns of full paths never watched
    modules: bool = True  # watch the source files of sys.modules
    include_stdlib: bool = False
    validate: Optional[str] = "boot"  # "boot", "compile" or None ("import": boot's alias)
    boot_app: Optional[str] = None  # what the boot check imports; None: the server's own
    boot_timeout: Optional[float] = None  # seconds; None: import_timeout
    smoke: Optional[str] = None  # a URL path the booted app must answer without a 5xx
    import_name: Optional[str] = None  # the 0.1 name of boot_app
    import_timeout: float = 30.0  # seconds
    mode: str = "auto"  # Reloader: "thread", "inline" or "auto"
    backend: str = "poll"  # Reloader: "poll", "events" or "auto"

    @classmethod
    def build(cls, owner: str, **values: Any) -> "Options":
        """Options from keyword arguments, or ConfigurationError saying what is wrong."""
        names = {f.name for f in dataclasses.fields(cls)}
        for name in values:
            if name not in names:
                raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")
        for name in ("extra_files", "exclude"):
            if name in values:
                values[name] = tuple(os.fspath(p) for p in as_list(name, values[name]))
        options = cls(**values)
        options.policy()  # checks the timing and validation options
        for name, allowed in (("mode", MODES), ("backend", BACKENDS)):
            value = getattr(options, name)
            if value not in allowed:
                choices = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
                raise ConfigurationError(f"{name}={value!r} is not allowed; use {choices}")
        return options

    def policy(self, creator: Optional[Target] = None) -> Policy:
        """The Policy, after checking the timing and validation options; ``creator`` is the
        module that created the Reloader (a boot target)."""
        settle, settle_max, validate = self.settle, self.settle_max, self.validate
        positive("interval", self.interval)
        non_negative("settle", settle)
        non_negative("settle_max", settle_max)
        positive("import_timeout", self.import_timeout)
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
        boot_app, import_name, smoke = self.boot_app, self.import_name, self.smoke
        if import_name is not None and boot_app is not None and import_name != boot_app:
            raise ConfigurationError(
                f"import_name={import_name!r} and boot_app={boot_app!r} disagree: import_name is "
                "the old name of boot_app, give only boot_app"
            )
        timeout = self.import_timeout if self.boot_timeout is None else self.boot_timeout
        app = check_options(
            app=boot_app if boot_app is not None else import_name, smoke=smoke, timeout=timeout
        )
        if validate != "boot" and (boot_app is not None or smoke is not None):
            raise ConfigurationError(
                f"boot_app and smoke need validate='boot' (got validate={validate!r})"
            )
        return Policy(
            settle=float(settle),
            settle_max=float(settle_max),
            validate=validate,
            boot=BootCheck(app=app, creator=creator, timeout=float(timeout), smoke=smoke),
        )

    def detector(self) -> Union[Detector, EventDetector]:
        """A Detector with its baseline taken now (what this process has loaded)."""
        detector = Detector(
            extra_files=self.extra_files,
            exclude=self.exclude,
            modules=self.modules,
            include_stdlib=self.include_stdlib,
            # Modules imported after this point are baselined when first seen; an edit that
            # landed between now and then must still count (see Detector).
            changed_since_ns=time.time_ns(),
        )
        detector.scan()
        if self.backend == "poll":
            return detector
        if events_available():
            return EventDetector(detector)
        if self.backend == "events":
            log.warning(
                "wsgireload: backend='events' needs the watchfiles package "
                "(pip install 'wsgireload[events]'); polling instead"
            )
        return detector


def run_action(
    action: Action, changes: ChangeSet, level: int = logging.INFO, note: str = ""
) -> Optional[Exception]:
    """Log the one line of a reload and run the action; its failure is logged, returned."""
    try:
        log.log(
            level,
            "wsgireload: %d file%s changed (%s); reloading with %s%s",
            len(changes.files),
            "" if len(changes.files) == 1 else "s",
            changes.describe(),
            action.describe(),
            note,
        )
        action(changes)
    except Exception as exc:
        log.error("wsgireload: the reload action %s failed: %r", action.describe(), exc)
        return exc
    return None
