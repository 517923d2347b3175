"""A container's life through its shim: create, start, state, signals, exit codes, delete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Shims, pid_alive, wait_for, wait_pid_gone

from actors.errdefs import AlreadyExists, FailedPrecondition, NotFound, Unavailable


def test_lifecycle_reports_states_and_exit_code(shims: Shims, runtime_name: str) -> None:
    task = shims.new(["/bin/sh", "-c", "read x < /dev/null; sleep 0.3; exit 3"], runtime=runtime_name)
    task.client.subscribe()
    pid = task.create()
    state = task.client.call("state")
    assert state["status"] == "created" and state["pid"] == pid and state["id"] == task.id
    assert int(Path(task.path("init.pid")).read_text()) == pid
    assert task.client.call("start")["pid"] == pid
    assert task.client.call("state")["status"] == "running"
    waited = task.client.call("wait")
    assert (waited["pid"], waited["exit_status"]) == (pid, 3)
    assert waited["exited_at"] > 0
    event = task.client.next_event(10, "exit")
    assert event["data"] == {"container_id": task.id, "id": task.id, "pid": pid, "exit_status": 3,
                             "exited_at": waited["exited_at"]}  # fmt: skip
    assert task.client.call("state")["status"] == "stopped"
    deleted = task.client.call("delete")
    assert (deleted["pid"], deleted["exit_status"]) == (pid, 3)
    with pytest.raises(NotFound):
        task.client.call("delete")
    assert not os.path.ismount(task.path("rootfs"))
    task.client.call("shutdown")
    assert wait_pid_gone(task.pid, 10), "shim must exit after shutdown"
    assert not os.path.exists(task.path("shim.sock"))


def test_exit_zero_and_init_exit_recorded_in_bundle(shims: Shims) -> None:
    task = shims.new(["/bin/true"])
    pid = task.run()
    assert task.client.call("wait")["exit_status"] == 0
    record = json.loads(Path(task.path("init.exit")).read_text())
    assert record["pid"] == pid and record["exit_status"] == 0 and record["exited_at"] > 0


@pytest.mark.parametrize(("signal_number", "status"), [(9, 137), (15, 143)])
def test_signals_give_128_plus_signal(
    shims: Shims, runtime_name: str, signal_number: int, status: int
) -> None:
    # Without a pid namespace of its own the init is an ordinary process: TERM's default action kills it.
    task = shims.new(["/bin/sleep", "1000"], runtime=runtime_name,
                     namespaces=("ipc", "uts", "mount", "network"))  # fmt: skip
    task.run()
    task.client.call("kill", signal=signal_number)
    assert task.client.call("wait", timeout=30)["exit_status"] == status
    task.client.call("delete")


def test_kill_all_reaches_every_process_of_a_pid_namespace_init(shims: Shims) -> None:
    task = shims.new(["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    task.run()
    wait_for(lambda: len(task.client.call("pids")["processes"]) == 3, 10, "three processes")
    task.client.call("kill", signal=9, all=True)
    assert task.client.call("wait", timeout=30)["exit_status"] == 137
    task.client.call("delete")


def test_pid_namespace_init_ignores_term_but_not_kill(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    pid = task.run()
    task.client.call("kill", signal=15)
    with pytest.raises(Unavailable, match="still running"):
        task.client.call("wait", timeout=0.5)
    assert pid_alive(pid)
    task.client.call("kill", signal=9)
    assert task.client.call("wait", timeout=30)["exit_status"] == 137
    task.client.call("delete")


def test_kill_after_exit_is_not_found(shims: Shims) -> None:
    task = shims.new(["/bin/true"])
    task.run()
    task.client.call("wait", timeout=30)
    with pytest.raises(NotFound):
        task.client.call("kill", signal=9)


def test_illegal_transitions_are_failed_precondition(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    with pytest.raises(FailedPrecondition):
        task.client.call("start")  # before create
    task.create()
    with pytest.raises(AlreadyExists):
        task.create()
    with pytest.raises(FailedPrecondition):
        task.client.call("pause")  # created, not running
    task.client.call("start")
    with pytest.raises(FailedPrecondition):
        task.client.call("start")
    with pytest.raises(FailedPrecondition):
        task.client.call("delete")  # running
    with pytest.raises(FailedPrecondition):
        task.client.call("resume")  # not paused
    with pytest.raises(FailedPrecondition):
        task.client.call("shutdown")  # container still exists
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    with pytest.raises(FailedPrecondition):
        task.client.call("pause")  # stopped
    task.client.call("delete")


def test_delete_of_created_container_kills_its_init(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    pid = task.create()
    deleted = task.client.call("delete")
    assert deleted["pid"] == pid and deleted["exit_status"] == 137
    assert wait_pid_gone(pid, 10)


def test_pause_and_resume(shims: Shims, runtime_name: str) -> None:
    task = shims.new(["/bin/sh", "-c", "while true; do sleep 0.05; done"], runtime=runtime_name)
    pid = task.run()
    task.client.call("pause")
    assert task.client.call("state")["status"] == "paused"
    freezer = Path(f"/sys/fs/cgroup/freezer/contactor/{task.namespace}/{task.id}/freezer.state")
    assert freezer.read_text().strip() == "FROZEN"
    with pytest.raises(FailedPrecondition):
        task.client.call("pause")
    with pytest.raises(FailedPrecondition):
        task.client.call("exec", exec_id="e1", spec={"args": ["/bin/true"]})
    task.client.call("resume")
    assert task.client.call("state")["status"] == "running"
    assert freezer.read_text().strip() == "THAWED"
    assert pid in [p["pid"] for p in task.client.call("pids")["processes"]]
    task.client.call("kill", signal=9)
    assert task.client.call("wait", timeout=30)["exit_status"] == 137
    task.client.call("delete")


def test_pids_lists_container_processes_with_exec_ids(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    pid = task.run()
    task.client.call("exec", exec_id="sleeper", spec={"args": ["/bin/sleep", "1000"]})
    epid = task.client.call("start", exec_id="sleeper")["pid"]
    procs = {p["pid"]: p["exec_id"] for p in task.client.call("pids")["processes"]}
    assert procs == {pid: "", epid: "sleeper"}
    task.client.call("kill", signal=9, all=True)
    assert task.client.call("wait", exec_id="sleeper", timeout=30)["exit_status"] == 137
    task.client.call("wait", timeout=30)
    task.client.call("delete", exec_id="sleeper")
    task.client.call("delete")


def test_update_changes_the_memory_limit_in_the_cgroup(shims: Shims, runtime_name: str) -> None:
    task = shims.new(["/bin/sleep", "1000"], runtime=runtime_name)
    task.run()
    limit = 64 * 1024 * 1024
    task.client.call("update", resources={"memory": {"limit": limit}})
    cg = Path(f"/sys/fs/cgroup/memory/contactor/{task.namespace}/{task.id}/memory.limit_in_bytes")
    assert int(cg.read_text()) == limit
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    task.client.call("delete")


def test_sigterm_to_the_shim_tears_the_container_down(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    pid = task.run()
    os.kill(task.pid, 15)
    assert wait_pid_gone(task.pid, 30)
    assert wait_pid_gone(pid, 10)
    assert not os.path.ismount(task.path("rootfs"))
    record = json.loads(Path(task.path("init.exit")).read_text())
    assert record["exit_status"] == 137


def test_forced_shutdown_of_a_paused_container_with_execs(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    pid = task.run()
    task.client.call("exec", exec_id="e", spec={"args": ["/bin/sleep", "1000"]})
    epid = task.client.call("start", exec_id="e")["pid"]
    task.client.call("pause")
    task.client.call("shutdown", force=True)
    assert wait_pid_gone(task.pid, 30), "the shim exits after a forced shutdown"
    assert wait_pid_gone(pid, 5) and wait_pid_gone(epid, 5)
    assert not os.path.ismount(task.path("rootfs"))
