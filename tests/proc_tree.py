"""A crafted /proc tree in a temporary directory, read by the real ``read_process``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from wsgireload.actions._process import ProcessInfo, read_process


class ProcTree:
    """``/proc/<pid>/{stat,status,cmdline}`` for made-up processes.

    ``argv`` is a list (written NUL-separated, as the kernel shows a command line) or raw
    bytes (a process title such as ``b"uWSGI master\\0\\0\\0"``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "self").mkdir(parents=True, exist_ok=True)
        (root / "stat").write_text("cpu 0 0 0 0\nbtime 1700000000\n")

    def add(
        self,
        pid: int,
        argv: Union[Sequence[str], bytes],
        *,
        start: str = "1000",
        uid: int = 1001,
    ) -> Path:
        proc = self.root / str(pid)
        proc.mkdir(parents=True, exist_ok=True)
        # Field 2 with spaces and parentheses, as a renamed process may have: must not shift
        # field 22 (starttime, index 19 after the ")").
        fields = ["S"] + ["0"] * 18 + [start] + ["0"] * 20
        (proc / "stat").write_text(f"{pid} (we (ird) name) " + " ".join(fields) + "\n")
        (proc / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        raw = argv if isinstance(argv, bytes) else b"".join(a.encode() + b"\0" for a in argv)
        (proc / "cmdline").write_bytes(raw)
        return proc

    def remove(self, pid: int) -> None:
        for name in ("stat", "status", "cmdline"):
            (self.root / str(pid) / name).unlink()

    def read(self, pid: int) -> Optional[ProcessInfo]:
        return read_process(pid, str(self.root))
