"""Filesystem faults against the Detector and Policy: vanishing files, loops, odd names, clocks.

Tests run as root here, so "cannot stat" and "cannot read" are produced with tricks root
cannot bypass (a path through a file, an over-long name, a symlink loop, a directory, a FIFO).
"""

from __future__ import annotations

import glob as glob_module
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List

from wsgireload import Reloader
from wsgireload.detect import Detector, fingerprint
from wsgireload.policy import Policy, compile_errors

from .conftest import FakeClock, Recorder, bump, environ, run_in_child, serve

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def detector(*patterns: Any) -> Detector:
    d = Detector(extra_files=[str(p) for p in patterns], modules=False)
    d.scan()
    return d


def bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """Run ``fn`` in a thread; fail (not hang) when it takes longer than ``seconds``."""
    box: List[Any] = []
    errors: List[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds}s (hang)"
    if errors:
        raise errors[0]
    return box[0]


# -- vanishing and unreachable files -----------------------------------------------------


def test_file_vanishing_between_listing_and_stat(tmp_path: Path, monkeypatch: Any) -> None:
    keep, doomed, fresh = (tmp_path / n for n in ("keep.cfg", "doomed.cfg", "fresh.cfg"))
    keep.write_text("k")
    doomed.write_text("d")
    d = detector(tmp_path / "*.cfg")
    real_glob = glob_module.glob
    fresh.write_text("f")

    def glob_then_delete(pattern: str, **kw: Any) -> List[str]:
        found = real_glob(pattern, **kw)
        for path in (doomed, fresh):  # listed, then gone before the stat
            if path.exists():
                path.unlink()
        return found

    monkeypatch.setattr("wsgireload.detect.glob.glob", glob_then_delete)
    changed = d.scan()
    # The deleted watched file is a change; the file that appeared and vanished is not.
    assert changed == [str(doomed)]
    assert d.scan() == []


def test_module_file_vanishing(tmp_path: Path) -> None:
    path = tmp_path / "vanishing_mod.py"
    path.write_text("x = 1\n")
    module = types.ModuleType("vanishing_mod")
    module.__file__ = str(path)
    sys.modules["vanishing_mod"] = module
    try:
        d = Detector(modules=True)
        d.scan()
        path.unlink()
        assert str(path) in d.scan()
        path.write_text("x = 2\n")
        assert str(path) in d.scan()
    finally:
        del sys.modules["vanishing_mod"]


def test_path_through_a_file_is_a_missing_file_not_a_crash(tmp_path: Path) -> None:
    """ENOTDIR: the root-proof way to make a stat fail."""
    (tmp_path / "plain").write_text("not a directory")
    d = detector(tmp_path / "plain" / "x.cfg", tmp_path / "plain" / "*.cfg")
    assert d.scan() == []
    assert d.baseline[str(tmp_path / "plain" / "x.cfg")] is None


def test_directory_replaced_by_a_file_and_back(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.cfg").write_text("a")
    d = detector(conf / "a.cfg", conf / "*.cfg")
    (conf / "a.cfg").unlink()
    conf.rmdir()
    conf.write_text("now a file")
    assert d.scan() == [str(conf / "a.cfg")]
    conf.unlink()
    conf.mkdir()
    (conf / "a.cfg").write_text("a again")
    assert d.scan() == [str(conf / "a.cfg")]
    assert d.scan() == []


def test_very_long_paths(tmp_path: Path) -> None:
    """ENAMETOOLONG in a name and in a whole path: watched as missing, never raised."""
    long_name = tmp_path / ("n" * 300)
    long_path = tmp_path.joinpath(*(["d" * 200] * 30), "x.cfg")
    d = detector(
        long_name, long_path, str(long_path.parent) + "/*.cfg", tmp_path / ("g" * 300) / "**" / "*"
    )
    assert d.scan() == []
    assert d.baseline[str(long_name)] is None


def test_permission_denied_as_an_unprivileged_child() -> None:
    """Permission faults, root-proof: the baseline is taken first, then a forked child (which
    drops to uid/gid 65534 when run as root, who could read anything) scans a locked
    directory and validates an unreadable module."""
    root = Path(tempfile.mkdtemp(prefix="wsgireload-perm-"))
    try:
        root.chmod(0o755)
        locked = root / "locked"
        locked.mkdir()
        (locked / "a.cfg").write_text("a")
        secret = root / "secret.py"
        secret.write_text("x = 1\n")
        d = detector(locked / "a.cfg", locked / "*.cfg", root / "*.py")
        assert str(locked / "a.cfg") in d.baseline and d.baseline[str(locked / "a.cfg")]
        locked.chmod(0)
        secret.chmod(0)
        os.utime(secret, ns=(1, 2_000_000_000_000_000_000))

        def child() -> Dict[str, Any]:
            if IS_ROOT:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            changed = d.scan()
            policy = Policy(settle=0, validate="compile")
            policy.observe(changed, 1.0)
            return {
                "changed": sorted(changed),
                "problems": [p.message for p in compile_errors([str(secret)])],
                "due": policy.due(2.0, d.baseline) is not None,
            }

        result = run_in_child(child)
    finally:
        for path in (root / "locked", root / "secret.py"):
            path.chmod(0o700)
        shutil.rmtree(root)
    # Unreadable means missing for the Detector: a change, never an exception.
    assert result["changed"] == sorted([str(locked / "a.cfg"), str(secret)])
    assert result["problems"] == ["cannot read: Permission denied"]
    assert result["due"] is False  # validation refuses what it cannot read


def test_unreadable_changed_module_is_reported_not_raised(tmp_path: Path) -> None:
    """A ``.py`` that cannot be read (a directory here: root-proof) is a validation problem."""
    bad = tmp_path / "pkg.py"
    bad.mkdir()
    problems = compile_errors([str(bad)])
    assert len(problems) == 1
    assert "cannot read" in problems[0].message or "not a regular file" in problems[0].message


def test_fifo_named_py_does_not_wedge_validation(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: validation must not wait."""
    fifo = tmp_path / "trap.py"
    os.mkfifo(fifo)
    problems = bounded(lambda: compile_errors([str(fifo)]), 5.0)
    assert len(problems) == 1 and "not a regular file" in problems[0].message


# -- symlinks --------------------------------------------------------------------------------


def test_dangling_symlink_in_glob_then_target_appears(tmp_path: Path) -> None:
    target = tmp_path / "target.cfg"
    (tmp_path / "link.cfg").symlink_to(target)
    d = detector(tmp_path / "*.cfg")
    assert d.baseline[str(tmp_path / "link.cfg")] is None
    target.write_text("now here")
    assert sorted(d.scan()) == [str(tmp_path / "link.cfg"), str(target)]


def test_symlink_loop_as_watched_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.cfg", tmp_path / "b.cfg"
    a.symlink_to(b)
    b.symlink_to(a)
    d = detector(a, tmp_path / "*.cfg")  # ELOOP on stat
    assert d.scan() == []
    assert d.baseline[str(a)] is None


def test_symlink_loops_under_recursive_glob_are_bounded(tmp_path: Path) -> None:
    """Two directory loops under ``**`` made glob walk 2**40 aliases: the watcher hung."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    (tree / "sub" / "up1").symlink_to("..")
    (tree / "sub" / "up2").symlink_to("..")
    (tree / "self").symlink_to(".")
    d = bounded(lambda: detector(tree / "**" / "*.txt"), 10.0)
    watched = d.watched()
    # Each real file once (aliases through the loops would report one change many times).
    assert sorted(watched) == [str(tree / "a.txt"), str(tree / "sub" / "b.txt")]
    bump(tree / "a.txt")
    assert bounded(d.scan, 10.0) == [str(tree / "a.txt")]


def test_recursive_glob_still_follows_a_symlinked_directory(tmp_path: Path) -> None:
    """Deploys often symlink shared templates in: those stay watched (once)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "base.html").write_text("x")
    app = tmp_path / "app"
    (app / "templates").mkdir(parents=True)
    (app / "templates" / "index.html").write_text("y")
    (app / "templates" / "shared").symlink_to(shared)
    d = detector(app / "**" / "*.html")
    assert sorted(d.watched()) == [
        str(app / "templates" / "index.html"),
        str(app / "templates" / "shared" / "base.html"),
    ]
    bump(shared / "base.html")
    assert d.scan() == [str(app / "templates" / "shared" / "base.html")]


def test_recursive_glob_matches_like_glob_on_a_plain_tree(tmp_path: Path) -> None:
    """Without symlinks the recursive pattern finds exactly what glob.glob finds."""
    for rel in (
        "a.txt",
        "x/b.txt",
        "x/y/c.txt",
        "x/y/z/d.txt",
        ".hidden/e.txt",
        "x/.f.txt",
        "x/y/g.cfg",
        "top.txt",
    ):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    for pattern in (
        "**/*.txt",
        "x/**/*.txt",
        "**/y/*.txt",
        "**",
        "x/**",
        "*/**/c.txt",
        "**/z/**/*.txt",
        "x/**/*",
    ):
        full = str(tmp_path / pattern)
        expected = sorted(p for p in glob_module.glob(full, recursive=True) if not os.path.isdir(p))
        assert detector(full).watched() == expected, pattern


# -- names and sizes -------------------------------------------------------------------------


def test_non_utf8_file_names(tmp_path: Path, caplog: Any) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.py"
    with open(raw, "wb") as handle:
        handle.write(b"x = 1\n")
    name = os.fsdecode(raw)  # surrogateescape'd str, as os.listdir returns it
    clock = FakeClock()
    recorder = Recorder()

    def app(env: Any, start_response: Any) -> List[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    reloader = Reloader(
        app,
        extra_files=[str(tmp_path / "*.py")],
        settle=0,
        settle_max=0,
        action=recorder,
        clock=clock,
        interval=3600,
        mode="thread",
    )
    try:
        serve(reloader, environ())
        os.utime(raw, ns=(1, 2_000_000_000_000_000_000))
        clock.now += 1
        caplog.set_level(logging.DEBUG, logger="wsgireload")
        changes = reloader.run_step(clock.now)
        assert changes is not None and changes.files == (name,)
        assert len(fingerprint(reloader.detector.baseline, [name])) == 16
        serve(reloader, environ())
        assert recorder.count == 1
        assert "caf" in caplog.text
    finally:
        reloader.close()


def test_ten_thousand_files(tmp_path: Path) -> None:
    root = tmp_path / "big"
    for i in range(100):
        sub = root / f"d{i:03d}"
        sub.mkdir(parents=True)
        for j in range(100):
            (sub / f"f{j:03d}.tpl").write_bytes(b"")
    t0 = time.perf_counter()
    d = detector(root / "**" / "*.tpl")
    first = time.perf_counter() - t0
    assert len(d.baseline) == 10_000
    t0 = time.perf_counter()
    assert d.scan() == []
    steady = time.perf_counter() - t0
    victims = [root / "d007" / "f042.tpl", root / "d099" / "f099.tpl"]
    for victim in victims:
        bump(victim)
    (root / "d050" / "f000.tpl").unlink()
    (root / "d050" / "new.tpl").write_bytes(b"")
    changed = d.scan()
    assert sorted(changed) == sorted(
        [str(v) for v in victims]
        + [str(root / "d050" / "f000.tpl"), str(root / "d050" / "new.tpl")]
    )
    assert first < 10.0 and steady < 10.0, (first, steady)
    print(f"\n10,000 files: first scan {first * 1000:.0f} ms, steady scan {steady * 1000:.0f} ms")


def test_mtime_in_the_future_and_the_past(tmp_path: Path) -> None:
    path = tmp_path / "a.cfg"
    path.write_text("a")
    d = detector(path)
    for ns in (4_102_444_800 * 10**9, 0, 10**9, 2**62, 1_600_000_000 * 10**9):
        os.utime(path, ns=(ns, ns))
        assert d.scan() == [str(path)], ns
        assert d.scan() == []


# -- the clock -----------------------------------------------------------------------------------


def test_policy_clock_stepping_back_neither_fires_early_nor_wedges() -> None:
    policy = Policy(settle=2.0, settle_max=30.0, validate=None)
    policy.observe(["/x.py"], now=1000.0)
    assert policy.due(1001.0, {}) is None
    # The clock steps back an hour: the quiet period restarts, it does not last an hour.
    assert policy.due(-2600.0, {}) is None
    assert policy.due(-2599.0, {}) is None  # one second of quiet: not yet
    changes = policy.due(-2598.0, {})  # settle seconds after the step: due
    assert changes is not None and changes.files == ("/x.py",)


def test_policy_clock_stepping_back_still_honours_settle_max() -> None:
    policy = Policy(settle=2.0, settle_max=5.0, validate=None)
    now = 100.0
    policy.observe(["/a.py"], now)
    now = 50.0  # back by 50 s, then the file keeps changing every second
    fired = None
    for step in range(20):
        policy.observe([f"/f{step}.py"], now)
        fired = policy.due(now, {})
        if fired is not None:
            break
        now += 1.0
    assert fired is not None, "a file rewritten every second must still reload after settle_max"
    assert now - 50.0 <= 5.0


def test_inline_scans_resume_after_the_clock_steps_back(tmp_path: Path) -> None:
    watched = tmp_path / "w.cfg"
    watched.write_text("1")
    clock = FakeClock(10_000.0)
    recorder = Recorder()

    def app(env: Any, start_response: Any) -> List[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    reloader = Reloader(
        app,
        extra_files=[str(watched)],
        settle=0,
        settle_max=0,
        action=recorder,
        clock=clock,
        interval=1.0,
        mode="inline",
        validate=None,
    )
    try:
        serve(reloader, environ())
        clock.now = 100.0  # stepped back almost three hours
        bump(watched)
        for _ in range(4):
            clock.now += 1.0
            serve(reloader, environ())
        assert recorder.count == 1, "inline scanning stopped after the clock stepped back"
    finally:
        reloader.close()
