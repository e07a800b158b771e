"""The servers: which one this is, its master, and action="auto" choosing its action."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from wsgireload.actions import (
    REGISTRY,
    AutoAction,
    GunicornAction,
    ModWsgiAction,
    ProcessContext,
    StandaloneAction,
    UwsgiAction,
    registry,
    resolve,
)
from wsgireload.actions.pidfile import DEFAULT_EXPECT, default_expect
from wsgireload.policy import ChangeSet
from wsgireload.servers import SERVERS, master_of

from .conftest import environ, force_due, make_reloader, ok_app, serve

GUNICORN_ENV = {"gunicorn.socket": object(), "SERVER_SOFTWARE": "gunicorn/27.0.1"}


def context(environ: Optional[Dict[str, Any]] = None) -> ProcessContext:
    return ProcessContext(5000, 5000, environ if environ is not None else {"uwsgi.version": b"2"})


def changes() -> ChangeSet:
    return ChangeSet(("/srv/app/mod.py",), "fp1", 0.0, 0.0)


def test_registered_and_chosen_by_auto_for_uwsgi(caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(resolve("uwsgi"), UwsgiAction)
    assert REGISTRY["mod_wsgi"] is ModWsgiAction
    auto = AutoAction()
    auto.setup(context())  # no uwsgi module in the test process: set up, never raise
    assert isinstance(auto.delegate, UwsgiAction)
    with caplog.at_level(logging.WARNING, "wsgireload"):
        auto(changes())
    assert "cannot be imported" in caplog.text



def test_a_server_module_brings_its_action_names_and_pidfile_default() -> None:
    """Adding a server is adding its module to SERVERS: its ACTIONS become action= names and,
    with PIDFILE_MASTER, its name a default of `wsgireload watch --pidfile --expect`."""

    class NewAction(StandaloneAction):
        name = "new-server"

    module = types.ModuleType("new")
    module.NAME, module.ACTIONS, module.PIDFILE_MASTER = "new", (NewAction,), True  # type: ignore
    assert registry((*SERVERS, module))["new-server"] is NewAction
    assert "new-server" not in REGISTRY and REGISTRY == registry()
    assert default_expect((*SERVERS, module)) == ("gunicorn", "new", "uwsgi")
    assert DEFAULT_EXPECT == ("gunicorn", "uwsgi")


def test_auto_chooses_mod_wsgi() -> None:
    auto = AutoAction()
    auto.setup(context({"mod_wsgi.process_group": "g"}))
    assert isinstance(auto.delegate, ModWsgiAction) and auto.delegate.daemon


def test_auto_under_gunicorn_falls_back_by_itself() -> None:
    auto = AutoAction()
    auto.setup(ProcessContext(5000, 5000, GUNICORN_ENV))
    assert isinstance(auto.delegate, GunicornAction) and auto.delegate.restart_fallback
    assert not GunicornAction().restart_fallback  # an explicit action='gunicorn' stays HUP



def test_auto_picks_gunicorn_under_gunicorn() -> None:
    auto = AutoAction()
    auto.setup(ProcessContext(5000, 5000, GUNICORN_ENV))
    assert isinstance(auto.delegate, GunicornAction)
    assert not auto.requires_drain



def test_auto_picks_the_warning_standalone_action_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "gunicorn.workers.base", raising=False)
    auto = AutoAction()
    auto.setup(ProcessContext(5000, 5000, {"SERVER_SOFTWARE": "waitress"}))
    assert isinstance(auto.delegate, StandaloneAction)
    assert not auto.requires_drain


def test_master_of_names_the_server_a_worker_belongs_to() -> None:
    from wsgireload._system import SYSTEM

    parent = SYSTEM.parent_at_start()
    assert master_of({"gunicorn.socket": None}) == ("gunicorn", parent)
    # mod_wsgi daemon mode: the processes of one group share the record of Apache's parent;
    # two groups (two apps) never share one, and a group name makes a safe file name.
    assert master_of({"mod_wsgi.process_group": "app"}) == ("mod_wsgi.app", parent)
    assert master_of({"mod_wsgi.process_group": "a/b c"})[0] == "mod_wsgi.a_b_c"  # type: ignore[index]
    assert master_of({"mod_wsgi.process_group": ""}) is None  # embedded mode
    assert master_of({"wsgi.version": (1, 0)}) is None  # waitress, a script


# -- no known master: nobody is signalled --------------------------------------------------
def private_runtime_dir(monkeypatch: pytest.MonkeyPatch, parent: Path) -> None:
    """Records go to the test's own directory, never the user's runtime directory."""
    xdg = parent / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))


REPO = str(Path(__file__).resolve().parents[1])


KILL_FUNCS = ("kill", "killpg")


@pytest.mark.parametrize(
    "server_keys",
    [{}, {"SERVER_SOFTWARE": "waitress"}, {"gunicorn.socket": object()}],
    ids=["standalone", "waitress", "gunicorn-looking"],
)
def test_auto_action_without_a_known_master_signals_nobody(
    watched: Path, monkeypatch: Any, caplog: Any, server_keys: Dict[str, Any]
) -> None:
    """An orphaned worker or a standalone server: action='auto' warns and sends no signal.

    (This process's parent is pytest's, not a server master, exactly like an orphan whose
    master died.)
    """
    private_runtime_dir(monkeypatch, watched.parent)
    sent: List[Any] = []
    for name in KILL_FUNCS:
        real = getattr(os, name)

        def fake(pid: int, sig: int, _real: Any = real, _name: str = name) -> None:
            if sig != 0:  # signal 0 only probes that a process exists
                sent.append((_name, pid, sig))
            else:
                _real(pid, sig)

        monkeypatch.setattr(os, name, fake)
    monkeypatch.setattr(signal, "pthread_kill", lambda *a: sent.append(("pthread_kill", a)))
    monkeypatch.setattr(os, "abort", lambda: sent.append(("abort",)))
    caplog.set_level(logging.WARNING, logger="wsgireload")
    reloader, clock = make_reloader(ok_app, watched, "auto")
    try:
        serve(reloader, environ(**server_keys))
        force_due(reloader, watched, clock)
        got, errors = serve(reloader, environ(**server_keys))
        assert (got, errors) == ([b"ok"], [])
        assert sent == []
        assert any(
            words in caplog.text
            for words in ("restart it yourself", "not reloading", "will be refused")
        )
    finally:
        reloader.close()


ORPHAN = """
import io, json, os, sys, time
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from conftest import FakeClock, force_due, environ, serve
from pathlib import Path
from wsgireload import Reloader

sent = []
real_kill, real_killpg = os.kill, os.killpg
os.kill = lambda pid, sig: sent.append(("kill", pid, sig)) if sig else real_kill(pid, sig)
os.killpg = lambda pid, sig: sent.append(("killpg", pid, sig)) if sig else real_killpg(pid, sig)

def app(env, start_response):
    start_response("200 OK", [])
    return [b"ok"]

watched = Path({watched!r})
clock = FakeClock()
reloader = Reloader(app, extra_files=[str(watched)], settle=0, settle_max=0, interval=3600,
                    validate=None, clock=clock, action="auto")
parent = int(sys.argv[1])  # the master's pid (it may be gone already)
first = serve(reloader, environ(**{{"gunicorn.socket": object(), "SERVER_SOFTWARE": "gunicorn"}}))
deadline = time.monotonic() + 20
while os.getppid() == parent and time.monotonic() < deadline:  # wait to be orphaned
    time.sleep(0.01)
force_due(reloader, watched, clock)
second = serve(reloader, environ(**{{"gunicorn.socket": object(), "SERVER_SOFTWARE": "gunicorn"}}))
reloader.close()
with open({result!r} + ".tmp", "w") as f:
    json.dump({{"sent": sent, "orphaned": os.getppid() != parent, "ok": [first[0], second[0]] ==
               [[b"ok"], [b"ok"]]}}, f)
os.replace({result!r} + ".tmp", {result!r})
"""


def test_orphaned_worker_whose_master_died_signals_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 'master' starts a worker and dies; the orphan then sees a change: no signal at all."""
    private_runtime_dir(monkeypatch, tmp_path)  # (inherited by the worker)
    watched = tmp_path / "w.cfg"
    watched.write_text("1")
    result = tmp_path / "result.json"
    worker = tmp_path / "worker.py"
    worker.write_text(
        ORPHAN.format(
            repo=REPO,
            tests=str(Path(__file__).parent),
            watched=str(watched),
            result=str(result),
        )
    )
    master = (
        "import subprocess, sys\n"
        "import os\n"
        f"subprocess.Popen([sys.executable, {str(worker)!r}, str(os.getpid())],\n"
        "                 start_new_session=True,\n"
        "                 stdout=subprocess.DEVNULL, stderr=open({log!r}, 'wb'))\n".replace(
            "{log!r}", repr(str(tmp_path / "worker.log"))
        )
    )  # the master exits at once, without waiting: its worker is orphaned
    proc = subprocess.run([sys.executable, "-c", master], timeout=30, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 30
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert result.exists(), f"the orphaned worker did not report\n{log}"
    report = json.loads(result.read_text())
    assert report == {"sent": [], "orphaned": True, "ok": True}
