"""The fault-injection fixtures users get from the contactor pytest plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.spec import default_spec
from actors.testing import Daemon


def test_kill_the_shim_and_see_the_exit_in_three_lines(contactor_daemon: Daemon, kill_shim: Any,
                                                        shim_of: Any, rootfs: Path) -> None:  # fmt: skip
    with contactor_daemon.client() as c:
        c.create_container("t1", default_spec(["/bin/sleep", "1000"]), rootfs=str(rootfs))
        c.create_task("t1")
        c.start("t1")
        exits = c.events(['topic=="/tasks/exit"'], since=0)
        assert shim_of("t1") > 0
        kill_shim("t1")
        assert next(exits)["event"]["exit_status"] == 137
        exits.close()
        assert c.list_tasks() == []


def test_a_failing_test_still_leaves_nothing_behind(tmp_path: Path, rootfs: Path) -> None:
    import pytest
    from conftest import pid_alive, wait_pid_gone

    from actors.testing import _group_members, private_daemon

    with pytest.raises(RuntimeError, match="the test failed"), private_daemon(tmp_path, "failing") as d:
        with d.client() as c:
            c.create_container("t1", default_spec(["/bin/sleep", "1000"]), rootfs=str(rootfs))
            task = c.create_task("t1")
            c.start("t1")
        pgid = d.actor_pgid()
        raise RuntimeError("the test failed")
    assert wait_pid_gone(task.pid, 10) and wait_pid_gone(task.shim_pid, 10)
    assert pgid is not None and not _group_members(pgid)
    assert d.proc is None or not pid_alive(d.proc.pid)
