"""Shims forked from the warm factory behave exactly like exec'd ones, and inherit nothing."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Shims, Task, wait_pid_gone

from actors.shim.client import ShimClient, start_shim
from actors.shim.factory import start_factory


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[tuple[str, int]]:
    address = str(tmp_path / "factory.sock")
    pid = start_factory(address)
    yield address, pid
    os.kill(pid, signal.SIGTERM)
    assert wait_pid_gone(pid, 10)


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_a_factory_shim_runs_a_container_and_inherits_nothing(shims: Shims, factory: tuple[str, int]) -> None:
    address, factory_pid = factory
    cid, bundle = shims.bundle(["/bin/sh", "-c", "exit 5"])
    runtime_root = str(shims.state / "runc" / shims.namespace)
    handle = start_shim(shims.namespace, cid, str(bundle), runtime_root, factory=address)
    task = Task(
        shims.namespace, cid, bundle, "runc", runtime_root, handle, ShimClient(handle.address), shims.rootfs
    )
    shims.tasks.append(task)
    assert os.getsid(handle.pid) == handle.pid, "a session of its own"
    with open(f"/proc/{handle.pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    assert ppid == factory_pid, "forked once, by the factory"
    with open(f"/proc/{factory_pid}/status") as f:
        ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGCHLD - 1)), "the factory ignores SIGCHLD: a shim that ends is never a zombie"
    assert not _socket_inodes(factory_pid) & _socket_inodes(handle.pid), "no socket of the factory inherited"
    task.run()
    assert task.client.call("wait", timeout=30)["exit_status"] == 5
    task.client.call("delete")


def test_start_falls_back_to_exec_without_a_factory(shims: Shims, tmp_path: Path) -> None:
    cid, bundle = shims.bundle(["/bin/true"])
    runtime_root = str(shims.state / "runc" / shims.namespace)
    handle = start_shim(shims.namespace, cid, str(bundle), runtime_root, factory=str(tmp_path / "none.sock"))
    task = Task(
        shims.namespace, cid, bundle, "runc", runtime_root, handle, ShimClient(handle.address), shims.rootfs
    )
    shims.tasks.append(task)
    task.run()
    assert task.client.call("wait", timeout=30)["exit_status"] == 0
    task.client.call("delete")


def test_factory_errors_reach_the_caller(shims: Shims, factory: tuple[str, int]) -> None:
    from actors.errdefs import InvalidArgument

    _, bundle = shims.bundle(["/bin/true"])
    with pytest.raises(InvalidArgument, match="container id"):
        start_shim(shims.namespace, "../x", str(bundle), str(shims.state / "runc"), factory=factory[0])
    from actors.bundle import delete_bundle

    delete_bundle(bundle)
