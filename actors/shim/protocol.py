"""The shim's wire protocol: its calls, its events, and the framing it shares (``actors.wire``).

A frame is one msgpack map:

* request  ``{"id": int, "method": str, "params": map}``
* reply    ``{"id": int, "result": map}`` or ``{"id": int, "error": {"category", "message"}}``
* event    ``{"event": str, "seq": int, "data": map}`` (only to subscribed connections)

Both ends import this module (the shim server, and every client: the
TaskActor, the CLI's ``run``, the tests).
"""

from __future__ import annotations

from typing import Final

from actors.wire import (
    MAX_FRAME,
    ProtocolError,
    decode,
    encode,
    peer_credentials,
    recv_frame,
    send_frame,
    socket_name,
)

__all__ = [
    "VERSION",
    "MAX_FRAME",
    "ProtocolError",
    "encode",
    "decode",
    "send_frame",
    "recv_frame",
    "socket_name",
    "peer_credentials",
    "METHODS",
    "EVENTS",
]

VERSION: Final = 1

METHODS: Final = frozenset(
    {
        "info", "subscribe", "create", "start", "state", "kill", "exec", "pids", "pause", "resume",
        "delete", "wait", "close_io", "resize_pty", "update", "checkpoint", "shutdown",
    }
)  # fmt: skip
EVENTS: Final = frozenset({"exit", "exec_added", "exec_started", "oom"})
