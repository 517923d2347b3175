"""One focused, deterministic test per fault kind the other tests do not cover.

A shim stopped and continued; the daemon restarted (crash or SIGTERM) in the
middle of a create or a delete; the runtime failing or hanging one call; a
full state filesystem; a container that forks a hundred children and exits;
the daemon process alone SIGKILLed; a request held by an actor that dies.
The runtime failing or hanging is the one fake part: a wrapper around the
real runc (``actors.chaos.runtime_wrapper``), because real runc cannot be
made to fail or hang at a chosen moment.  Everything else is real.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, pid_alive, wait_for

from actors.chaos.faults import FILLER, FORK_100, fill
from actors.chaos.invariants import check_leftovers, collect_events
from actors.chaos.ledger import Ledger
from actors.chaos.runner import state_tmpfs
from actors.chaos.runtime_wrapper import RuntimeWrapper
from actors.chaos.workload import make_task
from actors.client import Client
from actors.errdefs import ContactorError, Unavailable
from actors.testing import private_daemon

SLEEPER = ["/bin/sleep", "1000"]


@pytest.fixture
def wrapper(tmp_path: Path) -> RuntimeWrapper:
    return RuntimeWrapper(tmp_path / "wrapper")


@pytest.fixture
def wrapped(tmp_path: Path, namespace: str, wrapper: RuntimeWrapper) -> Iterator[Daemon]:
    """A private daemon whose runtime binary is the wrapper (real runc unless a fault is armed)."""
    with private_daemon(tmp_path, namespace, runtime_config=f'binary = "{wrapper.binary}"') as d:
        yield d


def run(c: Client, rootfs: Path, cid: str, args: list[str]) -> int:
    make_task(c, rootfs, cid, args)
    c.create_task(cid)
    return c.start(cid)


def task(c: Client, cid: str) -> Any:
    return next((t for t in c.list_tasks() if t.id == cid), None)


# The events of a task that was created, started, SIGKILLed (or lost its shim) and deleted: each once.
KILLED_LIFE = [("/tasks/create", None), ("/tasks/start", None), ("/tasks/exit", 137), ("/tasks/delete", 137)]


def topics(d: Daemon, cid: str) -> list[tuple[str, Any]]:
    return [(e["topic"], e["event"].get("exit_status")) for e in collect_events(d, d.namespace)
            if e["event"].get("container_id") == cid]  # fmt: skip


def final_topics(d: Daemon, cid: str) -> list[tuple[str, Any]]:
    """The task's events once its /tasks/delete is in the log (it travels after the delete's answer)."""
    wait_for(lambda: ("/tasks/delete" in [t for t, _ in topics(d, cid)]), 30, f"{cid}'s /tasks/delete")
    return topics(d, cid)


def nothing_left(d: Daemon, *ids: str) -> None:
    assert check_leftovers(d, Ledger(), set(ids)) == []


def in_thread(d: Daemon, fn: Callable[[Client], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """``fn(client)`` in a thread of its own; its result or its error lands in the dict."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            with d.client() as c:
                out["result"] = fn(c)
        except ContactorError as exc:
            out["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


def restart(d: Daemon, crash: bool) -> None:
    if crash:
        d.kill_all()
    else:
        d.stop()
    d.start()


def test_a_stopped_shim_is_not_taken_for_dead_and_serves_again_once_continued(
    daemon: Daemon, rootfs: Path
) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "frozen", SLEEPER)
        run(c, rootfs, "other", SLEEPER)
        shim = task(c, "frozen").shim_pid
        os.kill(shim, signal.SIGSTOP)
        try:
            # Long enough for a pidfd or a dropped connection to be noticed, were it taken for a death.
            time.sleep(0.5)
            assert task(c, "frozen").status == "running"
            assert c.state("other")["status"] == "running", "other tasks are served meanwhile"
            with pytest.raises(Unavailable, match="stopped"):  # told at once, not after the call timeout
                c.state("frozen")
            assert c.state("other")["status"] == "running", "its TaskActor was not left blocked"
        finally:
            os.kill(shim, signal.SIGCONT)
        assert c.state("frozen")["pid"] == pid and pid_alive(shim)
        c.kill("frozen", 9)
        assert c.wait("frozen", timeout=30)["exit_status"] == 137
        c.delete_task("frozen")
        c.delete_task("other", force=True)
    assert final_topics(daemon, "frozen") == KILLED_LIFE
    nothing_left(daemon, "frozen", "other")


def test_a_task_whose_shim_is_stopped_across_a_daemon_restart_stays_listed_and_is_restored_once_continued(
    daemon: Daemon, rootfs: Path
) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "frozen", SLEEPER)
        shim = task(c, "frozen").shim_pid
    os.kill(shim, signal.SIGSTOP)
    try:
        restart(daemon, crash=True)
        with daemon.client() as c:
            time.sleep(2)  # several restore attempts
            listed = task(c, "frozen")
            assert listed is not None and listed.status == "restoring", "listed, not dropped, not killed"
            assert pid_alive(pid) and pid_alive(shim)
    finally:
        os.kill(shim, signal.SIGCONT)
    with daemon.client() as c:
        wait_for(lambda: getattr(task(c, "frozen"), "status", "") == "running", 30, "the task restored")
        assert c.state("frozen")["pid"] == pid
        c.kill("frozen", 9)
        assert c.wait("frozen", timeout=30)["exit_status"] == 137
        c.delete_task("frozen")
    assert final_topics(daemon, "frozen") == KILLED_LIFE
    nothing_left(daemon, "frozen")


@pytest.mark.parametrize("crash", [True, False], ids=["crash", "sigterm"])
def test_a_daemon_restart_during_a_create_ends_with_a_listed_manageable_task(
    wrapped: Daemon, wrapper: RuntimeWrapper, rootfs: Path, crash: bool
) -> None:
    with wrapped.client() as c:
        make_task(c, rootfs, "mid", SLEEPER)
    wrapper.hang_next("create", 3.0)  # longer than the restart: the new daemon finds the create under way
    caller, _ = in_thread(wrapped, lambda c: c.create_task("mid"))
    wait_for(lambda: wrapper.hanging("create"), 30, "runc create to be under way")
    restart(wrapped, crash)
    caller.join(60)
    assert not caller.is_alive(), "the client's create was answered"
    with wrapped.client() as c:
        wait_for(lambda: getattr(task(c, "mid"), "pid", 0) > 0, 30, "the restored task with its pid")
        pid = task(c, "mid").pid
        assert c.start("mid") == pid
        c.kill("mid", 9)
        assert c.wait("mid", timeout=30)["exit_status"] == 137
        c.delete_task("mid")
    assert final_topics(wrapped, "mid") == KILLED_LIFE
    nothing_left(wrapped, "mid")


def test_a_create_that_fails_while_the_daemon_is_down_leaves_nothing(
    wrapped: Daemon, wrapper: RuntimeWrapper, rootfs: Path
) -> None:
    with wrapped.client() as c:
        make_task(c, rootfs, "doomed", SLEEPER)
    wrapper.hang_next("create", 4.0)  # longer than the restart: it fails while the new daemon watches
    wrapper.fail_next("create")
    caller, _ = in_thread(wrapped, lambda c: c.create_task("doomed"))
    wait_for(lambda: wrapper.hanging("create"), 30, "runc create to be under way")
    restart(wrapped, crash=True)
    caller.join(60)
    bundle = wrapped.state / wrapped.namespace / "doomed"
    wait_for(lambda: not bundle.exists(), 30, "the half-created task's bundle to go")
    with wrapped.client() as c:
        # Listed as "restoring" until its TaskActor, which removed the bundle, says it is gone.
        wait_for(lambda: task(c, "doomed") is None, 30, "the half-created task to leave the list")
        nothing_left(wrapped, "doomed")
        assert [t for t, _ in topics(wrapped, "doomed")] == [], "no task was ever announced"
        c.create_task("doomed")  # the id is free again
        c.delete_task("doomed")
    nothing_left(wrapped, "doomed")


@pytest.mark.parametrize("crash", [True, False], ids=["crash", "sigterm"])
def test_a_daemon_restart_during_a_delete_finishes_the_delete(
    wrapped: Daemon, wrapper: RuntimeWrapper, rootfs: Path, crash: bool
) -> None:
    with wrapped.client() as c:
        run(c, rootfs, "dying", SLEEPER)
    wrapper.hang_next("delete", 1.5)
    caller, _ = in_thread(wrapped, lambda c: c.delete_task("dying", force=True))
    wait_for(lambda: wrapper.hanging("delete"), 30, "runc delete to be under way")
    restart(wrapped, crash)
    caller.join(60)
    with wrapped.client() as c:
        wait_for(lambda: task(c, "dying") is None, 30, "the task to go")
        assert [r["id"] for r in c.list_containers()] == ["dying"], "the record survives"
    assert final_topics(wrapped, "dying") == KILLED_LIFE
    nothing_left(wrapped, "dying")


@pytest.mark.parametrize("command", ["create", "start", "exec", "delete"])
def test_a_failing_runtime_call_is_a_clean_error_and_the_task_stays_manageable(
    wrapped: Daemon, wrapper: RuntimeWrapper, rootfs: Path, command: str
) -> None:
    with wrapped.client() as c:
        make_task(c, rootfs, "flaky", SLEEPER)
        if command != "create":
            c.create_task("flaky")
            if command != "start":
                c.start("flaky")
        wrapper.fail_next(command)
        with pytest.raises(ContactorError) as failed:
            if command == "create":
                c.create_task("flaky")
            elif command == "start":
                c.start("flaky")
            elif command == "exec":
                c.exec("flaky", "x", ["/bin/true"])
                c.start("flaky", exec_id="x")
            else:
                c.delete_task("flaky", force=True)
        assert "injected failure" in failed.value.message and "\n" not in failed.value.message
        if command == "create":
            assert task(c, "flaky") is None
            nothing_left(wrapped, "flaky")
            c.create_task("flaky")
        if command in ("create", "start"):
            c.start("flaky")
        if command == "delete":  # it was killed before the runtime's delete failed; the next one goes
            assert c.state("flaky")["status"] == "stopped"
        else:
            assert c.state("flaky")["status"] == "running"
            c.exec("flaky", "y", ["/bin/sh", "-c", "exit 4"])
            c.start("flaky", exec_id="y")
            assert c.wait("flaky", exec_id="y", timeout=30)["exit_status"] == 4
        c.delete_task("flaky", force=True)
    nothing_left(wrapped, "flaky")


def test_a_hanging_runtime_holds_up_only_its_own_task(
    wrapped: Daemon, wrapper: RuntimeWrapper, rootfs: Path
) -> None:
    with wrapped.client() as c:
        run(c, rootfs, "other", SLEEPER)
        make_task(c, rootfs, "slow", SLEEPER)
        wrapper.hang_next("create", 3.0)
        caller, out = in_thread(wrapped, lambda c: c.create_task("slow"))
        wait_for(lambda: wrapper.hanging("create"), 30, "runc create to hang")
        assert c.state("other")["status"] == "running"
        c.exec("other", "x", ["/bin/sh", "-c", "exit 3"])
        c.start("other", exec_id="x")
        assert c.wait("other", exec_id="x", timeout=30)["exit_status"] == 3
        assert wrapper.hanging("create"), "all of that was served while the create hung"
        caller.join(60)
        assert out["result"].pid > 0
        c.delete_task("slow", force=True)
        c.delete_task("other", force=True)
    nothing_left(wrapped, "slow", "other")


def _on_record(path: Path, key: str) -> bool:
    try:
        return json.loads(path.read_text()).get(key) is True
    except (OSError, ValueError):
        return False


def test_a_full_state_filesystem_refuses_creates_cleanly_and_spares_running_tasks(
    tmp_path: Path, namespace: str, rootfs: Path
) -> None:
    with state_tmpfs(tmp_path / "state", 16), private_daemon(tmp_path, namespace) as d:
        filler = d.state / FILLER
        with d.client() as c:
            pid = run(c, rootfs, "keep", SLEEPER)
            make_task(c, rootfs, "new", SLEEPER)
            fill(filler)
            try:
                with pytest.raises(ContactorError) as refused:
                    c.create_task("new")
                assert "No space left" in refused.value.message and "\n" not in refused.value.message
                assert task(c, "new") is None
                nothing_left(d, "new")
                assert c.state("keep")["pid"] == pid
                c.kill("keep", 9)
                assert c.wait("keep", timeout=30)["exit_status"] == 137
                assert "gateway" in c.health()["ready"]
                # What was published is on record even so: a restored TaskActor must not publish it again.
                record = d.state / d.namespace / "keep" / "task.json"
                wait_for(lambda: _on_record(record, "exit_published"), 30, "the exit to be on record")
                # A daemon that died on a full state fs starts again on it, restores and serves.
                restart(d, crash=True)
                with d.client() as c2:
                    wait_for(lambda: getattr(task(c2, "keep"), "status", "") == "stopped", 30, "the restored task")
                    assert c2.state("keep")["exit_status"] == 137
            finally:
                filler.unlink()
        with d.client() as c:
            c.delete_task("keep")
            assert c.create_task("new").pid > 0  # room again: creates go through
            c.delete_task("new")
        nothing_left(d, "keep", "new")
        assert final_topics(d, "keep") == KILLED_LIFE


def test_a_container_that_forks_a_hundred_children_and_exits_reports_its_own_status(
    daemon: Daemon, rootfs: Path
) -> None:
    with daemon.client() as c:
        run(c, rootfs, "forker", ["/bin/sh", "-c", FORK_100])
        shim = task(c, "forker").shim_pid
        assert c.wait("forker", timeout=30)["exit_status"] == 7

        def children_gone() -> bool:
            kids = Path(f"/proc/{shim}/task/{shim}/children").read_text().split()
            return all(not Path(f"/proc/{k}").exists() for k in kids)

        wait_for(children_gone, 30, "the hundred children to be killed and reaped")
        c.delete_task("forker")
    assert final_topics(daemon, "forker")[-2:] == [("/tasks/exit", 7), ("/tasks/delete", 7)]
    nothing_left(daemon, "forker")


def _zombie_children(pid: int) -> list[int]:
    out = []
    for p in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] == "Z" and int(stat[1]) == pid:
            out.append(int(p))
    return out


def _group(pgid: int) -> list[int]:
    out = []
    for p in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            if os.getpgid(int(p)) == pgid:
                out.append(int(p))
    return out


def test_a_sigkilled_daemon_process_is_replaced_and_its_orphaned_actor_system_cleared(
    daemon: Daemon, rootfs: Path
) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "through", SLEEPER)
    old_pgid = daemon.actor_pgid()
    assert daemon.proc is not None and old_pgid
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    daemon.proc = None
    daemon.start()  # the orphaned actor system must not keep the new daemon out
    assert daemon.actor_pgid() != old_pgid
    wait_for(lambda: not _group(old_pgid), 30, "the orphaned actor system to be gone")
    assert daemon.proc is not None and _zombie_children(daemon.proc.pid) == [], "the daemon reaps its forks"
    with daemon.client() as c:
        assert task(c, "through").pid == pid and pid_alive(pid)
        c.kill("through", 9)
        assert c.wait("through", timeout=30)["exit_status"] == 137
        c.delete_task("through")
    nothing_left(daemon, "through")


def test_a_request_held_by_a_task_actor_that_dies_is_answered_not_left_hanging(
    daemon: Daemon, rootfs: Path
) -> None:
    with daemon.client() as c:
        run(c, rootfs, "held", SLEEPER)
        actor = task(c, "held").actor_pid
    waiter, out = in_thread(daemon, lambda c: c.wait("held", timeout=30))
    time.sleep(0.3)  # the wait reaches the TaskActor and is parked there
    os.kill(actor, signal.SIGKILL)
    waiter.join(30)
    assert not waiter.is_alive() and isinstance(out.get("error"), Unavailable)
    with daemon.client() as c:
        wait_for(lambda: task(c, "held") is not None and task(c, "held").actor_pid != actor, 30, "a new TaskActor")
        c.kill("held", 9)
        assert c.wait("held", timeout=30)["exit_status"] == 137
        c.delete_task("held")
    nothing_left(daemon, "held")


def test_an_exit_and_a_delete_on_their_way_to_the_log_when_the_daemon_dies_are_logged_once(
    daemon: Daemon, rootfs: Path
) -> None:
    # The Exchange (which commits events to the log) is stopped, so that what the task publishes
    # is still on its way when the daemon is killed.
    with daemon.client() as c:
        pid = run(c, rootfs, "late", SLEEPER)
        exchange = int(c.health()["pids"]["exchange"])
    os.kill(exchange, signal.SIGSTOP)
    os.kill(pid, signal.SIGKILL)
    record = daemon.state / daemon.namespace / "late" / "task.json"
    wait_for(lambda: _on_record(record, "exit_published"), 30, "the TaskActor to have sent the exit")
    restart(daemon, crash=True)
    with daemon.client() as c:
        wait_for(lambda: getattr(task(c, "late"), "status", "") == "stopped", 30, "the restored task")
        assert [t for t, _ in topics(daemon, "late")][-1] == "/tasks/exit", "published again on restore"
        exchange = int(c.health()["pids"]["exchange"])
    os.kill(exchange, signal.SIGSTOP)
    deleting, _ = in_thread(daemon, lambda c: c.delete_task("late"))
    time.sleep(1.0)  # the shim is shut down; the delete waits for its event to be in the log
    assert (daemon.state / daemon.namespace / "late").exists(), "the bundle stays until the delete is logged"
    restart(daemon, crash=True)
    deleting.join(60)
    with daemon.client() as c:
        wait_for(lambda: task(c, "late") is None, 30, "the delete finished by the restored task")
    assert final_topics(daemon, "late") == KILLED_LIFE
    nothing_left(daemon, "late")


def test_a_create_and_a_start_on_their_way_to_the_log_when_the_daemon_dies_are_logged_once(
    daemon: Daemon, rootfs: Path
) -> None:
    # The client has both answers while the task's /tasks/create and /tasks/start still wait at
    # the stopped Exchange; the daemon dies with them. The restored task publishes them again.
    with daemon.client() as c:
        # The Gateway serves as soon as it is up; the Exchange may report a moment later.
        wait_for(lambda: "exchange" in c.health()["pids"], 30, "the Exchange's pid")
        exchange = int(c.health()["pids"]["exchange"])
    os.kill(exchange, signal.SIGSTOP)
    with daemon.client() as c:
        run(c, rootfs, "early", SLEEPER)
    restart(daemon, crash=True)
    with daemon.client() as c:
        wait_for(lambda: getattr(task(c, "early"), "status", "") == "running", 30, "the restored task")
        wait_for(lambda: len(topics(daemon, "early")) >= 2, 30, "the create and the start in the log")
        restart(daemon, crash=False)  # a second restore finds both in the log: nothing is logged twice
    with daemon.client() as c:
        wait_for(lambda: getattr(task(c, "early"), "status", "") == "running", 30, "the restored task")
        c.delete_task("early", force=True)
    assert final_topics(daemon, "early") == KILLED_LIFE
    nothing_left(daemon, "early")


def test_a_dead_shim_factory_is_started_again_and_shims_come_from_it(daemon: Daemon, rootfs: Path) -> None:
    pid_file = daemon.state / "shim-factory.pid"
    first = int(pid_file.read_text())
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: pid_file.exists() and int(pid_file.read_text() or 0) not in (0, first), 30, "a new factory")
    second = int(pid_file.read_text())
    assert pid_alive(second)
    with daemon.client() as c:
        run(c, rootfs, "after", SLEEPER)
        shim = task(c, "after").shim_pid
        # Forked from the factory, a shim is the daemon's image, not an exec'd `python -m actors.shim`.
        assert b"actors.shim" not in Path(f"/proc/{shim}/cmdline").read_bytes()
        c.delete_task("after", force=True)
    nothing_left(daemon, "after")


def test_a_stopping_daemon_does_not_replace_the_task_actors_its_shutdown_takes_down(
    daemon: Daemon, rootfs: Path
) -> None:
    with daemon.client() as c:
        for i in range(3):
            run(c, rootfs, f"s{i}", SLEEPER)
    daemon.log.write_bytes(b"")
    daemon.stop()
    logged = daemon.log.read_text()
    assert "daemon_stopped" in logged
    assert "task_actor_died" not in logged and "restore_started" not in logged, "no TaskActor made again"
    daemon.start()
    with daemon.client() as c:
        wait_for(lambda: all(getattr(task(c, f"s{i}"), "status", "") == "running" for i in range(3)), 30,
                 "the tasks restored by the next start")  # fmt: skip
        for i in range(3):
            c.delete_task(f"s{i}", force=True)
    nothing_left(daemon, "s0", "s1", "s2")


def test_requests_while_a_dead_shims_task_is_being_removed_get_its_exit(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        pid = run(c, rootfs, "dying", SLEEPER)
        shim = task(c, "dying").shim_pid
        exchange = int(c.health()["pids"]["exchange"])
    # With the Exchange stopped the cleanup waits for its /tasks/delete to be logged, task still listed.
    os.kill(exchange, signal.SIGSTOP)
    try:
        os.kill(shim, signal.SIGKILL)
        with daemon.client() as c:
            wait_for(lambda: not pid_alive(pid), 30, "the container killed by the cleanup")
            time.sleep(0.5)
            assert task(c, "dying") is not None, "still listed while its delete is on its way"
            assert c.state("dying")["status"] == "stopped" and c.state("dying")["exit_status"] == 137
            assert c.wait("dying", timeout=10)["exit_status"] == 137
        deleting, out = in_thread(daemon, lambda c: c.delete_task("dying"))
        time.sleep(0.5)
        assert deleting.is_alive(), "the delete is answered once the task is gone"
    finally:
        os.kill(exchange, signal.SIGCONT)
    deleting.join(30)
    assert out["result"]["exit_status"] == 137
    with daemon.client() as c:
        assert task(c, "dying") is None
    assert final_topics(daemon, "dying") == KILLED_LIFE
    nothing_left(daemon, "dying")
