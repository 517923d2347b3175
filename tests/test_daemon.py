"""The daemon under faults: dead shims, dead actors, a dead daemon; events in order; one daemon per state dir."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Daemon, pid_alive, wait_for, wait_pid_gone

from actors.client import Client
from actors.errdefs import EXIT_CODES
from actors.spec import default_spec


class Recorder:
    """Collects events from a subscription in a thread."""

    def __init__(self, d: Daemon, filters: tuple[str, ...] = ()) -> None:
        self.client = d.client()
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(filters,), daemon=True)
        self.thread.start()
        # The subscription is in place once a probe event of ours comes through.
        self.ready.wait(10)

    def _run(self, filters: tuple[str, ...]) -> None:
        it = self.client.events(filters)
        self.ready.set()
        try:
            for env in it:
                self.events.append(env)
        except Exception:
            return

    def of(self, cid: str) -> list[tuple[str, dict[str, Any]]]:
        return [(e["topic"], e["event"]) for e in self.events if e["event"].get("container_id") == cid]

    def close(self) -> None:
        self.client.close()


def make(c: Client, rootfs: Path, cid: str, args: list[str]) -> None:
    spec = default_spec(args, hostname=cid, cgroups_path=f"/contactor/{c.namespace}/{cid}")
    c.create_container(cid, spec, rootfs=str(rootfs))


def run(c: Client, rootfs: Path, cid: str, args: list[str]) -> int:
    make(c, rootfs, cid, args)
    c.create_task(cid)
    return c.start(cid)


def test_events_of_one_task_arrive_in_order(daemon: Daemon, rootfs: Path) -> None:
    rec = Recorder(daemon)
    with daemon.client() as c:
        time.sleep(0.2)  # let the subscription reach the Exchange
        pid = run(c, rootfs, "ev1", ["/bin/sh", "-c", "exit 3"])
        assert c.wait("ev1")["exit_status"] == 3
        c.delete_task("ev1")
        wait_for(lambda: any(t == "/tasks/delete" for t, _ in rec.of("ev1")), 30, "the delete event")
    events = rec.of("ev1")
    assert [t for t, _ in events] == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert all(e["pid"] == pid for _, e in events)
    assert events[2][1]["exit_status"] == 3 and events[3][1]["exit_status"] == 3
    rec.close()


def test_a_listing_after_an_answer_shows_what_the_answer_said(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        for i in range(10):
            make(c, rootfs, f"ls{i}", ["/bin/sleep", "1000"])
            c.create_task(f"ls{i}")
            assert {t.id: t.status for t in c.list_tasks()}[f"ls{i}"] == "created"
            c.start(f"ls{i}")
            assert {t.id: t.status for t in c.list_tasks()}[f"ls{i}"] == "running"
            c.pause(f"ls{i}")
            assert {t.id: t.status for t in c.list_tasks()}[f"ls{i}"] == "paused"
            c.resume(f"ls{i}")
            assert {t.id: t.status for t in c.list_tasks()}[f"ls{i}"] == "running"
            c.delete_task(f"ls{i}", force=True)
            assert f"ls{i}" not in {t.id for t in c.list_tasks()}
            c.delete_container(f"ls{i}")


def test_shim_sigkill_gives_one_exit_and_one_delete_and_leaves_nothing(daemon: Daemon, rootfs: Path) -> None:
    rec = Recorder(daemon, ('topic~="^/tasks/"',))
    with daemon.client() as c:
        time.sleep(0.2)
        pid = run(c, rootfs, "victim", ["/bin/sleep", "1000"])
        task = next(t for t in c.list_tasks() if t.id == "victim")
        os.kill(task.shim_pid, signal.SIGKILL)
        wait_for(lambda: not [t for t in c.list_tasks() if t.id == "victim"], 30, "the task to go")
        wait_for(lambda: any(t == "/tasks/delete" for t, _ in rec.of("victim")), 30, "the delete event")
        time.sleep(0.5)  # any duplicate would arrive now
        topics = [t for t, _ in rec.of("victim")]
        assert topics.count("/tasks/exit") == 1 and topics.count("/tasks/delete") == 1
        exit_event = next(e for t, e in rec.of("victim") if t == "/tasks/exit")
        assert (exit_event["pid"], exit_event["exit_status"]) == (pid, 137)
        assert wait_pid_gone(pid, 10), "the container's processes are gone"
        assert not Path(task.bundle).exists()
        runtime_root = daemon.state / "runc" / daemon.namespace
        assert subprocess.run(["runc", "--root", str(runtime_root), "state", "victim"],
                              capture_output=True).returncode != 0  # fmt: skip
        assert not any(task.bundle in line for line in Path("/proc/self/mountinfo").read_text().splitlines())
        assert [r["id"] for r in c.list_containers()] == ["victim"], "the container record remains"
        pid2 = run(c, rootfs, "after", ["/bin/true"])
        assert pid2 > 0 and c.wait("after")["exit_status"] == 0
        c.delete_task("after")
    rec.close()


def _has_mergeable_heap(pid: int) -> bool:
    smaps = Path(f"/proc/{pid}/smaps").read_text().split("\n")
    heap = next(i for i, line in enumerate(smaps) if line.endswith("[heap]"))
    flags = next(line for line in smaps[heap:] if line.startswith("VmFlags:"))
    return " mg" in flags


def test_task_actor_and_shim_memory_is_mergeable_and_the_container_is_not(
    daemon: Daemon, rootfs: Path
) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "merge", ["/bin/sleep", "1000"])
        task = next(t for t in c.list_tasks() if t.id == "merge")
        assert _has_mergeable_heap(task.actor_pid) and _has_mergeable_heap(task.shim_pid)
        container = Path(f"/proc/{pid}/smaps").read_text()
        assert " mg" not in container, "no container page may be merged with ours"
        c.delete_task("merge", force=True)


def test_a_wait_on_a_stopped_task_is_answered_while_its_task_host_is_stopped(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        run(c, rootfs, "done", ["/bin/sh", "-c", "exit 7"])
        first = c.wait("done", timeout=30)
        wait_for(lambda: next(t for t in c.list_tasks() if t.id == "done").status == "stopped", 10, "stopped")
        host = next(t for t in c.list_tasks() if t.id == "done").actor_pid
        os.kill(host, signal.SIGSTOP)  # the TaskActor cannot answer now; the RuntimeActor knows the exit
        try:
            again = c.wait("done", timeout=10)
        finally:
            os.kill(host, signal.SIGCONT)
        assert again == first and first["exit_status"] == 7 and first["pid"] > 0 and first["exited_at"] > 0
        c.delete_task("done")
        c.delete_container("done")


def test_a_killed_task_actor_is_replaced_and_the_container_does_not_notice(
    daemon: Daemon, rootfs: Path
) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "steady", ["/bin/sleep", "1000"])
        before = next(t for t in c.list_tasks() if t.id == "steady")
        os.kill(before.actor_pid, signal.SIGKILL)

        def replaced() -> bool:
            now = [t for t in c.list_tasks() if t.id == "steady"]
            return bool(now) and now[0].actor_pid not in (0, before.actor_pid)

        wait_for(replaced, 30, "a new TaskActor")
        assert pid_alive(pid) and pid_alive(before.shim_pid)
        after = next(t for t in c.list_tasks() if t.id == "steady")
        assert (after.pid, after.status, after.shim_pid) == (pid, "running", before.shim_pid)
        c.exec("steady", "x", ["/bin/sh", "-c", "exit 4"])
        c.start("steady", "x")
        assert c.wait("steady", exec_id="x")["exit_status"] == 4
        c.kill("steady", 9)
        assert c.wait("steady")["exit_status"] == 137
        c.delete_task("steady")


def test_daemon_killed_with_ten_tasks_restores_them_with_real_exit_statuses(
    daemon: Daemon, rootfs: Path
) -> None:
    statuses = {"r0": 7, "r1": 9}
    with daemon.client() as c:
        pids = {}
        for i in range(10):
            cid = f"r{i}"
            # r0 and r1 exit with a status of their own when told to (USR1), the others sleep.
            script = (
                f"trap 'exit {statuses[cid]}' USR1; while true; do sleep 0.1; done"
                if cid in statuses
                else "sleep 1000"
            )
            pids[cid] = run(c, rootfs, cid, ["/bin/sh", "-c", script])
        shims = {t.id: t.shim_pid for t in c.list_tasks()}
    daemon.kill_all()
    assert all(pid_alive(p) for p in shims.values()), "shims survive the daemon"
    for cid in statuses:
        os.kill(pids[cid], signal.SIGUSR1)  # exits while no daemon is running
    wait_for(lambda: not any(pid_alive(pids[cid]) for cid in statuses), 30, "two exits")
    daemon.start()
    with daemon.client() as c:
        wait_for(lambda: [t.status for t in c.list_tasks()].count("restoring") == 0 and len(c.list_tasks()) == 10,
                 30, "all ten tasks restored")  # fmt: skip
        tasks = {t.id: t for t in c.list_tasks()}
        running = sorted(cid for cid, t in tasks.items() if t.status == "running")
        assert running == [f"r{i}" for i in range(2, 10)]
        for cid, status in statuses.items():
            assert (tasks[cid].status, tasks[cid].exit_status) == ("stopped", status), (
                "the real status, not 137"
            )
            assert c.wait(cid)["exit_status"] == status
        assert {cid: t.shim_pid for cid, t in tasks.items()} == shims
        for cid in tasks:
            c.delete_task(cid, force=True)
        assert c.list_tasks() == []
    assert not any(pid_alive(p) for p in shims.values())
    restored = [line for line in daemon.log.read_text().splitlines() if '"task_restored"' in line]
    assert len(restored) == 10


def test_a_second_daemon_on_the_same_state_dir_refuses(daemon: Daemon) -> None:
    r = subprocess.run([sys.executable, "-m", "actors.cli", "--config", str(daemon.config), "daemon"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert r.returncode == EXIT_CODES["failed_precondition"]
    assert "another contactor daemon" in r.stderr
    with daemon.client() as c:
        assert "gateway" in c.health()["ready"]


def test_daemon_restart_keeps_containers_running(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "keep", ["/bin/sleep", "1000"])
    daemon.stop()
    assert pid_alive(pid), "stopping the daemon never touches containers"
    daemon.start()
    with daemon.client() as c:
        wait_for(lambda: [t.status for t in c.list_tasks()] == ["running"], 30, "the task restored")
        c.kill("keep", 9)
        assert c.wait("keep")["exit_status"] == 137
        c.delete_task("keep")


def test_the_daemon_process_restarts_a_dead_admin(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "through", ["/bin/sleep", "1000"])
    pgid = daemon.actor_pgid()
    assert pgid is not None
    admin = int(next(line for line in daemon.log.read_text().splitlines() if "daemon_ready" in line)
                .split('"admin_pid": ')[1].split(",")[0])  # fmt: skip
    os.kill(admin, signal.SIGKILL)
    wait_for(lambda: daemon.actor_pgid() not in (None, pgid), 60, "a new actor system")

    def serving() -> bool:
        try:
            with daemon.client() as c:
                return [t.id for t in c.list_tasks()] == ["through"]
        except Exception:
            return False

    wait_for(serving, 60, "the restarted daemon to list the task")
    assert pid_alive(pid)
    with daemon.client() as c:
        c.kill("through", 9)
        c.wait("through")
        c.delete_task("through")


@pytest.mark.parametrize("role", ["exchange", "metadata", "monitor", "gateway", "runtime", "supervisor"])
def test_a_killed_actor_is_replaced_and_nothing_is_lost(daemon: Daemon, rootfs: Path, role: str) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "survivor", ["/bin/sleep", "1000"])
        shim = next(t for t in c.list_tasks()).shim_pid
        victim = c.health()["pids"][role]
    # A subscriber from before the fault keeps its stream, unless the fault took its connection.
    keeps_stream = role not in ("gateway", "supervisor")
    before = Recorder(daemon, ("event.container_id==survivor",)) if keeps_stream else None
    time.sleep(0.3)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        try:
            with daemon.client() as c:
                health = c.health()
                return (
                    set(health["ready"]) >= {"exchange", "metadata", "monitor", "gateway", "runtime"}
                    and (health["pids"].get(role) not in (None, victim))
                    and [t.status for t in c.list_tasks()] == ["running"]
                )
        except Exception:
            return False

    wait_for(replaced, 60, f"a new {role}")
    assert pid_alive(pid) and pid_alive(shim), "the container and its shim do not notice"
    rec = before or Recorder(daemon, ("event.container_id==survivor",))
    time.sleep(0.3)
    with daemon.client() as c:
        assert [r["id"] for r in c.list_containers()] == ["survivor"], "the record survives"
        (task,) = c.list_tasks()
        assert (task.pid, task.shim_pid) == (pid, shim)
        c.kill("survivor", 9)
        assert c.wait("survivor")["exit_status"] == 137
        c.delete_task("survivor")
        wait_for(lambda: any(t == "/tasks/delete" for t, _ in rec.of("survivor")), 30, "the delete event")
        time.sleep(0.5)
        topics = [t for t, _ in rec.of("survivor")]
        assert topics == ["/tasks/exit", "/tasks/delete"], "exactly one of each, from one TaskActor"
    rec.close()


def test_unknown_runtime_and_missing_spec_are_refused_without_leftovers(daemon: Daemon, rootfs: Path) -> None:
    from actors.errdefs import InvalidArgument

    with daemon.client() as c:
        c.create_container("odd", default_spec(["/bin/true"]), rootfs=str(rootfs), runtime="docker")
        with pytest.raises(InvalidArgument, match="unknown runtime"):
            c.create_task("odd")
        for spec in (
            {},
            {"process": {"args": []}, "root": {"path": "rootfs"}},
            {"process": {"args": ["/x"]}},
        ):
            with pytest.raises(InvalidArgument, match="spec"):
                c.call("containers.create", id="nospec", spec=spec, rootfs=str(rootfs))
        assert c.list_tasks() == []
        assert [r["id"] for r in c.list_containers()] == ["odd"]
        assert not list((daemon.state / daemon.namespace).glob("*/config.json"))
        c.delete_container("odd")


def test_tasks_are_listed_while_they_are_restored(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "slowshim", ["/bin/sleep", "1000"])
        shim = next(t for t in c.list_tasks() if t.id == "slowshim").shim_pid
    daemon.kill_all()
    os.kill(shim, signal.SIGSTOP)  # its restore waits for an answer the stopped shim cannot give yet
    try:
        daemon.start()
        with daemon.client() as c:
            listed = [t for t in c.list_tasks() if t.id == "slowshim"]
            assert [(t.status, t.pid, t.shim_pid) for t in listed] == [("restoring", pid, shim)]
            os.kill(shim, signal.SIGCONT)
            wait_for(lambda: any(t.id == "slowshim" and t.status == "running" for t in c.list_tasks()), 60,
                     "the restored task")  # fmt: skip
            c.delete_task("slowshim", force=True)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(shim, signal.SIGCONT)



def test_the_daemon_is_started_where_its_starter_s_actors_package_lives(daemon: Daemon) -> None:
    # `python -m actors.cli` imports from its working directory first: the fixture runs it where the
    # starter's own `actors` lives, so a caller in another directory still tests its own code.
    import actors

    assert daemon.proc is not None
    home = Path(actors.__file__).resolve().parent.parent
    assert os.readlink(f"/proc/{daemon.proc.pid}/cwd") == str(home)
