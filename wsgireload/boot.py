"""The boot check: import the changed app in a fresh Python, as its server would, before a reload.

Runs in a subprocess bounded in time, from the watcher (never from a request); the parent half
finds the interpreter and the app, the checker half (``_checker_main``) imports and reports.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.machinery
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import time
import traceback
import types
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from .detect import config_dirs, norm_dir
from .errors import ConfigurationError

log = logging.getLogger("wsgireload")

VALIDATING_ENV = "WSGIRELOAD_VALIDATING"  # set in the checker: a Reloader there stays inert
DEFAULT_TIMEOUT = 30.0  # seconds the boot check lets the app take to start
_PROBE_TIMEOUT = 10.0  # seconds to ask a candidate interpreter its version
_PYTHON_NAME = re.compile(r"^(python|pypy)(\d+(\.\d+)?)?$", re.IGNORECASE)


def validating() -> bool:
    """True inside the boot checker's interpreter."""
    return os.environ.get(VALIDATING_ENV) == "1"


# -- what to import ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """An app as a server names it: ``module[:attr]``, ``module:factory(...)`` or a script file."""

    spec: str  # as the user or server wrote it, for messages
    module: Optional[str] = None  # importable module name
    path: Optional[str] = None  # or a script file (uWSGI wsgi-file, mod_wsgi script)
    attr: Optional[str] = None  # None: import only (the attribute is unknown)
    call: Optional[Tuple[Tuple[Any, ...], Tuple[Tuple[str, Any], ...]]] = None  # factory args


def parse_target(spec: str, *, default_attr: Optional[str] = "application") -> Target:
    """``module``, ``module:attr``, ``module:factory(literal args)`` or a ``.py`` path."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigurationError(
            f"boot_app must be 'module:application', 'module:create_app()' or a .py file "
            f"(got {spec!r})"
        )
    spec = spec.strip()
    module, sep, obj = spec.partition(":")
    if module.endswith(".py") or os.sep in module:
        return Target(path=os.path.abspath(module), attr=obj or default_attr, spec=spec)
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ConfigurationError(
            f"boot_app={spec!r}: {module!r} is not a module name "
            "(use 'module:application' or 'module:create_app()')"
        )
    if not sep or not obj:
        return Target(module=module, attr=default_attr, spec=spec)
    try:
        expr = ast.parse(obj, mode="eval").body
    except SyntaxError:
        expr = None
    if isinstance(expr, (ast.Name, ast.Attribute)):  # uWSGI and gunicorn allow a dotted one
        return Target(module=module, attr=ast.unparse(expr), spec=spec)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        try:
            args = tuple(ast.literal_eval(arg) for arg in expr.args)
            kwargs = tuple((str(kw.arg), ast.literal_eval(kw.value)) for kw in expr.keywords)
        except ValueError:
            raise ConfigurationError(
                f"boot_app={spec!r}: the factory's arguments must be literals"
            ) from None
        return Target(module=module, attr=expr.func.id, call=(args, kwargs), spec=spec)
    raise ConfigurationError(
        f"boot_app={spec!r}: {obj!r} is neither an attribute name nor a factory call"
    )


def calling_module() -> Optional[Target]:
    """The module creating a Reloader at its top level (skipping wsgireload's own frames)."""
    frame = inspect.currentframe()
    while frame is not None and str(frame.f_globals.get("__name__")).split(".")[0] == "wsgireload":
        frame = frame.f_back
    if frame is None or frame.f_code.co_name != "<module>":
        return None
    name = frame.f_globals.get("__name__")
    filename = frame.f_globals.get("__file__")
    if not isinstance(name, str) or not name:
        return None
    # A server that loads a script file names its module (mod_wsgi, uWSGI's wsgi-file): by path.
    from .servers import SCRIPT_PREFIXES

    if name == "__main__" or name.startswith(SCRIPT_PREFIXES):
        if isinstance(filename, str) and os.path.isfile(filename):  # site.wsgi is Python too
            return Target(path=os.path.abspath(filename), spec=filename)
        return None
    return Target(module=name, spec=name)


# -- which Python ------------------------------------------------------------------------------
def python_candidates(
    *,
    executable: Optional[str],
    prefix: str,
    base_executable: Optional[str],
    version: Tuple[int, int],
    which: Callable[[str], Optional[str]] = shutil.which,
) -> List[str]:
    """Interpreters that may run this process's code, best first (the virtualenv's first)."""
    xy = f"{version[0]}.{version[1]}"
    bindir = os.path.join(prefix, "bin")
    names: List[Optional[str]] = [
        os.path.join(bindir, name) for name in (f"python{xy}", f"python{version[0]}", "python")
    ]
    names += [executable, base_executable, which(f"python{xy}")]
    out: List[str] = []
    for name in names:
        if not name or name in out or not _PYTHON_NAME.match(os.path.basename(name)):
            continue  # never run a binary that is not Python (uwsgi, httpd) with "-c"
        if os.path.isfile(name) and os.access(name, os.X_OK):
            out.append(name)
    return out


def probe_version(python: str) -> Optional[str]:
    """``"X.Y"`` of the interpreter at ``python``, or None if it does not answer like Python."""
    try:
        proc = subprocess.run(
            [python, "-I", "-c", "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=_PROBE_TIMEOUT, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = proc.stdout.decode("ascii", "replace").strip()
    return text if proc.returncode == 0 and re.fullmatch(r"\d+\.\d+", text) else None


@functools.lru_cache(maxsize=None)
def find_python() -> Optional[str]:
    """The first candidate that really is Python of this process's X.Y (looked for once)."""
    version = (sys.version_info[0], sys.version_info[1])
    candidates = python_candidates(
        executable=sys.executable, prefix=sys.prefix, version=version,
        base_executable=getattr(sys, "_base_executable", None),  # a venv's base interpreter
    )
    return next((c for c in candidates if probe_version(c) == "%d.%d" % version), None)


# -- running the checker -----------------------------------------------------------------------
@dataclass
class CheckResult:
    """What the checker reported; ``problem`` is None when the app booted."""

    problem: Optional[str]
    seconds: float


_BOOTSTRAP = (
    "import json, sys\n"
    "payload = json.loads(sys.stdin.readline())\n"
    "sys.path[:] = payload['path']\n"
    "from wsgireload.boot import _checker_main\n"
    "_checker_main(payload)\n"
)


def run_checker(
    python: str,
    targets: Sequence[Target],
    *,
    timeout: float,
    path: Sequence[str],
    smoke: Optional[str] = None,
    stubs: Optional[Tuple[str, Mapping[str, Any]]] = None,  # (server, data): its stand-ins
    cwd: Optional[str] = None,
    lifespan: bool = True,  # False: the server runs no ASGI lifespan, so neither does the check
) -> CheckResult:
    """Boot ``targets`` in a fresh ``python`` (this process's environment); bounded in time."""
    payload = {
        "path": list(path),
        "argv": list(sys.argv),
        "prefix": sys.prefix,
        "targets": [asdict(t) for t in targets],
        "smoke": smoke,
        "stubs": stubs,
        "lifespan": lifespan,
    }
    started = time.monotonic()
    names = ", ".join(t.spec for t in targets)
    # This interpreter's -O, -W, -X flags, so an assert or a warning filter acts as in the worker
    # (the standard library's own helper, which multiprocessing uses: there is no public one).
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]  # noqa: SLF001
    try:
        proc = subprocess.Popen(
            [python, *flags, "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd or os.getcwd(), env={**os.environ, VALIDATING_ENV: "1"}, start_new_session=True,
        )
    except OSError as exc:
        return CheckResult(f"cannot start {python} for the boot check: {exc}", 0.0)
    try:
        data = json.dumps(payload, default=_as_json).encode() + b"\n"
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return CheckResult(
            f"booting {names} took longer than {timeout:g}s (the boot check's limit: raise "
            "boot_timeout if the app is this slow to start)",
            time.monotonic() - started,
        )
    seconds = time.monotonic() - started
    _kill_group(proc)  # whatever the app started at import (an agent, a pool) goes too
    result = _last_json(out)
    if result is None:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        tail = lines[-1] if lines else f"exit status {proc.returncode}"
        return CheckResult(f"booting {names} in a fresh interpreter failed: {tail}", seconds)
    return CheckResult(result["problem"], seconds)


def _kill_group(proc: "subprocess.Popen[bytes]") -> None:
    """SIGKILL the checker's session: the checker if it still runs, and what the app started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()  # a no-op once the checker has exited and been waited for
    with contextlib.suppress(subprocess.TimeoutExpired):  # a process that survives SIGKILL
        proc.communicate(timeout=5)  # reap it; at once if it has been already


def _last_json(out: bytes) -> Optional[Dict[str, Any]]:
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict) and "problem" in value:
                return value
    return None


def _as_json(value: Any) -> Any:
    """A server's option values as JSON has them: bytes as text, anything else as its str()."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def describe_failure(stage: str, target: str, what: str, where: str = "", path: str = "") -> str:
    """One line: ``file:line: Type: message (what was being done)``."""
    context = {
        "urlconf": f"importing Django's URLconf and views, as {target}'s first request would",
        "smoke": f"the smoke request GET {path} to {target}",
        "lifespan": f"the ASGI lifespan startup of {target}, run as the server would",
    }.get(stage, f"booting {target} as the server would, in a fresh interpreter")
    return f"{where}{what} ({context})"


# -- the check the Policy runs -----------------------------------------------------------------
@dataclass
class BootCheck:
    """Boots the app once per change set, in a fresh interpreter; finds the app by itself.

    :param app: ``module:attr``, ``module:factory()`` or a script path; None to determine it
        (gunicorn's app URI, uWSGI's module/wsgi-file/mount, mod_wsgi's script, else the
        module that created the Reloader).
    :param creator: the module that created the Reloader at top level, if any.
    :param timeout: seconds the boot may take.
    :param smoke: a path to GET once from the booted app; a 5xx status refuses the deploy.
    """

    app: Optional[Target] = None
    creator: Optional[Target] = None
    timeout: float = DEFAULT_TIMEOUT  # seconds
    smoke: Optional[str] = None
    cwd: Optional[str] = None  # None: this process's; else also first on the search path
    runner: Callable[..., CheckResult] = run_checker
    python: Callable[[], Optional[str]] = find_python
    _environ_target: Optional[Target] = None
    _server: Optional[Tuple[int, List[Target]]] = None  # (pid, what the server names)
    _said: Set[str] = field(default_factory=set)  # the messages logged once already

    def note_served(self, targets: Sequence[Target]) -> None:
        """The app a request's environ names (``servers.environ_targets``: mod_wsgi's script)."""
        if targets:
            self._environ_target = targets[0]

    def targets(self) -> List[Target]:
        """What the server boots, as far as this process can see; empty if unknown."""
        if self.app is not None:
            return [self.app]
        pid = os.getpid()
        if self._server is None or self._server[0] != pid:  # once per process: it may search
            from . import servers  # (they name their apps with boot's Target)

            self._server = (pid, servers.boot_targets())
        fallbacks = [t for t in (self._environ_target, self.creator) if t is not None]
        return list(self._server[1]) or fallbacks[:1]

    def check(self) -> Optional[str]:
        """Boot the app; the problem as one line, or None (booted, or nothing to boot)."""
        targets = self.targets()
        if not targets:
            self._once(
                logging.INFO,
                "wsgireload: cannot tell which app the server boots, so a deploy is only "
                "checked to compile; to boot-check it, pass boot_app='your.module:application' "
                "(wsgireload watch: --import your.module:application)",
            )
            return None
        python = self.python()
        if python is None:
            self._once(
                logging.WARNING,
                "wsgireload: no Python %d.%d interpreter found for the boot check (looked in "
                "%s/bin, sys._base_executable and PATH), so a deploy is only checked to "
                "compile; put python%d.%d on PATH",
                sys.version_info[0], sys.version_info[1], sys.prefix,
                sys.version_info[0], sys.version_info[1],
            )
            return None
        from .servers import checker_stubs, lifespan_off

        outcome = self.runner(
            python,
            targets,
            timeout=self.timeout,
            path=self.search_path(),
            smoke=self.smoke,
            stubs=checker_stubs(),
            cwd=self.cwd,
            lifespan=not lifespan_off(),
        )
        log.debug("wsgireload: boot check of %s took %.2fs", targets[0].spec, outcome.seconds)
        return outcome.problem

    def search_path(self) -> List[str]:
        """Where the checker imports from: the server's ``sys.path``, less what this process
        found unusable (missing when first looked in: its forked siblings cannot use it)."""
        path = [p for p in sys.path if sys.path_importer_cache.get(p, True) is not None]
        return [self.cwd, *path] if self.cwd else path

    def _once(self, level: int, message: str, *args: Any) -> None:
        if message not in self._said:
            self._said.add(message)
            log.log(level, message, *args)


def check_options(*, app: Optional[str], smoke: Optional[str], timeout: Any) -> Optional[Target]:
    """Refuse bad boot check options at construction; the explicit target, if any."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError(
            f"boot_timeout must be a number of seconds greater than 0 (got {timeout!r})"
        )
    if smoke is not None and (
        not isinstance(smoke, str) or not smoke.startswith("/") or any(c.isspace() for c in smoke)
    ):
        raise ConfigurationError(
            f"smoke must be a URL path starting with '/', such as '/healthz' (got {smoke!r})"
        )
    # A bare module is imported only: its WSGI attribute may have any name.
    return parse_target(app, default_attr=None) if app is not None else None


# -- the checker (runs in the fresh interpreter) -----------------------------------------------
def _site_packages() -> List[str]:
    names = ("site-packages", "dist-packages")
    return [entry for entry in sys.path if os.path.basename(entry.rstrip(os.sep)) in names]


def user_location(exc: BaseException, library: Optional[Sequence[str]] = None) -> Tuple[
    Optional[str], Optional[int]
]:
    """The ``file, line`` in the user's code where ``exc`` arose (not the checker's own)."""
    if isinstance(exc, SyntaxError) and exc.filename and not exc.filename.startswith("<"):
        return exc.filename, exc.lineno
    if library is None:
        dirs = config_dirs("stdlib", "platstdlib", "purelib", "platlib")
        library = [*dirs, *map(norm_dir, _site_packages())]
    library = tuple(library)
    own = norm_dir(os.path.dirname(__file__))
    frames = [(f.f_code.co_filename, line) for f, line in traceback.walk_tb(exc.__traceback__)]
    real = [(name, line) for name, line in frames
            if name and not name.startswith("<") and not norm_dir(name).startswith(own)]
    user = [(name, line) for name, line in real if not norm_dir(name).startswith(library)]
    # The user's innermost frame; else a library's (an error raised inside Django); never the
    # checker's own line, which would send the user to the wrong file.
    return (user or real)[-1] if real else (None, None)


def _failure(stage: str, target: str, exc: BaseException, path: str = "") -> Dict[str, Any]:
    filename, line = user_location(exc)
    message = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
    where = f"{filename}:{line or 0}: " if filename else ""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    what = f"{name}: {message}".rstrip(": ")
    return {"problem": describe_failure(stage, target, what, where, path)}


def _load(target: Mapping[str, Any]) -> Any:
    if target.get("path"):
        path = target["path"]
        name = "__wsgireload_boot__"
        # Any name (site.wsgi) is Python source to mod_wsgi and uWSGI.
        loader = importlib.machinery.SourceFileLoader(name, path)
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target["module"])
    attr = target.get("attr")
    if not attr:
        return module
    app: Any = functools.reduce(getattr, attr.split("."), module)
    if target.get("call") is not None:
        args, kwargs = target["call"]  # as JSON made them: lists, kwargs a list of pairs
        app = app(*args, **dict(kwargs))
    return app


def _walk_urlconf() -> None:
    """Import Django's URLconf and every view module, as the first request would."""
    conf = sys.modules.get("django.conf")
    apps = getattr(sys.modules.get("django.apps"), "apps", None)
    if conf is None or apps is None or not getattr(apps, "ready", False):
        return
    settings = conf.settings
    if not settings.configured or not getattr(settings, "ROOT_URLCONF", None):
        return
    get_resolver = importlib.import_module("django.urls").get_resolver

    def walk(patterns: Iterable[Any], depth: int) -> None:
        for pattern in patterns:
            inner = getattr(pattern, "url_patterns", None)
            if inner is not None and depth < 50:
                walk(inner, depth + 1)

    walk(get_resolver().url_patterns, 0)


def smoke_request(app: Any, path: str) -> str:
    """GET ``path`` from ``app`` once; the status line. Raises what the app raises."""
    path_info, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path_info,
        "QUERY_STRING": query, "SERVER_NAME": "localhost", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "localhost", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_USER_AGENT": "wsgireload-boot-check", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    status: List[str] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        status[:] = [line]
        return lambda data: None

    body = app(environ, start_response)
    try:
        for _ in body:
            pass
    finally:
        getattr(body, "close", lambda: None)()
    if not status:
        raise RuntimeError("the app returned without calling start_response")
    return status[0]


def _served(app: Any) -> Any:
    """The app a module target serves (its ``application`` or ``app``), else ``app``."""
    if isinstance(app, types.ModuleType):
        return getattr(app, "application", None) or getattr(app, "app", None)
    return app


def is_asgi(app: Any) -> bool:
    """An ASGI 3 app: a coroutine function, or an object whose ``__call__`` is one."""
    return callable(app) and (inspect.iscoroutinefunction(app)
                              or inspect.iscoroutinefunction(type(app).__call__))


LIFESPAN_END = 5.0  # seconds the app gets to end its lifespan once startup is decided


def lifespan_failure(app: Any) -> Optional[Tuple[str, Optional[BaseException]]]:
    """Run the ASGI lifespan startup, then its shutdown, as a server does: the message of a
    reported ``lifespan.startup.failed`` and what the app raised with it, else None (started,
    or no lifespan support). Raises what the app raises without reporting."""
    import asyncio  # (only for an ASGI app: WSGI users do not pay for its import)

    async def run() -> Optional[Tuple[str, Optional[BaseException]]]:
        inbox: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        inbox.put_nowait({"type": "lifespan.startup"})
        decided = asyncio.get_running_loop().create_future()

        async def send(message: Dict[str, Any]) -> None:
            if message.get("type") == "lifespan.startup.complete":
                inbox.put_nowait({"type": "lifespan.shutdown"})
            if message.get("type", "").startswith("lifespan.startup.") and not decided.done():
                decided.set_result(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": {}}
        call = asyncio.ensure_future(app(scope, inbox.get, send))
        await asyncio.wait([call, decided], return_when=asyncio.FIRST_COMPLETED)
        await asyncio.wait([call], timeout=LIFESPAN_END)  # the shutdown, or the raise
        report = decided.result() if decided.done() else {}
        if report.get("type") != "lifespan.startup.failed":
            if call.done() and not report:
                call.result()  # raised without reporting: raise it here
            return None
        raised = call.exception() if call.done() and not call.cancelled() else None
        return str(report.get("message") or ""), raised

    return asyncio.run(run())


def _checker_main(payload: Dict[str, Any]) -> None:
    """Entry point in the fresh interpreter: boot, walk, smoke; print one JSON result."""
    result_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the app prints goes to stderr; stdout carries the result only
    sys.argv[:] = payload.get("argv") or [""]
    if payload.get("prefix") != sys.prefix:  # not the worker's venv: read its .pth files too
        for entry in _site_packages():
            site.addsitedir(entry)
    if payload.get("stubs"):
        from .servers import install_stubs

        install_stubs(*payload["stubs"])
    result = _check(payload)
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip atexit hooks and non-daemon threads the app may have started


def _check(payload: Dict[str, Any]) -> Dict[str, Any]:
    loaded = []
    for target in payload["targets"]:
        try:
            loaded.append(_load(target))
        except BaseException as exc:  # SystemExit at import is a boot failure too
            return _failure("import", target["spec"], exc)
    spec = payload["targets"][0]["spec"] if loaded else "the app"
    try:
        _walk_urlconf()
    except BaseException as exc:
        return _failure("urlconf", spec, exc)
    app = _served(loaded[0]) if loaded else None  # the first target is the one served
    if payload.get("lifespan", True) and is_asgi(app):
        try:
            failed = lifespan_failure(app)
        except Exception as exc:  # raised without reporting: the servers serve such an app
            failed = None
            log.debug("wsgireload: lifespan raised without reporting: %r", exc)
        if failed is not None:
            message, raised = failed
            if raised is not None:
                return _failure("lifespan", spec, raised)
            what = f"lifespan.startup.failed: {message}".rstrip(": ")
            return {"problem": describe_failure("lifespan", spec, what)}
    if smoke := payload.get("smoke"):
        if not callable(app):
            error = LookupError("no WSGI app found to send it to: pass boot_app='module:app'")
            return _failure("smoke", spec, error, path=smoke)
        try:
            status = smoke_request(app, smoke)
        except Exception as exc:
            return _failure("smoke", spec, exc, path=smoke)
        code = status.split(" ", 1)[0]
        if not code.isdigit() or int(code) >= 500:
            return {"problem": f"the smoke request GET {smoke} to {spec} answered {status}"}
    return {"problem": None}
