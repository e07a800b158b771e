"""Helpers for the integration tests: copy the examples, patch a file, count boots and reloads,
write an app that wsgireload does not wrap."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .harness import _repo_root, write

PLAIN_APP = """
import mod


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [mod.VERSION.encode()]
"""


def write_plain_app(directory: Path) -> None:
    """``app.py``, an app not wrapped at all serving ``mod.VERSION``, and ``mod.py`` at v1."""
    write(directory / "app.py", PLAIN_APP)
    write(directory / "mod.py", 'VERSION = "v1"\n')


def copy_examples(dest: Path) -> Path:
    """Copy the repository's examples/ package into ``dest`` (as ``dest/examples``)."""
    target = dest / "examples"
    shutil.copytree(Path(_repo_root()) / "examples", target,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target


def patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def boots(log: str) -> int:
    """Worker boots in a gunicorn log."""
    return len(re.findall(r"Booting worker with pid", log))


def hups(log: str) -> int:
    return len(re.findall(r"Handling signal: hup", log))


def reloads(log: str, workers: int) -> int:
    """Whole reloads in a gunicorn log: a HUP, or a rollout's SIGTTIN for each worker."""
    return hups(log) + len(re.findall(r"Handling signal: ttin", log)) // workers
