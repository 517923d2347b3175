"""TaskHosts: TaskActors share processes, a host that dies has all its tasks restored, empty hosts go."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
from conftest import Daemon, wait_for

from actors.chaos.invariants import check_leftovers, collect_events
from actors.chaos.ledger import Ledger
from actors.chaos.workload import make_task
from actors.task_host import TASKS_PER_HOST

SLEEPER = ["/bin/sleep", "1000"]


def _hosts(d: Daemon) -> set[int]:
    """The RuntimeActor's TaskHost children (its only children)."""
    with d.client() as c:
        runtime = int(c.health()["pids"]["runtime"])
    return {p.pid for p in psutil.Process(runtime).children() if p.status() != psutil.STATUS_ZOMBIE}


def test_tasks_share_hosts_a_dead_host_has_every_task_restored_and_empty_hosts_go(
    daemon: Daemon, rootfs: Path
) -> None:
    n = TASKS_PER_HOST + 2
    ids = [f"h{i}" for i in range(n)]
    with daemon.client() as c:
        for cid in ids:
            make_task(c, rootfs, cid, SLEEPER)
            c.create_task(cid)
            c.start(cid)
        tasks = {t.id: t for t in c.list_tasks()}
    by_host: dict[int, list[str]] = {}
    for cid in ids:
        by_host.setdefault(tasks[cid].actor_pid, []).append(cid)
    assert len(by_host) == 2, "the first host fills before a second is started"
    assert sorted(len(v) for v in by_host.values()) == [2, TASKS_PER_HOST]
    assert set(by_host) == _hosts(daemon)

    small = min(by_host, key=lambda pid: len(by_host[pid]))
    os.kill(small, signal.SIGKILL)
    with daemon.client() as c:

        def restored() -> bool:
            now = {t.id: t for t in c.list_tasks()}
            return all(
                cid in now and now[cid].status == "running" and now[cid].actor_pid not in (0, small)
                for cid in by_host[small]
            )

        wait_for(restored, 60, "the dead host's tasks restored in a live host")
        for cid in by_host[small]:
            c.exec(cid, "x", ["/bin/sh", "-c", "exit 5"])
            c.start(cid, exec_id="x")
            assert c.wait(cid, exec_id="x", timeout=30)["exit_status"] == 5
        for cid in ids:
            c.kill(cid, 9)
            assert c.wait(cid, timeout=30)["exit_status"] == 137
            c.delete_task(cid)
        wait_for(lambda: len(_hosts(daemon)) == 1, 30, "empty hosts let go, one kept warm")
    exits = [e["event"] for e in collect_events(daemon, daemon.namespace) if e["topic"] == "/tasks/exit"]
    inits = sorted(e["container_id"] for e in exits if e["id"] == e["container_id"])
    assert inits == sorted(ids), "one init exit each, none invented"
    assert check_leftovers(daemon, Ledger(), set(ids)) == []
