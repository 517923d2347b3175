"""Client.run / tasks.run: record, task, start, exit and (rm) removal in one request, against a real daemon.

Each test checks what the run leaves (tasks, records, bundles, cgroups, shims) through the
daemon and the filesystem, and the events a subscriber saw; the daemon fixture removes
whatever a failing test left.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, wait_for, wait_pid_gone

from actors.cgroups import hierarchies
from actors.client import Client
from actors.errdefs import AlreadyExists, InvalidArgument, Unavailable
from actors.spec import default_spec


class Events:
    """Every envelope of the daemon's namespace, from before the test's first request."""

    def __init__(self, d: Daemon) -> None:
        self.client = d.client()
        self.seen: list[dict[str, Any]] = []
        ready = threading.Event()

        def follow() -> None:
            it = self.client.events(())
            ready.set()
            try:
                for env in it:
                    self.seen.append(env)
            except Exception:
                return

        threading.Thread(target=follow, daemon=True).start()
        ready.wait(10)
        time.sleep(0.2)  # the subscription is in place before the first event of the test

    def topics(self, cid: str) -> list[str]:
        return [e["topic"] for e in self.seen
                if cid in (e["event"].get("container_id"), e["event"].get("id"))]  # fmt: skip

    def close(self) -> None:
        self.client.close()


def _leftovers(d: Daemon, cid: str) -> list[str]:
    left = []
    with d.client() as c:
        left += [f"task {t.id}" for t in c.list_tasks() if t.id == cid]
        left += [f"record {r['id']}" for r in c.list_containers() if r["id"] == cid]
    bundle = d.state / d.namespace / cid
    if bundle.exists():
        left.append(f"bundle {bundle}")
    left += [f"cgroup {p}" for p in hierarchies() if (p / "contactor" / d.namespace / cid).exists()]
    return left


def _background_run(d: Daemon, rootfs: Path, cid: str, args: list[str], rm: bool = True
                    ) -> tuple[threading.Thread, list[BaseException | dict[str, Any]]]:
    """``Client.run`` on a thread of its own, returned once its task runs; its answer (or error) lands
    in the list."""
    outcome: list[BaseException | dict[str, Any]] = []

    def run() -> None:
        try:
            with d.client() as c:
                outcome.append(c.run(cid, default_spec(args, hostname=cid), rootfs=str(rootfs), rm=rm))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    with d.client() as c:
        wait_for(lambda: any(t.id == cid and t.status == "running" for t in c.list_tasks()), 30,
                 f"{cid}'s run's task running")  # fmt: skip
    return thread, outcome


def test_a_run_with_rm_answers_the_exit_and_leaves_nothing(daemon: Daemon, rootfs: Path, tmp_path: Path) -> None:
    events = Events(daemon)
    out = tmp_path / "out.txt"
    try:
        with daemon.client() as c:
            result = c.run("r1", default_spec(["/bin/sh", "-c", "echo hello; exit 7"], hostname="r1"),
                           rootfs=str(rootfs), stdout=str(out))  # fmt: skip
        assert result["exit_status"] == 7 and result["pid"] > 0 and result["exited_at"] > 0
        assert out.read_text() == "hello\n"
        assert _leftovers(daemon, "r1") == []
        want = ["/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete",
                "/containers/delete"]  # fmt: skip
        wait_for(lambda: len(events.topics("r1")) >= len(want), 10, "the run's events")
        assert events.topics("r1") == want
        assert wait_pid_gone(result["pid"], 10)
    finally:
        events.close()


def test_a_run_without_rm_leaves_the_stopped_task_and_its_record(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        result = c.run("r2", default_spec(["/bin/sh", "-c", "exit 3"], hostname="r2"), rootfs=str(rootfs), rm=False)

        assert result["exit_status"] == 3
        [task] = [t for t in c.list_tasks() if t.id == "r2"]
        assert (task.status, task.exit_status) == ("stopped", 3)
        assert [r["id"] for r in c.list_containers()] == ["r2"]
        assert c.wait("r2")["exit_status"] == 3
        c.delete_task("r2")
        c.delete_container("r2")
    assert _leftovers(daemon, "r2") == []


def test_a_run_of_an_existing_container_fails_and_the_container_is_untouched(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        c.create_container("keep", default_spec(["/bin/sleep", "1000"], hostname="keep"), rootfs=str(rootfs))
        c.create_task("keep")
        c.start("keep")

        with pytest.raises(AlreadyExists):
            c.run("keep", default_spec(["/bin/true"], hostname="keep"), rootfs=str(rootfs))

        [task] = c.list_tasks()
        assert (task.id, task.status) == ("keep", "running")
        assert c.get_container("keep")["spec"]["process"]["args"] == ["/bin/sleep", "1000"]
        c.delete_task("keep", force=True)
        c.delete_container("keep")


def test_a_run_whose_create_fails_undoes_the_record(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c, pytest.raises(InvalidArgument, match="no such file"):
        c.run("bad", default_spec(["/no/such/binary"], hostname="bad"), rootfs=str(rootfs), rm=False)
    assert _leftovers(daemon, "bad") == []


def test_a_run_with_rm_refuses_a_restart_policy_and_makes_nothing(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c, pytest.raises(InvalidArgument, match="restart policy"):
        c.run("pol", default_spec(["/bin/true"], hostname="pol"), rootfs=str(rootfs),
              labels={"contactor.restart": "always"})  # fmt: skip
    assert _leftovers(daemon, "pol") == []


def test_a_run_whose_shim_dies_is_told_and_rm_still_removes_the_record(daemon: Daemon, rootfs: Path) -> None:
    thread, outcome = _background_run(daemon, rootfs, "dies", ["/bin/sleep", "1000"])
    try:
        with daemon.client() as c:
            [task] = [t for t in c.list_tasks() if t.id == "dies"]
        os.kill(task.shim_pid, signal.SIGKILL)
        thread.join(60)
        assert not thread.is_alive()
        [got] = outcome
        assert isinstance(got, Unavailable) and "gone before its exit" in str(got), got
        wait_for(lambda: _leftovers(daemon, "dies") == [], 30, "the run's task and record gone")
        assert wait_pid_gone(task.pid, 10)
    finally:
        thread.join(60)


def test_concurrent_runs_each_get_their_own_exit(daemon: Daemon, rootfs: Path) -> None:
    def one(i: int) -> int:
        with daemon.client() as c:
            spec = default_spec(["/bin/sh", "-c", f"exit {i}"], hostname=f"m{i}")
            return int(c.run(f"m{i}", spec, rootfs=str(rootfs))["exit_status"])

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(one, range(10)))

    assert statuses == list(range(10))
    for i in range(10):
        assert _leftovers(daemon, f"m{i}") == []


def test_a_malformed_run_is_refused_by_the_gateway(daemon: Daemon) -> None:
    with Client(daemon.address, namespace=daemon.namespace) as c:
        with pytest.raises(InvalidArgument, match="rm must be a boolean"):
            c.call("tasks.run", id="x", spec=default_spec(["/bin/true"]), rm="yes")
        with pytest.raises(InvalidArgument):
            c.call("tasks.run", id="x", spec={"not": "a spec"})
        assert c.list_containers() == []


def test_a_run_cut_short_by_a_daemon_crash_is_still_removed_once_it_exits(daemon: Daemon, rootfs: Path) -> None:
    thread, outcome = _background_run(daemon, rootfs, "crash", ["/bin/sh", "-c", "sleep 3; exit 4"])
    try:
        daemon.kill_all()
        thread.join(30)
        assert isinstance(outcome[0], Unavailable), outcome
        daemon.start()
        with daemon.client() as c:
            wait_for(lambda: any(t.id == "crash" for t in c.list_tasks()), 30, "the task listed again")
            [task] = [t for t in c.list_tasks() if t.id == "crash"]
            assert task.rm, f"the run's rm survived the crash (listed {task.status})"
            wait_for(lambda: all(t.status != "restoring" for t in c.list_tasks()), 30, "the task restored")
            assert all(t.rm for t in c.list_tasks() if t.id == "crash"), "and its TaskActor says so too"
        wait_for(lambda: _leftovers(daemon, "crash") == [], 60, "the task and its record removed after its exit")
    finally:
        thread.join(30)


def test_a_run_without_rm_cut_short_keeps_its_task_and_record(daemon: Daemon, rootfs: Path) -> None:
    thread, outcome = _background_run(daemon, rootfs, "keep", ["/bin/sh", "-c", "sleep 2; exit 5"], rm=False)
    daemon.kill_all()
    thread.join(30)
    assert isinstance(outcome[0], Unavailable), outcome
    daemon.start()
    with daemon.client() as c:
        wait_for(lambda: [(t.id, t.status) for t in c.list_tasks()] == [("keep", "stopped")], 60, "stopped, kept")
        assert [t.rm for t in c.list_tasks()] == [False]
        assert [r["id"] for r in c.list_containers()] == ["keep"]
        c.delete_task("keep")
        c.delete_container("keep")
