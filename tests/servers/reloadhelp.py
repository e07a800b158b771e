"""Helpers for the integration tests: copy an example, a TEST-ONLY reload action, boot counts.

The action stands in for wsgireload's gunicorn action until that lands (issue 3).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .harness import _repo_root

# TEST-ONLY: sends SIGHUP to the gunicorn master once per change set, claimed across workers
# with an O_EXCL file (what the real gunicorn action does, minus its safety checks). When
# `action="auto"` reloads gunicorn by itself, drop the `action=` line the tests patch in.
HUP_ACTION = '''\
"""TEST-ONLY stand-in for the gunicorn action: one SIGHUP to the master per change set."""
import os
import signal


def hup(changes):
    claims = os.environ["WR_TEST_CLAIMS"]
    try:
        claim = os.path.join(claims, changes.fingerprint)
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another worker already asked for this change set
    os.close(fd)
    os.kill(os.getppid(), signal.SIGHUP)
'''


def copy_examples(dest: Path) -> Path:
    """Copy the repository's examples/ package into ``dest`` (as ``dest/examples``)."""
    target = dest / "examples"
    shutil.copytree(Path(_repo_root()) / "examples", target,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target


def install_hup_action(dest: Path) -> Path:
    """Write the TEST-ONLY action module and its claims directory into ``dest``."""
    (dest / "wr_test_hup.py").write_text(HUP_ACTION)
    claims = dest / "claims"
    claims.mkdir(exist_ok=True)
    return claims


def patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def boots(log: str) -> int:
    """Worker boots in a gunicorn log."""
    return len(re.findall(r"Booting worker with pid", log))


def hups(log: str) -> int:
    return len(re.findall(r"Handling signal: hup", log))
