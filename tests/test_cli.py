"""The wsgireload command, run in-process through main([...]) with a scripted clock and sleep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from itertools import count
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from wsgireload import cli, servers

from .conftest import edit

_names = count()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh cwd; sys.path and sys.modules are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def module(workdir: Path, body: str) -> str:
    """Write a uniquely named module into the cwd and return its name."""
    name = f"wr_cli_app_{next(_names)}"
    (workdir / f"{name}.py").write_text(textwrap.dedent(body))
    return name


APP = """
    from wsgireload import Reloader

    def inner(environ, start_response):
        start_response("200 OK", [])
        return [b"hi"]

    application = Reloader(inner, extra_files=["templates/*.html"], settle=0.5)
"""


@pytest.fixture
def src(workdir: Path) -> Path:
    """An empty ``src`` directory in the test's cwd."""
    path = workdir / "src"
    path.mkdir()
    return path


def run(argv: List[str], capsys: pytest.CaptureFixture[str]) -> "tuple[int, str, str]":
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_check_reports_files_scan_compile_and_action(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "templates").mkdir()
    (workdir / "templates" / "index.html").write_text("<p>hi</p>")
    name = module(workdir, APP)
    code, out, err = run(["check", f"{name}:application"], capsys)
    assert code == 0, err
    assert f"app:       {name}:application (Reloader)" in out
    assert "reloader:  app (action auto, interval 1s, settle 0.5s, validate boot)" in out
    assert "      1  templates/\n" in out  # the cwd's files come first
    assert str(workdir / "templates" / "index.html") not in out  # grouped, not listed
    assert "wsgireload/ (in " in out or "wsgireload/ (site-packages)" in out
    assert "one scan:" in out and "ms for" in out
    assert "compile:" in out and ".py files compile" in out
    assert "here: standalone" in out
    assert "under gunicorn: one new worker ready before each old one leaves" in out
    assert "add --lazy-apps --master-fifo <path> for the chain reload" in out
    assert "under uvicorn: uvicorn --workers N (N > 1): SIGHUP to the verified supervisor" in out
    assert "a lone uvicorn (no --workers, or --workers 1) dies on SIGHUP: one WARNING" in out
    assert "under granian: SIGHUP to the verified granian supervisor" in out
    assert "under hypercorn: auto: no reload, one WARNING" in out
    under = [line.split(":")[0].strip() for line in out.splitlines() if "  under " in line]
    assert under == [f"under {server.NAME}" for server in servers.SERVERS] + ["under standalone"]


def test_check_verbose_lists_every_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = module(workdir, APP)
    code, out, _ = run(["check", "--verbose", f"{name}:application"], capsys)
    assert code == 0 and str(workdir / f"{name}.py") in out


def test_check_finds_a_wrapped_reloader(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = module(workdir, APP + """
    class Outer:  # a framework object whose wsgi_app is the Reloader, as in Flask
        def __init__(self, app):
            self.wsgi_app = app

        def __call__(self, environ, start_response):
            return self.wsgi_app(environ, start_response)

    app = Outer(application)
    """)
    code, out, _ = run(["check", f"{name}:app"], capsys)
    assert code == 0 and "reloader:  app.wsgi_app" in out


def test_check_without_reloader(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = module(workdir, "def application(environ, start_response):\n    return []\n")
    code, out, _ = run(["check", name], capsys)  # APP defaults to "application"
    assert code == 0 and "none found" in out and f"      1  {name}.py" in out


@pytest.mark.parametrize(
    "body, target, message",
    [
        (None, "wr_cli_missing:app", "no module named 'wr_cli_missing'"),
        ("x = 1\n", "{name}:app", "has no attribute 'app'"),
        ("app = 42\n", "{name}:app", "is a int, not a WSGI application"),
        ("raise RuntimeError('database is down')\n", "{name}:app",
         "failed: RuntimeError: database is down"),
        ("import wr_cli_no_such_dependency\n", "{name}:app",
         "failed: No module named 'wr_cli_no_such_dependency'"),
        ("def app(:\n", "{name}:app", ".py:1: "),
        ("import sys\nsys.exit(3)\n", "{name}:app", "failed: SystemExit: 3"),
        (None, "not a target", "is not MODULE:APP"),
        (None, "mod:1bad", "is not an attribute name"),
    ],
)
def test_check_problems_are_one_plain_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], body: "str | None", target: str, message: str
) -> None:
    name = module(workdir, body) if body is not None else ""
    code, out, err = run(["check", target.format(name=name)], capsys)
    assert code == 1
    assert message in err
    assert err.startswith("wsgireload: ") and err.count("\n") == 1 and "Traceback" not in err


def test_check_verbose_shows_the_traceback(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = module(workdir, "raise RuntimeError('boom')\n")
    code, _, err = run(["check", "--verbose", f"{name}:app"], capsys)
    assert code == 1 and "Traceback" in err and "RuntimeError: boom" in err


def test_check_fails_on_a_watched_file_that_does_not_compile(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "plugins").mkdir()
    (workdir / "plugins" / "broken.py").write_text("def f(:\n")
    name = module(workdir, APP.replace("templates/*.html", "plugins/*.py"))
    code, out, err = run(["check", f"{name}:application"], capsys)
    assert code == 1
    assert "broken.py:1:" in err and "a reload would be refused" in err


def test_check_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["nope"])
    assert exc.value.code == 2


class Script:
    """Stands in for time.sleep and the clock: each sleep runs the next step, then Ctrl-C."""

    def __init__(self, steps: List[Callable[[], None]]) -> None:
        self.steps = steps
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if not self.steps:
            raise KeyboardInterrupt
        self.steps.pop(0)()


def script(monkeypatch: pytest.MonkeyPatch, steps: List[Callable[[], None]]) -> Script:
    s = Script(steps)
    monkeypatch.setattr(cli, "_sleep", s.sleep)
    monkeypatch.setattr(cli, "_clock", s.clock)
    return s


def nothing() -> None:
    pass


def watch_broken_then_fixed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, path: Path,
    broken: str, fixed: str, *args: str
) -> str:
    """What ``wsgireload watch --settle 1 *args`` prints while ``path`` is edited to ``broken``
    and then to ``fixed``, each edit followed by two quiet steps; it exits 0."""
    script(monkeypatch, [
        lambda: edit(path, broken),
        nothing, nothing,  # settles, is refused
        lambda: edit(path, fixed),
        nothing, nothing,  # settles, passes
    ])
    code, out, _ = run(["watch", "--settle", "1", *args], capsys)
    assert code == 0
    return out


def test_watch_paths_prints_changes_decisions_and_stops_cleanly(
    src: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (src / "app.py").write_text("X = 1\n")
    (src / "app.pyc").write_text("ignored")
    out = watch_broken_then_fixed(
        capsys, monkeypatch, src / "app.py", "def broken(:\n", "X = 2\n", "src"
    )
    lines = out.splitlines()
    assert "watching  src (1 files); Ctrl-C to stop" in lines[0]
    assert any(f"changed   {src / 'app.py'}" in line for line in lines)
    assert "settling  waiting for 1s without a further change" in out
    assert "app.py:1: " in out and "refused   1 file(s) do not validate" in out
    assert "settled   1 file(s) validated" in out
    assert "reload    due now (no --pidfile: nothing signalled)" in out
    assert out.count("reload    due now") == 1
    assert lines[-1].endswith("stopped") and "Traceback" not in out


def test_watch_app_uses_its_reloader(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "templates").mkdir()
    page = workdir / "templates" / "index.html"
    page.write_text("<p>1</p>")
    name = module(workdir, APP)
    script(monkeypatch, [lambda: edit(page, "<p>2</p>"), nothing, nothing])
    code, out, _ = run(["watch", f"{name}:application"], capsys)
    assert code == 0
    assert f"changed   {page}" in out and "reload    due now" in out


def test_watch_missing_path(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["watch", "nowhere"], capsys)
    assert code == 1 and "nowhere: no such file or directory" in err


def test_watch_refuses_a_bad_pidfile_up_front(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "server.pid").write_text("0\n")
    code, _, err = run(["watch", "--pidfile", "server.pid", "."], capsys)
    assert code == 1 and "refusing to signal it" in err and "Traceback" not in err


@pytest.mark.skipif(not os.path.isfile("/proc/stat"), reason="needs procfs")
def test_watch_pidfile_signals_once_per_change_set(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = subprocess.Popen(
        # os.write, not print: the signal may land while print('ready') is still flushing,
        # and a print from the handler then fails as a reentrant call on stdout.
        [sys.executable, "-c", "import os, signal, sys, time\n"
         "signal.signal(signal.SIGUSR1, lambda *a: os.write(1, b'usr1\\n'))\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        (workdir / "server.pid").write_text(str(server.pid))
        (workdir / "app.py").write_text("X = 1\n")
        script(monkeypatch, [
            lambda: edit(workdir / "app.py", "X = 2\n"),
            lambda: (workdir / "server.pid").write_text(str(server.pid)),  # rewritten: ignored
            nothing, nothing, nothing,
        ])
        code, out, err = run(
            ["watch", "--pidfile", "server.pid", "--signal", "USR1", "--expect", "python",
             "--settle", "1", "."], capsys
        )
        assert code == 0, err
        assert f"target    python pid {server.pid}" in out
        assert out.count("sent SIGUSR1") == 1
        assert server.stdout.readline() == b"usr1\n"
        assert f"changed   {workdir / 'server.pid'}" not in out  # the pidfile is not a change
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
        assert server.stdout is not None
        server.stdout.close()


def test_python_m_wsgireload() -> None:
    proc = subprocess.run([sys.executable, "-m", "wsgireload", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("wsgireload ")


# -- status ----------------------------------------------------------------------------------
def _live_record(rundir: Path) -> Path:
    """A record whose master is this test process (so it counts as running)."""
    from wsgireload._system import proc_start_time

    pid, start = os.getpid(), proc_start_time(os.getpid())
    rundir.mkdir(mode=0o700, exist_ok=True)
    path = rundir / f"gunicorn-{pid}-{start}.master.json"
    path.write_text(json.dumps({
        "server": "gunicorn", "master": pid, "master_start": start,
        "workers": {"11": {"born": 100.0, "gone": 300.0}, "12": {"born": 100.0, "gone": 300.0},
                    "13": {"born": 250.0}, "14": {"born": 400.0}},
        "lease": {"pid": 14, "start": "x", "expires": 4e9},
        "watched": 3000, "scan_ms": 6.5,
        "generation": {"n": 2, "at": 200.0, "files": ["/app/mod.py"],
                       "action": "auto: gunicorn: SIGHUP to master 1"},
        "last_refusal": {"at": 150.0, "files": ["/app/mod.py"], "error": "/app/mod.py:1: boom",
                         "where": "/app/mod.py:1"},
    }))
    (rundir / "gunicorn-999999-1.master.json").write_text("{}")  # torn or dead: not shown
    return path


def test_status_json_shows_the_last_deploy_and_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _live_record(tmp_path / "run")
    code, out, _ = run(["status", "--json", "--runtime-dir", str(tmp_path / "run")], capsys)
    assert code == 0
    (master,) = json.loads(out)
    assert master["master"] == os.getpid() and master["workers"] == [13, 14]
    assert master["scanner"] == 14 and master["watched"] == 3000 and master["scan_ms"] == 6.5
    assert master["last_deploy"]["files"] == ["/app/mod.py"]
    assert master["last_deploy"]["workers_replaced"] == 2  # 11 and 12 were born before it, gone
    assert master["last_refusal"]["where"] == "/app/mod.py:1"


def test_status_text_names_each_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _live_record(tmp_path / "run")
    code, out, _ = run(["status", "--runtime-dir", str(tmp_path / "run")], capsys)
    assert code == 0
    assert f"gunicorn master {os.getpid()}: 2 workers seen (13, 14)" in out
    assert "scanner:      14; 3000 files, last scan 6.5 ms" in out
    assert "auto: gunicorn: SIGHUP to master 1; 2 workers replaced" in out
    assert "last refusal: " in out and ": /app/mod.py:1: boom\n" in out


def test_check_names_each_trap_once_and_status_lists_masters_only(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsgireload._record import open_record

    rundir = workdir / "run"
    master = _live_record(rundir)
    master.write_text(json.dumps({**json.loads(master.read_text()), "traps": {"t": "--preload"}}))
    # Processes alone (no master: a lone uvicorn, Apache's embedded children) keep records of
    # their own for their traps: one line for the processes of one setup.
    for server, pid in (("uvicorn", os.getpid()), ("uvicorn", os.getppid()),
                        ("mod_wsgi", os.getpid())):
        record, _ = open_record(server, pid, str(rundir))
        assert record is not None
        record.update(lambda d, s=server: {**d, "traps": {"t": f"{s} alone"}, "alone": True})
    name = module(workdir, APP)
    code, out, err = run(["check", f"{name}:application", "--runtime-dir", str(rundir)], capsys)
    assert code == 0, err
    pids = sorted([os.getpid(), os.getppid()], key=str)
    assert [line for line in out.splitlines() if line.startswith("trap:")] == [
        f"trap:      gunicorn master {os.getpid()}: --preload",
        f"trap:      mod_wsgi process {os.getpid()}: mod_wsgi alone",
        f"trap:      uvicorn processes {pids[0]}, {pids[1]}: uvicorn alone",
    ]
    code, out, _ = run(["status", "--json", "--runtime-dir", str(rundir)], capsys)
    assert [(m["server"], m["master"]) for m in json.loads(out)] == [("gunicorn", os.getpid())]


def test_status_without_records_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["status", "--runtime-dir", str(tmp_path / "none")], capsys)
    assert code == 0 and "no running master" in out


def test_watch_import_boots_the_app_before_it_is_due(
    src: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (src / "wsgi.py").write_text("import helper\napplication = helper.app\n")
    helper = src / "helper.py"
    helper.write_text("def app(environ, start_response):\n    return []\n")
    monkeypatch.syspath_prepend(str(src))
    out = watch_broken_then_fixed(  # refused: it compiles but cannot boot; the fix boots
        capsys, monkeypatch, helper, "import a_module_that_does_not_exist\n",
        "def app(environ, start_response):\n    return []\n", "--import", "wsgi:application", "src"
    )
    assert (f"error     not reloading, the new code is broken (keeping the old code running; "
            f"fix the file and the reload will follow): {helper}:1: ModuleNotFoundError: "
            "No module named 'a_module_that_does_not_exist' (booting wsgi:application as the "
            "server would, in a fresh interpreter)") in out
    assert out.count("refused   1 file(s) do not validate") == 1
    assert out.count("reload    due now") == 1


def test_watch_import_and_no_validate_contradict(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["watch", "--no-validate", "--import", "wsgi", "."], capsys)
    assert code == 1 and "pick one" in err
    code, _, err = run(["watch", "--smoke", "healthz", "."], capsys)
    assert code == 1 and "smoke must be a URL path starting with '/'" in err
