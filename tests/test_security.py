"""The actor system's transport: no frame without the key is unpickled, ports bind to loopback."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import stat
import time
from pathlib import Path

import psutil
import pytest
from conftest import Daemon, wait_for

from actors.testing import _group_members
from actors.transport import Refused, Serializer, load_key


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _ports(d: Daemon) -> list[tuple[str, int]]:
    wait_for(lambda: d.actor_pgid() is not None, 30, "the daemon to record its actors' process group")
    pgid = d.actor_pgid()
    assert pgid is not None
    members = set(_group_members(pgid))
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.pid in members and conn.status == psutil.CONN_LISTEN:
            out.append((conn.laddr.ip, conn.laddr.port))
    return out


def test_every_actor_port_listens_on_loopback_only(daemon: Daemon) -> None:
    ports = _ports(daemon)
    assert len(ports) >= 6, ports  # the admin, the logger and the actors
    assert {ip for ip, _ in ports} == {"127.0.0.1"}


def test_an_unauthenticated_pickle_runs_nothing(daemon: Daemon, tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    payload = pickle.dumps((None, _Evil(marker)))
    frame = b"%d>" % len(payload) + payload
    for _, port in _ports(daemon):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(frame)
            s.settimeout(5)
            with contextlib.suppress(OSError):
                s.recv(100)
    time.sleep(0.5)
    assert not marker.exists(), "a frame without the key was unpickled"
    assert "frame without a valid key" in (daemon.root / "thespian.log").read_text(), "refusals are logged"
    with daemon.client() as c:
        assert "gateway" in c.health()["ready"], "the daemon keeps serving"


def test_the_key_file_is_root_only_and_kept(daemon: Daemon) -> None:
    key_file = daemon.root / "transport.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_key(key_file) == key_file.read_bytes()


def test_a_valid_mac_still_admits_only_known_classes(tmp_path: Path) -> None:
    s = Serializer(b"k" * 32)
    marker = tmp_path / "owned"
    with pytest.raises(Refused, match=r"(posix|os)\.system"):
        s.loads(s.dumps(_Evil(marker)))
    assert not marker.exists()
    from actors.messages import Ask, TaskRequest

    msg = Ask(3, TaskRequest("ns", "id", "kill", {"signal": 9}))
    assert s.loads(s.dumps(msg)) == msg
    from actors.messages import TaskList
    from actors.taskinfo import TaskInfo

    listing = TaskList((TaskInfo("ns", "a", 7, "running", -1, 0.0, 8, "/b/a", 1.5, 9, 2, "bridge", "10.88.0.2", "n1"),
                        TaskInfo("ns", "b", 0, "stopped", 137, 2.5, 0, "/b/b", 1.0)))  # fmt: skip
    assert s.loads(s.dumps(listing)) == listing  # TaskInfo pickles as its values (its __reduce__)
    with pytest.raises(Refused, match="key"):
        Serializer(b"x" * 32).loads(s.dumps(msg))
    with pytest.raises(Refused):
        s.loads(b"short")
    assert s.loads(pickle.dumps("ACK")) == "ACK"
    import actors.bundle

    with pytest.raises(Refused, match="delete_bundle"):
        s.loads(s.dumps(actors.bundle.delete_bundle))  # functions of ours are never callable from a frame


def test_every_message_class_crosses_the_transport() -> None:
    import dataclasses
    import inspect

    from actors import messages

    s = Serializer(b"k" * 32)
    classes = [
        c for _, c in inspect.getmembers(messages, inspect.isclass) if c.__module__ == messages.__name__
    ]
    assert len(classes) > 20
    for cls in classes:
        assert dataclasses.is_dataclass(cls), cls
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen and hasattr(cls, "__slots__"), f"{cls.__name__} must be frozen and slotted"
        fields = {f.name: _sample(f.type) for f in dataclasses.fields(cls)}
        value = cls(**fields)
        assert s.loads(s.dumps(value)) == value


def _sample(annotation: object) -> object:
    text = str(annotation)
    if text.startswith("int"):
        return 1
    if text.startswith("float"):
        return 1.5
    if text.startswith("bool"):
        return True
    if text.startswith("str"):
        return "x"
    if text.startswith("dict"):
        return {"k": "v"}
    if text.startswith("tuple"):
        return ("a",)
    return None
