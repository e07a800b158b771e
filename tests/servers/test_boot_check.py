"""Deploys that compile but cannot boot, under real gunicorn and uWSGI, with the default options.

Each server (3 workers, bounded load) goes through a sequence of deploys: a broken one must be
refused (no worker replaced, old code served, the server alive, the ERROR naming the exception
and the user's file:line), the fix must reach every worker within 5 s. 0 failed requests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pytest

from .harness import (
    HOST,
    Load,
    Server,
    _repo_root,
    assert_no_failed_requests,
    bin_path,
    free_port,
    gunicorn_no_control_socket,
    wait_for,
    write,
    xfail_old_gthread_resets,
)
from .reloadhelp import copy_examples, hups, patch
from .test_uwsgi import UwsgiServer

pytestmark = pytest.mark.server

WORKERS = 3
MISSING = "import a_module_that_does_not_exist\n"
LOGGING = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr,\n"
    "                    format='%(asctime)s [%(process)d] %(levelname)s %(message)s')\n"
)
FAST = "interval=0.2, settle=0.5"  # only the timing: validation stays the default
REFUSAL = re.compile(r"\[(\d+)\] ERROR wsgireload: not reloading, the new code is broken.*")
GUNICORN_BOOT = re.compile(r"Booting worker with pid")
UWSGI_BOOT = re.compile(r"spawned uWSGI worker \d+")

PLAIN = LOGGING + """\
{uwsgi_imports}import os
import mod
from wsgireload import Reloader


def app(environ, start_response):
    body = ("%s %d" % (mod.VERSION, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


application = Reloader(app, {fast})
"""
# The classic uWSGI timer recipe: top-level imports that only work inside uWSGI.
UWSGI_IMPORTS = """\
import uwsgi
from uwsgidecorators import postfork, timer


@postfork
def _forked():
    uwsgi.log("worker forked")


@timer(30)
def _tick(signum):
    pass


"""
FLASK = LOGGING + """\
import os
from flask import Flask
from wsgireload import Reloader
import greeting


def create_app():
    app = Flask(__name__)

    @app.route("/")
    def index():
        return "%s %d" % (greeting.VERSION, os.getpid())

    app.wsgi_app = Reloader(app.wsgi_app, {fast})
    return app
"""


@dataclass
class Step:
    """One deploy: ``edit`` the files; then either ``refused`` (exception, file:line) or
    ``serves`` (bytes every response must contain afterwards)."""

    name: str
    edit: Callable[[], None]
    refused: Optional[tuple] = None  # (exception type name, "path:line")
    serves: Optional[bytes] = None


@dataclass
class App:
    cwd: Path
    gunicorn_target: str
    uwsgi_module: str
    old: bytes  # what the first code serves
    steps: List[Step]
    count_checks: bool = False  # the app logs wsgireload's DEBUG lines: count the boot checks


def line_of(path: Path, text: str) -> int:
    return path.read_text().splitlines().index(text.rstrip("\n")) + 1


def insert_after_docstring(path: Path, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(("import", "from")))
    write(path, "".join(lines[:at] + [text] + lines[at:]))


def plain_app(root: Path, under_uwsgi: bool) -> App:
    app_dir = root / "app"
    source = PLAIN.format(uwsgi_imports=UWSGI_IMPORTS if under_uwsgi else "", fast=FAST)
    write(app_dir / "wsgi.py", source)
    write(app_dir / "mod.py", "VERSION = 'v1'\n")
    wsgi, mod = app_dir / "wsgi.py", app_dir / "mod.py"
    broken = source.replace("import mod\n", "import mod\n" + MISSING)
    missing_line = broken.splitlines().index(MISSING.strip()) + 1
    # Under uWSGI the app imports uwsgi and uwsgidecorators at top level: each fix reloading
    # is what shows the boot check does not refuse that recipe.
    steps = [
        Step("missing module", lambda: write(wsgi, broken),
             refused=("ModuleNotFoundError", f"{wsgi}:{missing_line}")),
        Step("fix", lambda: (write(wsgi, source), write(mod, "VERSION = 'v3'\n")), serves=b"v3 "),
        Step("NameError", lambda: write(mod, "VERSION = 'v4'\nundefined_name\n"),
             refused=("NameError", f"{mod}:2")),
        Step("fix", lambda: write(mod, "VERSION = 'v5'\n"), serves=b"v5 "),
    ]
    return App(app_dir, "wsgi:application", "wsgi", b"v1 ", steps)


def flask_app(root: Path, under_uwsgi: bool) -> App:
    app_dir = root / "app"
    write(app_dir / "myapp.py", FLASK.format(fast=FAST))
    # uWSGI has no factory syntax: the Flask docs' wsgi.py calls the factory.
    write(app_dir / "wsgi.py", "from myapp import create_app\napplication = create_app()\n")
    greeting = app_dir / "greeting.py"
    write(greeting, "VERSION = 'v1'\n")
    return App(app_dir, "myapp:create_app()", "wsgi", b"v1 ", [
        Step("missing module", lambda: write(greeting, MISSING + "VERSION = 'v2'\n"),
             refused=("ModuleNotFoundError", f"{greeting}:1")),
        Step("fix", lambda: write(greeting, "VERSION = 'v3'\n"), serves=b"v3 "),
    ])


def django_app(root: Path, under_uwsgi: bool) -> App:
    site = root / "site"
    site.mkdir()
    examples = copy_examples(site)
    wsgi = examples / "django_wsgi.py"
    patch(wsgi, "import os\n", "import os\n" + LOGGING)
    patch(wsgi, "DjangoReloader(django_app)", f"DjangoReloader(django_app, {FAST})")
    debug = "logging.getLogger('wsgireload').setLevel('DEBUG')\n"  # to count the boot checks
    patch(wsgi, "django_app = get_wsgi_application()\n",
          "django_app = get_wsgi_application()\n" + debug)
    # Not even imported at startup: the views are only known from the URLconf, as in most
    # projects, so only the boot check's walk of the URLconf can see a broken one.
    patch(wsgi, "_ = get_resolver().url_patterns\n", "")
    views = examples / "django_project" / "views.py"

    def break_views() -> None:
        insert_after_docstring(views, MISSING)

    def fix_views() -> None:
        text = views.read_text().replace(MISSING, "").replace("Hello from Django", "Hello v2")
        write(views, text)

    original = views.read_text()
    missing_line = next(
        i for i, line in enumerate(original.splitlines()) if line.startswith(("import", "from"))
    ) + 1
    return App(site, "examples.django_wsgi:application", "examples.django_wsgi:application",
               b"Hello from Django", [
                   Step("broken view module", break_views,
                        refused=("ModuleNotFoundError", f"{views}:{missing_line}")),
                   Step("fix", fix_views, serves=b"Hello v2"),
               ], count_checks=True)


APPS = {"plain": plain_app, "flask": flask_app, "django": django_app}


def start_gunicorn(tmp_path: Path, app: App, extra: Sequence[str] = ()) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", *gunicorn_no_control_socket(), "-w", str(WORKERS),
            "-b", f"{HOST}:{port}", "--graceful-timeout", "15", "--timeout", "30",
            "--chdir", str(app.cwd), *extra, app.gunicorn_target]
    env = {"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": ""}
    return Server(argv, cwd=tmp_path, port=port, log_path=tmp_path / "server.log", env=env)


def start_uwsgi(tmp_path: Path, app: App) -> Server:
    port = free_port()
    argv = [bin_path("uwsgi"), "--http-socket", f"{HOST}:{port}", "--master",
            "--processes", str(WORKERS), "--die-on-term", "--need-app",
            "--pythonpath", str(app.cwd), "--module", app.uwsgi_module,
            "--reload-mercy", "5", "--worker-reload-mercy", "5", "--disable-logging"]
    env = {"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": ""}
    return UwsgiServer(argv, cwd=app.cwd, port=port, log_path=tmp_path / "server.log", env=env)


def refusals(log: str) -> List[re.Match]:  # type: ignore[type-arg]
    return list(REFUSAL.finditer(log))


def recent_all(load: Load, marker: bytes, window: float = 0.5, least: int = 5) -> bool:
    recent = load.result.bodies_since(time.monotonic() - window)
    return len(recent) >= least and all(marker in body for body in recent)


def run_steps(server: Server, app: App, boot: "re.Pattern[str]") -> None:
    """Drive ``app.steps`` under load on a started server; assert each step's outcome."""
    boots = lambda: len(boot.findall(server.log()))  # noqa: E731
    assert wait_for(lambda: boots() == WORKERS, 20), server.log()
    current = app.old
    with Load(server.port, threads=4, max_seconds=150) as load:
        assert wait_for(lambda: recent_all(load, current), 20)
        # Every worker must have served (and so started its watcher) before the first deploy.
        time.sleep(0.5)
        for step in app.steps:
            before_boots, before_refusals = boots(), len(refusals(server.log()))
            started = time.monotonic()
            step.edit()
            if step.refused is not None:
                kind, where = step.refused
                assert wait_for(lambda n=before_refusals: len(refusals(server.log())) > n, 20), (
                    f"{step.name}: no refusal logged\n{server.log()[-3000:]}"
                )
                time.sleep(2.0)  # every worker has checked by now; a reload would show
                assert boots() == before_boots, f"{step.name}: a worker was replaced"
                served = load.result.bodies_since(started)
                assert served and all(current in body for body in served), (
                    f"{step.name}: not the old code: {sorted(set(served))[:5]}"
                )
                assert server.proc is not None and server.proc.poll() is None, "server died"
                lines = refusals(server.log())[before_refusals:]
                for line in lines:  # one per process for now, each naming the user's line
                    assert kind in line.group(0) and f"{where}: {kind}: " in line.group(0), (
                        f"{step.name}: {line.group(0)}"
                    )
                pids = [line.group(1) for line in lines]
                assert 1 <= len(pids) <= WORKERS and len(set(pids)) == len(pids), pids
                print(f"\n{step.name}: refused, {lines[0].group(0)[:220]}")
            else:
                assert step.serves is not None
                marker = step.serves
                # settle + boot check + a one-by-one rollout of WORKERS workers (about 5 s
                # alone on this machine), with room for a loaded one
                assert wait_for(lambda m=marker: recent_all(load, m), 15.0, interval=0.02), (
                    f"{step.name}: {marker!r} not served everywhere within 15 s: "
                    f"{sorted(set(load.result.bodies_since(started)))[:6]}\n"
                    f"{server.log()[-3000:]}"
                )
                took = time.monotonic() - started
                assert wait_for(lambda n=before_boots: boots() >= n + WORKERS, 10)
                time.sleep(1.0)
                assert boots() == before_boots + WORKERS, f"{step.name}: {boots()} boots"
                print(f"\n{step.name}: new code on every worker {took:.2f}s after the deploy")
                current = marker
    result = load.stop()
    log = server.log()
    assert "Worker failed to boot" not in log and "no python application found" not in log
    print(f"{result.ok} ok, {result.failed} failed")
    if app.count_checks:
        # Each worker boots each change set once (a worker replaced while still checking the
        # fix may not finish): never once per request.
        took = [float(t) for t in re.findall(r"boot check of \S+ took ([0-9.]+)s", log)]
        assert len(app.steps) <= len(took) <= WORKERS * len(app.steps), took
        assert result.ok > 100 * len(took)
        print(f"{len(took)} boot checks for {len(app.steps)} deploys and {result.ok} requests; "
              f"each took {min(took):.2f}-{max(took):.2f}s")
    # uWSGI reloads the whole stack for each deploy that boots (see assert_no_failed_requests)
    full_reloads = sum(s.refused is None for s in app.steps) if "uwsgi" in server.argv[0] else 0
    xfail_old_gthread_resets(result, gthread="gthread" in server.argv)
    assert_no_failed_requests(result, uwsgi_full_reloads=full_reloads)


@pytest.mark.parametrize(
    "kind, worker",
    [("plain", "sync"), ("plain", "gthread"), ("flask", "sync"), ("django", "sync")],
)
def test_gunicorn_refuses_unbootable_deploys(
    kind: str, worker: str, tmp_path: Path, servers: List[Server]
) -> None:
    app = APPS[kind](tmp_path, False)
    extra = ["-k", "gthread", "--threads", "4"] if worker == "gthread" else []
    server = start_gunicorn(tmp_path, app, extra)
    servers.append(server.start())
    run_steps(server, app, GUNICORN_BOOT)


@pytest.mark.skipif(shutil.which(bin_path("uwsgi")) is None, reason="needs the uwsgi package")
@pytest.mark.parametrize("kind", list(APPS))
def test_uwsgi_refuses_unbootable_deploys(
    kind: str, tmp_path: Path, servers: List[Server]
) -> None:
    app = APPS[kind](tmp_path, True)
    server = start_uwsgi(tmp_path, app)
    servers.append(server.start())
    run_steps(server, app, UWSGI_BOOT)


UNWRAPPED = """
import os
import mod


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s %d" % (mod.VERSION, os.getpid())).encode()]
"""


HOOK_CONF = LOGGING + """\
from wsgireload.contrib.gunicorn import make_post_worker_init

post_worker_init = make_post_worker_init({fast})
"""


def test_gunicorn_config_hook_refuses_unbootable_deploys(
    tmp_path: Path, servers: List[Server]
) -> None:
    """The app is not wrapped: the hook's watcher boots the worker's own app URI."""
    app_dir = tmp_path / "app"
    write(app_dir / "wsgi.py", UNWRAPPED)
    write(app_dir / "gunicorn_conf.py", HOOK_CONF.format(fast=FAST))
    mod = app_dir / "mod.py"
    write(mod, "VERSION = 'v1'\n")
    app = App(app_dir, "wsgi:application", "wsgi", b"v1 ", [
        Step("missing module", lambda: write(mod, MISSING + "VERSION = 'v2'\n"),
             refused=("ModuleNotFoundError", f"{mod}:1")),
        Step("fix", lambda: write(mod, "VERSION = 'v3'\n"), serves=b"v3 "),
    ])
    server = start_gunicorn(tmp_path, app, ["-c", str(app_dir / "gunicorn_conf.py")])
    servers.append(server.start())
    run_steps(server, app, GUNICORN_BOOT)


# -- the fix is an install, not an edit ---------------------------------------------------------
NEEDS_NEWDEP = "import newdep\nVERSION = newdep.VERSION\n"


@pytest.mark.parametrize("lib_at_start", [True, False], ids=["lib-exists", "lib-appears-later"])
def test_gunicorn_boots_a_refused_deploy_once_its_missing_module_is_installed(
    lib_at_start: bool, tmp_path: Path, servers: List[Server]
) -> None:
    """Refused for a missing module; the module then lands in a directory on the server's
    PYTHONPATH with no edit of any code: the deploy goes out, and no worker ever booted
    without it (gunicorn would have halted). A directory that did not exist when gunicorn
    started stays unusable to its forked workers: then the deploy stays refused."""
    app = plain_app(tmp_path, False)
    mod = app.cwd / "mod.py"
    lib = tmp_path / "lib"  # a virtualenv's site-packages would do the same
    if lib_at_start:
        lib.mkdir()
    server = start_gunicorn(tmp_path, app)
    server.env["PYTHONPATH"] = str(lib)  # after the app dir and this repository
    servers.append(server.start())
    boots = lambda: len(GUNICORN_BOOT.findall(server.log()))  # noqa: E731
    assert wait_for(lambda: boots() == WORKERS, 20), server.log()
    with Load(server.port, threads=4, max_seconds=60) as load:
        assert wait_for(lambda: recent_all(load, b"v1 "), 20)
        time.sleep(0.5)  # every worker served: its watcher runs
        write(mod, NEEDS_NEWDEP)
        assert wait_for(lambda: bool(refusals(server.log())), 20), server.log()[-3000:]
        assert "No module named 'newdep'" in refusals(server.log())[0].group(0)
        time.sleep(2.0)  # a worker booted meanwhile would show now
        assert boots() == WORKERS
        installed = time.monotonic()
        write(lib / "newdep.py", "VERSION = 'v2'\n")  # the install: no code edited
        if lib_at_start:
            assert wait_for(lambda: recent_all(load, b"v2 "), 60, interval=0.02), (
                f"{sorted(set(load.result.bodies_since(installed)))[:6]}\n{server.log()[-3000:]}"
            )
            took = time.monotonic() - installed
            assert wait_for(lambda: boots() >= 2 * WORKERS, 10)
        else:
            time.sleep(3.0)
            assert all(b"v1 " in body for body in load.result.bodies_since(installed))
        time.sleep(1.0)
    result = load.stop()
    log = server.log()
    # Each worker replaced once, and only after the install; or never.
    assert boots() == (2 if lib_at_start else 1) * WORKERS, log
    assert ("lib changed: checking the refused change set again" in log) == lib_at_start
    assert "Worker failed to boot" not in log and server.proc is not None
    assert server.proc.poll() is None
    assert_no_failed_requests(result)
    if lib_at_start:
        print(f"\nrefused; the install reached every worker {took:.2f}s later; "
              f"{result.ok} ok, {result.failed} failed")


# -- wsgireload watch --pidfile --import ----------------------------------------------------
def test_pidfile_watcher_boot_checks_before_hup(
    tmp_path: Path, servers: List[Server], watchers: List["subprocess.Popen[str]"]
) -> None:
    app_dir = tmp_path / "app"
    write(app_dir / "wsgi.py", UNWRAPPED)
    mod = app_dir / "mod.py"
    write(mod, "VERSION = 'v1'\n")
    pidfile = tmp_path / "gunicorn.pid"
    app = App(app_dir, "wsgi:application", "wsgi", b"v1 ", [])
    server = start_gunicorn(tmp_path, app, ["--pid", str(pidfile)])
    servers.append(server.start())
    assert wait_for(lambda: len(GUNICORN_BOOT.findall(server.log())) == WORKERS, 20)
    out_path = tmp_path / "watch.out"
    with open(out_path, "w") as out:
        # Started elsewhere on purpose: the app is booted from the server's directory.
        watcher = subprocess.Popen(
            [sys.executable, "-m", "wsgireload", "watch", "--pidfile", str(pidfile),
             "--import", "wsgi:application", "--interval", "0.2", "--settle", "0.5",
             str(app_dir)],
            cwd=_repo_root(), stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    watchers.append(watcher)
    text = out_path.read_text
    assert wait_for(lambda: "watching" in text(), timeout=30), text()
    with Load(server.port, threads=4) as load:
        assert wait_for(lambda: recent_all(load, b"v1 "), 20)
        write(mod, MISSING + "VERSION = 'v2'\n")
        assert wait_for(lambda: "refused" in text(), timeout=20), text()
        time.sleep(1.0)
        assert hups(server.log()) == 0
        assert len(GUNICORN_BOOT.findall(server.log())) == WORKERS
        errors = [line for line in text().splitlines() if " error " in line]
        assert len(errors) == 1, text()
        assert f"{mod}:1: ModuleNotFoundError: No module named 'a_module_that_does_not_exist'" \
            in errors[0]
        assert recent_all(load, b"v1 ") and server.proc is not None and server.proc.poll() is None
        fixed = time.monotonic()
        write(mod, "VERSION = 'v3'\n")
        assert wait_for(lambda: recent_all(load, b"v3 "), 5.0, interval=0.02), (
            text() + server.log()
        )
        took = time.monotonic() - fixed
    result = load.stop()
    assert result.failed == 0, result.errors[:5]
    assert text().count("sent SIGHUP") == 1 and hups(server.log()) == 1, text()
    print(f"\nwatch --pidfile --import: refused the broken deploy; fix served after {took:.2f}s")


# -- mod_wsgi daemon mode ---------------------------------------------------------------------
def test_mod_wsgi_daemon_refuses_an_unbootable_deploy(servers: List[Server]) -> None:
    """mod_wsgi's sys.executable is Apache: the check must find Python, boot the script file."""
    from . import test_mod_wsgi as mw

    if mw.APACHE is None or not (mw.MODULES / "mod_wsgi.so").exists():
        pytest.skip("needs apache2 and mod_wsgi (Debian: apache2 libapache2-mod-wsgi-py3)")
    root = Path(mw.tempfile.mkdtemp(prefix="wsgireload-apache-", dir="/tmp"))
    try:
        root.chmod(0o755)
        (root / "run").mkdir()
        (root / "tmp").mkdir()  # the daemons' TMPDIR: without it their record went to /tmp
        (root / "tmp").chmod(0o1777)
        server = mw.start_apache(servers, root, daemon=True)
        mod = root / "app" / "mod.py"
        boots = lambda: len(mw.BOOT.findall(server.log()))  # noqa: E731
        errors = lambda: [  # noqa: E731
            line for line in server.log().splitlines()
            if "ERROR wsgireload: not reloading" in line
        ]
        with Load(server.port, threads=4, max_seconds=60) as load:
            assert wait_for(lambda: recent_all(load, b"v1 "), 15)
            time.sleep(0.5)
            before = boots()
            write(mod, MISSING + 'VERSION = "v2"\n')
            mod.chmod(0o644)
            assert wait_for(lambda: bool(errors()), 20), server.log()[-3000:]
            refused = time.monotonic()
            time.sleep(2.0)
            assert boots() == before
            assert all(b"v1 " in body for body in load.result.bodies_since(refused))
            assert all(f"{mod}:1: ModuleNotFoundError: " in line for line in errors()), errors()
            assert len(errors()) <= mw.PROCESSES
            print("\n" + errors()[0][-260:])
            fixed = time.monotonic()
            write(mod, 'VERSION = "v3"\n')
            mod.chmod(0o644)
            assert wait_for(lambda: recent_all(load, b"v3 "), 5.0, interval=0.02), (
                server.log()[-3000:]
            )
            took = time.monotonic() - fixed
        assert load.result.failed == 0, load.result.errors[:5]
        print(f"\nmod_wsgi daemon: refused, then the fix everywhere after {took:.2f}s")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
