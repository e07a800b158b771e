"""Shared fixtures: a throwaway importable package, a fake clock, a log capture."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator, List

import pytest


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], Path]]:
    """``pkg(name, source)`` writes ``<tmp>/<name>.py`` importable as ``name``; cleaned up after."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    names: List[str] = []

    def make(name: str, source: str = "VALUE = 1\n") -> Path:
        path = root.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.parents:
            if parent == root:
                break
            init = parent / "__init__.py"
            if not init.exists():
                init.write_text("")
        path.write_text(textwrap.dedent(source))
        names.append(name)
        importlib.invalidate_caches()
        return path

    yield make
    for name in names:
        for mod in [m for m in sys.modules if m == name or m.startswith(name.split(".")[0])]:
            sys.modules.pop(mod, None)


def bump(path: Path, seconds: int = 5) -> None:
    """Move a file's mtime without sleeping."""
    st = path.stat()
    import os

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))
