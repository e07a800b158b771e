"""The options every entry point builds: one frozen, validated object, and what it builds.

One place says what a valid interval, settle or validate value is, and logs a reload.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, List, Optional, Tuple, TypeVar, Union

from ._ops import check_metrics_file
from .actions import Action
from .boot import BootCheck, Target, check_options
from .detect import Detector
from .errors import ConfigurationError
from .events import EventDetector
from .events import available as events_available
from .policy import ChangeSet, Policy

log = logging.getLogger("wsgireload")

PathSpec = Union[str, "os.PathLike[str]"]
T = TypeVar("T", bound=type)


def seconds(name: str, value: Any, *, zero: bool = False) -> None:
    """A number of seconds above 0 (``zero``: or 0), else ConfigurationError."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if zero and not (number and value >= 0):
        raise ConfigurationError(f"{name} must be a number of seconds, 0 or more (got {value!r})")
    if not zero and not (number and value > 0):
        raise ConfigurationError(
            f"{name} must be a number of seconds greater than 0 (got {value!r}); "
            "0 would make the watcher spin"
        )


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
VALIDATES = ("boot", "compile", None)
ROLLOUTS = ("one-by-one", "all-at-once")


def option(default: Any, unit: str, text: str) -> Any:
    """A field of Options: its default, its unit and one line of help, the one place each
    option is defined (docstrings are made from these; tests hold docs/ to them, and
    docs/configuration.md says the rest: what each value does, when to change it)."""
    return dataclasses.field(default=default, metadata={"unit": unit, "help": text})


@dataclasses.dataclass(frozen=True)
class Options:
    """What to watch and when to act, checked once: build it with :meth:`build`."""

    interval: float = option(1.0, "seconds", "time between two scans of the watched files")
    settle: float = option(
        1.0, "seconds", "quiet time before acting, so that a half-copied deploy is never loaded"
    )
    settle_max: float = option(
        30.0, "seconds", "act this long after the first change even if files keep changing"
    )
    extra_files: Tuple[str, ...] = option(
        (), "paths or glob patterns", "more files to watch, such as templates (``**`` recurses)"
    )
    exclude: Tuple[str, ...] = option((), "fnmatch patterns of full paths", "never watched")
    modules: bool = option(True, "", "watch the source files of ``sys.modules``")
    include_stdlib: bool = option(False, "", "also watch the standard library")
    validate: Optional[str] = option(
        "boot", "", '``"boot"`` (compile, then boot the app in a fresh interpreter as the '
        'server would), ``"compile"`` or None'
    )
    boot_app: Optional[str] = option(
        None, "app spec", "the app the boot check boots; None: the server's own, else the "
        "module creating the Reloader"
    )
    boot_timeout: float = option(30.0, "seconds", "how long the boot check may take")
    smoke: Optional[str] = option(
        None, "URL path", "a path to GET once from the booted app: a 5xx refuses the deploy"
    )
    mode: str = option(
        "auto", "", '``"thread"`` (a watcher thread per worker), ``"inline"`` (scans on the '
        'request path, for servers without threads) or ``"auto"``'
    )
    backend: str = option(
        "poll", "", '``"poll"`` (works everywhere), ``"events"`` (needs ``watchfiles``) or '
        '``"auto"``'
    )
    rollout: str = option(
        "one-by-one", "", '``"one-by-one"`` (gunicorn, Passenger: each new worker ready before '
        'an old one leaves) or ``"all-at-once"`` (the server\'s own reload: gunicorn\'s HUP)'
    )
    metrics_file: Optional[str] = option(
        None, "path of a ``*.prom`` file", "Prometheus text file of the master's reloads, "
        "written atomically for node_exporter's textfile collector"
    )
    systemd_notify: bool = option(
        False, "", "tell systemd (``$NOTIFY_SOCKET``) when a reload starts and ends, with a "
        "``STATUS=`` line (the unit needs ``NotifyAccess=all``)"
    )

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
        if isinstance(values.get("metrics_file"), os.PathLike):
            values["metrics_file"] = os.fspath(values["metrics_file"])
        options = cls(**values)
        options.policy()  # checks the timing and validation options
        check_metrics_file(options.metrics_file)
        for name, allowed in (("mode", MODES), ("backend", BACKENDS), ("rollout", ROLLOUTS)):
            value = getattr(options, name)
            if value not in allowed:
                choices = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
                raise ConfigurationError(f"{name}={value!r} is not allowed; use {choices}")
        return options

    def policy(self, creator: Optional[Target] = None) -> Policy:
        """The Policy, after checking the timing and validation options; ``creator`` is the
        module that created the Reloader (a boot target)."""
        settle, settle_max, validate = self.settle, self.settle_max, self.validate
        seconds("interval", self.interval)
        seconds("settle", settle, zero=True)
        seconds("settle_max", settle_max, zero=True)
        if settle_max < settle:
            raise ConfigurationError(
                f"settle_max ({settle_max}) must be at least settle ({settle}): it caps how "
                "long a change set may keep growing"
            )
        if validate not in VALIDATES:
            raise ConfigurationError(
                f"validate={validate!r} is not allowed; use 'boot' (the default), 'compile' or None"
            )
        app = check_options(app=self.boot_app, smoke=self.smoke, timeout=self.boot_timeout)
        if validate != "boot" and (self.boot_app is not None or self.smoke is not None):
            raise ConfigurationError(
                f"boot_app and smoke need validate='boot' (got validate={validate!r})"
            )
        timeout, smoke = float(self.boot_timeout), self.smoke
        return Policy(
            settle=float(settle),
            settle_max=float(settle_max),
            validate=validate,
            boot=BootCheck(app=app, creator=creator, timeout=timeout, smoke=smoke),
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
            extra={"wsgireload_event": "reload", "files": list(changes.files)},
        )
        action(changes)
    except Exception as exc:
        log.error("wsgireload: the reload action %s failed: %r", action.describe(), exc)
        return exc
    return None


def documented(cls: T) -> T:
    """Write the options' ``:param:`` lines where the docstring of ``cls`` says ``{options}``."""
    lines = []
    for item in dataclasses.fields(Options):
        unit, default = item.metadata["unit"], f"default ``{item.default!r}``"
        about = f"{unit}; {default}" if unit else default
        lines.append(f":param {item.name}: {item.metadata['help']} ({about}).")
    if cls.__doc__:  # None under python -OO
        cls.__doc__ = cls.__doc__.replace("{options}", "\n    ".join(lines))
    return cls
