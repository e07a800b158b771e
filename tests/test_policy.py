"""Policy: settle, its cap, validation by compile and by import, the stale .pyc guard."""

from __future__ import annotations

import importlib.util
import logging
import os
import py_compile
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgireload.boot import BootCheck, parse_target
from wsgireload.detect import Identity
from wsgireload.policy import ChangeSet, Policy, compile_errors, remove_stale_bytecode

from .conftest import (
    FakeClock,
    NeedsNewdep,
    Recorder,
    bounded,
    bump,
    environ,
    install,
    make_reloader,
    ok_app,
    serve,
)

SNAP: Dict[str, Optional[Identity]] = {}


def test_nothing_pending_is_never_due() -> None:
    assert Policy().due(0.0, SNAP) is None


def test_settle_waits_for_a_quiet_period(tmp_path: Path) -> None:
    f = str(tmp_path / "a.txt")
    p = Policy(settle=1.0)
    p.observe([f], 10.0)
    assert p.due(10.5, SNAP) is None
    p.observe([f], 10.9)  # still being written: the quiet period restarts
    assert p.due(11.5, SNAP) is None
    changes = p.due(11.9, SNAP)
    assert isinstance(changes, ChangeSet)
    assert changes.files == (f,)
    assert (changes.first_seen, changes.last_seen) == (10.0, 10.9)
    assert p.due(20.0, SNAP) is None  # consumed: one change set, one reload


def test_changes_accumulate_into_one_set(tmp_path: Path) -> None:
    p = Policy(settle=1.0)
    p.observe([str(tmp_path / "a")], 0.0)
    p.observe([str(tmp_path / "b"), str(tmp_path / "a")], 0.5)
    changes = p.due(1.5, SNAP)
    assert changes is not None and changes.files == (str(tmp_path / "a"), str(tmp_path / "b"))


def test_settle_max_caps_a_file_rewritten_every_second(tmp_path: Path) -> None:
    f = str(tmp_path / "log.txt")
    p = Policy(settle=1.5, settle_max=10.0)
    for t in range(0, 10):
        p.observe([f], float(t))
        assert p.due(t + 0.9, SNAP) is None
    p.observe([f], 10.0)
    assert p.due(10.0, SNAP) is not None


def test_observe_nothing_changes_nothing() -> None:
    p = Policy(settle=0.0)
    p.observe([], 0.0)
    assert p.due(5.0, SNAP) is None


def test_syntax_error_blocks_and_the_fix_unblocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good.py"
    good.write_text("x = 1\n")
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\ndef broken(:\n    pass\n")
    p = Policy(settle=1.0)
    p.observe([str(good), str(bad)], 0.0)
    with caplog.at_level(logging.ERROR, logger="wsgireload"):
        assert p.due(2.0, SNAP) is None
        assert p.due(3.0, SNAP) is None  # logged once, not every tick
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"{bad}:2:" in errors[0]
    assert p.pending == (str(good), str(bad))  # nothing lost while broken
    bad.write_text("x = 1\n")
    p.observe([str(bad)], 4.0)
    assert p.due(4.5, SNAP) is None  # the fix settles too
    changes = p.due(5.0, SNAP)
    assert changes is not None and set(changes.files) == {str(good), str(bad)}


def test_validate_none_skips_compile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    p = Policy(settle=0.0, validate=None)
    p.observe([str(bad)], 0.0)
    assert p.due(0.0, SNAP) is not None


def test_compile_errors_ignores_deleted_and_non_python(tmp_path: Path) -> None:
    (tmp_path / "t.html").write_text("def broken(:")
    assert compile_errors([str(tmp_path / "gone.py"), str(tmp_path / "t.html")]) == []


def test_compile_errors_reports_null_bytes(tmp_path: Path) -> None:
    f = tmp_path / "nul.py"
    f.write_bytes(b"x = 1\0\n")
    problems = compile_errors([str(f)])
    assert len(problems) == 1 and str(f) in str(problems[0])


def test_compile_errors_reports_unreadable(tmp_path: Path) -> None:
    d = tmp_path / "dir.py"
    d.mkdir()  # reading a directory fails with an OSError other than "missing"
    problems = compile_errors([str(d)])
    assert len(problems) == 1 and "cannot read" in str(problems[0])


def test_import_validation_pass_and_fail(tmp_path: Path) -> None:
    (tmp_path / "wr_imp_ok.py").write_text("import wr_imp_dep\nVALUE = wr_imp_dep.X\n")
    (tmp_path / "wr_imp_dep.py").write_text("X = undefined_name\n")  # compiles, fails to import
    # Booted from tmp_path, which also comes first on the checker's sys.path.
    check = BootCheck(app=parse_target("wr_imp_ok", default_attr=None), cwd=str(tmp_path))
    p = Policy(settle=0.0, validate="boot", boot=check)
    p.observe([str(tmp_path / "wr_imp_dep.py")], 0.0)
    assert p.due(0.0, SNAP) is None
    (tmp_path / "wr_imp_dep.py").write_text("X = 2\n")
    p.observe([str(tmp_path / "wr_imp_dep.py")], 1.0)
    assert p.due(1.0, SNAP) is not None


def test_stale_pyc_is_removed(tmp_path: Path) -> None:
    src = tmp_path / "wr_stale.py"
    src.write_text("VALUE = 1\n")
    cached = importlib.util.cache_from_source(str(src))
    py_compile.compile(str(src), cfile=cached)
    assert os.path.exists(cached)
    assert remove_stale_bytecode([str(src), str(tmp_path / "x.html")]) == [cached]
    assert not os.path.exists(cached)
    assert remove_stale_bytecode([str(src)]) == []  # nothing left: nothing to do


def test_same_second_same_size_edit_loads_new_code_after_due(tmp_path: Path) -> None:
    """The DESIGN.md hazard: a .pyc that still matches mtime-seconds and size is trusted."""
    import subprocess

    src = tmp_path / "wr_same.py"
    src.write_text("VALUE = 1\n")
    run = [sys.executable, "-c", "import wr_same; print(wr_same.VALUE)"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    kw = dict(cwd=tmp_path, capture_output=True, text=True, check=True, env=env)
    out = subprocess.run(run, **kw)  # type: ignore[call-overload]
    assert out.stdout.strip() == "1"
    st = src.stat()
    src.write_text("VALUE = 2\n")  # same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # same second as the .pyc recorded
    stale = subprocess.run(run, **kw)  # type: ignore[call-overload]
    assert stale.stdout.strip() == "1"  # the hazard is real
    p = Policy(settle=0.0)
    p.observe([str(src)], 0.0)
    assert p.due(0.0, SNAP) is not None
    fresh = subprocess.run(run, **kw)  # type: ignore[call-overload]
    assert fresh.stdout.strip() == "2"


def test_fingerprint_same_for_same_state_and_describe(tmp_path: Path) -> None:
    from wsgireload.detect import fingerprint

    a, b = str(tmp_path / "a.py"), str(tmp_path / "b.py")
    snap: Dict[str, Optional[Identity]] = {a: (1, 2, 3), b: None}
    assert fingerprint(snap, [a, b]) == fingerprint(dict(snap), [b, a])
    assert fingerprint(snap, [a]) != fingerprint({a: (1, 2, 4)}, [a])
    files = tuple(str(tmp_path / f"m{i}.py") for i in range(5))
    text = ChangeSet(files, "x", 0.0, 0.0).describe()
    assert text.endswith("and 2 more") and "m0.py" in text


# -- unreadable sources, and a clock that steps back ----------------------------------------


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
    recorder = Recorder()
    reloader, clock = make_reloader(
        ok_app, watched, recorder, FakeClock(10_000.0), interval=1.0, mode="inline"
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


# -- model-based: random timelines; each file handed out once, never early, never late -----

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

timeline = st.lists(
    st.tuples(st.sampled_from(["observe", "due"]), st.floats(0, 5), st.integers(0, 4)),
    min_size=1,
    max_size=30,
)


@given(events=timeline, settle=st.floats(0, 3), extra=st.floats(0, 10))
@SETTINGS
def test_policy_hands_out_each_file_once_never_early(
    events: List[Tuple[str, float, int]], settle: float, extra: float
) -> None:
    settle_max = settle + extra
    policy = Policy(settle=settle, settle_max=settle_max, validate=None)
    now = 0.0
    first: Optional[float] = None
    last: Optional[float] = None
    handed: List[str] = []
    observed: List[str] = []
    for n, (kind, gap, k) in enumerate(events):
        now += gap
        if kind == "observe":
            path = f"/f{n}-{k}.py"
            policy.observe([path], now)
            observed.append(path)
            first = now if first is None else first
            last = now
            continue
        changes = policy.due(now, {})
        if first is None:
            assert changes is None
            continue
        assert last is not None
        on_time = now - last >= settle or now - first >= settle_max
        assert (changes is not None) == on_time, (now, first, last)
        if changes is not None:
            assert changes.first_seen == first and changes.last_seen == last
            handed.extend(changes.files)
            first = last = None
    # Liveness: after a quiet ``settle``, whatever is pending comes out.
    changes = policy.due(now + settle + 0.001, {})
    if changes is not None:
        handed.extend(changes.files)
    assert handed == observed


# -- a refused deploy is checked again when the search path changes ----------------------------
def waiting_for_newdep(tmp_path: Path) -> Tuple[Policy, NeedsNewdep, Path, List[int]]:
    lib = tmp_path / "lib"
    lib.mkdir()
    runner = NeedsNewdep(lib)
    looks: List[int] = []
    check = BootCheck(app=parse_target("app"), runner=runner, python=lambda: sys.executable)
    check.search_path = lambda: looks.append(1) or [str(lib)]  # type: ignore[method-assign]
    return Policy(settle=1.0, boot=check), runner, lib, looks


def step(policy: Policy, now: float) -> Optional[ChangeSet]:
    """What the engine does with the policy at each step."""
    policy.recheck_if_environment_changed(now)
    return policy.due(now, SNAP)


def test_a_deploy_refused_for_a_missing_module_boots_once_it_is_installed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy, runner, lib, _ = waiting_for_newdep(tmp_path)
    app = str(tmp_path / "app.py")
    policy.observe([app], 0.0)
    assert [step(policy, t) for t in (0.0, 1.0, 2.0, 30.0, 100.0)] == [None] * 5
    assert runner.runs == 1  # refused once; no retry while nothing changes
    install(lib, "newdep.py")
    with caplog.at_level(logging.INFO, logger="wsgireload"):
        assert step(policy, 101.0) is None  # the install must be quiet for ``settle`` first
    assert "lib changed: checking the refused change set again once it is quiet" in caplog.text
    assert runner.runs == 1
    changes = step(policy, 102.0)
    assert changes is not None and changes.files == (app,) and runner.runs == 2
    assert changes.first_seen == 101.0


def test_an_install_while_a_change_set_settles_postpones_its_check(tmp_path: Path) -> None:
    policy, runner, lib, _ = waiting_for_newdep(tmp_path)
    policy.observe([str(tmp_path / "app.py")], 0.0)
    assert step(policy, 0.0) is None
    install(lib, "newdep.py")  # "cp code; pip install": the check waits for the install
    assert step(policy, 0.5) is None
    assert step(policy, 1.2) is None and runner.runs == 0
    assert step(policy, 1.5) is not None and runner.runs == 1


def test_with_nothing_pending_the_search_path_is_not_even_read(tmp_path: Path) -> None:
    policy, runner, lib, looks = waiting_for_newdep(tmp_path)
    install(lib, "newdep.py")
    for now in (0.0, 1.0, 2.0):
        assert step(policy, now) is None
    install(lib, "other.py")
    assert step(policy, 3.0) is None
    assert looks == [] and runner.runs == 0  # no code changed: nothing to reload, nothing read
    policy.observe([str(tmp_path / "app.py")], 4.0)
    assert [step(policy, t) is None for t in (4.0, 5.0)] == [True, False]
    assert step(policy, 6.0) is None and len(looks) == 3  # two looks, the check's own; no more


def test_a_compile_error_waits_for_an_edit_not_an_install(tmp_path: Path) -> None:
    policy, runner, lib, looks = waiting_for_newdep(tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    policy.observe([str(bad)], 0.0)
    assert step(policy, 0.0) is None and step(policy, 1.0) is None
    looked = len(looks)
    install(lib, "newdep.py")
    assert [step(policy, t) for t in (2.0, 3.0, 4.0)] == [None] * 3
    assert runner.runs == 0 and len(looks) == looked  # no install fixes a syntax error
    bad.write_text("def fixed():\n    pass\n")
    policy.observe([str(bad)], 5.0)
    assert step(policy, 5.0) is None and step(policy, 6.0) is not None


def test_a_module_installed_where_the_real_boot_check_imports_from(tmp_path: Path) -> None:
    (tmp_path / "wr_needs_dep.py").write_text("import wr_installed_dep\n")
    check = BootCheck(app=parse_target("wr_needs_dep", default_attr=None), cwd=str(tmp_path))
    policy = Policy(settle=0.0, boot=check)  # watches the checker's own search path
    policy.observe([str(tmp_path / "wr_needs_dep.py")], 0.0)
    assert step(policy, 0.0) is None and "wr_installed_dep" in str(policy.refusal)
    install(tmp_path, "wr_installed_dep.py")
    assert step(policy, 1.0) is not None
