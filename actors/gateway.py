"""Gateway: the CLI's and Python clients' door into the actor system.

A root-only unix socket (``daemon.address``) speaking ``actors.gateway_protocol``.
The listening socket and every connection are watched with ThespianWatch;
reads and writes are non-blocking, each connection has its own buffers, and
an event subscription is read from the Exchange's log at the subscriber's own
pace (it pauses while the connection's unread output is over ``max_backlog``,
and is told exactly which events it lost if the log dropped them meanwhile), and
a client that sends requests but never reads its answers is disconnected, so a
slow or stuck client never blocks anyone.  A frame that does not decode closes
that connection only.  Peer credentials are checked on accept.

Clients never join the actor system: joining starts a new one silently when
the daemon is down, and any joined client could shut it down.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from actors import gateway_protocol as gp
from actors import wire
from actors._actor import ContactorActor, error_reply
from actors.errdefs import InvalidArgument
from actors.eventlog import LogReader, check_since
from actors.filters import Filter, parse_any
from actors.messages import (
    Answer,
    Appended,
    Ask,
    Configure,
    ErrorReply,
    Follow,
    Peers,
    Ready,
    TaskActorLost,
    Unfollow,
)

__all__ = ["Gateway"]

_HEADER: Final = struct.Struct(">I")
_BATCH: Final = 256  # log rows read at a time for one subscription
_PUMP_EVERY: Final = 1.0  # seconds: streams are also read without an Appended (one may be lost)


@dataclass
class _Conn:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    streams: list[_Stream] = field(default_factory=list)


@dataclass
class _Stream:
    """One events.subscribe: its filter and its cursor (the last sequence number looked at)."""

    fd: int
    req_id: int
    filter: Filter
    cursor: int
    paused: bool = False


class Gateway(ContactorActor):
    role = "gateway"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listener: socket.socket | None = None
        self.conns: dict[int, _Conn] = {}
        self.pending: dict[int, tuple[int, int]] = {}  # corr -> (fd, request id)
        self.reader: LogReader | None = None
        # corr -> (role, namespace, task id) the request went to: who must answer it
        self.pending_at: dict[int, tuple[str, str, str]] = {}
        self.corr = itertools.count(1)
        self.peers: Peers | None = None
        self.supervisor: Any = None
        self.flush_scheduled = False
        self.limits: Any = None
        # The Exchange tells us of new events only while we have subscribers (Follow/Unfollow,
        # numbered): with none, each event would cost a message nobody needs.
        self.following = False
        self.follow_gen = 0

    # -- set-up -----------------------------------------------------------------------------------------
    def on_Configure(self, msg: Configure, sender: Any) -> None:
        self.peers, self.supervisor = msg.peers, sender
        self.limits = msg.config.gateway
        if self.listener is None:
            self._listen(Path(msg.config.daemon.address))
        if self.reader is None:
            self.reader = LogReader(Path(msg.config.daemon.root) / "events.db")
            self.wakeupAfter(_PUMP_EVERY, payload="pump")
        if self.following:
            self._follow(True)
        self.send(sender, Ready(self.role, os.getpid()))

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        replaced = self.peers is not None and self.peers.exchange != msg.exchange
        if self.peers is not None:
            # A request held by an actor that died is never answered: say so instead of leaving it.
            dead = {role for role in ("metadata", "monitor", "runtime")
                    if getattr(self.peers, role) != getattr(msg, role)}  # fmt: skip
            self._fail_pending(lambda at: at[0] in dead, "the daemon restarted the actor serving this request")
        self.peers = msg
        if replaced and self.following:
            # A new Exchange knows no followers; the streams' cursors are ours, so nothing is lost.
            self._follow(True)
            self.log.warning("gateway_follows_new_exchange", streams=sum(len(c.streams) for c in self.conns.values()))

    def _listen(self, path: Path) -> None:
        path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # the daemon holds the state lock: a socket here is stale
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(str(path))
        os.chmod(path, 0o600)  # before listen(): nobody connects in between
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock
        self.watched = [sock.fileno()]
        self.log.info("gateway_listening", address=str(path))

    # -- sockets ----------------------------------------------------------------------------------------
    def on_WatchMessage(self, msg: Any, sender: Any) -> None:
        for fd in msg.ready:
            if self.listener is not None and fd == self.listener.fileno():
                self._accept()
            elif fd in self.conns:
                self._read(fd)
        self._rewatch()

    def _follow(self, on: bool) -> None:
        """Follow the Exchange's log (``on``) or stop; numbered, so the newest word wins."""
        assert self.peers is not None
        self.follow_gen += 1
        self.following = on
        self.send(self.peers.exchange, (Follow if on else Unfollow)(self.myAddress, self.follow_gen))

    def _streams_changed(self) -> None:
        wanted = any(conn.streams for conn in self.conns.values())
        if wanted != self.following and self.peers is not None:
            self._follow(wanted)

    def _rewatch(self) -> None:
        self.watched = ([self.listener.fileno()] if self.listener else []) + list(self.conns)

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            _, uid, _ = wire.peer_credentials(sock)
            if uid not in (0, os.geteuid()) or len(self.conns) >= self.limits.max_connections:
                self.log.warning("gateway_refused", uid=uid, connections=len(self.conns))
                sock.close()
                continue
            sock.setblocking(False)
            self.conns[sock.fileno()] = _Conn(sock)

    def _read(self, fd: int) -> None:
        conn = self.conns[fd]
        try:
            data = conn.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            return
        conn.inbuf += data
        while len(conn.inbuf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(conn.inbuf)
            if length > min(self.limits.max_frame, wire.MAX_FRAME):
                self.log.warning("gateway_frame_too_large", length=length)
                self._close(fd)
                return
            if len(conn.inbuf) < _HEADER.size + length:
                return
            payload = bytes(conn.inbuf[_HEADER.size : _HEADER.size + length])
            del conn.inbuf[: _HEADER.size + length]
            try:
                frame = wire.decode(payload)
            except wire.ProtocolError as exc:
                self.log.warning("gateway_bad_frame", error=str(exc))
                self._close(fd)
                return
            req_id = frame.get("id")
            if not isinstance(req_id, int) or isinstance(req_id, bool):
                self._close(fd)
                return
            self._request(fd, req_id, frame.get("method"), frame.get("params", {}))
            if fd not in self.conns:
                return

    def _request(self, fd: int, req_id: int, method: Any, params: Any) -> None:
        try:
            if not isinstance(method, str) or not isinstance(params, dict):
                raise InvalidArgument("a request needs a method name and a params map")
            if method == gp.SUBSCRIBE:
                self._subscribe(fd, req_id, params)
                return
            role, message = gp.to_message(method, params)
        except Exception as exc:
            self._reply(fd, req_id, error_reply(exc))
            return
        target = self.supervisor if role == "supervisor" else getattr(self.peers, role)
        corr = next(self.corr)
        self.pending[corr] = (fd, req_id)
        self.pending_at[corr] = (role, str(getattr(message, "namespace", "")), str(getattr(message, "id", "")))
        self.send(target, Ask(corr, message))

    def _fail_pending(self, held: Any, why: str) -> None:
        for corr, at in list(self.pending_at.items()):
            if held(at):
                del self.pending_at[corr]
                target = self.pending.pop(corr, None)
                if target is not None:
                    self._reply(*target, ErrorReply("unavailable", f"{why}; it may or may not have taken effect"))

    def on_TaskActorLost(self, msg: TaskActorLost, sender: Any) -> None:
        self._fail_pending(lambda at: at[0] == "runtime" and at[1:] == (msg.namespace, msg.id),
                           f"task {msg.id}: the actor serving this request died")  # fmt: skip

    def _subscribe(self, fd: int, req_id: int, params: dict[str, Any]) -> None:
        filters = params.get("filters", [])
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            raise InvalidArgument("filters must be a list of strings")
        flt = parse_any(filters)
        since_seq, since_time = params.get("since"), params.get("since_time")
        if since_seq is not None and (
            not isinstance(since_seq, int) or isinstance(since_seq, bool) or since_seq < 0
        ):
            raise InvalidArgument("since must be a non-negative sequence number")
        if since_time is not None and (not isinstance(since_time, int | float) or isinstance(since_time, bool)):
            raise InvalidArgument("since_time must be a number of seconds since the epoch")
        assert self.reader is not None
        oldest, newest = self.reader.bounds()
        if since_seq is not None:
            check_since(since_seq, newest, oldest)
            cursor = since_seq
        elif since_time is not None:
            cursor = self.reader.before_time(float(since_time))
        else:
            cursor = newest
        stream = _Stream(fd, req_id, flt, cursor)
        self.conns[fd].streams.append(stream)
        self._streams_changed()
        self._write(fd, {"id": req_id, "result": {"subscribed": True, "seq": newest}})
        self._pump(stream)

    def _pump(self, st: _Stream) -> None:
        """Write the stream's matching envelopes after its cursor until the log or the backlog limit ends it."""
        conn = self.conns.get(st.fd)
        if conn is None or self.reader is None:
            return
        st.paused = False
        while True:
            if len(conn.outbuf) > self.limits.max_backlog:
                st.paused = True
                break
            batch = self.reader.after(st.cursor, _BATCH)
            if not batch:
                break
            if batch[0].seq > st.cursor + 1:
                # The log dropped them (it keeps the newest) while this subscriber read too slowly.
                lost = {"from": st.cursor + 1, "to": batch[0].seq - 1}
                self.log.warning("gateway_subscriber_lost_events", **lost)
                conn.outbuf += wire.encode({"id": st.req_id, "lost": lost})
            for env in batch:
                st.cursor = env.seq
                record = env.to_wire()
                if st.filter.match(record):
                    self._append(conn, {"id": st.req_id, "event": record})
                    if len(conn.outbuf) > self.limits.max_backlog:
                        break
            if not self._send_out(st.fd):
                return
        self._schedule_flush(conn)

    def _close(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is None:
            return
        for corr, (pfd, _) in list(self.pending.items()):
            if pfd == fd:
                del self.pending[corr]
                self.pending_at.pop(corr, None)
        with contextlib.suppress(OSError):
            conn.sock.close()
        self._rewatch()  # the watch list changes only when a connection comes or goes
        if conn.streams:
            self._streams_changed()

    # -- replies and events -----------------------------------------------------------------------------
    def on_Answer(self, msg: Answer, sender: Any) -> None:
        self.pending_at.pop(msg.corr, None)
        target = self.pending.pop(msg.corr, None)
        if target is not None:
            self._reply(*target, msg.body)

    def on_Appended(self, msg: Appended, sender: Any) -> None:
        self._pump_all()

    def _pump_all(self) -> None:
        for conn in list(self.conns.values()):
            for st in list(conn.streams):
                self._pump(st)

    def _reply(self, fd: int, req_id: int, body: Any) -> None:
        if isinstance(body, ErrorReply):
            frame = {"id": req_id, "error": {"category": body.category, "message": body.message}}
        else:
            frame = {"id": req_id, "result": gp.to_result(body)}
        self._write(fd, frame)

    def _write(self, fd: int, frame: dict[str, Any]) -> None:
        conn = self.conns.get(fd)
        if conn is None:
            return
        self._append(conn, frame)
        self._flush(fd)

    @staticmethod
    def _append(conn: _Conn, frame: dict[str, Any]) -> None:
        try:
            conn.outbuf += wire.encode(frame)
        except wire.ProtocolError as exc:
            conn.outbuf += wire.encode(
                {"id": frame.get("id"), "error": {"category": "internal", "message": str(exc)}}
            )

    def _send_out(self, fd: int) -> bool:
        """Send what the socket takes now; False if the connection is gone."""
        conn = self.conns.get(fd)
        if conn is None:
            return False
        while conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    self._close(fd)
                    return False
                break
            del conn.outbuf[:n]
        return True

    def _flush(self, fd: int) -> None:
        if not self._send_out(fd):
            return
        conn = self.conns[fd]
        if len(conn.outbuf) > 2 * self.limits.max_backlog:
            # Answers nobody reads (event streams pause at max_backlog; only requests pile up like this).
            self.log.warning("gateway_slow_client_dropped", backlog=len(conn.outbuf))
            self._close(fd)
            return
        if len(conn.outbuf) <= self.limits.max_backlog // 2:
            for st in [s for s in conn.streams if s.paused]:
                self._pump(st)
                if fd not in self.conns:
                    return
        self._schedule_flush(conn)

    def _schedule_flush(self, conn: _Conn) -> None:
        if conn.outbuf and not self.flush_scheduled:
            self.flush_scheduled = True
            self.wakeupAfter(0.02, payload="flush")

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload == "flush":
            self.flush_scheduled = False
            for fd in list(self.conns):
                self._flush(fd)
        elif msg.payload == "pump" and self.reader is not None:
            self._pump_all()
            self.wakeupAfter(_PUMP_EVERY, payload="pump")

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        for fd in list(self.conns):
            self._close(fd)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.watched = []
