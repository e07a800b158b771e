"""Smoke test of benchmarks/run.py: the quick run prints its table.

It asserts nothing about speed: benchmarks are not tests on a shared, noisy machine. Django is
a reference the benchmarks compare with, not a dependency: without it those parts are skipped
(CI installs it, so there they run).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_DJANGO = importlib.util.find_spec("django") is not None


def test_quick_benchmark_prints_the_table() -> None:
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "run.py"), "--quick", "--files", "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "wsgireload benchmark" in out
    for section in ("request", "scan", "watcher CPU", "latency", "memory"):
        assert f"\n{section}" in out, section
    assert "Werkzeug StatReloaderLoop.run_step()" in out
    assert "asgi hello: asgi.Reloader (thread mode, steady)" in out
    assert ("Django StatReloader.snapshot_files()" in out) is HAVE_DJANGO


@pytest.mark.skipif(not HAVE_DJANGO, reason="Django is not installed (it boots the Django example)")
def test_boot_check_benchmark_runs() -> None:
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "boot_check.py"), "--runs", "1",
         "--workers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "boot check, examples.django_wsgi:application" in proc.stdout
