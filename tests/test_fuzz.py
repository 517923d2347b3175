"""Fuzzing both wire protocols for a bounded time: no crash, no hang, no state change.

Hypothesis generates frames: random msgpack maps with known and unknown
methods and parameters of every type, and raw bytes.  After each example the
daemon (or the shim) must still answer, and what existed before must be
exactly what exists after.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import msgpack
import psutil
from conftest import Daemon, Shims
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_daemon import run

from actors import gateway_protocol as gp
from actors import wire
from actors.shim import protocol as sp

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
KNOWN_GATEWAY = sorted(m for m in gp.METHODS if m != gp.SUBSCRIBE)
# Requests that must not change anything: reads, and writes aimed at names that do not exist.
PARAM_NAMES = ["id", "namespace", "signal", "spec", "filters", "exec_id", "labels", "fieldpaths", "all"]
gateway_frames = st.fixed_dictionaries(
    {
        "id": st.integers(0, 2**31),
        "method": st.sampled_from([*KNOWN_GATEWAY, "x", ""]) | st.text(max_size=12),
    },
    optional={
        "params": st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=8), values, max_size=5)
    },
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _exchange(address: str, payload: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        with wire.socket_name(address) as name:
            s.connect(name)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass  # the peer closed on garbage, as it should


def _snapshot(d: Daemon) -> tuple[Any, ...]:
    with d.client() as c:
        return (
            sorted((t.id, t.pid, t.status) for t in c.list_tasks()),
            sorted(r["id"] for r in c.list_containers()),
        )


def test_fuzz_the_gateway(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        run(c, rootfs, "fuzz-target", ["/bin/sleep", "1000"])
    before = _snapshot(daemon)
    with daemon.client() as c:
        gateway_pid = c.health()["pids"]["gateway"]
    rss_before = psutil.Process(gateway_pid).memory_info().rss

    @SETTINGS
    @given(frame=gateway_frames, raw=st.binary(max_size=64))
    def fuzz(frame: dict[str, Any], raw: bytes) -> None:
        params = dict(frame.get("params", {}))
        # Never let the fuzzer name the live task: only the untouched state is checked.
        if params.get("id") == "fuzz-target":
            params["id"] = "other"
        try:
            payload = wire.encode({**frame, "params": params})
        except (wire.ProtocolError, ValueError, TypeError, OverflowError):
            return
        _exchange(daemon.address, payload)
        _exchange(daemon.address, raw)

    fuzz()
    assert _snapshot(daemon) == before, "an invalid request changed state"
    with daemon.client() as c:
        assert "gateway" in c.health()["ready"]
        assert c.health()["pids"]["gateway"] == gateway_pid, "the Gateway did not crash"
        c.delete_task("fuzz-target", force=True)
    assert psutil.Process(gateway_pid).memory_info().rss < rss_before + 64 * 1024 * 1024, (
        "memory stays bounded"
    )


def test_fuzz_the_shim(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    pid = task.run()
    shim_methods = sorted(sp.METHODS - {"shutdown", "kill", "delete", "create", "start", "pause", "update",
                                        "checkpoint", "exec"})  # fmt: skip
    frames = st.fixed_dictionaries(
        {
            "id": st.integers(0, 2**31),
            "method": st.sampled_from([*shim_methods, "nope"]) | st.text(max_size=10),
        },
        optional={"params": st.dictionaries(st.text(max_size=8), values, max_size=5)},
    )

    @SETTINGS
    @given(frame=frames, raw=st.binary(max_size=64))
    def fuzz(frame: dict[str, Any], raw: bytes) -> None:
        if frame["method"] == "wait":
            frame = {**frame, "params": {**frame.get("params", {}), "timeout": 0}}
        if frame["method"] in ("shutdown", "kill", "delete", "create", "start", "pause", "update", "checkpoint",
                               "exec", "close_io", "resize_pty", "resume"):  # fmt: skip
            return
        try:
            payload = msgpack.packb(frame, use_bin_type=True)
        except (ValueError, TypeError, OverflowError):
            return
        _exchange(task.handle.address, len(payload).to_bytes(4, "big") + payload)
        _exchange(task.handle.address, raw)

    fuzz()
    state = task.client.call("state")
    assert (state["status"], state["pid"]) == ("running", pid)
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    task.client.call("delete")
