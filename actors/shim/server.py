"""The shim's socket server: connections, request dispatch, and event fan-out.

Each accepted connection gets a reader thread and a writer thread with an
unbounded queue, so a slow or stuck client never blocks the reaper, the event
fan-out, or anyone else.  Each request runs in its own worker thread (a
``wait`` must not hold up a ``kill`` on the same connection).  A frame that
does not decode closes that connection only; a well-formed request with bad
fields gets an error reply.

Events carry a per-shim sequence number and are kept in a bounded history (the
init process's exit is always kept), so a client that connects later (a
restored TaskActor) can ``subscribe`` with ``since`` and miss nothing.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import selectors
import socket
import threading
import traceback
from typing import Any, Final

from actors.errdefs import ContactorError, FailedPrecondition, Internal, InvalidArgument
from actors.shim import protocol
from actors.shim.reaper import Reaper
from actors.shim.service import ShimService

__all__ = ["ShimServer", "MAX_CONNECTIONS", "HISTORY"]

MAX_CONNECTIONS: Final = 256
HISTORY: Final = 1024


class _Connection:
    def __init__(self, sock: socket.socket, server: ShimServer) -> None:
        self.sock = sock
        self.server = server
        self.out: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.subscribed = False
        self.closed = threading.Event()
        self.writer = threading.Thread(target=self._write_loop, daemon=True)
        self.reader = threading.Thread(target=self._read_loop, daemon=True)

    def start(self) -> None:
        self.writer.start()
        self.reader.start()

    def send(self, frame: dict[str, Any]) -> None:
        if not self.closed.is_set():
            self.out.put(frame)

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.out.put(None)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def _write_loop(self) -> None:
        try:
            while (frame := self.out.get()) is not None:
                try:
                    protocol.send_frame(self.sock, frame)
                except protocol.ProtocolError as exc:
                    if "id" in frame:
                        protocol.send_frame(self.sock, _error(frame["id"], Internal(str(exc))))
        except OSError:
            pass
        finally:
            self.close()
            self.server.forget(self)
            with contextlib.suppress(OSError):
                self.sock.close()

    def _read_loop(self) -> None:
        log = self.server.log
        try:
            while not self.closed.is_set():
                frame = protocol.recv_frame(self.sock)
                if frame is None:
                    break
                self.server.dispatch(self, frame)
        except protocol.ProtocolError as exc:
            log.warning("connection_closed_bad_frame", error=str(exc))
        except OSError:
            pass
        finally:
            self.close()


def _error(req_id: int, exc: ContactorError) -> dict[str, Any]:
    return {"id": req_id, "error": exc.to_wire()}


class ShimServer:
    def __init__(self, listener: socket.socket, service: ShimService, reaper: Reaper, log: Any) -> None:
        self.listener = listener
        self.service = service
        self.reaper = reaper
        self.log = log
        self._lock = threading.Lock()  # guards connections, seq and history
        self._conns: set[_Connection] = set()
        self._seq = 0
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._init_exit: dict[str, Any] | None = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.stopping = threading.Event()
        self.force_teardown = False

    # -- events -------------------------------------------------------------------------------------
    def publish(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            event = {"event": kind, "seq": self._seq, "data": data}
            self._history.append(event)
            if kind == "exit" and data.get("id") == self.service.cid:
                self._init_exit = event
            for conn in self._conns:
                if conn.subscribed:
                    conn.send(event)

    def _subscribe(self, conn: _Connection, req_id: int, params: dict[str, Any]) -> None:
        since = params.get("since")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
            conn.send(_error(req_id, InvalidArgument("since must be a non-negative integer")))
            return
        # Reply, replay and switch to live under one lock: no gap and no duplicate at the seam.
        with self._lock:
            conn.send({"id": req_id, "result": {"seq": self._seq}})
            if since is not None:
                replay = [e for e in self._history if e["seq"] > since]
                if (
                    self._init_exit is not None
                    and self._init_exit["seq"] > since
                    and self._init_exit not in replay
                ):
                    replay.insert(0, self._init_exit)
                for event in replay:
                    conn.send(event)
            conn.subscribed = True

    # -- requests -----------------------------------------------------------------------------------
    def dispatch(self, conn: _Connection, frame: dict[str, Any]) -> None:
        req_id = frame.get("id")
        if not isinstance(req_id, int) or isinstance(req_id, bool):
            raise protocol.ProtocolError("request without an integer id")
        method, params = frame.get("method"), frame.get("params", {})
        if not isinstance(params, dict):
            conn.send(_error(req_id, InvalidArgument("params must be a map")))
        elif method == "subscribe":
            self._subscribe(conn, req_id, params)
        elif method == "info":
            conn.send({"id": req_id, "result": self.info()})
        elif method == "shutdown" or method in self.service.handlers:
            threading.Thread(target=self._work, args=(conn, req_id, method, params), daemon=True).start()
        else:
            conn.send(_error(req_id, InvalidArgument(f"unknown method {method!r}")))

    def _work(self, conn: _Connection, req_id: int, method: str, params: dict[str, Any]) -> None:
        try:
            handler = self._shutdown if method == "shutdown" else self.service.handlers[method]
            reply = {"id": req_id, "result": handler(params)}
        except ContactorError as exc:
            reply = _error(req_id, exc)
        except Exception as exc:
            self.log.error("request_failed", method=method, error=repr(exc), exception=traceback.format_exc())
            reply = _error(req_id, Internal(f"{method}: {exc}"))
        conn.send(reply)
        if method == "shutdown" and "result" in reply:
            conn.out.put(None)
            conn.writer.join(2.0)
            self.stop()

    def _shutdown(self, params: dict[str, Any]) -> dict[str, Any]:
        force = params.get("force", False)
        if not isinstance(force, bool):
            raise InvalidArgument("force must be a boolean")
        if self.service.alive():
            if not force:
                raise FailedPrecondition(
                    "the container still exists: delete it first, or shut down with force"
                )
            self.service.kill_and_delete()
        return {}

    def info(self) -> dict[str, Any]:
        return {
            "version": protocol.VERSION,
            "pid": os.getpid(),
            "namespace": self.service.namespace,
            "id": self.service.cid,
            "bundle": self.service.bundle,
        }

    # -- the main loop --------------------------------------------------------------------------------
    def forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def stop(self, force: bool = False) -> None:
        self.force_teardown = self.force_teardown or force
        self.stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        _, uid, _ = protocol.peer_credentials(sock)
        if uid not in (0, os.geteuid()):
            self.log.warning("connection_refused", uid=uid)
            sock.close()
            return
        sock.setblocking(True)
        conn = _Connection(sock, self)
        with self._lock:
            if len(self._conns) >= MAX_CONNECTIONS:
                self.log.warning("connection_refused_limit", limit=MAX_CONNECTIONS)
                sock.close()
                return
            self._conns.add(conn)
        conn.start()

    def serve(self, wakeup_fd: int) -> None:
        """Run until a shutdown; the caller then tears down and exits."""
        self.listener.setblocking(False)
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener, selectors.EVENT_READ, "accept")
            sel.register(wakeup_fd, selectors.EVENT_READ, "reap")
            sel.register(self._stop_r, selectors.EVENT_READ, "stop")
            while not self.stopping.is_set():
                for key, _ in sel.select(1.0):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "reap":
                        self.reaper.drain_wakeup()
                self.reaper.reap()
                if not os.path.isdir(self.service.bundle):
                    # Nobody can own a task whose bundle is gone: take the container down and leave.
                    self.log.error("bundle_removed_tearing_down")
                    self.force_teardown = True
                    break
        if self.force_teardown:
            teardown = threading.Thread(target=self.service.kill_and_delete, daemon=True)
            teardown.start()
            # Keep reaping while the teardown waits for the container's exit (bounded by its own waits).
            while teardown.is_alive():
                self.reaper.reap()
                teardown.join(0.05)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()
