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


def test_a_flush_sends_what_went_to_one_actor_as_one_batch_and_keeps_each_actor_s_order() -> None:
    import threading

    from actors.messages import Answer, Batch
    from actors.task_host import TaskHost

    class Address:  # as Thespian's ActorAddress: equal by value, not hashable
        __hash__ = None  # type: ignore[assignment]

        def __init__(self, name: str) -> None:
            self.name = name

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Address) and other.name == self.name

        def __repr__(self) -> str:
            return self.name

    rt, ex, gw = Address("rt"), Address("ex"), Address("gw")
    host = TaskHost.__new__(TaskHost)  # only the outbox: the sends are recorded, not made
    host.lock = threading.Lock()
    sent: list[tuple[object, object]] = []
    host.send = lambda target, msg: sent.append((target, msg))  # type: ignore[method-assign]
    answer = Answer(1, "x")
    host.outbox = [("send", rt, "a1"), ("send", ex, "p1"), ("send", Address("rt"), "a2"), ("send", rt, answer),
                   ("send", rt, "a3"), ("send", ex, "p2"), ("send", gw, "g1")]  # fmt: skip
    host._flush()
    assert sent == [(rt, Batch(("a1", "a2"))), (rt, answer), (ex, Batch(("p1", "p2"))), (rt, "a3"), (gw, "g1")]
    assert host.outbox == []


def test_a_send_that_fails_costs_only_its_own_messages() -> None:
    import threading

    from actors.task_host import TaskHost

    host = TaskHost.__new__(TaskHost)
    host.lock = threading.Lock()
    logged: list[tuple[str, dict[str, object]]] = []
    host.log = type("Log", (), {"error": lambda self, event, **kw: logged.append((event, kw))})()  # type: ignore[assignment]
    sent: list[tuple[object, object]] = []

    def send(target: object, msg: object) -> None:
        if target == "ex":
            raise TypeError("cannot pickle")
        sent.append((target, msg))

    host.send = send  # type: ignore[method-assign]
    host.outbox = [("send", "ex", "p1"), ("send", "rt", "ready"), ("send", "ex", "p2"), ("send", "gw", "g1")]

    host._flush()

    assert sent == [("rt", "ready"), ("gw", "g1")], "what went elsewhere still went"
    assert [(e, kw["messages"]) for e, kw in logged] == [("send_failed", ["str", "str"])]
    assert host.outbox == []


def test_a_batch_is_handled_as_its_messages_one_by_one_in_order() -> None:
    from dataclasses import dataclass

    from thespian.actors import ActorSystem

    from actors._actor import ContactorActor
    from actors.messages import Answer, Ask, Batch, ErrorReply

    @dataclass(frozen=True)
    class Note:
        text: str

    class Recorder(ContactorActor):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def on_Note(self, msg: Note, sender: object) -> None:
            if msg.text == "boom":
                raise RuntimeError("boom")
            self.seen.append(msg.text)

        def ask_str(self, body: str, ask: Ask, sender: object) -> list[str]:
            if body == "fail":
                raise ValueError("asked to")
            return list(self.seen)

    asys = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        recorder = asys.createActor(Recorder)
        failed = asys.ask(recorder, Batch((Note("a"), Note("boom"), Note("b"), Ask(1, "fail"))), 5)
        assert isinstance(failed, Answer) and isinstance(failed.body, ErrorReply)  # one failure, the rest went on
        assert asys.ask(recorder, Batch((Note("c"), Ask(2, "seen"))), 5) == Answer(2, ["a", "b", "c"])
    finally:
        asys.shutdown()
