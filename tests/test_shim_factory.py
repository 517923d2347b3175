"""Shims forked from the warm factory behave exactly like exec'd ones, and inherit nothing."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Shims, Task, wait_for, wait_pid_gone

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


def _started(shims: Shims, args: list[str], factory: str) -> Task:
    """A bundle for ``args`` and its shim, started through the factory at ``factory``; removed by ``shims``."""
    cid, bundle = shims.bundle(args)
    runtime_root = str(shims.state / "runc" / shims.namespace)
    handle = start_shim(shims.namespace, cid, str(bundle), runtime_root, factory=factory)
    task = Task(
        shims.namespace, cid, bundle, "runc", runtime_root, handle, ShimClient(handle.address), shims.rootfs
    )
    shims.tasks.append(task)
    return task


def test_a_factory_shim_runs_a_container_and_inherits_nothing(shims: Shims, factory: tuple[str, int]) -> None:
    address, factory_pid = factory
    task = _started(shims, ["/bin/sh", "-c", "exit 5"], address)
    handle = task.handle
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
    task = _started(shims, ["/bin/true"], str(tmp_path / "none.sock"))
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


def _children(pid: int) -> list[int]:
    """Live children of ``pid`` (zombies and exited ones left out)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            out.append(int(entry))
    return out


def _spare_of(factory_pid: int) -> int:
    """The factory's one child that is not a shim: its spare (waited for: it is forked after an answer)."""
    found: list[int] = []

    def one() -> bool:
        spares = [p for p in _children(factory_pid) if os.getsid(p) != p]  # a shim has a session of its own
        found[:] = spares
        return len(spares) == 1

    wait_for(one, 10, "the factory's spare")
    return found[0]


def test_a_shim_is_the_spare_forked_ahead_and_a_new_spare_follows(
    shims: Shims, factory: tuple[str, int]
) -> None:
    address, factory_pid = factory
    spare = _spare_of(factory_pid)
    task = _started(shims, ["/bin/sh", "-c", "exit 3"], address)
    handle = task.handle
    assert handle.pid == spare, "the request went to the spare"
    assert os.getsid(handle.pid) == handle.pid
    assert not _socket_inodes(factory_pid) & _socket_inodes(handle.pid), "no socket of the factory kept"
    assert _spare_of(factory_pid) != spare, "a new spare for the next request"
    task.run()
    assert task.client.call("wait", timeout=30)["exit_status"] == 3
    task.client.call("delete")


def test_a_dead_spare_leaves_the_request_to_a_plain_fork(shims: Shims, factory: tuple[str, int]) -> None:
    address, factory_pid = factory
    spare = _spare_of(factory_pid)
    os.kill(spare, signal.SIGKILL)
    assert wait_pid_gone(spare, 10)
    task = _started(shims, ["/bin/true"], address)
    handle = task.handle
    assert handle.pid != spare
    task.run()
    assert task.client.call("wait", timeout=30)["exit_status"] == 0
    task.client.call("delete")
    _spare_of(factory_pid)  # and the factory keeps a spare again


def test_a_spare_goes_with_its_factory(tmp_path: Path) -> None:
    pid = start_factory(str(tmp_path / "factory.sock"))
    try:
        spare = _spare_of(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert wait_pid_gone(pid, 10)
    assert wait_pid_gone(spare, 10), "a spare whose factory is gone exits"
