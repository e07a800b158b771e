"""Smoke test of benchmarks/reload_disturbance.py on its smallest case: one real gunicorn with
one worker, the app importing in 0.2 s, a HUP sent by hand, one run.

It asserts what the table is made of (a figure in every column, the new code reached), never
how fast a server was: the machine is shared and noisy, and even a hand-sent HUP may lose a
connection on some servers.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator

import pytest

from .harness import _repo_root

pytestmark = [pytest.mark.server, pytest.mark.skipif(sys.platform != "linux", reason="/proc")]

SECONDS = re.compile(r"^\*{0,2}(\d+\.\d{3}) s\*{0,2}$")


@pytest.fixture
def bench() -> Iterator[ModuleType]:
    path = Path(_repo_root()) / "benchmarks" / "reload_disturbance.py"
    spec = importlib.util.spec_from_file_location("reload_disturbance", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def seconds(cell: str) -> float:
    match = SECONDS.match(cell)
    assert match, f"not a number of seconds: {cell!r}"
    return float(match.group(1))


def test_smallest_case_has_a_figure_in_every_column(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "table.md"
    only = "gunicorn sync -w 1, HUP by hand"
    argv = ["--only", only, "--boot", "0.2", "--repeat", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr()
    text = out.read_text()
    assert text in printed.out
    lines = text.splitlines()
    assert lines[0] == f"`{shlex.join(['python', 'benchmarks/reload_disturbance.py', *argv])}`"
    assert re.search(r"Python 3\.\d+\.\d+, gunicorn \d+\.\d+\.\d+, uWSGI ", lines[2]), lines[2]
    header = [c.strip() for c in lines[4].strip("|").split("|")]
    rows = [line for line in lines if line.startswith("| gunicorn")]
    assert header == list(bench.HEADER) and len(rows) == 1, printed.err
    cells: Dict[str, str] = dict(zip(header, (c.strip() for c in rows[0].strip("|").split("|"))))
    assert cells["app import"] == "0.2 s"
    assert int(cells["requests during"]) > 0, printed.err
    assert int(cells["failed"]) >= 0
    before, slowest = seconds(cells["slowest before"]), seconds(cells["slowest during"])
    assert 0 < before < 10 and 0 < seconds(cells["p99 during"]) <= slowest < 10
    assert re.fullmatch(r"[1-9]\d* \(of 1\)", cells["peak workers"]), cells["peak workers"]
    assert int(cells["new workers"]) >= 1  # the worker was replaced
    began, everywhere = seconds(cells["reload began"]), seconds(cells["new code everywhere"])
    assert 0 <= began <= everywhere < 10  # the new code was reached


def test_a_row_the_installed_wsgireload_cannot_run_says_so(bench: ModuleType) -> None:
    one_by_one = next(c for c in bench.cases(False, False) if c.rollout == "one-by-one")
    assert bench.unavailable(one_by_one, has_rollout=False) == bench.NO_ROLLOUT
    assert bench.unavailable(one_by_one, has_rollout=True) is None
    row = bench.row(one_by_one, 2.0, [], bench.NO_ROLLOUT)
    assert row.count("|") == len(bench.HEADER) + 1 and bench.NO_ROLLOUT in row
