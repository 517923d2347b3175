"""Restart policies driven by exit messages; an explicit kill or delete is never undone."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, pid_alive, wait_for

from actors import restart
from actors.client import Client
from actors.errdefs import InvalidArgument
from actors.spec import default_spec


def start(c: Client, rootfs: Path, cid: str, args: list[str], policy: str) -> int:
    c.create_container(
        cid, default_spec(args, hostname=cid), rootfs=str(rootfs), labels={restart.LABEL: policy}
    )
    c.create_task(cid)
    return c.start(cid)


def task(c: Client, cid: str) -> Any:
    return next(t for t in c.list_tasks() if t.id == cid)


def events(d: Daemon, out: list[dict[str, Any]]) -> None:
    def loop() -> None:
        with d.client() as c:
            try:
                for env in c.events(since=0):
                    out.append(env)
            except Exception:
                return

    threading.Thread(target=loop, daemon=True).start()


def test_on_failure_restarts_at_most_n_times(daemon: Daemon, rootfs: Path) -> None:
    seen: list[dict[str, Any]] = []
    events(daemon, seen)
    with daemon.client() as c:
        first = start(c, rootfs, "flaky", ["/bin/sh", "-c", "exit 3"], "on-failure:2")
        wait_for(lambda: task(c, "flaky").restarts == 2 and task(c, "flaky").status == "stopped", 30,
                 "two restarts, then rest")  # fmt: skip
        time.sleep(2 * restart.delay(2))  # a third restart would have come by now
        t = task(c, "flaky")
        assert (t.restarts, t.status, t.exit_status) == (2, "stopped", 3)
        assert t.pid != first
        restarts = [e for e in seen if e["topic"] == "/tasks/restart"]
        assert [e["event"]["restarts"] for e in restarts] == [1, 2]
        exits = [e for e in seen if e["topic"] == "/tasks/exit"]
        assert len(exits) == 3 and all(e["event"]["exit_status"] == 3 for e in exits)
        c.delete_task("flaky")


def test_on_failure_leaves_a_clean_exit_alone_and_no_is_the_default(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        start(c, rootfs, "done", ["/bin/true"], "on-failure")
        start(c, rootfs, "plain", ["/bin/sh", "-c", "exit 1"], "")
        c.wait("done")
        c.wait("plain")
        time.sleep(2 * restart.BASE)
        assert (task(c, "done").restarts, task(c, "plain").restarts) == (0, 0)
        c.delete_task("done")
        c.delete_task("plain")


def test_always_restarts_until_a_client_kills_it(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        start(c, rootfs, "phoenix", ["/bin/sh", "-c", "sleep 0.2"], "always")
        wait_for(lambda: task(c, "phoenix").restarts >= 2, 30, "two restarts of a clean exit")
        wait_for(lambda: task(c, "phoenix").status == "running", 30, "running again")
        c.kill("phoenix", 9)
        c.wait("phoenix")
        count = task(c, "phoenix").restarts
        time.sleep(3 * restart.delay(count))
        assert (task(c, "phoenix").status, task(c, "phoenix").restarts) == ("stopped", count), (
            "the kill is final"
        )
        c.delete_task("phoenix")


def test_the_policy_survives_a_daemon_restart(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        pid = start(c, rootfs, "sturdy", ["/bin/sh", "-c", "trap 'exit 5' USR1; while true; do sleep 0.1; done"],
                    "on-failure:3")  # fmt: skip
    daemon.kill_all()
    import os
    import signal

    os.kill(pid, signal.SIGUSR1)
    daemon.start()
    with daemon.client() as c:
        wait_for(lambda: any(t.id == "sturdy" and t.restarts == 1 and t.status == "running"
                             for t in c.list_tasks()), 30, "the restart after restore")  # fmt: skip
        c.delete_task("sturdy", force=True)


def test_always_comes_back_after_its_shim_is_killed_and_a_kill_then_rm_is_final(
    daemon: Daemon, rootfs: Path
) -> None:
    seen: list[dict[str, Any]] = []
    events(daemon, seen)
    with daemon.client() as c:
        first = start(c, rootfs, "undying", ["/bin/sleep", "1000"], "always")
        shim = task(c, "undying").shim_pid
        os.kill(shim, signal.SIGKILL)
        wait_for(lambda: any(t.id == "undying" and t.status == "running" and t.pid != first
                             for t in c.list_tasks()), 30, "made again after its shim died")  # fmt: skip
        t = task(c, "undying")
        assert t.restarts == 1 and t.shim_pid != shim
        wait_for(lambda: any(e["topic"] == "/tasks/restart" for e in seen), 30, "/tasks/restart")
        mine = [(e["topic"], e["event"].get("exit_status")) for e in seen
                if e["topic"].startswith("/tasks/") and e["event"].get("container_id") == "undying"]  # fmt: skip
        assert mine[2:] == [("/tasks/exit", 137), ("/tasks/delete", 137), ("/tasks/create", None),
                            ("/tasks/start", None), ("/tasks/restart", None)], mine  # fmt: skip
        assert pid_alive(t.pid) and not pid_alive(first)
        c.kill("undying", 9)
        c.wait("undying")
        c.delete_task("undying")
        time.sleep(3 * restart.delay(1))
        assert all(t.id != "undying" for t in c.list_tasks()), "a kill and rm by a client is final"
        c.delete_container("undying")


def test_a_kill_while_a_dead_shims_task_waits_to_restart_is_final(tmp_path: Path, rootfs: Path) -> None:
    from actors.testing import private_daemon

    with private_daemon(tmp_path, extra_config="[restart]\nbase = 2.0\n") as d, d.client() as c:
        start(c, rootfs, "patient", ["/bin/sleep", "1000"], "always")
        os.kill(task(c, "patient").shim_pid, signal.SIGKILL)
        wait_for(lambda: all(t.id != "patient" for t in c.list_tasks()), 30, "the dead shim's cleanup")
        assert c.call("tasks.state", id="patient")["status"] == "stopped"
        c.kill("patient", 9)
        time.sleep(2 * 2.0 + 1)
        assert all(t.id != "patient" for t in c.list_tasks()), "the kill cancelled the restart"
        c.delete_container("patient")


def test_a_restart_owed_after_a_dead_shim_survives_a_daemon_restart(tmp_path: Path, rootfs: Path) -> None:
    from actors.testing import private_daemon

    with private_daemon(tmp_path, extra_config="[restart]\nbase = 4.0\n") as d:
        with d.client() as c:
            first = start(c, rootfs, "owed", ["/bin/sleep", "1000"], "always")
            os.kill(task(c, "owed").shim_pid, signal.SIGKILL)
            wait_for(lambda: all(t.id != "owed" for t in c.list_tasks()), 30, "the dead shim's cleanup")
        record = d.state / ".respawn" / d.namespace / "owed.json"
        assert record.exists(), "the restart is on record while it waits"
        d.kill_all()  # the daemon dies during the back-off
        d.start()
        with d.client() as c:
            wait_for(lambda: any(t.id == "owed" and t.status == "running" and t.pid != first
                                 for t in c.list_tasks()), 30, "made again by the new daemon")  # fmt: skip
            assert task(c, "owed").restarts == 1
            assert not record.exists()
            c.kill("owed", 9)
            c.wait("owed")
            c.delete_task("owed")
            c.delete_container("owed")
        assert not (d.state / ".respawn" / d.namespace).exists()


def test_a_bad_policy_is_refused() -> None:
    for bad in ("sometimes", "on-failure:0", "on-failure:x", "always:3"):
        with pytest.raises(InvalidArgument):
            restart.parse(bad)
    assert restart.parse("on-failure:4") == restart.Policy("on-failure", 4)
    assert restart.delay(0) == restart.BASE and restart.delay(50) == restart.CAP
