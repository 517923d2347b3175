"""Bad input gets a categorized error (or a closed connection) and changes nothing for anyone else."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import msgpack
import pytest
from conftest import Shims

from actors.errdefs import FailedPrecondition, Internal, InvalidArgument, NotFound, Unavailable
from actors.shim import protocol
from actors.shim.client import start_shim


def raw_connect(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    with protocol.socket_name(address) as name:
        s.connect(name)
    return s


def closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # a length of 1.2 GB: over the frame limit
        struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",  # msgpack's never-used byte
        struct.pack(">I", 1) + b"\x05",  # a frame that is not a map
        protocol.encode({"method": "state"}),  # no request id
        protocol.encode({"id": "seven", "method": "state"}),
        struct.pack(">I", protocol.MAX_FRAME + 1),
    ],
    ids=["http", "undecodable", "not-a-map", "no-id", "string-id", "too-large"],
)
def test_garbage_closes_only_that_connection(shims: Shims, garbage: bytes) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    task.run()
    with raw_connect(task.handle.address) as s:
        s.sendall(garbage)
        assert closed_by_peer(s)
    # The shim and its other clients carry on.
    assert task.client.call("state")["status"] == "running"
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    task.client.call("delete")


def test_unknown_method_and_bad_params_get_error_replies(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    task.run()
    with raw_connect(task.handle.address) as s:
        protocol.send_frame(s, {"id": 1, "method": "format_disk", "params": {}})
        reply = protocol.recv_frame(s)
        assert reply == {
            "id": 1,
            "error": {"category": "invalid_argument", "message": "unknown method 'format_disk'"},
        }
        protocol.send_frame(s, {"id": 2, "method": "state", "params": [1, 2]})
        reply = protocol.recv_frame(s)
        assert reply is not None and reply["error"]["category"] == "invalid_argument"
    cases = [
        ("kill", {"signal": "TERM"}),
        ("kill", {"signal": 0}),
        ("kill", {"signal": 9, "all": "yes"}),
        ("state", {"exec_id": "../../etc"}),
        ("state", {"exec_id": "x" * 77}),
        ("exec", {"exec_id": "e", "spec": {"args": []}}),
        ("exec", {"exec_id": "e", "spec": "sh"}),
        ("exec", {"spec": {"args": ["/bin/true"]}}),
        ("resize_pty", {"width": -1, "height": 10}),
        ("update", {"resources": "lots"}),
        ("wait", {"timeout": "forever"}),
        ("checkpoint", {"image_path": "relative"}),
        ("subscribe", {"since": -1}),
    ]
    for method, params in cases:
        with pytest.raises(InvalidArgument):
            task.client.call(method, **params)
    with pytest.raises(NotFound):
        task.client.call("state", exec_id="nope")
    assert task.client.call("state")["status"] == "running"
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    task.client.call("delete")


def test_bad_rootfs_mounts_are_refused_without_side_effects(shims: Shims) -> None:
    task = shims.new(["/bin/true"])
    for rootfs in (
        "not-a-list",
        [{"type": "bind"}],
        [{"type": "bind", "source": "relative/dir", "options": ["rbind"]}],
        [{"type": "bind", "source": "/no/such/dir", "options": ["rbind"]}],
        [{"type": "bind", "source": str(shims.rootfs), "options": "rbind"}],
    ):
        with pytest.raises(InvalidArgument):
            task.create(rootfs=rootfs)
        assert not os.path.ismount(task.path("rootfs"))
    assert not Path(task.path("init.pid")).exists()


def test_runtime_error_text_comes_back(shims: Shims, runtime_name: str) -> None:
    task = shims.new(["/no/such/binary"], runtime=runtime_name)
    with pytest.raises(InvalidArgument, match=r"(?i)no such file or directory"):
        task.create()
    assert not os.path.ismount(task.path("rootfs"))
    assert task.client.call("info")["pid"] == task.pid


def test_runtime_create_failure_rolls_back_mount_and_runtime_state(shims: Shims) -> None:
    task = shims.new(["/bin/true"])
    # A bind mount of a source that does not exist makes the runtime's create fail half-way.
    spec = json.loads(Path(task.path("config.json")).read_text())
    spec["mounts"].append(
        {"destination": "/mnt", "type": "bind", "source": "/no/such/src", "options": ["bind"]}
    )
    Path(task.path("config.json")).write_text(json.dumps(spec))
    with pytest.raises(Internal, match="OCI runtime create failed"):
        task.create()
    assert not os.path.ismount(task.path("rootfs"))
    state = subprocess.run(["runc", "--root", task.runtime_root, "state", task.id], capture_output=True)
    assert state.returncode != 0, "the half-created container was left in the runtime"
    assert task.client.call("info")["pid"] == task.pid
    # The shim is ready for a good create afterwards.
    spec["mounts"].pop()
    Path(task.path("config.json")).write_text(json.dumps(spec))
    task.run()
    assert task.client.call("wait", timeout=30)["exit_status"] == 0
    task.client.call("delete")


def test_shim_start_errors_are_categorized(shims: Shims, tmp_path: Path) -> None:
    cid, bundle = shims.bundle(["/bin/true"])
    root = str(tmp_path / "runc")
    with pytest.raises(NotFound, match="no-such-runtime"):
        start_shim(shims.namespace, cid, str(bundle), root, runtime="no-such-runtime")
    with pytest.raises(InvalidArgument, match="container id"):
        start_shim(shims.namespace, "../escape", str(bundle), root)
    with pytest.raises(InvalidArgument, match="namespace"):
        start_shim("bad/ns", cid, str(bundle), root)
    with pytest.raises(InvalidArgument, match="bundle"):
        start_shim(shims.namespace, cid, str(tmp_path / "nope"), root)
    with pytest.raises(Unavailable, match="not found"):
        start_shim(shims.namespace, cid, str(bundle), root, shim=["/no/such/shim"])
    from actors.bundle import delete_bundle

    delete_bundle(bundle)


def test_checkpoint_reports_why_criu_cannot_work(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    task.run()
    images = task.path("checkpoint")
    criu = shutil.which("criu")
    works = criu is not None and os.system(f"{criu} check >/dev/null 2>&1") == 0
    if works:
        task.client.call("checkpoint", image_path=images)
        assert any(Path(images).iterdir()), "criu wrote no images"
    else:
        with pytest.raises(Unavailable, match="criu") as err:
            task.client.call("checkpoint", image_path=images)
        if criu is not None:
            assert "cannot work on this machine" in str(err.value)
    assert task.client.call("state")["status"] == "running", "a failed checkpoint leaves the container alone"
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    task.client.call("delete")


def test_only_the_owner_may_connect(shims: Shims) -> None:
    task = shims.new(["/bin/true"])
    mode = os.stat(task.handle.address).st_mode & 0o777
    assert mode == 0o600
    nobody = 65534
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgid(nobody)
            os.setuid(nobody)
            try:
                raw_connect(task.handle.address)
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "an unprivileged user could connect"


def test_frames_round_trip_and_limits() -> None:
    frame = protocol.encode({"id": 1, "method": "state", "params": {"exec_id": ""}})
    assert protocol.decode(frame[4:]) == {"id": 1, "method": "state", "params": {"exec_id": ""}}
    with pytest.raises(protocol.ProtocolError):
        protocol.encode({"blob": b"x" * protocol.MAX_FRAME})
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(msgpack.packb([1, 2]))


def test_long_socket_paths_work(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "shim.sock")
    assert len(path) > 108
    with socket.socket(socket.AF_UNIX) as server, protocol.socket_name(path) as name:
        server.bind(name)
        server.listen(1)
        with socket.socket(socket.AF_UNIX) as client, protocol.socket_name(path) as cname:
            client.connect(cname)
            conn, _ = server.accept()
            conn.close()
    assert os.path.exists(path)


def test_failed_precondition_for_calls_before_create(shims: Shims) -> None:
    task = shims.new(["/bin/true"])
    for method in ("start", "state", "kill", "pids", "pause", "resume", "delete", "wait", "update"):
        params = {"resources": {}} if method == "update" else {}
        with pytest.raises(FailedPrecondition):
            task.client.call(method, **params)
