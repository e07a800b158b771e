"""The classic ``code_changed()`` recipe (CherryPy, Django < 2.2, uWSGI timer snippets).

A module-level detector: the first call records, later calls say whether anything differs.
"""

from __future__ import annotations

import threading
from typing import Optional

from .detect import Detector

_lock = threading.Lock()
_detector: Optional[Detector] = None


def code_changed() -> bool:
    """Return True once each time a watched source file was modified, replaced or deleted.

    The first call records how the source files of every loaded module look (the standard
    library excepted) and returns False; each later call compares, returns True if any file
    differs and adopts the new state, so the next call returns False until the next change.
    Thread-safe; needs no middleware, so it fits a gunicorn hook thread or a uWSGI timer.
    """
    global _detector
    with _lock:
        if _detector is None:
            _detector = Detector()
            _detector.scan()
            return False
        return bool(_detector.scan())


def after_fork() -> None:
    # A thread of the parent may have held the lock at fork time (a gunicorn hook thread
    # scanning while the master forks); in the child nobody would ever release it.
    global _lock
    _lock = threading.Lock()
