"""What operators see: the metrics text and its atomic file, the reload counters in the master's
record, sd_notify's messages, the server's log, and the traps of a setup (no sleeps)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wsgireload import Reloader
from wsgireload import _ops as ops
from wsgireload._options import Options
from wsgireload._record import Record, Share, read_all, section
from wsgireload.boot import VALIDATING_ENV
from wsgireload.engine import Engine
from wsgireload.errors import ConfigurationError
from wsgireload.policy import ChangeSet
from wsgireload.servers import gunicorn, mod_wsgi, uwsgi
from wsgireload.servers.base import ASGI_KEY, released_through_link
from wsgireload.servers.uvicorn import UvicornAction
from wsgireload.watcher import Watcher

from .conftest import edit, ok_app
from .fakes import FakeSystem, fake_stack

MASTER = 4242


def families(text: str) -> Dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(name + " ") or line.startswith(name + "{"))


def assert_textfile_format(text: str) -> None:
    """What node_exporter's textfile collector drops a whole file for, checked apart from the
    parser (which accepts both): a missing final newline, a client timestamp."""
    assert text.endswith("\n") and not text.endswith("\n\n")
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples and all(len(line.rsplit("}", 1)[-1].split()) == (
        1 if "}" in line else 2) for line in samples), samples
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert names == helps == {line.split("{")[0].split()[0] for line in samples}


# -- the text, the file ------------------------------------------------------------------------
def test_render_parses_with_help_type_and_no_timestamps() -> None:
    text = ops.render({"reloads_total": 2, "reloads_failed_total": 1,
                       "last_reload_successful": 1,
                       "last_reload_success_timestamp_seconds": 1764686400.25,
                       "last_rollout_duration_seconds": 3.5, "watched_files": 120,
                       "last_scan_duration_seconds": 0.0012},
                      {"server": "gunicorn", "master_pid": 812})
    assert_textfile_format(text)
    found = families(text)
    assert found["wsgireload_reloads"].type == "counter"
    assert found["wsgireload_reloads"].samples[0].value == 2
    assert found["wsgireload_reloads_failed"].samples[0].value == 1
    assert found["wsgireload_last_reload_success_timestamp_seconds"].samples[0].value == (
        1764686400.25)
    assert found["wsgireload_info"].samples[0].labels == {"server": "gunicorn", "master_pid": "812"}
    assert all(s.timestamp is None for f in found.values() for s in f.samples)
    assert len(found) == len(ops.METRICS)


def test_a_figure_not_known_yet_is_left_out() -> None:
    text = ops.render({"reloads_total": 0, "last_rollout_duration_seconds": None}, {})
    assert_textfile_format(text)
    assert "rollout" not in text and set(families(text)) == {"wsgireload_reloads",
                                                           "wsgireload_info"}


def test_write_atomically_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "wsgireload.prom"
    path.write_text("old\n")
    before = path.stat().st_ino
    ops.write_atomically(str(path), "new\n")
    assert path.read_text() == "new\n" and path.stat().st_ino != before  # a rename, not a rewrite
    assert os.listdir(tmp_path) == ["wsgireload.prom"]


@pytest.mark.parametrize("name", ["missing/wsgireload.prom", "wsgireload.txt"])
def test_a_metrics_file_that_cannot_be_written_refuses_at_construction(
        tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigurationError, match="existing directory.*create it first"):
        Reloader(ok_app, metrics_file=str(tmp_path / name))
    with pytest.raises(ConfigurationError, match="metrics_file"):
        Watcher(metrics_file=tmp_path / name)


# -- sd_notify -------------------------------------------------------------------------------
@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0)
    yield sock
    sock.close()


def received(sock: socket.socket) -> List[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_notify_sends_one_datagram_of_lines(notify_socket: socket.socket) -> None:
    lines = ops.reloading(["a.py", "b.py"])
    before = time.monotonic_ns() // 1000
    assert ops.notify(*lines, address=notify_socket.getsockname())
    (message,) = received(notify_socket)
    fields = dict(line.split("=", 1) for line in message.split("\n"))
    assert fields["RELOADING"] == "1" and fields["STATUS"].endswith("2 file(s)")
    assert before - 10**6 <= int(fields["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"wsgireload-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert ops.notify("READY=1", address="@" + name)
        assert sock.recv(100) == b"READY=1"


def test_notify_is_silent_without_a_socket_and_in_the_boot_check(
        notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not ops.notify("READY=1")
    assert not ops.notify("READY=1", address=str(tmp_path / "nobody-listens"))  # never raises
    monkeypatch.setenv(VALIDATING_ENV, "1")
    assert not ops.notify("READY=1", address=notify_socket.getsockname())
    assert received(notify_socket) == []


# -- the counters in the master's record -------------------------------------------------------
@pytest.fixture
def machine() -> FakeSystem:
    system = FakeSystem(now=100.0)
    system.add(MASTER)
    system.kids[MASTER] = [5001, 5002]
    return system


def scanner(tmp_path: Path, system: FakeSystem) -> Share:
    share = Share(Record(str(tmp_path / "m.json")), 5001, "1000", born=10.0, lease=20.0,
                  system=system)
    share.record.update(lambda d: {"master": MASTER, "workers": {
        "5001": {"born": 10.0, "ready": 11.0}, "5002": {"born": 10.0, "ready": 11.0}}})
    return share


def born(share: Share, pids: List[int], at: float) -> None:
    share.record.update(lambda d: {**d, "workers": {
        str(p): {"born": at, "ready": at + 0.5} for p in pids}})


def test_a_good_deploy_a_refused_one_and_its_fix(tmp_path: Path, machine: FakeSystem) -> None:
    share, counter = scanner(tmp_path, machine), ops.Ops(None, False, machine)
    stats = counter.decided(share, 1)
    assert stats["reloads"] == 1 and section(stats, "open") == {"n": 1, "at": 100.0}
    assert counter.follow(share, MASTER) is None  # the master was not asked yet
    share.record.update(lambda d: {**d, "reloaded": {"n": 1, "at": 100.5}})
    machine.now = 101.0
    machine.kids[MASTER] = [5001, 6001]  # one old worker still finishing its requests
    born(share, [5001, 6001], 101.0)
    share.record.update(lambda d: {**d, "workers": {**d["workers"], "5001": {"born": 10.0}}})
    assert counter.follow(share, MASTER) is None
    machine.kids[MASTER], machine.now = [6001, 6002], 102.5
    born(share, [6001, 6002], 101.0)
    stats = counter.follow(share, MASTER) or {}
    assert (stats["reloads"], stats.get("failed", 0), stats["ok"]) == (1, 0, 1)
    assert stats["duration"] == 2.5 and abs(stats["success_at"] - time.time()) < 5
    assert "open" not in stats and counter.follow(share, MASTER) is None  # ended once

    stats = counter.refused(share, "Traceback...\nModuleNotFoundError: No module named 'nope'")
    assert (stats["reloads"], stats["failed"], stats["ok"]) == (1, 1, 0)
    stats = counter.decided(share, 2)
    assert (stats["reloads"], stats["failed"], stats["ok"]) == (2, 1, 0)  # 0 until it ends


def test_a_rollout_ends_as_gunicorn_s_rollout_does(tmp_path: Path, machine: FakeSystem) -> None:
    share, counter = scanner(tmp_path, machine), ops.Ops(None, False, machine)
    counter.decided(share, 3)
    share.record.update(lambda d: {**d, "reloaded": {"n": 3, "at": 100.0},
                                   "rollout": {"n": 3, "end": "stopped"}})
    stats = counter.follow(share, MASTER) or {}
    assert (stats["reloads"], stats["failed"], stats["ok"]) == (1, 1, 0)


def test_a_reload_the_master_never_got_ends_as_failed(tmp_path: Path, machine: FakeSystem) -> None:
    share, counter = scanner(tmp_path, machine), ops.Ops(None, False, machine)
    counter.decided(share, 1)  # e.g. --preload: the action only logged
    machine.now += ops.NOT_RELOADED - 1
    assert counter.follow(share, MASTER) is None
    machine.now += 2
    assert (counter.follow(share, MASTER) or {})["failed"] == 1


def test_ready_and_status_follow_each_outcome(
        tmp_path: Path, machine: FakeSystem, notify_socket: socket.socket,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    share, counter = scanner(tmp_path, machine), ops.Ops(None, True, machine)
    counter.refused(share, "Traceback (most recent call last):\n  File \"/srv/app/views.py\", "
                    "line 3, in <module>\nModuleNotFoundError: No module named 'nope'")
    counter.decided(share, 1)
    counter.ended(share, True, "reloaded: 3 new worker(s) serve")
    assert received(notify_socket) == [
        "READY=1\nSTATUS=wsgireload: deploy refused, old code serving: /srv/app/views.py:3: "
        "ModuleNotFoundError: No module named 'nope'",
        "READY=1\nSTATUS=wsgireload: reloaded: 3 new worker(s) serve",
    ]


def test_the_file_is_written_only_when_a_figure_changes(tmp_path: Path,
                                                        machine: FakeSystem) -> None:
    path = tmp_path / "w.prom"
    share = scanner(tmp_path, machine)
    share.record.update(lambda d: {**d, "stats": {"reloads": 4, "failed": 1, "ok": 1}})
    counter = ops.Ops(str(path), False, machine)
    counter.labels = {"server": "gunicorn", "master_pid": MASTER}
    counter.publish(None, share, 10, 0.001)  # a new scanner: the master's counters
    assert value(path.read_text(), "wsgireload_reloads_total") == 4
    path.unlink()
    counter.publish(None, share, 10, 0.002)  # the scan's figure only: not yet
    assert not path.exists()
    counter.publish(counter.decided(share, 5), share, 10, 0.002)
    assert value(path.read_text(), "wsgireload_reloads_total") == 5
    path.unlink()
    machine.now += ops.REWRITE_EVERY
    counter.publish(None, share, 10, 0.003)
    assert value(path.read_text(), "wsgireload_last_scan_duration_seconds") == 0.003
    assert_textfile_format(path.read_text())


def test_the_watcher_alone_counts_its_reloads(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("X = 1\n")
    path = tmp_path / "w.prom"
    acted: List[Any] = []
    watcher = Watcher(modules=False, extra_files=[str(tmp_path / "*.py")], validate="compile",
                      action=acted.append, metrics_file=str(path))
    watcher.step(0.0)
    assert value(path.read_text(), "wsgireload_watched_files") == 1
    edit(tmp_path / "mod.py", "X = 2\n")
    watcher.step(1.0)
    assert watcher.step(3.0) is not None and len(acted) == 1
    text = path.read_text()
    assert (value(text, "wsgireload_reloads_total"), value(text, "wsgireload_reloads_failed_total"),
            value(text, "wsgireload_last_reload_successful")) == (1, 0, 1)
    edit(tmp_path / "mod.py", "X = (\n")
    watcher.step(4.0)
    assert watcher.step(6.0) is None
    text = path.read_text()
    assert (value(text, "wsgireload_reloads_total"), value(text, "wsgireload_reloads_failed_total"),
            value(text, "wsgireload_last_reload_successful")) == (1, 1, 0)


# -- the server's log --------------------------------------------------------------------------
@contextlib.contextmanager
def bare_logging() -> Iterator[logging.Logger]:
    """wsgireload's logger and root as an app that configured nothing leaves them (pytest's
    own capture handlers on root included: they are added as each test phase starts)."""
    log, root = logging.getLogger("wsgireload"), logging.getLogger()
    saved = (log.handlers[:], log.level, root.handlers[:])
    log.handlers, root.handlers = [], []
    log.setLevel(logging.NOTSET)
    yield log
    log.handlers, root.handlers = saved[0], saved[2]
    log.setLevel(saved[1])


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_lines_go_to_the_server_s_log_with_their_facts() -> None:
    server, collect = logging.getLogger("test-ops.server"), Collect()
    server.addHandler(collect)
    server.propagate = False
    server.setLevel(logging.INFO)  # as gunicorn's --log-level sets it
    ops.FACTS.fields = {"server": "gunicorn", "master_pid": MASTER}
    with bare_logging() as clean_logging:
        ops.use_server_log(server)
        clean_logging.info("wsgireload: reloaded", extra={"wsgireload_event": "reload",
                                                          "files": ["/srv/a.py"]})
        clean_logging.debug("wsgireload: not this one")
    ops.FACTS.fields = {}
    server.removeHandler(collect)
    (record,) = collect.records
    assert (record.wsgireload_event, record.files, record.server, record.master_pid) == (  # type: ignore[attr-defined]
        "reload", ["/srv/a.py"], "gunicorn", MASTER)


def test_an_app_s_own_logging_is_left_alone() -> None:
    server, collect, mine = logging.getLogger("test-ops.server2"), Collect(), Collect()
    server.addHandler(collect)
    server.propagate = False
    with bare_logging() as clean_logging:
        ops.use_server_log(server)
        logging.getLogger().addHandler(mine)  # configured after the worker started
        clean_logging.warning("wsgireload: once")
        assert collect.records == [] and len(mine.records) == 1
        clean_logging.handlers = []
        ops.use_server_log(server)  # configured before: nothing is added
        assert clean_logging.handlers == []
    server.removeHandler(collect)


def test_gunicorn_s_error_log_is_the_target_once_gunicorn_set_it_up() -> None:
    error_log = logging.getLogger("gunicorn.error")
    saved = error_log.handlers[:]
    error_log.handlers = []
    try:
        assert gunicorn.log_target() is None
        error_log.addHandler(logging.NullHandler())
        assert gunicorn.log_target() is error_log
    finally:
        error_log.handlers = saved


def test_uwsgi_s_target_writes_lines_as_they_are_to_stderr() -> None:
    target = uwsgi.log_target()
    assert target is not None and not target.propagate
    assert isinstance(target.handlers[0], logging.StreamHandler)


# -- the traps -------------------------------------------------------------------------------
def gunicorn_cfg(monkeypatch: pytest.MonkeyPatch, **cfg: Any) -> None:
    values = {"preload_app": False, "reuse_port": False, "max_requests": 0,
              "max_requests_jitter": 0, **cfg}
    worker = types.SimpleNamespace(cfg=types.SimpleNamespace(**values))
    monkeypatch.setattr(gunicorn, "frame_objects", lambda: iter([None, worker]))


@pytest.mark.parametrize("migrate", ["0", "1", None])
def test_gunicorn_traps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                        migrate: Any) -> None:
    sysctl = tmp_path / "tcp_migrate_req"
    if migrate is not None:
        sysctl.write_text(migrate + "\n")
    gunicorn_cfg(monkeypatch, preload_app=True, reuse_port=True, max_requests=1000)
    found = gunicorn.traps({}, str(sysctl))
    assert "--preload" in found["preload-error"]
    assert "--max-requests-jitter 100" in found["max-requests"]
    assert ("reuse-port" in found) == (migrate == "0")
    if migrate == "0":
        assert "sysctl -w net.ipv4.tcp_migrate_req=1" in found["reuse-port"]


def test_a_clean_gunicorn_has_no_trap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "m").write_text("1\n")
    gunicorn_cfg(monkeypatch, reuse_port=True, max_requests=1000, max_requests_jitter=50)
    assert gunicorn.traps({}, str(tmp_path / "m")) == {}
    gunicorn_cfg(monkeypatch)
    assert gunicorn.traps({}, "/nonexistent") == {}


def test_mod_wsgi_embedded_mode_is_a_trap() -> None:
    assert "WSGIDaemonProcess" in mod_wsgi.traps({"mod_wsgi.process_group": ""})[
        "mod_wsgi-embedded"]
    assert mod_wsgi.traps({"mod_wsgi.process_group": "app"}) == {}


@pytest.mark.parametrize("server", ["uvicorn", "mod_wsgi"])
def test_a_process_alone_keeps_its_trap_in_a_record_of_its_own_and_says_it_once(
        server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    """A lone uvicorn, Apache's embedded children: no master, so no master's record; the trap
    reaches `wsgireload check` through a record of the process's own (gone with it)."""
    rundir = str(tmp_path / "run")
    if server == "uvicorn":
        fake_stack(monkeypatch, ("/venv/lib/uvicorn/main.py", "run", {"config": None}),
                   modules=("uvicorn",))
        monkeypatch.setattr("sys.argv", ["/venv/bin/uvicorn", "app:app"])
        action: Any = UvicornAction(runtime_dir=rundir)
        environ: Dict[str, Any] = {ASGI_KEY: {"type": "lifespan"}}
    else:
        action, environ = mod_wsgi.ModWsgiAction(), {"mod_wsgi.process_group": ""}
        action.runtime_dir = rundir
    options = Options.build("test", extra_files=[str(tmp_path / "*.py")], modules=False,
                            settle=0, settle_max=0, validate="compile")
    engine = Engine(options, action)
    with caplog.at_level(logging.WARNING, "wsgireload"):
        engine.setup(environ)
        engine.step(1.0)
        engine.step(2.0)
        if server == "uvicorn":  # its deploy WARNING is the trap's line: said once in all
            engine.act(ChangeSet(("/srv/app/views.py",), "abc", 1.0, 1.0))
    (data,) = read_all(rundir)
    assert (data["server"], data["master"], data["alone"]) == (server, os.getpid(), True)
    (text,) = data["traps"].values()
    assert ("`uvicorn app:app --workers 2`" if server == "uvicorn" else "WSGIDaemonProcess") in text
    assert [r.getMessage() for r in caplog.records] == [f"wsgireload: trap: {text}"]


def test_uwsgi_without_lazy_apps_is_a_trap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uwsgi, "module", lambda: types.SimpleNamespace(opt={b"master": True}))
    assert "--lazy-apps" in uwsgi.traps({})["uwsgi-full-reload"]
    monkeypatch.setattr(uwsgi, "module", lambda: types.SimpleNamespace(opt={b"lazy-apps": True}))
    assert uwsgi.traps({}) == {}


def test_a_release_imported_by_its_real_path_is_a_trap(tmp_path: Path) -> None:
    release = tmp_path / "releases" / "42"
    (release / "pkg").mkdir(parents=True)
    (tmp_path / "current").symlink_to(release)
    (tmp_path / "pytest-current").symlink_to(tmp_path / "releases")  # not a release link
    for app in (release / "wsgi.py", release / "pkg" / "wsgi.py"):
        text = released_through_link(str(app))["release-link"]
        assert f"--chdir {tmp_path / 'current'}" in text and str(release) in text
    assert released_through_link(str(tmp_path / "current" / "wsgi.py")) == {}  # through it
    assert released_through_link(str(tmp_path / "releases" / "wsgi.py")) == {}
    assert released_through_link(None) == {}
