"""The per-master reload record: one claim per deploy, a new claim for a later deploy, a floor."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import List

import pytest

from wsgireload.actions._claim import (
    Outcome,
    ReloadLedger,
    default_runtime_dir,
    ensure_private_dir,
    mark_once,
)


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rundir(tmp_path: Path) -> str:
    return str(tmp_path / "run")


def test_two_workers_racing_for_one_change_set_make_one_claim(rundir: str) -> None:
    clock = Clock(100.0)
    ledger = ReloadLedger(rundir, clock=clock)
    # both workers booted at 10; they saw the deploy with different file sets (fingerprints)
    assert ledger.claim("gunicorn-42-7", booted=10.0).outcome is Outcome.CLAIMED
    clock.now = 100.3
    assert ledger.claim("gunicorn-42-7", booted=10.0).outcome is Outcome.COVERED


def test_a_later_deploy_seen_by_a_new_worker_makes_a_new_claim(rundir: str) -> None:
    clock = Clock(100.0)
    ledger = ReloadLedger(rundir, min_interval=3.0, clock=clock)
    assert ledger.claim("gunicorn-42-7", booted=10.0).outcome is Outcome.CLAIMED
    clock.now = 200.0  # a worker that booted after the reload sees the next deploy
    assert ledger.claim("gunicorn-42-7", booted=100.1).outcome is Outcome.CLAIMED
    clock.now = 200.1  # its siblings, booted at the same time, are covered by that one
    assert ledger.claim("gunicorn-42-7", booted=100.2).outcome is Outcome.COVERED


def test_the_rate_floor_defers_a_second_reload(rundir: str) -> None:
    clock = Clock(100.0)
    ledger = ReloadLedger(rundir, min_interval=3.0, clock=clock)
    assert ledger.claim("gunicorn-42-7", booted=10.0).outcome is Outcome.CLAIMED
    clock.now = 101.0
    claim = ledger.claim("gunicorn-42-7", booted=100.5)
    assert claim.outcome is Outcome.WAIT and claim.wait == pytest.approx(2.0)
    clock.now = 103.0
    assert ledger.claim("gunicorn-42-7", booted=100.5).outcome is Outcome.CLAIMED


def test_a_record_from_before_a_reboot_is_ignored(rundir: str) -> None:
    clock = Clock(5000.0)
    ReloadLedger(rundir, clock=clock).claim("gunicorn-42-na", booted=10.0)
    clock.now = 50.0  # the monotonic clock restarted; pid 42 is a new master without /proc
    assert ReloadLedger(rundir, clock=clock).claim("gunicorn-42-na", booted=20.0).outcome is (
        Outcome.CLAIMED
    )


def test_masters_are_independent(rundir: str) -> None:
    ledger = ReloadLedger(rundir, clock=Clock(100.0))
    assert ledger.claim("gunicorn-42-7", booted=10.0).outcome is Outcome.CLAIMED
    assert ledger.claim("gunicorn-43-7", booted=10.0).outcome is Outcome.CLAIMED
    # same pid, another start time: a new master that reused the pid
    assert ledger.claim("gunicorn-42-8", booted=10.0).outcome is Outcome.CLAIMED


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_real_processes_racing_make_exactly_one_claim(rundir: str) -> None:
    ledger = ReloadLedger(rundir)
    go_read, go_write = os.pipe()
    results: List[int] = []
    children = []
    for _ in range(8):
        out_read, out_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.read(go_read, 1)  # start together
                outcome = ledger.claim("gunicorn-42-7", booted=0.0).outcome
                os.write(out_write, b"1" if outcome is Outcome.CLAIMED else b"0")
            finally:
                os._exit(0)
        os.close(out_write)
        children.append((pid, out_read))
    os.write(go_write, b"x" * 8)
    for pid, out_read in children:
        with os.fdopen(out_read, "rb") as handle:
            results.append(int(handle.read() or b"0"))
        os.waitpid(pid, 0)
    os.close(go_read)
    os.close(go_write)
    assert sum(results) == 1


def test_the_directory_is_created_private(rundir: str) -> None:
    assert ensure_private_dir(rundir) is None
    assert stat.S_IMODE(os.stat(rundir).st_mode) == 0o700


def test_a_directory_open_to_others_is_refused(rundir: str) -> None:
    os.mkdir(rundir, 0o700)
    os.chmod(rundir, 0o755)
    claim = ReloadLedger(rundir).claim("gunicorn-42-7", booted=0.0)
    assert claim.outcome is Outcome.REFUSED and "accessible to other users" in claim.reason


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "run"
    link.symlink_to(target)
    claim = ReloadLedger(str(link)).claim("gunicorn-42-7", booted=0.0)
    assert claim.outcome is Outcome.REFUSED and "not a directory" in claim.reason


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_a_directory_owned_by_someone_else_is_refused(rundir: str) -> None:
    os.mkdir(rundir, 0o700)
    os.chown(rundir, 65534, 65534)
    claim = ReloadLedger(rundir).claim("gunicorn-42-7", booted=0.0)
    assert claim.outcome is Outcome.REFUSED and "belongs to uid 65534" in claim.reason


def test_a_symlinked_record_is_refused(rundir: str, tmp_path: Path) -> None:
    ensure_private_dir(rundir)
    os.symlink(tmp_path / "victim", os.path.join(rundir, "gunicorn-42-7.last-reload"))
    claim = ReloadLedger(rundir).claim("gunicorn-42-7", booted=0.0)
    assert claim.outcome is Outcome.REFUSED
    assert not (tmp_path / "victim").exists()


def test_a_garbled_record_counts_as_no_reload(rundir: str) -> None:
    ensure_private_dir(rundir)
    Path(rundir, "gunicorn-42-7.last-reload").write_text("garbage")
    assert ReloadLedger(rundir).claim("gunicorn-42-7", booted=0.0).outcome is Outcome.CLAIMED


def test_xdg_runtime_dir_is_used_only_when_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert default_runtime_dir() == str(xdg / "wsgireload")
    os.chmod(xdg, 0o777)
    assert default_runtime_dir().endswith(f"wsgireload-{os.getuid()}")


def test_mark_once_is_true_for_the_first_caller_only(rundir: str) -> None:
    assert mark_once(rundir, "gunicorn-42-7.preload-error")
    assert not mark_once(rundir, "gunicorn-42-7.preload-error")


def test_records_of_dead_masters_are_forgotten(rundir: str) -> None:
    ledger = ReloadLedger(rundir, clock=Clock())
    ledger.claim("gunicorn-42-7", booted=0.0)
    ledger.claim("gunicorn-43-7", booted=0.0)
    ledger.forget_dead(lambda pid: pid == 43)
    assert sorted(os.listdir(rundir)) == ["gunicorn-43-7.last-reload"]
