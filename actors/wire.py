"""Framing shared by contactor's two wire protocols (the shim's and the Gateway's).

A frame is a 4-byte big-endian length followed by one msgpack map.  A frame
over ``MAX_FRAME`` bytes, or one that does not decode to a map, is a
``ProtocolError``: the receiver closes that connection only.  Unix socket
paths are limited to 107 bytes by ``sun_path``; ``socket_name`` reaches a
longer path through ``/proc/<pid>/fd/<dirfd>/<name>`` (the directory opened
with O_PATH), which fits whatever the state dir is.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator

import msgpack

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from _socket import socket  # the base of socket.socket: either kind is taken
    from typing import Any, Final

__all__ = [
    "MAX_FRAME",
    "ProtocolError",
    "encode",
    "decode",
    "send_frame",
    "recv_frame",
    "socket_name",
    "peer_credentials",
]

MAX_FRAME: Final = 4 * 1024 * 1024
_HEADER: Final = struct.Struct(">I")
_SUN_PATH_MAX: Final = 107


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection is closed."""


def encode(obj: dict[str, Any]) -> bytes:
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the limit of {MAX_FRAME}")
    return _HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame is a {type(obj).__name__}, not a map")
    return obj


def send_frame(sock: socket, obj: dict[str, Any]) -> None:
    sock.sendall(encode(obj))


def _recv_exact(sock: socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError("connection closed in the middle of a frame")
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket) -> dict[str, Any] | None:
    """Read one frame; None on a clean EOF between frames."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")
    payload = _recv_exact(sock, length)
    if payload is None:
        raise ProtocolError("connection closed in the middle of a frame")
    return decode(payload)


@contextlib.contextmanager
def socket_name(path: str) -> Iterator[str]:
    """A name for ``path`` that fits in ``sun_path``, valid while the context is open.

    Short paths are used as they are.  A long one is reached through an O_PATH
    descriptor of its directory, named through ``/proc/<our pid>``, so that
    other processes (runc's ``--console-socket``) can use the name too.
    """
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    head, tail = os.path.split(path)
    dfd = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/{os.getpid()}/fd/{dfd}/{tail}"
        if len(os.fsencode(short)) > _SUN_PATH_MAX:
            raise ProtocolError(f"socket name {tail!r} is too long")
        yield short
    finally:
        os.close(dfd)


def peer_credentials(sock: socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    from socket import SO_PEERCRED, SOL_SOCKET

    raw = sock.getsockopt(SOL_SOCKET, SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid
