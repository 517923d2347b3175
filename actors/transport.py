"""Closing Thespian's transport: authenticated frames, a restricted unpickler, loopback binds.

Out of the box every Thespian port unpickles whatever reaches it and binds to
0.0.0.0, so anyone who can reach the machine (or any local user, over
loopback) runs code as root.  ``secure`` closes that for every process of the
actor system (the daemon calls it before starting the system; the admin and
every actor are forked from there and inherit it):

* every frame Thespian sends is ``HMAC-SHA256(key, pickle) + pickle``; a frame
  whose MAC does not verify is never unpickled (Thespian drops the connection
  and logs it), so a process without the node's key cannot get a single object
  built.  The key is 32 random bytes in a root-only file made at first start.
* even with a valid MAC, unpickling admits only the classes the system needs:
  Thespian's and contactor's own, and a short list of standard types.  Any
  other global is refused and logged.
* on a single node every port binds to 127.0.0.1 (``bind_host``), not to all
  addresses.  Loopback is reachable by local users, which is why the MAC
  matters; other hosts cannot reach it at all.

The two bare acknowledgements Thespian pre-encodes at import (``'ACK'`` and
``'ACK+DATAERR'``) are accepted as they are: they carry no object.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import io
import os
import pickle
import secrets
from pathlib import Path
from typing import Any, Final

__all__ = ["secure", "load_key", "Serializer", "KEY_BYTES", "Refused"]

KEY_BYTES: Final = 32
_MAC: Final = hashlib.sha256().digest_size
_ACKS: Final = {pickle.dumps("ACK"): "ACK", pickle.dumps("ACK+DATAERR"): "ACK+DATAERR"}

_SAFE_BUILTINS: Final = frozenset(
    {"object", "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
     "complex", "bool", "range", "slice", "NoneType"}
)  # fmt: skip
_SAFE_GLOBALS: Final = frozenset(
    {
        ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"),
        ("datetime", "datetime"), ("datetime", "timedelta"), ("datetime", "date"), ("datetime", "time"),
        ("datetime", "timezone"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "Path"),
        ("ipaddress", "IPv4Network"), ("ipaddress", "IPv4Address"), ("ipaddress", "IPv6Network"),
        ("ipaddress", "IPv6Address"), ("logging", "LogRecord"), ("collections", "OrderedDict"),
        ("collections", "deque"), ("collections", "defaultdict"), ("socket", "AddressFamily"),
        ("socket", "SocketKind"),
    }
)  # fmt: skip


class Refused(pickle.UnpicklingError):
    """A frame that failed authentication or named a class the system does not admit."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "builtins":
            obj = getattr(builtins, name, None)
            if name in _SAFE_BUILTINS or (isinstance(obj, type) and issubclass(obj, BaseException)):
                return super().find_class(module, name)
        elif module.split(".")[0] in ("thespian", "actors"):
            obj = super().find_class(module, name)
            if isinstance(obj, type):  # classes only: no function of ours may be called from a frame
                return obj
        raise Refused(f"refused to unpickle {module}.{name}")


class Serializer:
    """Stands in for the ``pickle`` module in Thespian's TCP transport (``dumps``/``loads``)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the transport key is too short")
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def dumps(self, obj: Any, protocol: int | None = None) -> bytes:
        payload = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        return self._mac(payload) + payload

    def loads(self, data: bytes) -> Any:
        ack = _ACKS.get(bytes(data))
        if ack is not None:
            return ack
        mac, payload = data[:_MAC], data[_MAC:]
        if len(mac) != _MAC or not hmac.compare_digest(mac, self._mac(payload)):
            raise Refused("frame without a valid key")
        return _Unpickler(io.BytesIO(payload)).load()


def load_key(path: Path) -> bytes:
    """The node's key: read it, or make it (root-only) at first start."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        key = path.read_bytes()
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)
    if len(key) < 16:
        raise ValueError(f"the key in {path} is too short")
    return key


def secure(key: bytes, bind_host: str | None = "127.0.0.1") -> None:
    """Install the authenticated serializer and the bind address in this process's Thespian."""
    from thespian.system.transport import IPBase, TCPTransport

    TCPTransport.serializer = Serializer(key)
    if bind_host is None:
        return
    os.environ["THESPIAN_BASE_IPADDR"] = bind_host  # what the system advertises
    original = IPBase.IPActorAddress.__init__
    if getattr(original, "_contactor_bind", None) == bind_host:
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.bindname[0] in ("", "0.0.0.0"):
            self.bindname = (bind_host, self.bindname[1])

    __init__._contactor_bind = bind_host  # type: ignore[attr-defined]
    IPBase.IPActorAddress.__init__ = __init__
