"""Restart policies driven by exit messages; an explicit kill or delete is never undone."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, wait_for

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


def test_a_bad_policy_is_refused() -> None:
    for bad in ("sometimes", "on-failure:0", "on-failure:x", "always:3"):
        with pytest.raises(InvalidArgument):
            restart.parse(bad)
    assert restart.parse("on-failure:4") == restart.Policy("on-failure", 4)
    assert restart.delay(0) == restart.BASE and restart.delay(50) == restart.CAP
