"""Policy: settle, its cap, validation by compile and by import, the stale .pyc guard."""

from __future__ import annotations

import importlib.util
import logging
import os
import py_compile
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from wsgireload.boot import BootCheck, parse_target
from wsgireload.detect import Identity
from wsgireload.policy import ChangeSet, Policy, compile_errors, remove_stale_bytecode

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
    path = [str(tmp_path)] + sys.path
    (tmp_path / "wr_imp_dep.py").write_text("X = undefined_name\n")  # compiles, fails to import
    check = BootCheck(app=parse_target("wr_imp_ok", default_attr=None), path=lambda: path)
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
