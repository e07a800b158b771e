"""The ``wsgireload`` command: see what an app would watch, or watch files and report decisions.

``check MODULE:APP`` explains; ``watch MODULE:APP|PATH...`` shows, and with ``--pidfile`` acts.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import importlib
import json
import logging
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__, _record, servers
from ._options import Options
from .actions import REGISTRY, Action, AutoAction, detect_server
from .actions.pidfile import DEFAULT_EXPECT, PidfileAction, parse_signal
from .detect import Detector, norm_dir, site_dirs
from .errors import ConfigurationError, WsgiReloadError
from .events import EventDetector
from .middleware import Gate
from .policy import ChangeSet, compile_errors
from .watcher import Watcher

log = logging.getLogger("wsgireload")

# Files an editor, a VCS or Python itself writes beside the sources: never a deploy.
DIR_EXCLUDES = ("*/.git/*", "*/.hg/*", "*/.svn/*", "*.pyc", "*.swp", "*.swx", "*~", "*/.#*")

# Indirections: tests replace them to drive the watch loop without waiting.
_sleep: Callable[[float], None] = time.sleep
_clock: Callable[[], float] = time.monotonic


class AppError(WsgiReloadError):
    """The app named on the command line cannot be loaded; the message is one plain line."""


# -- loading the app as a server would ------------------------------------------------------
def load_app(target: str) -> Tuple[Any, str]:
    """Import ``MODULE:APP`` (``APP`` defaults to ``application``) with the cwd on sys.path."""
    module_name, _, attrs = target.partition(":")
    attrs = attrs or "application"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppError(f"{target!r} is not MODULE:APP (for example myproject.wsgi:application)")
    if not all(part.isidentifier() for part in attrs.split(".")):
        raise AppError(f"{attrs!r} in {target!r} is not an attribute name")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # gunicorn and uwsgi import from the current directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise AppError(
                f"no module named {missing!r} (looked in {cwd} and sys.path; run this where "
                "the server runs)"
            ) from exc
        raise AppError(f"importing {module_name} failed: {exc}") from exc
    except SyntaxError as exc:
        raise AppError(
            f"{exc.filename}:{exc.lineno}: {exc.msg} (importing {module_name})"
        ) from exc
    except (Exception, SystemExit) as exc:
        raise AppError(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        app: Any = functools.reduce(getattr, attrs.split("."), module)
    except AttributeError:
        raise AppError(f"module {module_name!r} has no attribute {attrs!r}") from None
    if not callable(app):
        raise AppError(f"{target} is a {type(app).__name__}, not a WSGI application")
    return app, f"{module_name}:{attrs}"


def find_reloader(app: Any, depth: int = 4) -> Tuple[Optional[Gate], str]:
    """The Reloader (WSGI or ASGI) in ``app`` or in what it wraps (Flask's ``wsgi_app``...)."""
    queue: List[Tuple[Any, str, int]] = [(app, "app", 0)]
    seen = set()
    while queue:
        obj, where, level = queue.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Gate):
            return obj, where
        if level >= depth:
            continue
        for attr in ("wsgi_app", "app", "application", "wrapped"):
            inner = getattr(obj, attr, None)
            if callable(inner):
                queue.append((inner, f"{where}.{attr}", level + 1))
    return None, ""


# -- check ---------------------------------------------------------------------------------
def _group(path: str, cwd: str, sites: Sequence[str]) -> Tuple[int, str]:
    """The 'top directory' a watched file is counted under, and its rank (cwd first)."""
    norm = os.path.normcase(path)
    roots: List[Tuple[str, int, str]] = [(norm_dir(cwd), 0, "")]
    roots += [(site, 2, " (site-packages)") for site in sites]
    roots += [(norm_dir(entry), 1, f" (in {entry})") for entry in sys.path if entry]
    matching = [root for root in roots if norm.startswith(root[0])]
    if not matching:
        return 3, os.path.dirname(path) + "/"
    prefix, rank, where = max(matching, key=lambda root: len(root[0]))
    head = path[len(prefix):].split(os.sep, 1)
    return rank, head[0] + ("/" if len(head) > 1 else "") + where


def _server_lines() -> List[str]:
    here = detect_server({})
    why = servers.why_here(here) or (
        "no server module loaded; in a worker the first request's environ tells")
    lines = [f"here: {here} ({why})"]
    for server in [*(server.NAME for server in servers.SERVERS), "standalone"]:
        what = getattr(REGISTRY.get(server), "summary", "") or "warns once and does not reload"
        lines.append(f"under {server}: {what}")
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    app, name = load_app(args.target)
    reloader, where = find_reloader(app)
    print(f"app:       {name} ({type(app).__name__})")
    if reloader is not None:
        action = reloader.action
        named = "auto" if isinstance(action, AutoAction) else action.describe()
        print(f"reloader:  {where} (action {named}, interval {reloader.interval:g}s, "
              f"settle {reloader.policy.settle:g}s, validate {reloader.policy.validate})")
        detector = reloader.detector
    else:
        print("reloader:  none found in the app; showing what Reloader(app) would watch (or the "
              "gunicorn hook, or `wsgireload watch --pidfile`)")
        named = "auto"
        detector = Detector()
        detector.scan()
    files = detector.watched()
    cwd = os.getcwd()
    sites = site_dirs()
    groups = collections.Counter(_group(path, cwd, sites) for path in files)
    print(f"watching:  {len(files)} files (this directory first)")
    ranked = sorted(groups.items(), key=lambda item: (item[0][0], -item[1], item[0][1]))
    shown = ranked if args.verbose else ranked[:15]
    for (_, key), count in shown:
        print(f"  {count:6d}  {key}")
    if len(ranked) > len(shown):
        rest = sum(count for _, count in ranked[len(shown):])
        print(f"  {rest:6d}  ... in {len(ranked) - len(shown)} more directories")
    if args.verbose:
        for path in files:
            print(f"    {path}")
    started = time.perf_counter()
    detector.scan()
    scan_ms = (time.perf_counter() - started) * 1000
    print(f"one scan:  {scan_ms:.2f} ms for {len(files)} files")
    sources = [path for path in files if path.endswith(".py")]
    started = time.perf_counter()
    problems = compile_errors(sources)
    compile_s = time.perf_counter() - started
    print(f"compile:   {len(sources) - len(problems)} of {len(sources)} .py files compile "
          f"({compile_s:.2f} s)")
    print(f"action:    {named}")
    for line in _server_lines():
        print(f"  {line}")
    alone: Dict[Tuple[Any, str], List[str]] = {}  # one line for the lone processes of a setup
    for data in _record.read_all(args.runtime_dir):
        for text in _record.section(data, "traps").values():
            if data.get("alone"):
                alone.setdefault((data.get("server"), text), []).append(str(data.get("master")))
            else:
                print(f"trap:      {data.get('server')} master {data.get('master')}: {text}")
    for (server, text), pids in alone.items():
        print(f"trap:      {server} process{'es' if len(pids) > 1 else ''} {', '.join(pids)}: "
              f"{text}")
    if problems:
        for problem in problems[: None if args.verbose else 5]:
            print(f"  {problem}")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise AppError(f"{problems[0]}{more}: a reload would be refused until it compiles")
    return 0


# -- watch ---------------------------------------------------------------------------------
def _line(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


_EVENTS: Dict[str, Callable[[Any], str]] = {
    "changed": lambda path: f"changed   {path}",
    "settling": lambda seconds: f"settling  waiting for {seconds:g}s without a further change",
    "rejected": lambda files: f"refused   {len(files)} file(s) do not validate; waiting for a fix",
    "due": lambda changes: f"settled   {len(changes.files)} file(s) validated, change set "
                           f"{changes.fingerprint}",
    "acted": lambda _: "acted",
    "failed": lambda error: f"failed    {error!r}",
}


def _on_event(kind: str, detail: Any) -> None:
    if kind in _EVENTS:
        _line(_EVENTS[kind](detail))


class _ReportOnly(Action):
    """``watch`` without ``--pidfile``: say that a reload is due, signal nobody."""

    name = "report-only"

    def __call__(self, changes: ChangeSet) -> None:
        _line("reload    due now (no --pidfile: nothing signalled)")

    def describe(self) -> str:
        return "nothing (watch without --pidfile)"


class _LogToOut(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _line(f"{record.levelname.lower():9s} {record.getMessage().removeprefix('wsgireload: ')}")


def _path_patterns(paths: Sequence[str]) -> List[str]:
    patterns = []
    for path in paths:
        if os.path.isdir(path):
            patterns.append(os.path.join(os.path.abspath(path), "**", "*"))
        elif os.path.exists(path) or glob.has_magic(path):
            patterns.append(os.path.abspath(path))
        else:
            raise AppError(f"{path}: no such file or directory")
    return patterns


def cmd_watch(args: argparse.Namespace) -> int:
    targets: List[str] = args.targets
    is_app = len(targets) == 1 and ":" in targets[0] and not os.path.exists(targets[0])
    defaults = Options()  # or the options of a Reloader found in the app
    if is_app:
        app, label = load_app(targets[0])
        reloader, _ = find_reloader(app)
        if reloader is not None:
            found = reloader.detector
            # The event backend wraps a polling Detector; watching from here polls.
            detector = found.poller if isinstance(found, EventDetector) else found
            defaults = reloader.options
        else:
            detector = Detector(exclude=args.exclude)
            detector.scan()
    else:
        label = ", ".join(targets)
        patterns = _path_patterns(targets)
        excludes = [*DIR_EXCLUDES, *args.exclude]
        if args.pidfile:
            excludes.append(os.path.abspath(args.pidfile))  # servers rewrite it on reload
        detector = Detector(extra_files=patterns, exclude=excludes, modules=False)
        detector.scan()
    if args.no_validate and (args.import_app or args.smoke):
        raise AppError("--import and --smoke boot the app before a reload, --no-validate skips "
                       "that: pick one")
    boot_app = None if args.no_validate else (args.import_app or (targets[0] if is_app else None))
    action: Action = _ReportOnly()
    server_cwd: Optional[str] = None
    if args.pidfile:
        pidfile = PidfileAction(
            args.pidfile, signal=parse_signal(args.signal), expect=args.expect or DEFAULT_EXPECT
        )
        pid, about = pidfile.target()
        if pid is None:
            raise AppError(about)
        _line(f"target    {about} (from {pidfile.pidfile}); checked again before each signal")
        action = pidfile
        with contextlib.suppress(OSError):
            server_cwd = os.readlink(f"/proc/{pid}/cwd")
    settle = defaults.settle if args.settle is None else args.settle
    settle_max = defaults.settle_max if args.settle_max is None else args.settle_max
    watcher = Watcher(
        interval=defaults.interval if args.interval is None else args.interval,
        settle=settle,
        settle_max=max(settle_max, settle),
        validate=None if args.no_validate else "boot",
        boot_app=boot_app,
        smoke=args.smoke,
        action=action,
        detector=detector,
        on_event=_on_event,
        metrics_file=args.metrics_file,
    )
    if server_cwd is not None:
        # Boot the app from where the server imports it: the master's working directory.
        watcher.policy.boot.cwd = server_cwd
    handler = _LogToOut(logging.DEBUG if args.verbose else logging.INFO)
    log.addHandler(handler)
    old_level = log.level
    if log.getEffectiveLevel() > handler.level:
        log.setLevel(handler.level)
    _line(f"watching  {label} ({len(detector.watched())} files); Ctrl-C to stop")
    try:
        while True:
            watcher.step(_clock())
            _sleep(watcher.interval)
    except KeyboardInterrupt:
        _line("stopped")
        return 0
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


# -- status --------------------------------------------------------------------------------
def master_status(data: Dict[str, Any], now: float) -> Dict[str, Any]:
    """What ``status`` shows of one master's record, its times as wall-clock seconds (``now``:
    ``time.monotonic()``, the record's clock)."""
    wall = time.time() - now  # a monotonic time plus this is a wall-clock time

    def at(entry: Dict[str, Any]) -> Optional[float]:
        value = entry.get("at")
        return float(value) + wall if isinstance(value, (int, float)) else None

    workers = _record.section(data, "workers")
    lease = _record.section(data, "lease")
    deploy: Optional[Dict[str, Any]] = _record.section(data, "generation") or None
    if deploy is not None:
        decided = float(deploy.get("at", 0.0))
        replaced = sum(float(w.get("born", 0.0)) < decided and "gone" in w
                       for w in workers.values())
        deploy = {"at": at(deploy), "files": deploy.get("files", []),
                  "action": deploy.get("action", ""), "workers_replaced": replaced}
    refusal: Optional[Dict[str, Any]] = _record.section(data, "last_refusal") or None
    if refusal is not None:
        refusal = {"at": at(refusal), "files": refusal.get("files", []),
                   "error": refusal.get("error", ""), "where": refusal.get("where", "")}
    return {
        "server": data.get("server"),
        "master": data.get("master"),
        "workers": sorted(int(pid) for pid, w in workers.items() if "gone" not in w),
        "scanner": lease.get("pid") if float(lease.get("expires", 0.0)) > now else None,
        "watched": data.get("watched", 0),
        "scan_ms": data.get("scan_ms"),
        "last_deploy": deploy,
        "last_refusal": refusal,
        # the change sets validated lately and their verdicts: once per change set per master
        "validations": [
            {"at": at(v), "files": v.get("files"), "verdict": v.get("verdict")}
            for v in data.get("validations", []) if isinstance(v, dict)
        ],
    }


def _when(at: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(at))) if at else "?"


def cmd_status(args: argparse.Namespace) -> int:
    now = time.monotonic()
    masters = [master_status(data, now) for data in _record.read_all(args.runtime_dir)
               if not data.get("alone")]  # (a process alone keeps a record for its traps)
    if args.json:
        print(json.dumps(masters, indent=2))
        return 0
    if not masters:
        print("no running master with a wsgireload record (readable by this user)")
        return 0
    for m in masters:
        print(f"{m['server']} master {m['master']}: {len(m['workers'])} workers seen "
              f"({', '.join(map(str, m['workers']))})")
        print(f"  scanner:      {m['scanner'] or 'none at the moment'}; {m['watched']} files, "
              f"last scan {m['scan_ms'] if m['scan_ms'] is not None else '?'} ms")
        deploy = m["last_deploy"]
        if deploy:
            print(f"  last deploy:  {_when(deploy['at'])}: {', '.join(deploy['files'][:3])}"
                  f"{' ...' if len(deploy['files']) > 3 else ''}; {deploy['action']}; "
                  f"{deploy['workers_replaced']} workers replaced")
        else:
            print("  last deploy:  none since the master started")
        refusal = m["last_refusal"]
        if refusal:
            where = refusal["where"]
            named = not where or refusal["error"].startswith(where)
            print(f"  last refusal: {_when(refusal['at'])}: {refusal['error']}"
                  f"{'' if named else f' (at {where})'}")
    return 0


# -- entry point ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgireload",
        description="Production-safe code reloading for WSGI apps: diagnostics and watcher.",
    )
    parser.add_argument("--version", action="version", version=f"wsgireload {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check, watch, status = (
        sub.add_parser(name, help=text, description=about) for name, text, about in (
            ("check", "import an app as the server would and report what would be watched",
             "Import MODULE:APP as the server would and report what wsgireload would watch, how "
             "long a scan takes, whether every watched .py compiles, and what action='auto' "
             "would do."),
            ("watch", "print changes as detected, with settle and validation decisions",
             "Watch an app's files (MODULE:APP) or PATHs (directories recurse) and print each "
             "change, settle and validation decision. With --pidfile, signal the server named in "
             "it once per settled change set that validates (compiles and, with --import, "
             "boots)."),
            ("status", "each running master's watcher: scanner, last deploy, last refusal",
             "Show, for every running server master whose wsgireload record this user can read: "
             "its workers, which one scans, the files watched and the last scan's cost, the last "
             "deploy and the last refusal."),
        )
    )
    check.add_argument("target", metavar="MODULE:APP")
    check.add_argument("-v", "--verbose", action="store_true", help="list every file; tracebacks")
    check.add_argument("--runtime-dir", metavar="DIR", help="where the running masters' records "
                       "are, whose traps are shown (default: $XDG_RUNTIME_DIR/wsgireload or "
                       "<tmp>/wsgireload-<uid>)")

    watch.add_argument("targets", nargs="+", metavar="MODULE:APP|PATH")
    watch.add_argument("--interval", type=float, help="seconds between scans (default 1)")
    watch.add_argument("--settle", type=float, help="seconds of quiet before acting (default 1)")
    watch.add_argument("--settle-max", type=float, help="act after this long anyway (default 30)")
    watch.add_argument("--no-validate", action="store_true",
                       help="neither compile-check .py files nor boot the app")
    watch.add_argument("--import", dest="import_app", metavar="MODULE:APP",
                       help="before signalling, boot this app (as the server names it, e.g. "
                       "wsgi:application or 'myapp:create_app()') in a fresh interpreter and "
                       "refuse a deploy that cannot boot (default: the MODULE:APP watched, "
                       "else only a compile check)")
    watch.add_argument("--smoke", metavar="PATH",
                       help="after booting it, GET this path (e.g. /healthz) from the app once "
                       "and refuse the deploy on a 5xx answer")
    watch.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                       help="fnmatch pattern of full paths to ignore (repeatable)")
    watch.add_argument("--pidfile", metavar="PATH", help="signal the process in this pidfile")
    watch.add_argument("--signal", default="HUP", help="signal to send (default HUP)")
    watch.add_argument("--expect", action="append", metavar="NAME",
                       help="the signalled process's command line must name this (repeatable; "
                       f"default {' or '.join(DEFAULT_EXPECT)})")
    watch.add_argument("--metrics-file", metavar="PATH.prom", help="write the reload "
                       "counters there (Prometheus text, for node_exporter's textfile collector)")
    watch.add_argument("-v", "--verbose", action="store_true", help="debug log lines; tracebacks")

    status.add_argument("--json", action="store_true", help="print JSON (a list of masters)")
    status.add_argument("--runtime-dir", metavar="DIR", help="where the records are "
                        "(default: $XDG_RUNTIME_DIR/wsgireload or <tmp>/wsgireload-<uid>)")
    status.set_defaults(verbose=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (0 fine, 1 a problem, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    commands = {"check": cmd_check, "status": cmd_status, "watch": cmd_watch}
    try:
        return commands[args.command](args)
    except (AppError, ConfigurationError) as exc:
        if args.verbose:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        print(f"wsgireload: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `wsgireload check app:app | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
