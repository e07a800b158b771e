"""The reload record when the filesystem says no: each failure refuses (or, for a log-once
marker, says "log it") instead of raising into a worker, and cleanup skips foreign files."""

from __future__ import annotations

import os
from pathlib import Path

from wsgireload.actions._claim import Outcome, ReloadLedger, ensure_private_dir, mark_once


def test_a_directory_that_cannot_be_created_refuses(tmp_path: Path) -> None:
    missing_parent = str(tmp_path / "no" / "such" / "dir")
    assert "cannot create" in (ensure_private_dir(missing_parent) or "")
    claim = ReloadLedger(missing_parent).claim("gunicorn-42-7", booted=0.0)
    assert claim.outcome is Outcome.REFUSED and "cannot create" in claim.reason


def test_a_record_that_cannot_be_opened_refuses(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    ensure_private_dir(str(rundir))
    (rundir / "gunicorn-42-7.last-reload").mkdir()  # a directory where the record should be
    claim = ReloadLedger(str(rundir)).claim("gunicorn-42-7", booted=0.0)
    assert claim.outcome is Outcome.REFUSED and "cannot open" in claim.reason


def test_forget_dead_skips_foreign_files_and_a_missing_directory(tmp_path: Path) -> None:
    ReloadLedger(str(tmp_path / "absent")).forget_dead(lambda pid: False)  # nothing to do
    rundir = tmp_path / "run"
    ensure_private_dir(str(rundir))
    for name in ("notes.txt", "odd.last-reload", "gunicorn-x-7.last-reload",
                 "gunicorn-42-7.last-reload"):
        (rundir / name).write_text("1.0")
    asked = []
    ReloadLedger(str(rundir)).forget_dead(lambda pid: bool(asked.append(pid)))
    assert asked == [42]  # only a well-formed record names a master to ask about
    assert sorted(os.listdir(rundir)) == [
        "gunicorn-x-7.last-reload", "notes.txt", "odd.last-reload"
    ]


def test_mark_once_says_log_it_when_it_cannot_mark(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # open to other users: not a safe place for the marker
    assert mark_once(str(shared), "gunicorn-42-7.preload-error")
    assert mark_once(str(shared), "gunicorn-42-7.preload-error")  # every time: never lost
    assert os.listdir(shared) == []
    rundir = tmp_path / "run"
    assert mark_once(str(rundir), "sub/dir")  # cannot create it: log rather than lose it
    assert mark_once(str(rundir), "sub/dir")
