"""The boot check: interpreter finding, targets, the checker's verdicts, and its place in Policy.

The checker tests run real (cheap) subprocess interpreters; the rest inject fakes.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import stat
import sys
import textwrap
import threading
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from wsgireload import ConfigurationError, Reloader, servers
from wsgireload.asgi import Reloader as AsgiReloader
from wsgireload.boot import (
    BootCheck,
    CheckResult,
    Target,
    calling_module,
    describe_failure,
    find_python,
    is_asgi,
    lifespan_failure,
    parse_target,
    probe_version,
    python_candidates,
    run_checker,
    user_location,
)
from wsgireload.contrib.gunicorn import start_watcher
from wsgireload.detect import Snapshot
from wsgireload.policy import Policy
from wsgireload.servers.gunicorn import app_uri as gunicorn_app_uri
from wsgireload.servers.gunicorn import app_uri_of as gunicorn_app_uri_of
from wsgireload.servers.uwsgi import boot_targets as uwsgi_targets
from wsgireload.watcher import Watcher

from .conftest import FakeClock, bump, ok_app
from .fakes import fake_stack

XY = (sys.version_info[0], sys.version_info[1])
PYTHON = find_python()
SNAP: Snapshot = {}


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# -- which Python -------------------------------------------------------------------------------
def test_candidates_prefer_the_virtualenv_and_never_a_non_python_binary(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    uwsgi = executable(venv / "bin" / "uwsgi")
    venv_python = executable(venv / "bin" / f"python{XY[0]}.{XY[1]}")
    executable(venv / "bin" / "python")
    base = executable(tmp_path / "base" / "bin" / "python3")
    on_path = executable(tmp_path / "usr" / f"python{XY[0]}.{XY[1]}")
    found = python_candidates(
        executable=uwsgi, prefix=str(venv), base_executable=base, version=XY,
        which=lambda name: on_path,
    )
    assert found == [venv_python, str(venv / "bin" / "python"), base, on_path]
    assert uwsgi not in found  # sys.executable under uWSGI: running it with -c would start uWSGI


def test_candidates_skip_missing_and_httpd(tmp_path: Path) -> None:
    httpd = executable(tmp_path / "sbin" / "httpd")
    found = python_candidates(executable=httpd, prefix=str(tmp_path / "nothing"),
                              base_executable=None, version=XY, which=lambda name: None)
    assert found == []


def test_find_python_verifies_the_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = executable(tmp_path / "venv" / "bin" / "python")
    right = executable(tmp_path / "base" / "python3")
    answers = {wrong: "2.7", right: f"{XY[0]}.{XY[1]}"}
    asked: List[str] = []

    def probe(candidate: str) -> Optional[str]:
        asked.append(candidate)
        return answers.get(candidate)

    monkeypatch.setattr("sys.executable", "/usr/sbin/apache2")
    monkeypatch.setattr("sys.prefix", str(tmp_path / "venv"))
    monkeypatch.setattr("sys._base_executable", right, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("wsgireload.boot.probe_version", probe)
    find_python.cache_clear()
    try:
        assert find_python() == right
        assert find_python() == right
        assert asked == [wrong, right]  # remembered: probed once per process
        answers[right] = "3.1"
        find_python.cache_clear()
        assert find_python() is None
    finally:
        find_python.cache_clear()


def test_probe_version_answers_for_python_only(tmp_path: Path) -> None:
    assert probe_version(sys.executable) == f"{XY[0]}.{XY[1]}"
    assert probe_version(executable(tmp_path / "python", "#!/bin/sh\necho nope\n")) is None
    assert probe_version(str(tmp_path / "missing" / "python")) is None


def test_this_process_finds_its_own_python() -> None:
    assert PYTHON is not None and probe_version(PYTHON) == f"{XY[0]}.{XY[1]}"


# -- what to boot --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("wsgi", Target(module="wsgi", attr="application", spec="wsgi")),
        ("pkg.wsgi:app", Target(module="pkg.wsgi", attr="app", spec="pkg.wsgi:app")),
        ("myapp:create_app()", Target(module="myapp", attr="create_app", call=((), ()),
                                      spec="myapp:create_app()")),
        ("m:make('x', debug=False)", Target(module="m", attr="make",
                                            call=(("x",), (("debug", False),)),
                                            spec="m:make('x', debug=False)")),
        ("m:obj.wsgi", Target(module="m", attr="obj.wsgi", spec="m:obj.wsgi")),
    ],
)
def test_parse_target(spec: str, expected: Target) -> None:
    assert parse_target(spec) == expected


def test_parse_target_script_path(tmp_path: Path) -> None:
    target = parse_target(str(tmp_path / "app.wsgi.py"))
    assert target.path == str(tmp_path / "app.wsgi.py") and target.attr == "application"
    assert parse_target("wsgi", default_attr=None).attr is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "boot_app must be"),
        ("not a module", "is not a module name"),
        ("m:f(x)", "must be literals"),
        ("m:1 + 2", "neither an attribute name nor a factory call"),
    ],
)
def test_parse_target_refuses(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_target(spec)


def test_uwsgi_targets_from_opt(tmp_path: Path) -> None:
    assert uwsgi_targets({"module": b"wsgi"}) == [
        Target(module="wsgi", attr="application", spec="wsgi")
    ]
    assert uwsgi_targets({"module": [b"a:app", b"b"], "callable": b"main"}) == [
        Target(module="a", attr="app", spec="a:app"),
        Target(module="b", attr="main", spec="b"),
    ]
    script = str(tmp_path / "app.py")
    assert uwsgi_targets({"wsgi-file": script.encode()}) == [
        Target(path=script, attr="application", spec=script)
    ]
    assert uwsgi_targets({"mount": [b"/=root:app", b"/blog=" + script.encode()]}) == [
        Target(module="root", attr="app", spec="root:app"),
        Target(path=script, attr="application", spec=script),
    ]
    assert uwsgi_targets({"master": True, "http-socket": b":80"}) == []


class _FakeApplication:
    app_uri = "proj.wsgi:create()"


class _FakeWorker:
    app = _FakeApplication()


def test_gunicorn_app_uri_from_the_worker_stack(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    # gunicorn's arbiter calls into the worker: a frame of a gunicorn file with the app as self.
    arbiter = tmp_path / "gunicorn_fake" / "arbiter.py"
    arbiter.parent.mkdir()
    arbiter.write_text("class Arbiter:\n    def spawn(self, fn):\n        return fn()\n")
    namespace: Dict[str, Any] = {}
    exec(compile(arbiter.read_text(), str(arbiter), "exec"), namespace)
    holder = namespace["Arbiter"]()
    holder.app = _FakeApplication()
    assert threading.current_thread() is threading.main_thread()
    assert holder.spawn(gunicorn_app_uri) == "proj.wsgi:create()"
    assert gunicorn_app_uri_of(_FakeWorker()) == "proj.wsgi:create()"
    assert gunicorn_app_uri_of(object()) is None


def test_gunicorn_app_uri_of_an_async_worker_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """gevent's main thread runs the hub, not the arbiter: the Application is found by type."""
    base = pytest.importorskip("gunicorn.app.base")
    application = object.__new__(base.BaseApplication)
    application.app_uri = "async.wsgi:app"  # type: ignore[attr-defined]
    monkeypatch.setattr("gc.get_objects", lambda: [object(), application])
    assert gunicorn_app_uri() == "async.wsgi:app"
    monkeypatch.setattr("gc.get_objects", lambda: [object()])
    assert gunicorn_app_uri() is None


def test_calling_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "wr_boot_top.py").write_text(
        "from wsgireload.boot import calling_module\nTARGET = calling_module()\n"
        "def later():\n    return calling_module()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import wr_boot_top  # type: ignore[import-not-found]

    try:
        assert wr_boot_top.TARGET == Target(module="wr_boot_top", spec="wr_boot_top")
        assert wr_boot_top.later() is None  # inside a function: a factory, not the app module
    finally:
        sys.modules.pop("wr_boot_top", None)
    script = tmp_path / "site.wsgi.py"
    script.write_text("from wsgireload.boot import calling_module\nTARGET = calling_module()\n")
    namespace: Dict[str, Any] = {"__name__": "_mod_wsgi_0123abcd", "__file__": str(script)}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    assert namespace["TARGET"].path == str(script)  # mod_wsgi's made-up name: boot the file


def test_mod_wsgi_script_from_the_environ(tmp_path: Path) -> None:
    check = BootCheck()
    check.note_served(servers.environ_targets({"SCRIPT_FILENAME": "/srv/a.wsgi"}))  # no mod_wsgi
    assert check.targets() == []
    check.note_served(servers.environ_targets({
        "mod_wsgi.version": (5, 0), "SCRIPT_FILENAME": "/srv/site.wsgi",
        "mod_wsgi.callable_object": "app"}))
    assert check.targets() == [Target(path="/srv/site.wsgi", attr="app", spec="/srv/site.wsgi")]
    creator = Target(module="wsgi", spec="wsgi")
    explicit = parse_target("other:app")
    assert BootCheck(creator=creator).targets() == [creator]
    assert BootCheck(app=explicit, creator=creator).targets() == [explicit]


# -- where the error is --------------------------------------------------------------------------
def caught(fn: Any) -> BaseException:
    """What ``fn`` raised, with this test's own frame dropped from the traceback."""
    try:
        fn()
    except Exception as exc:
        assert exc.__traceback__ is not None
        return exc.with_traceback(exc.__traceback__.tb_next)
    raise AssertionError("did not raise")


def test_user_location_is_the_innermost_user_frame(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "framework.py").write_text("def boom():\n    raise KeyError('x')\n")
    user = tmp_path / "user.py"
    user.write_text("def run(framework):\n    framework.boom()\n")
    ns_lib: Dict[str, Any] = {}
    exec(compile((lib / "framework.py").read_text(), str(lib / "framework.py"), "exec"), ns_lib)
    ns_user: Dict[str, Any] = {}
    exec(compile(user.read_text(), str(user), "exec"), ns_user)

    class Framework:
        boom = staticmethod(ns_lib["boom"])

    library = [os.path.join(str(lib), "")]
    assert user_location(caught(lambda: ns_user["run"](Framework)), library) == (str(user), 2)
    # Raised in library code alone: the library's line beats nothing.
    assert user_location(caught(ns_lib["boom"]), library) == (str(lib / "framework.py"), 2)


def test_user_location_of_a_syntax_error() -> None:
    try:
        compile("x = (\n", "/srv/app/settings.py", "exec")
    except SyntaxError as exc:
        assert user_location(exc) == ("/srv/app/settings.py", 1)


def test_user_location_never_names_the_checker() -> None:
    # Raised inside wsgireload's own code (here: the target parser): no user line to name.
    error = caught(functools.partial(parse_target, ""))  # no frame of this file in between
    assert isinstance(error, ConfigurationError)
    assert user_location(error, []) == (None, None)


def test_describe_failure() -> None:
    what = "ModuleNotFoundError: No module named 'x'"
    line = describe_failure("import", "wsgi:application", what, "/srv/wsgi.py:3: ")
    assert line == ("/srv/wsgi.py:3: ModuleNotFoundError: No module named 'x' (booting "
                    "wsgi:application as the server would, in a fresh interpreter)")
    # (A smoke request answered 5xx: test_smoke_request_status, through the real checker.)


# -- the checker, for real -----------------------------------------------------------------------
@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    return directory


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def boot(app_dir: Path, spec: str, **kw: Any) -> Optional[str]:
    assert PYTHON is not None
    kw.setdefault("timeout", 30)
    target = kw.pop("target", None) or parse_target(spec, default_attr=None)
    return run_checker(PYTHON, [target], path=[str(app_dir), *sys.path], cwd=str(app_dir),
                       **kw).problem


GOOD = """\
    import os
    from wsgireload import Reloader

    def app(environ, start_response):
        status = {"/": "200 OK", "/down": "503 Service Unavailable"}.get(environ["PATH_INFO"])
        if status is None:
            raise LookupError(environ["PATH_INFO"])
        start_response(status, [("Content-Type", "text/plain")])
        return [b"ok"]

    application = Reloader(app)
    # In the checker the Reloader is inert: no thread, nothing watched, requests pass through.
    assert application._thread is None and application.closed
    assert not application.detector.watched()
    assert os.environ["WSGIRELOAD_VALIDATING"] == "1"
"""


def test_a_good_app_boots(app_dir: Path) -> None:
    write(app_dir, "wsgi.py", GOOD)
    assert boot(app_dir, "wsgi:application") is None


def test_a_missing_module_names_the_user_line(app_dir: Path) -> None:
    write(app_dir, "wsgi.py", "import helper\napplication = helper.app\n")
    helper = write(app_dir, "helper.py", "X = 1\nimport a_module_that_does_not_exist\n")
    problem = boot(app_dir, "wsgi:application")
    assert problem == (
        f"{helper}:2: ModuleNotFoundError: No module named 'a_module_that_does_not_exist' "
        "(booting wsgi:application as the server would, in a fresh interpreter)"
    )


def test_syntax_error_system_exit_and_missing_attribute(app_dir: Path) -> None:
    bad = write(app_dir, "bad.py", "def f(:\n")
    assert (boot(app_dir, "bad") or "").startswith(f"{bad}:1: SyntaxError: ")
    leaves = write(app_dir, "leaves.py", "import sys\nsys.exit('no config')\n")
    assert (boot(app_dir, "leaves") or "").startswith(f"{leaves}:2: SystemExit: no config")
    write(app_dir, "wsgi.py", "app = None\n")
    problem = boot(app_dir, "wsgi:application") or ""
    assert problem.startswith("AttributeError: module 'wsgi' has no attribute 'application'")


def test_a_factory_is_called_and_its_errors_are_the_users(app_dir: Path) -> None:
    factory = write(app_dir, "myapp.py", """\
        def create_app(name="x"):
            if name != "ok":
                raise RuntimeError("bad config " + name)
            return lambda environ, start_response: []
    """)
    assert boot(app_dir, "myapp:create_app('ok')") is None
    assert boot(app_dir, "myapp:create_app(name='ok')") is None
    assert (boot(app_dir, "myapp:create_app()") or "").startswith(
        f"{factory}:3: RuntimeError: bad config x"
    )


def test_a_script_file_target(app_dir: Path) -> None:
    script = write(app_dir, "site.wsgi", "import nope_not_here\n")
    target = Target(path=str(script), attr="application", spec=str(script))
    assert (boot(app_dir, "", target=target) or "").startswith(f"{script}:1: ModuleNotFound")


def test_what_the_app_prints_does_not_confuse_the_result(app_dir: Path) -> None:
    write(app_dir, "chatty.py", "print('{\"ok\": false}')\nimport sys\nsys.stdout.write('x')\n")
    assert boot(app_dir, "chatty") is None


def test_the_checker_gets_the_workers_environment_and_cwd(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(app_dir, "envapp.py", """\
        import os
        assert os.environ["WR_BOOT_SECRET"] == "s3"
        assert os.path.exists("marker.txt")
    """)
    (app_dir / "marker.txt").write_text("")
    assert "KeyError" in (boot(app_dir, "envapp") or "")
    monkeypatch.setenv("WR_BOOT_SECRET", "s3")
    assert boot(app_dir, "envapp") is None


def test_the_checker_runs_with_the_workers_interpreter_flags(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(app_dir, "optimized.py", "assert not __debug__, 'runs only under python -O'\n")
    assert "AssertionError: runs only under python -O" in (boot(app_dir, "optimized") or "")
    monkeypatch.setattr("wsgireload.boot.subprocess._args_from_interpreter_flags", lambda: ["-O"])
    assert boot(app_dir, "optimized") is None


def test_boot_is_bounded_in_time(app_dir: Path) -> None:
    write(app_dir, "slow.py", "import time\ntime.sleep(60)\n")
    started = time.monotonic()
    problem = boot(app_dir, "slow", timeout=0.5) or ""
    assert time.monotonic() - started < 10
    assert "took longer than 0.5s" in problem and "boot_timeout" in problem


def test_what_the_app_starts_at_import_goes_with_the_checker(app_dir: Path) -> None:
    write(app_dir, "spawner.py", """\
        import subprocess, sys
        quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **quiet)
        open("agent.pid", "w").write(str(agent.pid))
    """)
    assert boot(app_dir, "spawner") is None
    stat_file = Path(f"/proc/{(app_dir / 'agent.pid').read_text()}/stat")
    deadline = time.monotonic() + 5  # SIGKILL is sent before boot() returns; death is not instant
    while stat_file.exists() and stat_file.read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the agent the app started outlived the boot check"
        time.sleep(0.01)


UWSGI_APP = """\
    import uwsgi
    from uwsgidecorators import postfork, timer

    @postfork
    def forked():
        pass

    @timer(3)
    def tick(signum):
        pass

    assert uwsgi.worker_id() == 0 and uwsgi.opt[b"module" if False else "module"] == b"wsgi"
    uwsgi.register_signal(99, "workers", tick)
    application = lambda environ, start_response: []
"""


def test_uwsgi_imports_are_stubbed_when_the_worker_runs_under_uwsgi(app_dir: Path) -> None:
    write(app_dir, "uwapp.py", UWSGI_APP)
    assert boot(app_dir, "uwapp:application", stubs=("uwsgi", {"module": b"wsgi"})) is None
    assert "ModuleNotFoundError: No module named 'uwsgi'" in (boot(app_dir, "uwapp") or "")


def test_smoke_request_status(app_dir: Path) -> None:
    write(app_dir, "wsgi.py", GOOD)
    assert boot(app_dir, "wsgi:application", smoke="/") is None
    assert boot(app_dir, "wsgi:application", smoke="/down") == (
        "the smoke request GET /down to wsgi:application answered 503 Service Unavailable"
    )
    raised = boot(app_dir, "wsgi:application", smoke="/missing?q=1") or ""
    assert raised.startswith(f"{app_dir / 'wsgi.py'}:7: LookupError: /missing (the smoke request")
    # A module target without the attribute named: the usual names are tried.
    assert boot(app_dir, "", target=parse_target("wsgi", default_attr=None), smoke="/") is None


def test_smoke_request_closes_the_body_and_needs_start_response(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(app_dir, "closing.py", """\
        import os
        class Body:
            def __iter__(self):
                yield b"x"
            def close(self):
                open(os.environ["WR_CLOSED"], "w").close()
        def app(environ, start_response):
            start_response("200 OK", [])
            return Body()
        def silent(environ, start_response):
            return []
    """)
    flag = app_dir / "closed.flag"
    monkeypatch.setenv("WR_CLOSED", str(flag))
    assert boot(app_dir, "closing:app", smoke="/") is None
    assert flag.exists()
    assert "without calling start_response" in (boot(app_dir, "closing:silent", smoke="/") or "")


def test_django_views_are_imported_through_the_urlconf(app_dir: Path) -> None:
    pytest.importorskip("django")
    write(app_dir, "proj/__init__.py", "")
    write(app_dir, "proj/settings.py", """\
        SECRET_KEY = "x"
        DEBUG = False
        ALLOWED_HOSTS = ["localhost"]
        INSTALLED_APPS = []
        MIDDLEWARE = []
        ROOT_URLCONF = "proj.urls"
        DATABASES = {}
    """)
    write(app_dir, "proj/urls.py", """\
        from django.urls import include, path
        urlpatterns = [path("blog/", include("proj.blog_urls"))]
    """)
    write(app_dir, "proj/blog_urls.py", """\
        from django.urls import path
        from . import views
        urlpatterns = [path("", views.index)]
    """)
    views = write(app_dir, "proj/views.py", """\
        from django.http import HttpResponse
        def index(request):
            return HttpResponse("blog")
    """)
    write(app_dir, "proj/wsgi.py", """\
        import os
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
        from django.core.wsgi import get_wsgi_application
        from wsgireload.contrib.django import DjangoReloader
        application = DjangoReloader(get_wsgi_application())
    """)
    assert boot(app_dir, "proj.wsgi:application", smoke="/blog/") is None
    views.write_text("import a_module_that_does_not_exist\n" + views.read_text())
    problem = boot(app_dir, "proj.wsgi:application") or ""
    assert problem.startswith(f"{views}:1: ModuleNotFoundError: "), problem
    assert "importing Django's URLconf and views" in problem


# -- in the Policy: once per change set, never per request ---------------------------------------
class CountingRunner:
    def __init__(self, problems: Sequence[Optional[str]]) -> None:
        self.problems = list(problems)
        self.calls: List[Dict[str, Any]] = []

    def __call__(self, python: str, targets: Sequence[Target], **kw: Any) -> CheckResult:
        self.calls.append({"targets": list(targets), **kw})
        return CheckResult(self.problems.pop(0) if self.problems else None, 0.01)


def booting_policy(runner: CountingRunner, **kw: Any) -> Policy:
    check = BootCheck(app=parse_target("wsgi:application"), runner=runner,
                      python=lambda: "/venv/bin/python", **kw)
    return Policy(settle=0.0, validate="boot", boot=check)


@pytest.mark.parametrize(
    "module, stubs",
    [(None, None), (types.SimpleNamespace(opt={"module": b"wsgi"}), {"module": b"wsgi"}),
     (types.SimpleNamespace(), {})],
    ids=["no-uwsgi", "uwsgi", "uwsgi-without-opt"],
)
def test_the_checker_stubs_uwsgi_only_under_uwsgi_with_its_options(
    monkeypatch: pytest.MonkeyPatch, module: Any, stubs: Optional[Dict[str, Any]]
) -> None:
    monkeypatch.setattr("wsgireload.servers.uwsgi.module", lambda: module)
    runner = CountingRunner([])
    check = BootCheck(app=parse_target("wsgi:application"), runner=runner, python=lambda: "/p")
    assert check.check() is None
    assert runner.calls[0]["stubs"] == (None if stubs is None else ("uwsgi", stubs))


def test_policy_boots_once_per_change_set_and_logs_one_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "mod.py"
    src.write_text("X = 1\n")
    runner = CountingRunner(["/srv/mod.py:1: ModuleNotFoundError: No module named 'x' (...)"])
    policy = booting_policy(runner)
    caplog.set_level(logging.INFO, logger="wsgireload")
    policy.observe([str(src)], 0.0)
    for now in (1.0, 2.0, 3.0, 4.0):
        assert policy.due(now, SNAP) is None  # refused once, then waits for the next change
    assert len(runner.calls) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "wsgireload: not reloading, the new code is broken (keeping the old code running; fix "
        "the file and the reload will follow): /srv/mod.py:1: ModuleNotFoundError: No module "
        "named 'x' (...)"
    ]
    policy.observe([str(src)], 5.0)  # the fix
    assert policy.due(5.0, SNAP) is not None
    assert len(runner.calls) == 2
    assert runner.calls[0]["targets"] == [parse_target("wsgi:application")]


def test_policy_compiles_before_it_boots(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text("def f(:\n")
    runner = CountingRunner([])
    policy = booting_policy(runner)
    policy.observe([str(src)], 0.0)
    assert policy.due(1.0, SNAP) is None
    assert runner.calls == []  # a syntax error costs no interpreter


def test_policy_removes_stale_bytecode_before_booting(tmp_path: Path) -> None:
    import importlib.util

    src = tmp_path / "mod.py"
    src.write_text("X = 1\n")
    cached = Path(importlib.util.cache_from_source(str(src)))
    cached.parent.mkdir()
    cached.write_bytes(b"stale")
    seen: List[bool] = []

    class Runner(CountingRunner):
        def __call__(self, python: str, targets: Sequence[Target], **kw: Any) -> CheckResult:
            seen.append(cached.exists())
            return super().__call__(python, targets, **kw)

    policy = booting_policy(Runner([]))
    policy.observe([str(src)], 0.0)
    assert policy.due(1.0, SNAP) is not None
    assert seen == [False]


def test_no_target_falls_back_to_compile_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = CountingRunner([])
    policy = Policy(settle=0.0, boot=BootCheck(runner=runner, python=lambda: "/x/python"))
    assert policy.validate == "boot"
    caplog.set_level(logging.INFO, logger="wsgireload")
    for now in (1.0, 2.0):
        policy.observe([str(tmp_path / "a.txt")], now)
        assert policy.due(now, SNAP) is not None
    assert runner.calls == []
    infos = [r.getMessage() for r in caplog.records if "cannot tell which app" in r.getMessage()]
    assert len(infos) == 1 and "boot_app='your.module:application'" in infos[0]


def test_no_python_found_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runner = CountingRunner([])
    check = BootCheck(app=parse_target("wsgi"), runner=runner, python=lambda: None)
    policy = Policy(settle=0.0, boot=check)
    caplog.set_level(logging.INFO, logger="wsgireload")
    for now in (1.0, 2.0):
        policy.observe([str(tmp_path / "a.txt")], now)
        assert policy.due(now, SNAP) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no Python" in warnings[0] and runner.calls == []


def test_compile_and_none_never_boot(tmp_path: Path) -> None:
    for validate in ("compile", None):
        runner = CountingRunner([])
        check = BootCheck(app=parse_target("wsgi"), runner=runner, python=lambda: "/x/python")
        policy = Policy(settle=0.0, validate=validate, boot=check)
        policy.observe([str(tmp_path / "a.txt")], 0.0)
        assert policy.due(1.0, SNAP) is not None and runner.calls == []


def test_reloader_boots_once_per_change_set_not_per_request(
    tmp_path: Path, clock: FakeClock
) -> None:
    watched = tmp_path / "page.html"
    watched.write_text("v1")
    reloader = Reloader(lambda e, s: [b"x"], extra_files=[str(watched)], clock=clock,
                        settle=0.5, mode="inline", action="log-only", boot_app="wsgi:app",
                        smoke="/healthz")
    runner = CountingRunner([])
    assert reloader.policy.boot is not None
    reloader.policy.boot.runner = runner
    reloader.policy.boot.python = lambda: "/venv/bin/python"

    def request() -> None:
        body = reloader({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None)
        getattr(body, "close", lambda: None)()

    for _ in range(50):
        request()
        clock.advance(0.3)
    assert runner.calls == []  # nothing changed: no boot, however many requests
    bump(watched)
    for _ in range(50):
        request()
        clock.advance(0.3)
    assert len(runner.calls) == 1 and runner.calls[0]["smoke"] == "/healthz"
    reloader.close()


# -- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, message",
    [
        ({"boot_timeout": 0}, "boot_timeout must be a number of seconds greater than 0"),
        ({"boot_timeout": True}, "boot_timeout must be"),
        ({"smoke": "healthz"}, "smoke must be a URL path starting with '/'"),
        ({"smoke": "/a b"}, "smoke must be a URL path"),
        ({"smoke": "/", "validate": "compile"}, "boot_app and smoke need validate='boot'"),
        ({"boot_app": "wsgi", "validate": None}, "need validate='boot'"),
        ({"boot_app": "a:f(x)"}, "must be literals"),
    ],
)
def test_bad_boot_options(kw: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Reloader(ok_app, **kw)
    with pytest.raises(ConfigurationError):
        Watcher(modules=False, **kw)


def test_options_reach_the_boot_check() -> None:
    policy = Reloader(ok_app, boot_app="pkg.wsgi:create()", boot_timeout=5, smoke="/hz").policy
    assert policy.validate == "boot" and policy.boot is not None
    assert policy.boot.targets() == [parse_target("pkg.wsgi:create()")]
    assert policy.boot.timeout == 5.0 and policy.boot.smoke == "/hz"


def test_gunicorn_hook_boots_the_workers_app_uri(tmp_path: Path) -> None:
    class Cfg:
        preload_app = False

    class Worker:
        cfg = Cfg()
        app = _FakeApplication()
        ppid = os.getppid()

    watcher = start_watcher(Worker(), modules=False, interval=30)
    try:
        assert watcher.policy.boot is not None
        assert watcher.policy.boot.targets() == [parse_target("proj.wsgi:create()")]
    finally:
        watcher.stop()
    compiled = start_watcher(Worker(), modules=False, interval=30, validate="compile")
    compiled.stop()
    assert compiled.policy.validate == "compile"


def test_watcher_is_inert_inside_the_checker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("")
    monkeypatch.setenv("WSGIRELOAD_VALIDATING", "1")
    watcher = Watcher(extra_files=[str(tmp_path / "a.txt")])
    assert watcher.detector.watched() == [] and watcher.start()._thread is None
    reloader = Reloader(ok_app, extra_files=[str(tmp_path / "a.txt")])
    assert reloader.detector.watched() == [] and reloader({}, lambda *a: None) == [b"ok"]
    assert reloader.policy.boot is not None  # options still checked
    assert calling_module() is None


def test_the_checker_skips_a_directory_the_server_cannot_import_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory missing when a process first looked in it stays unusable to it and to every
    process its master forks later, even once it exists (the import system caches "nothing
    here"): the checker must not import from it either, or a deploy would pass that gunicorn's
    new workers cannot boot."""
    later = tmp_path / "later"  # on PYTHONPATH before it exists
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(later), *sys.path])
    monkeypatch.setattr(sys, "path_importer_cache", dict(sys.path_importer_cache))
    assert importlib.util.find_spec("wr_late_dep") is None  # an import walks the path
    later.mkdir()
    (later / "wr_late_dep.py").write_text("")
    assert importlib.util.find_spec("wr_late_dep") is None  # still: as in a forked worker
    path = BootCheck().search_path()
    assert path[0] == str(tmp_path) and str(later) not in path
    assert BootCheck(cwd="/srv").search_path()[:2] == ["/srv", str(tmp_path)]


# -- ASGI apps: the lifespan startup, as the servers run it --------------------------------------
async def _no_lifespan(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http", "this app has no lifespan"


async def _reports_failure(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})


async def _returns(scope: Any, receive: Any, send: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("app", "expected"),
    [(_no_lifespan, AssertionError), (_returns, None), (_reports_failure, ("no database", None))],
    ids=["raises-unreported", "returns", "reports-failure"],
)
def test_lifespan_failure_decides_as_the_servers_do(app: Any, expected: Any) -> None:
    """Only a reported startup.failed refuses: gunicorn, uvicorn, granian and hypercorn all
    serve an app whose lifespan raises without reporting (as "lifespan unsupported")."""
    if isinstance(expected, type):
        with pytest.raises(expected):
            lifespan_failure(app)
    else:
        assert lifespan_failure(app) == expected


def test_an_asgi_app_boots_through_its_lifespan_startup_and_shutdown(app_dir: Path) -> None:
    write(app_dir, "good_asgi.py", """\
        from pathlib import Path
        from wsgireload.asgi import Reloader

        async def app(scope, receive, send):
            while True:
                message = await receive()
                Path(message["type"]).touch()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return

        application = Reloader(app)
    """)
    assert is_asgi(AsgiReloader(_returns)) and not is_asgi(ok_app)
    assert boot(app_dir, "good_asgi:application") is None
    assert (app_dir / "lifespan.startup").exists() and (app_dir / "lifespan.shutdown").exists()


def test_a_starlette_startup_that_fails_is_refused_with_the_users_line(app_dir: Path) -> None:
    path = write(app_dir, "star.py", """\
        from contextlib import asynccontextmanager
        from starlette.applications import Starlette
        from wsgireload.asgi import Reloader

        def connect():
            raise ConnectionError("database unreachable")

        @asynccontextmanager
        async def lifespan(app):
            connect()
            yield

        app = Reloader(Starlette(lifespan=lifespan))
    """)
    problem = boot(app_dir, "star:app")
    assert problem is not None
    assert f"{path}:6: ConnectionError: database unreachable" in problem, problem
    assert "lifespan startup of star:app" in problem
    write(app_dir, "bare.py", """\
        async def app(scope, receive, send):
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})
    """)
    problem = boot(app_dir, "bare:app")
    assert problem is not None and "lifespan.startup.failed: no database" in problem, problem


def _gasgi_worker(lifespan: str) -> Any:
    worker = type("ASGIWorker", (), {"__module__": "gunicorn.workers.gasgi"})()
    worker.cfg = types.SimpleNamespace(asgi_lifespan=lifespan)
    return worker


SITE = "/venv/lib/python3.11/site-packages/"


@pytest.mark.parametrize(("frame", "gunicorn_worker", "off"), [
    ((SITE + "uvicorn/_subprocess.py", "subprocess_started",
      {"config": types.SimpleNamespace(lifespan="off", should_reload=False)}), None, True),
    ((SITE + "uvicorn/_subprocess.py", "subprocess_started",
      {"config": types.SimpleNamespace(lifespan="auto", should_reload=False)}), None, False),
    ((SITE + "uvicorn_worker/_workers.py", "run",
      {"self": types.SimpleNamespace(config=types.SimpleNamespace(lifespan="off"))}), None, True),
    ((SITE + "granian/server/mp.py", "_spawn_asgi_worker", {}), None, True),
    ((SITE + "granian/server/mp.py", "_spawn_asgi_lifespan_worker", {}), None, False),
    (("/srv/app/app.py", "app", {}), "off", True),
    (("/srv/app/app.py", "app", {}), "auto", False),
    (("/srv/app/app.py", "app", {}), None, False),
], ids=["uvicorn-off", "uvicorn-auto", "uvicorn-worker-off", "granian-asginl", "granian-asgi",
        "gunicorn-asgi-off", "gunicorn-asgi-auto", "none"])
def test_the_boot_check_runs_no_lifespan_where_the_server_runs_none(
        monkeypatch: pytest.MonkeyPatch, frame: Any, gunicorn_worker: Optional[str],
        off: bool) -> None:
    """A server run with lifespan off never runs the app's startup: refusing a deploy whose
    startup fails would refuse code that server serves."""
    fake_stack(monkeypatch, frame, modules=("uvicorn", "granian", "granian.server.mp"))
    worker = [_gasgi_worker(gunicorn_worker)] if gunicorn_worker else []
    monkeypatch.setattr("wsgireload.servers.gunicorn.frame_objects", lambda: iter(worker))
    runner = CountingRunner([])
    check = BootCheck(app=parse_target("app:app"), runner=runner, python=lambda: "/p")
    assert check.check() is None and runner.calls[0]["lifespan"] is not off


def test_without_lifespan_the_checker_still_imports_the_app(app_dir: Path) -> None:
    write(app_dir, "bare.py", """\
        async def app(scope, receive, send):
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})
    """)
    assert boot(app_dir, "bare:app", lifespan=False) is None
    write(app_dir, "broken.py", "import no_such_module\n")
    problem = boot(app_dir, "broken:app", lifespan=False)
    assert problem is not None and "no_such_module" in problem, problem
