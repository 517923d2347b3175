"""The single reaper under load: no ECHILD, no lost or misattributed exit status."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
from conftest import Shims, wait_for

EXECS = 300
THREADS = 8


def test_concurrent_execs_and_runtime_calls_keep_every_status(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    task.run()
    task.client.subscribe()

    def one(i: int) -> tuple[int, int, int]:
        eid = f"x{i}"
        task.client.call("exec", exec_id=eid, spec={"args": ["/bin/sh", "-c", f"exit {i % 120}"]})
        pid = task.client.call("start", exec_id=eid)["pid"]
        status = task.client.call("wait", exec_id=eid, timeout=60)["exit_status"]
        task.client.call("delete", exec_id=eid)
        return i, pid, status

    stop = threading.Event()
    runtime_calls = 0

    def hammer() -> None:
        # Runtime calls racing with container exits: each must get its own status from the reaper.
        nonlocal runtime_calls
        while not stop.is_set():
            task.client.call("pids")
            task.client.call("state")
            runtime_calls += 1

    side = threading.Thread(target=hammer)
    side.start()
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(one, range(EXECS)))
    finally:
        stop.set()
        side.join(60)
    assert runtime_calls > 0
    for i, _pid, status in results:
        assert status == i % 120, f"exec x{i} got status {status}"
    exits = {}
    for _ in range(EXECS):
        event = task.client.next_event(30, "exit")["data"]
        assert event["id"] not in exits, f"duplicate exit for {event['id']}"
        exits[event["id"]] = (event["pid"], event["exit_status"])
    assert exits == {f"x{i}": (pid, status) for i, pid, status in results}
    task.client.call("kill", signal=9)
    assert task.client.call("wait", timeout=30)["exit_status"] == 137
    task.client.call("delete")


def test_orphans_reparented_to_the_shim_are_reaped_while_runc_runs(shims: Shims) -> None:
    # Without a pid namespace the container's orphans become the shim's children (it is the subreaper).
    script = "for i in $(seq 200); do (sleep 0.$((i % 5)) &) ; done; sleep 2; exit 6"
    task = shims.new(["/bin/sh", "-c", script], namespaces=("ipc", "uts", "mount", "network"))
    task.run()
    for _ in range(20):
        task.client.call("state")
        try:
            task.client.call("pids")
        except Exception as exc:  # the container may be gone already; only that error is acceptable
            assert "not running" in str(exc) or "does not exist" in str(exc), exc
    assert task.client.call("wait", timeout=60)["exit_status"] == 6
    shim = psutil.Process(task.pid)
    wait_for(lambda: not shim.children(), 30, "every orphan reaped by the shim")
    task.client.call("delete")
