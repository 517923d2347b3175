"""The MonitorActor on real cgroups: OOM events in order, metrics, limits, and nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, wait_for
from test_daemon import Recorder, run

from actors.cgroups import CGROUP_ROOT, Host, detect, read_metrics
from actors.spec import default_spec


def task_dirs(ns: str, cid: str) -> list[Path]:
    """Every directory of the task's cgroup that exists, in any hierarchy."""
    return [
        h / "contactor" / ns / cid for h in CGROUP_ROOT.iterdir() if (h / "contactor" / ns / cid).exists()
    ]


def test_oom_kill_gives_one_oom_event_then_exit_137(daemon: Daemon, rootfs: Path) -> None:
    rec = Recorder(daemon, ("event.container_id==hog",))
    time.sleep(0.3)
    with daemon.client() as c:
        spec = default_spec(["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], hostname="hog",
                            resources={"memory": {"limit": 16 * 1024 * 1024}})  # fmt: skip
        c.create_container("hog", spec, rootfs=str(rootfs))
        c.create_task("hog")
        c.start("hog")
        assert c.wait("hog")["exit_status"] == 137
        wait_for(lambda: any(t == "/tasks/exit" for t, _ in rec.of("hog")), 30, "the exit event")
        time.sleep(0.5)  # a duplicate or a late OOM would arrive now
        topics = [t for t, _ in rec.of("hog") if t in ("/tasks/oom", "/tasks/exit")]
        assert topics == ["/tasks/oom", "/tasks/exit"]
        c.delete_task("hog")
    rec.close()


def test_metrics_of_a_busy_container(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        spec = default_spec(["/bin/sh", "-c", "sleep 1000 & while :; do :; done"], hostname="busy",
                            resources={"memory": {"limit": 64 * 1024 * 1024}})  # fmt: skip
        c.create_container("busy", spec, rootfs=str(rootfs))
        c.create_task("busy")
        c.start("busy")
        first = c.call("tasks.metrics", id="busy")
        wait_for(lambda: c.call("tasks.metrics", id="busy")["cpu"]["usage_total"] > first["cpu"]["usage_total"],
                 30, "cpu usage to rise")  # fmt: skip
        m = c.call("tasks.metrics", id="busy")
        assert m["memory"]["limit"] == 64 * 1024 * 1024
        assert 0 < m["memory"]["usage"] <= m["memory"]["limit"]
        assert m["pids"]["current"] == len(c.pids("busy")) == 2
        assert "oom_kills" in m["memory"] and m["memory"]["oom_kills"] == 0
        c.delete_task("busy", force=True)
        from actors.errdefs import NotFound

        with pytest.raises(NotFound):
            c.call("tasks.metrics", id="busy")


def test_update_of_the_memory_limit_reaches_the_cgroup(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        run(c, rootfs, "upd", ["/bin/sleep", "1000"])
        c.update("upd", {"memory": {"limit": 48 * 1024 * 1024}})
        limit = CGROUP_ROOT / "memory" / "contactor" / daemon.namespace / "upd" / "memory.limit_in_bytes"
        assert int(limit.read_text()) == 48 * 1024 * 1024
        assert c.call("tasks.metrics", id="upd")["memory"]["limit"] == 48 * 1024 * 1024
        c.delete_task("upd", force=True)


def test_no_cgroup_is_left_after_delete_dead_shim_or_restart(daemon: Daemon, rootfs: Path) -> None:
    ns = daemon.namespace
    with daemon.client() as c:
        for cid in ("del", "dead", "restarted"):
            run(c, rootfs, cid, ["/bin/sleep", "1000"])
            assert task_dirs(ns, cid), f"{cid} has cgroups while it runs"
        c.delete_task("del", force=True)
        assert task_dirs(ns, "del") == []
        shim = next(t.shim_pid for t in c.list_tasks() if t.id == "dead")
        os.kill(shim, signal.SIGKILL)
        wait_for(lambda: "dead" not in [t.id for t in c.list_tasks()], 30, "dead-shim cleanup")
        assert task_dirs(ns, "dead") == []
    daemon.stop()
    daemon.start()
    with daemon.client() as c:
        wait_for(lambda: [(t.id, t.status) for t in c.list_tasks()] == [("restarted", "running")], 30,
                 "the task restored")  # fmt: skip
        assert c.call("tasks.metrics", id="restarted")["pids"]["current"] == 1, (
            "monitored again after restore"
        )
        c.delete_task("restarted", force=True)
    assert task_dirs(ns, "restarted") == []
    # The namespace's dir stays while the daemon runs: removed with its last task, it raced the
    # runtime making the next task's cgroup under it.  The daemon removes the empty ones when it stops.
    assert (CGROUP_ROOT / "memory" / "contactor" / ns).exists()
    daemon.stop()
    assert not (CGROUP_ROOT / "memory" / "contactor" / ns).exists(), "the namespace's dir goes at the stop"
    daemon.start()


@pytest.fixture
def unified_cgroup() -> Iterator[Path]:
    host = detect()
    if host.unified is None:
        pytest.fail("this test needs a cgroup2 hierarchy (hybrid or pure v2)")
    path = host.unified / f"contactor-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    proc = subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
    try:
        (path / "cgroup.procs").write_text(str(proc.pid))
        yield path
    finally:
        proc.kill()
        proc.wait()
        wait_for(lambda: not (path / "cgroup.procs").read_text().strip(), 10, "the cgroup to empty")
        path.rmdir()


def test_metrics_read_the_real_v2_hierarchy(unified_cgroup: Path) -> None:
    host = detect()
    assert host.unified is not None
    v2 = Host(mode="v2", root=host.unified, v1={}, unified=host.unified)
    cg = "/" + unified_cgroup.name
    first = read_metrics(v2, cg)["cpu"]["usage_total"]
    wait_for(lambda: read_metrics(v2, cg)["cpu"]["usage_total"] > first, 30, "cpu usage to rise on v2")
    controllers = (host.unified / "cgroup.controllers").read_text().split()
    if "memory" in controllers:
        assert read_metrics(v2, cg)["memory"]["usage"] > 0
    else:
        # No memory controller on this v2 tree: the group is absent, not zeros.
        assert "memory" not in read_metrics(v2, cg)
