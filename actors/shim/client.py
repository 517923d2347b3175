"""Talking to a shim: start one, connect to one, call it, receive its events.

Used by the TaskActor, the demo and the tests.  ``start_shim`` launches
``contactor-shim`` and returns once it listens (or raises the category and
message the shim reported).  ``ShimClient`` is a thread-safe synchronous
client: calls may be made from several threads at once, replies are matched
by request id, and pushed events go to ``events`` (a queue) after
``subscribe``.  Errors come back as the errdefs exception of their category.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from actors.errdefs import Unavailable, from_category
from actors.procs import is_alive_process, is_stopped, read_pid_file
from actors.shim import protocol

__all__ = ["ShimClient", "ShimHandle", "start_shim", "DEFAULT_SHIM", "CALL_TIMEOUT"]

DEFAULT_SHIM: Final = (sys.executable, "-m", "actors.shim")
CALL_TIMEOUT: Final = 90.0
# How often a call waiting for its reply looks whether the shim was stopped (SIGSTOP).
STOPPED_CHECK: Final = 0.5


@dataclass(frozen=True, slots=True)
class ShimHandle:
    pid: int
    address: str


def start_shim(
    namespace: str,
    cid: str,
    bundle: str,
    runtime_root: str,
    runtime: str = "runc",
    shim: Sequence[str] = DEFAULT_SHIM,
    debug: bool = False,
    log: str = "",
    timeout: float = 10.0,
    factory: str | None = None,
    systemd_cgroup: bool = False,
) -> ShimHandle:
    """Start a shim for one bundle and wait until it listens.

    With ``factory`` (the socket of a running shim factory) the shim is forked from
    it, warm; if the factory cannot be reached the shim program is exec'd instead.
    """
    args = ["--namespace", namespace, "--id", cid, "--bundle", bundle, "--runtime", runtime,
            "--runtime-root", runtime_root]  # fmt: skip
    if debug:
        args.append("--debug")
    if systemd_cgroup:
        args.append("--systemd-cgroup")
    if log:
        args += ["--log", log]
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        if factory is not None and _from_factory(factory, args, w):
            os.close(w)  # the shim holds its own copy: EOF on r now means it is done reporting
            try:
                line = _read_line(r, timeout)
            except Unavailable:
                _kill_half_started(bundle)
                raise
            return _started(line, bundle, "")
        return _exec_shim([*shim, *args, "--ready-fd", str(w)], w, r, bundle, timeout)
    finally:
        os.close(r)


def _from_factory(factory: str, args: list[str], ready_w: int) -> bool:
    from actors.shim.factory import spawn

    try:
        spawn(factory, args, ready_w)
    except (OSError, ValueError):
        return False
    return True


def _started(line: str, bundle: str, stderr: str) -> ShimHandle:
    if line.startswith("ok "):
        return ShimHandle(int(line.split()[1]), os.path.join(bundle, "shim.sock"))
    if line.startswith("error "):
        _, category, message = [*line.split(" ", 2), ""][:3]
        raise from_category(category, f"shim: {message}")
    raise Unavailable(f"shim did not start: {stderr.splitlines()[-1] if stderr else 'no report'}")


def _exec_shim(argv: list[str], w: int, r: int, bundle: str, timeout: float) -> ShimHandle:
    """Exec the shim program; closes ``w`` (the readiness pipe's write end) in every case."""
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                argv, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=errors, start_new_session=True, close_fds=True,
            )  # fmt: skip
        except FileNotFoundError:
            raise Unavailable(f"shim binary {argv[0]!r} not found") from None
        finally:
            os.close(w)
        try:
            line = _read_line(r, timeout)
        except Unavailable:
            _kill_half_started(bundle)
            raise
        finally:
            # The started process only forks the real shim and exits; reap it.
            proc.wait(timeout)
        errors.seek(0)
        return _started(line, bundle, errors.read().decode(errors="replace").strip())


def _kill_half_started(bundle: str) -> None:
    """A shim that never reported readiness is not left running."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid, start = read_pid_file(os.path.join(bundle, "shim.pid"))
        if is_alive_process(pid, start):
            os.kill(pid, signal.SIGKILL)


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise Unavailable(f"shim did not report readiness within {timeout}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


class _Pending:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: dict[str, Any] | None = None


class Request:
    """A request sent to the shim, whose answer is waited for by ``result``."""

    __slots__ = ("_client", "_method", "_params", "_pending", "_req_id")

    def __init__(self, client: ShimClient, method: str, params: dict[str, Any], req_id: int,
                 pending: _Pending) -> None:  # fmt: skip
        self._client, self._method, self._params = client, method, params
        self._req_id, self._pending = req_id, pending

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Its result, or the error's errdefs class; ``timeout`` as ``ShimClient.call``'s."""
        return self._client._result(self._method, self._params, self._req_id, self._pending, timeout)


class ShimClient:
    def __init__(self, address: str, timeout: float = 5.0, notify_fd: int | None = None) -> None:
        """``notify_fd`` (an eventfd) is written on every event and when the connection ends,
        so an actor can watch it with ThespianWatch instead of blocking on ``events``."""
        self.address = address
        self._notify_fd = notify_fd
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            with protocol.socket_name(address) as name:
                self._sock.connect(name)
        except OSError as exc:
            self._sock.close()
            raise Unavailable(f"cannot connect to shim at {address}: {exc.strerror or exc}") from None
        self._sock.settimeout(None)
        creds = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.peer_pid: int = struct.unpack("3i", creds)[0]
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._skipped: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def __enter__(self) -> ShimClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(2.0)
        self._sock.close()

    def _read_loop(self) -> None:
        try:
            while (frame := protocol.recv_frame(self._sock)) is not None:
                if "event" in frame:
                    self.events.put(frame)
                    self._notify()
                    continue
                with self._lock:
                    pending = self._pending.pop(frame.get("id", -1), None)
                if pending is not None:
                    pending.reply = frame
                    pending.event.set()
        except (OSError, protocol.ProtocolError):
            pass
        finally:
            self.closed.set()
            with self._lock:
                waiting, self._pending = list(self._pending.values()), {}
            for pending in waiting:
                pending.event.set()
            self._notify()

    def _notify(self) -> None:
        if self._notify_fd is not None:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._notify_fd, 1)

    def call(self, method: str, /, *, call_timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """Call ``method``; returns its result or raises the error's errdefs class.

        ``call_timeout`` bounds the wait for the reply (default: CALL_TIMEOUT plus any
        ``timeout`` parameter of the call itself, as ``wait`` takes).
        """
        return self.request(method, **params).result(call_timeout)

    def request(self, method: str, /, **params: Any) -> Request:
        """Send ``method`` now; the Request's ``result`` waits for its answer (as ``call``).

        The shim answers a connection's requests in the order they came for those it handles
        at once (``subscribe``), so one can be sent ahead of the next without waiting.
        """
        req_id = next(self._ids)
        pending = _Pending()
        with self._lock:
            if self.closed.is_set():
                raise Unavailable("shim connection is closed")
            self._pending[req_id] = pending
        try:
            with self._send_lock:
                protocol.send_frame(self._sock, {"id": req_id, "method": method, "params": params})
        except OSError as exc:
            with self._lock:
                self._pending.pop(req_id, None)
            raise Unavailable(f"shim connection lost: {exc}") from None
        return Request(self, method, params, req_id, pending)

    def _result(self, method: str, params: dict[str, Any], req_id: int, pending: _Pending,
                timeout: float | None) -> dict[str, Any]:  # fmt: skip
        if timeout is None:
            extra = params.get("timeout")
            timeout = CALL_TIMEOUT + (extra if isinstance(extra, int | float) else 0)
        deadline = time.monotonic() + timeout
        while not pending.event.wait(min(STOPPED_CHECK, max(0.0, deadline - time.monotonic()))):
            stopped = is_stopped(self.peer_pid)  # it cannot answer before SIGCONT
            if stopped or time.monotonic() >= deadline:
                with self._lock:
                    self._pending.pop(req_id, None)
                if stopped:
                    raise Unavailable(f"shim (pid {self.peer_pid}) is stopped: it answers {method} after SIGCONT")
                raise Unavailable(f"shim did not answer {method} within {timeout}s")
        reply = pending.reply
        if reply is None:
            raise Unavailable(f"shim connection closed during {method}")
        if "error" in reply:
            err = reply["error"]
            raise from_category(str(err.get("category")), str(err.get("message")))
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    def subscribe(self, since: int | None = None) -> int:
        """Start receiving events (after replaying those after ``since``); returns the current seq."""
        return int(self.subscribing(since).result()["seq"])

    def subscribing(self, since: int | None = None) -> Request:
        """``subscribe``, sent now, its answer taken later (a request may follow it at once)."""
        return self.request("subscribe", since=since) if since is not None else self.request("subscribe")

    def next_event(self, timeout: float, kind: str | None = None) -> dict[str, Any]:
        """The next event (of ``kind``, skipping others), or Unavailable after ``timeout``."""
        for i, event in enumerate(self._skipped):
            if kind is None or event["event"] == kind:
                return self._skipped.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise Unavailable(f"no {kind or ''} event within {timeout}s") from None
            if kind is None or event["event"] == kind:
                return event
            self._skipped.append(event)  # kept, in order, for a later next_event
