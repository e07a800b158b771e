"""Servers with no master (waitress, wsgiref, ``python app.py``): warn, exit, or re-exec.

None of these ever signals the parent: under a plain server that is the user's shell or a
supervisor, and once orphaned it is init.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import sys
import threading
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence

from ..policy import ChangeSet
from .base import Action, ProcessContext

log = logging.getLogger("wsgireload")

# The re-exec'd process finds its inherited listening sockets here (comma-separated fds).
LISTEN_FDS_ENV = "WSGIRELOAD_LISTEN_FDS"

# Set once the launcher asked for inherited sockets: only then is it safe to pass them, as a
# launcher that binds anew would fail with "address in use" on a socket kept open for it.
_launcher_takes_sockets = False


def _flush_logs() -> None:
    """Flush every handler and the std streams: os._exit and os.execv skip Python's cleanup."""
    for target in [*logging.getLogger().handlers, *log.handlers, sys.stdout, sys.stderr]:
        with contextlib.suppress(Exception):
            target.flush()


def _waitress_map(environ: Mapping[str, Any]) -> Optional[Any]:
    """waitress's socket map (its listeners and connections), if this is waitress."""
    check = environ.get("waitress.client_disconnected")
    channel = getattr(check, "__self__", None)
    server = getattr(channel, "server", None)
    socket_map = getattr(server, "_map", None)
    return socket_map if isinstance(socket_map, dict) else None


def _waitress_quiesce(socket_map: Any, timeout: float) -> int:
    """Stop waitress accepting (new connections wait in the kernel's backlog) and wait until
    every connection is idle or closed; how many were still busy after ``timeout`` seconds.

    The connections are counted by waitress's main loop, between two of its handlers: counted
    from another thread, a request the loop has read from its socket but not parsed yet looks
    idle, and its response lost its body in a loaded re-exec. Idle twice in a row, so that a
    connection the loop accepted in its round before it stopped accepting is seen (as just
    accepted) by the second count.
    """
    trigger = None
    for dispatcher in list(socket_map.values()):
        if hasattr(dispatcher, "accept_connections"):  # a listener (one per --listen)
            dispatcher.accepting = False
            pull = getattr(dispatcher, "pull_trigger", None)
            if pull is not None:
                pull()  # wake the main loop so it stops polling the listener now
            trigger = getattr(dispatcher, "trigger", None) or trigger
    deadline = time.monotonic() + timeout
    idle = 0
    while True:
        busy = _count_in_main_loop(trigger, socket_map, deadline - time.monotonic())
        idle = idle + 1 if busy == 0 else 0
        if idle == 2 or time.monotonic() >= deadline:
            return busy
        time.sleep(0.005)


def _count_busy(socket_map: Any) -> int:
    return sum(
        1 for dispatcher in list(socket_map.values())
        if hasattr(dispatcher, "requests") and _waitress_busy(dispatcher)
    )


def _count_in_main_loop(trigger: Any, socket_map: Any, timeout: float) -> int:
    """``_count_busy`` run as a thunk of waitress's trigger, in its main loop; from this thread
    if there is no trigger or the loop does not run it within ``timeout`` (at most 1 s)."""
    if trigger is None or not hasattr(trigger, "pull_trigger"):
        return _count_busy(socket_map)
    counted: List[int] = []
    done = threading.Event()

    def count() -> None:
        try:
            counted.append(_count_busy(socket_map))
        finally:
            done.set()

    trigger.pull_trigger(count)
    if done.wait(min(max(timeout, 0.0), 1.0)) and counted:
        return counted[0]
    return _count_busy(socket_map)


_JUST_ACCEPTED = 0.1  # seconds: a connection this young may have its request on the wire


def _waitress_busy(channel: Any) -> bool:
    if channel.requests or getattr(channel, "request", None) is not None:
        return True
    if getattr(channel, "total_outbufs_len", 0):
        return True
    if time.time() - getattr(channel, "creation_time", 0.0) < _JUST_ACCEPTED:
        return True  # accepted in the main loop's last round, before it stopped accepting
    sock = getattr(channel, "socket", None)
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False  # nothing unread (idle), or closed or reset: nothing to answer


class _Restart(Action):
    """Shared by exit and exec: end this process once nothing in it is in progress.

    Called once no request is in the app (``requires_drain``). Under waitress, responses may
    still sit in its output buffers and accepted connections may not have reached the app, so
    a thread (the caller may be a ``close()``, which must return for its response to be
    flushed) stops waitress accepting and waits for it, then the process ends.
    """

    requires_drain = True
    per_process = True

    def __init__(self, drain_timeout: float) -> None:
        self.drain_timeout = drain_timeout
        self.socket_map: Optional[Any] = None
        self._started = False

    def setup(self, context: ProcessContext) -> None:
        with contextlib.suppress(Exception):  # an unknown waitress version: end at once
            self.socket_map = _waitress_map(context.environ)

    def __call__(self, changes: ChangeSet) -> None:
        if self._started:
            return
        self._started = True
        if self.socket_map is None:
            self.finish()
            return
        threading.Thread(target=self._quiesce_then_finish, name="wsgireload-restart",
                         daemon=True).start()

    def _quiesce_then_finish(self) -> None:
        try:
            busy = _waitress_quiesce(self.socket_map, self.drain_timeout)
            if busy:
                log.warning(
                    "wsgireload: %d connection%s still busy after %gs; restarting anyway",
                    busy, "" if busy == 1 else "s", self.drain_timeout,
                )
        except Exception as exc:
            log.warning("wsgireload: could not wait for waitress's connections: %r", exc)
        self.finish()

    def finish(self) -> None:
        raise NotImplementedError


class StandaloneAction(Action):
    """No safe reload without a master: log a WARNING once, then only DEBUG lines."""

    name = "standalone"
    summary = (
        "one WARNING, no signal (restart the server yourself, or use action='exit' or 'exec')"
    )

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, changes: ChangeSet) -> None:
        if self.warned:
            log.debug("wsgireload: code changed again (%s); not reloading", changes.describe())
            return
        self.warned = True
        log.warning(
            "wsgireload: code changed (%s) but this server has no master to reload it "
            "gracefully; restart it yourself, or pass action='exit' (a supervisor such as "
            "systemd restarts it) or action='exec' (re-run the same command line)",
            changes.describe(),
        )

    def describe(self) -> str:
        return "standalone: nothing (restart the server yourself)"


class ExitAction(_Restart):
    """Exit once no request is in flight, so a supervisor (systemd, Docker) starts fresh code.

    ``os._exit`` after flushing logs: it works from any thread (``sys.exit`` in a server's
    worker thread only ends that thread), cannot be swallowed by the server, and a non-zero
    status makes ``Restart=on-failure`` restart too (systemd counts SIGTERM as a clean exit).

    :param exit_code: the process's exit status.
    :param drain_timeout: seconds to wait for waitress's connections to finish.
    """

    name = "exit"
    summary = "exit after draining, for a supervisor to restart the process"

    def __init__(
        self,
        *,
        exit_code: int = 3,
        drain_timeout: float = 10.0,  # seconds
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        super().__init__(drain_timeout)
        self.exit_code = exit_code
        self.exit = exit

    def finish(self) -> None:
        log.warning(
            "wsgireload: exiting with status %d to load new code; the supervisor must restart "
            "this process",
            self.exit_code,
        )
        _flush_logs()
        self.exit(self.exit_code)

    def describe(self) -> str:
        return f"exit {self.exit_code}"


def listening_sockets() -> List[int]:
    """File descriptors of this process that are listening TCP/Unix sockets."""
    fds: List[int] = []
    candidates: Sequence[int]
    try:
        candidates = sorted(int(name) for name in os.listdir("/proc/self/fd"))
    except OSError:
        candidates = range(1024)  # no /proc: the fds below the usual limit
    for fd in candidates:
        with contextlib.suppress(OSError):
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as probe:
                if probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    fds.append(fd)
    return fds


def inherited_sockets() -> List[socket.socket]:
    """Listening sockets handed over by ``action="exec"`` (empty on a first start).

    A launcher that passes them to its server keeps the port open across the re-exec::

        from waitress import serve
        from wsgireload.actions.standalone import inherited_sockets
        sockets = inherited_sockets()
        if sockets:
            serve(application, sockets=sockets)
        else:
            serve(application, listen="127.0.0.1:8080")

    (waitress refuses ``sockets=`` together with ``port=`` or ``listen=``, even ``sockets=None``.)
    """
    global _launcher_takes_sockets
    _launcher_takes_sockets = True
    raw = os.environ.pop(LISTEN_FDS_ENV, "")
    sockets: List[socket.socket] = []
    for item in raw.split(","):
        if not item.strip().isdigit():
            continue
        try:
            sock = socket.socket(fileno=int(item))
        except OSError:
            continue
        sock.set_inheritable(False)  # from now on ours again, until the next exec
        sockets.append(sock)
    return sockets


def reexec_argv() -> List[str]:
    """The command line that started this interpreter, to run again."""
    orig = getattr(sys, "orig_argv", None)  # Python 3.10+: exactly what was run, with -m/-X
    if orig:
        return [sys.executable] + list(orig[1:])
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        return [sys.executable, "-m", spec.name.removesuffix(".__main__")] + sys.argv[1:]
    return [sys.executable] + sys.argv


class ExecAction(_Restart):
    """Re-run the same command line in this process once no request is in flight.

    If the launcher serves on ``inherited_sockets()``, the listening sockets are kept open
    and inheritable across the exec and their fds put in ``WSGIRELOAD_LISTEN_FDS``, so the
    port never closes. Any other launcher (``waitress-serve``, ``python app.py``) binds
    anew: connections made during the re-exec are refused.

    :param pass_sockets: None (pass them if the launcher called ``inherited_sockets()``),
        True or False.
    :param drain_timeout: seconds to wait for waitress's connections to finish.
    """

    name = "exec"
    summary = "re-execute the same command line after draining"

    def __init__(
        self,
        *,
        pass_sockets: Optional[bool] = None,
        drain_timeout: float = 10.0,  # seconds
        execv: Callable[[str, List[str]], object] = os.execv,
        argv: Optional[Callable[[], List[str]]] = None,
        find_sockets: Callable[[], List[int]] = listening_sockets,
    ) -> None:
        super().__init__(drain_timeout)
        self.pass_sockets = pass_sockets
        self.execv = execv
        self.argv = argv or reexec_argv
        self.find_sockets = find_sockets

    def finish(self) -> None:
        argv = self.argv()
        passing = _launcher_takes_sockets if self.pass_sockets is None else self.pass_sockets
        if passing:
            fds = self.find_sockets()
            for fd in fds:
                os.set_inheritable(fd, True)
            if fds:
                os.environ[LISTEN_FDS_ENV] = ",".join(str(fd) for fd in fds)
        log.warning("wsgireload: re-executing %s to load new code", " ".join(argv))
        _flush_logs()
        self.execv(argv[0], argv)

    def describe(self) -> str:
        return "exec (re-run the same command line)"
