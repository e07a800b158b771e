"""The engine: detect, settle, validate and decide, one step at a time, for every entry point.

The Reloader (after a response), the Watcher (gunicorn hook, uWSGI timer, CLI) drive it; the
workers of one master share its decisions through their master's record.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple, Union

from . import _ops, _record, _system, classic, events, servers
from ._options import Options, run_action
from .actions import ActionSpec, resolve
from .boot import Target, validating
from .detect import Detector
from .events import EventDetector
from .policy import ChangeSet, printable
from .servers.base import Change, ProcessContext, Siblings

log = logging.getLogger("wsgireload")

_FAILURE_LOG_EVERY = 60.0  # seconds between two logged watcher failures
LEASE = 20.0  # seconds (at least 20 intervals) a scanner's lease lasts without renewal
FOLLOW_EVERY = 60.0  # seconds between two looks at the record by a per-master follower
FIRST_STEP = 0.1  # seconds to the first step of a process with no master
ROLL_STEP = 0.05  # seconds between two steps while a rollout goes on

# (kind, detail) reports for a live display: "changed" (a path), "settling" (seconds to wait),
# "rejected" (the files), "due" (the ChangeSet).
EventHook = Callable[[str, Any], None]
Master = Tuple[str, int]  # (server, master pid)


class Engine(Siblings):
    """One process's watcher: ``step(now)`` returns a change set to act on, or None. It is
    also its action's view of the master's other workers (``ProcessContext.siblings``).

    :param options: what to watch and when to act.
    :param action: how to reload (``setup`` runs once per process, from ``setup``).
    :param detector: use this detector (and its baseline) instead of one built from options
        (inside the boot check's interpreter: one that watches nothing).
    :param created_pid: the pid that imported the app (to see gunicorn ``--preload``).
    :param since_ns: wall-clock time (``time.time_ns()``) the loaded code dates from; files
        modified after it count as changed at the first step (the Detector's rule).
    :param master: (server, pid) of the master whose workers share one record; None: find
        it from the first request's environ (``setup``), or scan alone.
    :param creator: the module that created the Reloader: the boot check's last resort.
    """

    def __init__(
        self,
        options: Options,
        action: ActionSpec,
        *,
        detector: Optional[Union[Detector, EventDetector]] = None,
        created_pid: Optional[int] = None,
        since_ns: Optional[int] = None,
        master: Optional[Master] = None,
        on_event: Optional[EventHook] = None,
        creator: Optional[Target] = None,
    ) -> None:
        self.options = options
        self.policy = options.policy(creator)
        self.action = resolve(action)
        if detector is None:
            detector = Detector(modules=False) if validating() else options.detector()
        self.detector = detector
        self.created_pid = os.getpid() if created_pid is None else created_pid
        self.since_ns = since_ns
        self.master = master
        self.on_event = on_event
        self.on_fork: Optional[Callable[[], None]] = None  # the owner's own per-process reset
        self.rollout, self.boot_timeout = options.rollout, options.boot_timeout
        self.ops = _ops.Ops(options.metrics_file, options.systemd_notify)
        self.creator = creator
        self._next_failure_log = 0.0
        self._reset()
        _engines.add(self)

    def _reset(self) -> None:
        """State that belongs to one process: rebuilt in a forked child."""
        self.pid: Optional[int] = None  # the process ``setup`` ran in
        self.share: Optional[_record.Share] = None
        self._master: Optional[Master] = None  # whose record to join at the first step
        self._joined = False
        self._stepped = False  # a step ran in this process
        self.alone = "no record: this process is not a worker of a known master"  # (why)
        self._decided: Optional[ChangeSet] = None  # the last change set this process decided
        self._stepping = threading.Lock()  # per process: a fork may copy it held
        self._failures: List[str] = []
        self._scan: Tuple[int, float] = (0, 0.0)  # files watched, seconds the last scan took
        self._environ: Optional[Mapping[str, Any]] = None  # until the traps are looked for
        self._logged: Set[str] = set()  # lines logged once, alone (this process is its master)

    def after_fork(self) -> None:
        self._reset()
        if self.on_fork is not None:
            self.on_fork()

    # -- once per process ----------------------------------------------------------------
    def setup(self, environ: Mapping[str, Any]) -> None:
        """Let the action look at this process and join the master's record. Never raises."""
        self.pid = os.getpid()
        self.policy.boot.note_served(servers.environ_targets(environ))
        self._joined = False  # the record is joined by the first step: off the request path
        try:
            self._master = self.master or servers.master_of(environ)
            self._environ = environ
            server, pid = self._master or (servers.detect_server(environ), None)
            _ops.FACTS.fields = {"server": server, "master_pid": pid}
            self.ops.labels = {"server": server, "master_pid": pid or os.getpid()}
            _ops.use_server_log(servers.log_target(environ))
        except Exception as exc:
            self.log_failure(exc)
        try:
            self.action.setup(ProcessContext(self.pid, self.created_pid, environ, self))
        except Exception as exc:
            self.log_failure(exc)
        if isinstance(self.detector, EventDetector):
            self.detector.start()  # per process: its thread does not survive a fork

    def _join(self) -> Optional[_record.Share]:
        master = self._master
        if master is None or master[1] != os.getppid():
            return None  # the workers of a master are its children
        record, self.alone = _record.open_record(master[0], master[1], self.action.runtime_dir)
        if record is None:
            log.debug("wsgireload: no shared record (%s); this worker scans for itself", self.alone)
            return None
        assert self.pid is not None
        me = _system.SYSTEM.process(self.pid)
        share = _record.Share(
            record,
            self.pid,
            me.start_time if me is not None else None,
            born=_system.SYSTEM.started(),
            lease=max(LEASE, 20 * self.options.interval),
        )
        share.join()
        return share

    def pause(self, interval: float) -> float:
        """Seconds until the next step. A follower of a per-master action has nothing to do
        but take over from a scanner that is stuck or gone, so it wakes only every
        ``FOLLOW_EVERY`` seconds: each wake-up of an idle worker costs about what a scan of a
        small app does (measured: 5 followers waking every 10 s cost 0.02-0.03% of a core,
        a quarter of what the Django example's scanner does). A scanner that exits is
        replaced by the master, and the new worker takes the lease at its first step."""
        share = self.share
        if not self._stepped:  # a master's worker at once: joining marks it ready (rollout)
            return 0.0 if self._master or self.share else min(interval, FIRST_STEP)
        if share is not None and share.scanning and self.action.rolling:
            return min(interval, ROLL_STEP)
        if share is None or share.scanning or self.action.per_process:
            return interval
        return max(interval, FOLLOW_EVERY)

    # -- one step ------------------------------------------------------------------------
    def step(self, now: float, *, decide: bool = True) -> Optional[ChangeSet]:
        """Scan (or, as a follower, check the record); the change set to act on, if any.
        ``decide=False`` only scans: the owner still has a change set to act on. Never raises."""
        if not self._stepping.acquire(blocking=False):
            return None  # one step at a time (inline mode on a threaded server)
        try:
            if self.pid != os.getpid():
                self.setup({})
            return self._step(now, decide)
        except Exception as exc:
            self.log_failure(exc)
            return None
        finally:
            self._stepping.release()

    def joined(self) -> Optional[_record.Share]:
        """The master's record shared with the other workers, joined at the first call."""
        if not self._joined:
            self._joined = True
            try:
                self.share = self._join()
            except Exception as exc:  # the record is an optimisation: scan alone without it
                log.debug("wsgireload: no shared record (%r); this worker scans for itself", exc)
        return self.share

    def _step(self, now: float, decide: bool) -> Optional[ChangeSet]:
        self._stepped = True
        share = self.joined()
        if self._environ is not None:
            self._report_traps(share, self._environ)
        if share is not None:
            scanning = self._shared(share.turn)
            due = None
            if decide and self.share is not None:  # (not while the owner still has one due)
                due = self._shared(functools.partial(self._follow, share, now))
            if scanning:
                self.action.advance()  # (never raises: it logs its own failures)
            if due is not None or (self.share is not None and not scanning):
                return due
            share = self.share
        failures, self._failures = self._failures, []
        if failures:
            self.detector.add(failures)
        started = time.perf_counter()
        changed = self.detector.scan()
        self._scan = (len(self.detector.baseline), time.perf_counter() - started)
        if share is not None:
            share.note_scan(*self._scan)
        if self.since_ns is not None:
            changed = sorted(set(changed).union(self.detector.modified_since(self.since_ns)))
            self.since_ns = None
        if share is not None and share.took_over:
            share.took_over = False
            changed = self._not_yet_decided(share, changed)
        if changed:
            log.debug("wsgireload: changed: %s", ", ".join(map(printable, changed)))
            self.policy.observe(changed, now)
            for path in changed:
                self.event("changed", path)
            self.event("settling", self.policy.settle)
        if not decide:
            self._operate(share)
            return None
        policy = self.policy
        policy.recheck_if_environment_changed(now)
        validating = policy.settled(now) and policy.unvalidated
        pending = policy.pending
        if validating:
            self.ops.notify(*_ops.reloading(pending))
        changes = policy.due(now, self.detector.baseline)
        if validating and share is not None:
            log.debug("wsgireload: validated %d file(s) for the master", len(pending))
            self._shared(lambda: share.validated(
                list(pending),
                changes.fingerprint if changes else "",
                None if changes else policy.refusal or "refused",
            ))
        if changes is None:
            stats = None
            if validating:
                self.event("rejected", pending)
                if self.ops.active:
                    stats = self.ops.refused(share, policy.refusal or "refused")
            self._operate(share, stats)
            return None
        self.event("due", changes)
        self._decided = changes
        number = self._publish(share, changes) if share is not None else 0
        self._operate(share, self.ops.decided(share, number or 0) if self.ops.active else None)
        return changes

    def _operate(self, share: Optional[_record.Share], stats: Optional[Dict[str, Any]] = None
                 ) -> None:
        """What operators see of the master: its open reload followed to its end, the
        metrics file (this process scans, or is alone)."""
        if self.ops.active:
            if stats is None and share is not None and self._master is not None:
                stats = self.ops.follow(share, self._master[1])
            self.ops.publish(stats, share, *self._scan)

    def _report_traps(self, share: Optional[_record.Share], environ: Mapping[str, Any]) -> None:
        """Once per master (per process alone): each known trap of this setup, logged and
        kept in the record for ``wsgireload check``."""
        self._environ = None
        module = sys.modules.get(self.creator.module or "") if self.creator else None
        found = servers.traps(environ, getattr(module, "__file__", None) or (
            self.creator.path if self.creator else None))
        for name, text in found.items():
            if self.first_to_log(name):
                log.warning("wsgireload: trap: %s", text, extra={"wsgireload_event": "trap"})
        if not found:
            return
        # A process no master coordinates (a lone uvicorn, Apache's embedded children): a
        # record of its own, for `check` only (not a master: `status` leaves it out).
        record = share.record if share is not None else _record.open_record(
            servers.detect_server(environ), os.getpid(), self.action.runtime_dir)[0]
        mark = {"traps": found, **({} if share is not None else {"alone": True})}
        if record is not None:
            self._shared(functools.partial(record.update, lambda d: {**d, **mark}))

    def _publish(self, share: _record.Share, changes: ChangeSet) -> Optional[int]:
        """A new generation: the reload of ``changes``, as the action now stands. It is the
        claim: the one process that publishes it acts for the master."""
        generation = {
            "files": list(changes.files),
            "fingerprint": changes.fingerprint,
            "action": self.action.describe(),
            "per_process": self.action.per_process,
        }
        baseline = self.detector.baseline
        identities = {path: baseline.get(path) for path in changes.files}
        return self._shared(lambda: share.decide(generation, identities))  # type: ignore[no-any-return]

    def _shared(self, operation: Callable[[], Any]) -> Any:
        """Run a record operation; if it fails (disk full, a foreign file), scan alone."""
        try:
            return operation()
        except Exception as exc:
            log.debug("wsgireload: the shared record failed (%r); scanning alone", exc)
            self.share = None
            return None

    def _follow(self, share: _record.Share, now: float) -> Optional[ChangeSet]:
        """A generation another worker decided that this process must act on itself."""
        generation = share.generation()
        number = int(generation.get("n", 0))
        if number <= share.acted:
            return None
        share.acted = number
        files = tuple(generation.get("files", ()))
        if not generation.get("per_process"):
            log.debug(
                "wsgireload: worker %s decided reload %d of the master (%d file(s))",
                generation.get("by"), number, len(files),
            )
            return None
        return ChangeSet(files, str(generation.get("fingerprint", "")), now, now)

    def _not_yet_decided(self, share: _record.Share, changed: List[str]) -> List[str]:
        """A new scanner's changes minus those its predecessor already decided (a refused
        change set is checked again: its predecessor's environment watch left with it)."""
        known = _record.section(share.record.read(), "decided")  # (JSON: identities are lists)
        known = {path: None if found is None else tuple(found) for path, found in known.items()}
        baseline = self.detector.baseline
        return [path for path in changed if path not in known or known[path] != baseline.get(path)]

    # -- acting --------------------------------------------------------------------------
    def act(self, changes: ChangeSet) -> Optional[Exception]:
        """Run the action; the INFO line comes from the process that decided, DEBUG elsewhere."""
        if self.share is not None and changes is not self._decided:
            return run_action(self.action, changes, logging.DEBUG)  # decided by another worker
        note = ""
        if self.share is not None and self.action.per_process:
            master = self._master[1] if self._master is not None else 0
            note = f" (and so does every other worker of master {master})"
        failure = run_action(self.action, changes, logging.INFO, note)
        if self.share is None and self.ops.active:  # alone: the reload ends with its action
            how = "reloaded" if failure is None else f"reload failed: {failure!r}"
            self.ops.publish(self.ops.ended(None, failure is None, how), None, *self._scan)
        return failure

    # -- what the action may know of the master's other workers (Siblings) ---------------
    @property
    def coordinated(self) -> bool:  # type: ignore[override]
        return self.joined() is not None

    def why_alone(self) -> str:
        return self.alone

    def last_reload(self) -> Dict[str, Any]:
        share = self.joined()
        return share.last_reload() if share is not None else {}

    def reloading(self, chain: bool = False) -> None:
        share = self.joined()
        if share is not None:
            share.note_reload(chain)

    def update(self, change: Change) -> Dict[str, Any]:
        share = self.joined()
        return share.record.update(change) if share is not None else {}

    def first_to_log(self, name: str) -> bool:
        share = self.joined()
        try:
            if share is not None:
                return share.first_to_log(name)
        except OSError:
            return True  # better a repeated line than a lost one
        first = name not in self._logged  # alone: once per process
        self._logged.add(name)
        return first

    def restart_each_worker(self) -> None:
        """The action fell back to restarting this worker (the master refused its signal):
        decide the change set again, as per process, so that every other worker restarts
        itself too; once (a per-process generation is acted on by every worker already)."""
        share, changes = self.share, self._decided
        if share is not None and changes is not None and not share.generation().get(
            "per_process"
        ):
            self._shared(share.forget_reload)
            self._shared(lambda: self._publish(share, changes))

    def note_import_failure(self, files: List[str]) -> None:
        self._failures.extend(files)

    def event(self, kind: str, detail: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, detail)

    def log_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self._next_failure_log:
            return
        self._next_failure_log = now + _FAILURE_LOG_EVERY
        log.error("wsgireload: the watcher failed (requests are unaffected): %r", exc, exc_info=exc)

    def close(self) -> None:
        """Hand the lease to another worker and stop the event thread (idempotent)."""
        share, self.share = self.share, None
        self._joined = False  # started again, it joins again
        if share is not None:
            share.leave()
        if isinstance(self.detector, EventDetector):
            self.detector.stop()


# -- the one place that resets per-process state in a forked child -------------------------
_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_reset_in = os.getpid()  # the process whose state is current (the reset below ran in it)


def after_fork_if_missed() -> None:
    """Reset now if this process was forked without Python's fork hooks (uWSGI's workers:
    it calls them only with --py-call-osafterfork); a no-op where they ran."""
    if _reset_in != os.getpid():
        _after_fork_in_child()


def _after_fork_in_child() -> None:
    global _reset_in
    _reset_in = os.getpid()
    _system.after_fork()
    classic.after_fork()
    events.after_fork()
    for engine in list(_engines):
        engine.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
