"""The shim outlives whoever started it, and nobody misses an exit for not being connected."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO, Shims, Task, pid_alive, wait_for, wait_pid_gone

from actors.bundle import delete_bundle
from actors.mount import unmount_all
from actors.shim.client import ShimClient, ShimHandle

STARTER = textwrap.dedent(
    """
    import json, sys, time
    from actors.shim.client import ShimClient, start_shim
    ns, cid, bundle, root, rootfs = sys.argv[1:]
    h = start_shim(ns, cid, bundle, root)
    c = ShimClient(h.address)
    pid = c.call("create", rootfs=[{"type": "bind", "source": rootfs, "options": ["rbind"]}])["pid"]
    c.call("start")
    print(json.dumps({"shim": h.pid, "address": h.address, "pid": pid}), flush=True)
    time.sleep(1000)
    """
)


def test_shim_survives_sigkill_of_its_starter_and_serves_a_new_client(shims: Shims) -> None:
    cid, bundle = shims.bundle(["/bin/sleep", "1000"])
    root = str(shims.state / "runc" / shims.namespace)
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, shims.namespace, cid, str(bundle), root, str(shims.rootfs)],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert starter.stdout is not None
        info = json.loads(starter.stdout.readline())
    finally:
        starter.kill()
        starter.wait()
        if starter.stdout:
            starter.stdout.close()
    handle = ShimHandle(info["shim"], info["address"])
    task = Task(shims.namespace, cid, bundle, "runc", root, handle, ShimClient(handle.address), shims.rootfs)
    shims.tasks.append(task)
    assert pid_alive(handle.pid), "the shim died with its starter"
    assert os.getsid(handle.pid) == handle.pid, "the shim leads a session of its own"
    state = task.client.call("state")
    assert state["status"] == "running" and state["pid"] == info["pid"]
    task.client.subscribe()
    task.client.call("kill", signal=9)
    event = task.client.next_event(30, "exit")["data"]
    assert (event["pid"], event["exit_status"]) == (info["pid"], 137)
    task.client.call("delete")


def test_exit_while_no_client_is_connected_is_reported_on_reconnect(shims: Shims) -> None:
    task = shims.new(["/bin/sh", "-c", "sleep 0.5; exit 4"])
    pid = task.create()
    task.client.call("start")
    first_seq = task.client.subscribe()
    task.client.close()
    # Nobody is connected when the container exits.
    wait_for(lambda: Path(task.path("init.exit")).exists(), 30, "the exit record in the bundle")
    assert json.loads(Path(task.path("init.exit")).read_text())["exit_status"] == 4
    task.client = task.connect()
    state = task.client.call("state")
    assert (state["status"], state["exit_status"], state["pid"]) == ("stopped", 4, pid)
    task.client.subscribe(since=first_seq)
    replayed = task.client.next_event(5, "exit")
    assert replayed["data"]["exit_status"] == 4 and replayed["seq"] > first_seq
    task.client.call("delete")


def test_init_exit_is_replayed_even_after_many_exec_events(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    task.run()
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    # A late subscriber asking for everything gets the init's exit.
    late = task.connect()
    late.subscribe(since=0)
    assert late.next_event(5, "exit")["data"]["exit_status"] == 137
    task.client.call("delete")


def test_two_clients_both_get_the_exit_and_one_closing_does_not_hurt_the_other(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    pid = task.run()
    other = task.connect()
    other.subscribe()
    task.client.subscribe()
    slow = task.connect()  # subscribed, never reads: must not hold anyone up
    slow.subscribe()
    other.close()
    task.client.call("kill", signal=9)
    assert task.client.next_event(30, "exit")["data"]["pid"] == pid
    task.client.call("delete")


def test_shim_sigkill_leaves_the_container_running_and_the_exit_file_absent(shims: Shims) -> None:
    """A dead shim is the daemon's to clean up; here we only check the shim does not take the container."""
    task = shims.new(["/bin/sleep", "1000"])
    pid = task.run()
    os.kill(task.pid, signal.SIGKILL)
    assert wait_pid_gone(task.pid, 10)
    assert pid_alive(pid), "the container outlives its shim"
    assert not Path(task.path("init.exit")).exists()
    # What the daemon's dead-shim cleanup will do: delete --force under the right root.
    subprocess.run(["runc", "--root", task.runtime_root, "delete", "--force", task.id], check=True)
    assert wait_pid_gone(pid, 10)
    unmount_all(task.path("rootfs"))


def test_a_shim_whose_bundle_is_removed_takes_its_container_down_and_exits(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    pid = task.run()
    delete_bundle(task.bundle)  # unmounts the rootfs first, then removes the directory
    assert wait_pid_gone(task.pid, 30), "a shim without a bundle must not linger"
    assert wait_pid_gone(pid, 10), "nor its container"
    state = subprocess.run(["runc", "--root", task.runtime_root, "state", task.id], capture_output=True)
    assert state.returncode != 0
