"""What operators look at: a Prometheus text file, systemd's notify socket, the server's log.

The process scanning for a master validates, decides and sees each reload end: it keeps the
master's counters in the master's record (``stats``), writes the file and notifies systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ._record import Data, Share, section, where, write_atomically
from ._system import SYSTEM, System
from .boot import validating
from .errors import ConfigurationError

log = logging.getLogger("wsgireload")

METRICS = (  # wsgireload_<name>, its type and help (docs/operators.md says more)
    ("reloads_total", "counter", "Reloads asked for after a deploy validated."),
    ("reloads_failed_total", "counter", "Deploys refused, and reloads that failed."),
    ("last_reload_successful", "gauge", "1: the last deploy serves everywhere; 0: it failed."),
    ("last_reload_success_timestamp_seconds", "gauge", "Unix time the last good reload ended."),
    ("last_rollout_duration_seconds", "gauge", "Seconds the last reload took to end."),
    ("watched_files", "gauge", "Files the scanner watches."),
    ("last_scan_duration_seconds", "gauge", "Seconds the last scan took."),
    ("info", "gauge", "Always 1: the server and master this file describes."),
)
REWRITE_EVERY = 60.0  # seconds: the scan's figures alone refresh the file no more often
NOT_RELOADED = 30.0  # seconds after which a decided reload that the master never got ends


def render(facts: Dict[str, Any], labels: Dict[str, Any]) -> str:
    """The Prometheus text format: HELP and TYPE for each, no timestamps, a final newline."""
    tags = ",".join(f'{k}="{str(v)}"' for k, v in labels.items() if '"' not in str(v))
    lines = []
    for name, kind, text in METRICS:
        value = 1 if name == "info" else facts.get(name)
        if value is not None:
            lines += [f"# HELP wsgireload_{name} {text}", f"# TYPE wsgireload_{name} {kind}",
                      f"wsgireload_{name}{'{' + tags + '}' if name == 'info' else ''} "
                      f"{float(value)!r}"]
    return "\n".join(lines) + "\n"


def check_metrics_file(path: Optional[str]) -> None:
    """ConfigurationError unless ``path`` is None or a file that can be made in its directory."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not str(path).endswith(".prom") or not os.path.isdir(folder):
        raise ConfigurationError(
            f"metrics_file={path!r} must be a *.prom file in an existing directory (the "
            "textfile collector's, e.g. /var/lib/prometheus/node-exporter): create it first")


def notify(*lines: str, address: Optional[str] = None) -> bool:
    """sd_notify(3): one datagram to ``$NOTIFY_SOCKET`` ('@' is the abstract namespace)."""
    address = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
    if not address or validating():  # never from the boot check's interpreter
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        log.debug("wsgireload: cannot notify systemd at %s: %r", address, exc)
        return False
    return True


def reloading(files: Sequence[str]) -> Sequence[str]:
    """The lines that put a unit in "reloading" (sd_notify(3): with the monotonic time)."""
    return ("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
            f"STATUS=wsgireload: validating a deploy of {len(files)} file(s)")


class Ops:
    """The reload counters of one master (in its record, given as ``share`` by the scanner;
    alone, here), and the file and the notifications they make."""

    def __init__(self, metrics_file: Optional[str], notify_systemd: bool,
                 system: System = SYSTEM) -> None:
        self.metrics_file, self.notify_systemd, self.system = metrics_file, notify_systemd, system
        self.labels: Dict[str, Any] = {}
        self.local: Data = {}  # the counters when alone
        self.written: Tuple[Optional[Tuple[Any, ...]], float] = (None, 0.0)  # figures, when
        self.stats: Data = {}  # the master's counters as last seen

    @property
    def active(self) -> bool:
        return bool(self.metrics_file or self.notify_systemd)

    def notify(self, *lines: str) -> None:
        if self.notify_systemd:
            notify(*lines)

    def _count(self, share: Optional[Share], change: Callable[[Data], Optional[Data]]) -> Data:
        if share is None:
            self.local = change(self.local) or self.local
            return self.local
        data = share.record.update(
            lambda d: None if (new := change(section(d, "stats"))) is None else {**d, "stats": new})
        return section(data, "stats")

    def refused(self, share: Optional[Share], problem: str) -> Data:
        last = (problem.strip().splitlines() or ["refused"])[-1]
        self.notify("READY=1", f"STATUS=wsgireload: deploy refused, old code serving: "
                    f"{where(problem) or last}: {last}"[:300])
        return self._count(share, lambda s: {**s, "failed": s.get("failed", 0) + 1, "ok": 0})

    def decided(self, share: Optional[Share], number: int) -> Data:
        """A reload asked for: counted now, open until ``ended``."""
        opened = {"n": number, "at": self.system.monotonic()}
        return self._count(share, lambda s: {**s, "reloads": s.get("reloads", 0) + 1,
                                             "open": opened})

    def ended(self, share: Optional[Share], ok: bool, how: str) -> Data:
        def change(stats: Data) -> Optional[Data]:
            opened = section(stats, "open")
            if not opened:
                return None  # another process ended it
            new = {k: v for k, v in stats.items() if k != "open"}
            new["duration"] = self.system.monotonic() - float(opened.get("at", 0.0))
            if ok:
                return {**new, "ok": 1, "success_at": time.time()}
            return {**new, "ok": 0, "failed": stats.get("failed", 0) + 1}

        stats = self._count(share, change)
        self.notify("READY=1", f"STATUS=wsgireload: {how}")
        return stats

    def follow(self, share: Optional[Share], master: int) -> Optional[Data]:
        """End the open reload if it ended: gunicorn's rollout is over (the last old worker
        retired, or it stopped), or every live worker of the master was born after the reload
        and is ready (a HUP, uWSGI, each worker restarting), or the master was never asked."""
        if share is None:
            return None
        share.record.poll()  # one os.stat: read again only when the record changed
        data = share.record.data
        opened = section(section(data, "stats"), "open")
        if not opened:
            return None
        number, now = opened.get("n"), self.system.monotonic()
        reloaded, rollout = section(data, "reloaded"), section(data, "rollout")
        workers, live = section(data, "workers"), self.system.children(master)
        since = float(reloaded.get("at") or opened.get("at") or now)
        if rollout.get("n") == number and rollout.get("end"):
            done = rollout["end"] == "done"
            return self.ended(share, done, "reloaded: every worker replaced, one by one" if done
                              else f"reload {rollout['end']}: old workers serve the old code")
        if (reloaded.get("n") == number or section(data, "generation").get("per_process")) and (
                live and all(float(section(workers, str(p)).get("born", 0)) >= since
                             and "ready" in section(workers, str(p)) for p in live)):
            return self.ended(share, True, f"reloaded: {len(live)} new worker(s) serve")
        if reloaded.get("n") != number and now - float(opened.get("at", now)) > NOT_RELOADED:
            return self.ended(share, False, "deploy not reloaded: see the log")
        return None

    def publish(self, stats: Optional[Data], share: Optional[Share], watched: int,
                scan: float) -> None:
        """Write the metrics file if a figure changed (the scan's alone: once a minute)."""
        if not self.metrics_file:
            return
        if stats is None and self.written[0] is None:  # a new scanner: the master's counters
            stats = section(share.record.read(), "stats") if share is not None else self.local
        stats = self.stats = stats if stats is not None else self.stats
        facts = {
            "reloads_total": stats.get("reloads", 0),
            "reloads_failed_total": stats.get("failed", 0),
            "last_reload_successful": stats.get("ok", 1),
            "last_reload_success_timestamp_seconds": stats.get("success_at", 0),
            "last_rollout_duration_seconds": stats.get("duration"), "watched_files": watched,
        }
        key, now = tuple(facts.values()), self.system.monotonic()
        if key == self.written[0] and now - self.written[1] < REWRITE_EVERY:
            return
        facts["last_scan_duration_seconds"] = scan
        try:
            write_atomically(self.metrics_file, render(facts, self.labels))
        except OSError as exc:
            log.warning("wsgireload: cannot write metrics_file %s: %s", self.metrics_file, exc)
        self.written = (key, now)


class ServerLog(logging.Handler):
    """Hands wsgireload's records to the server's own logger (its handlers, its format), as
    long as the application configured no logging of its own."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers and self.target.isEnabledFor(record.levelno):
            self.target.handle(record)


def use_server_log(target: Optional[logging.Logger]) -> None:
    """Send wsgireload's lines (INFO and up) to the server's log, unless logging is configured."""
    if target is None or log.handlers or logging.getLogger().handlers:
        return
    log.addHandler(ServerLog(target))
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


class Facts(logging.Filter):
    """Adds ``server`` and ``master_pid`` to each of wsgireload's records (for a JSON log)."""

    fields: Dict[str, Any] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.update({**self.fields, **record.__dict__})
        return True


FACTS = Facts()
log.addFilter(FACTS)
