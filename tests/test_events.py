"""Events nobody can miss: sequence numbers, the durable log, replay after a restart."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from conftest import Daemon, pid_alive, wait_for
from test_daemon import run

from actors.client import Client


def logged_since(path: Path, seq: int) -> list[Any]:
    """What a subscription ``since`` seq reads from the log, checked as the Gateway checks it."""
    from actors.eventlog import LogReader, check_since

    reader = LogReader(path)
    try:
        oldest, newest = reader.bounds()
        check_since(seq, newest, oldest)
        return reader.after(seq, 1_000_000)
    finally:
        reader.close()


def collect(c: Client, out: list[dict[str, Any]], **kw: Any) -> threading.Thread:
    def loop() -> None:
        try:
            for env in c.events(**kw):
                out.append(env)
        except Exception:
            return

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_since_replays_then_goes_live_without_gap_or_duplicate(daemon: Daemon, rootfs: Path) -> None:
    with daemon.client() as c:
        run(c, rootfs, "a", ["/bin/true"])
        c.wait("a")
        c.delete_task("a")
        logged: list[dict[str, Any]] = []
        collect(c, logged, since=0)
        wait_for(lambda: any(e["topic"] == "/tasks/delete" for e in logged), 30, "the replayed delete")
        first_seq = logged[0]["seq"]
        assert first_seq == 1, "since=0 replays the whole log"
        run(c, rootfs, "b", ["/bin/true"])  # live, after the replay
        c.wait("b")
        c.delete_task("b")
        wait_for(lambda: [e["topic"] for e in logged].count("/tasks/delete") == 2, 30, "the live delete")
        seqs = [e["seq"] for e in logged]
        assert seqs == list(range(1, len(seqs) + 1)), f"gap or duplicate at the seam: {seqs}"
        later: list[dict[str, Any]] = []
        collect(c, later, since=seqs[-3], filters=['topic=="/tasks/delete"'])
        wait_for(lambda: len(later) == 1, 30, "a filtered replay")
        assert later[0]["event"]["container_id"] == "b"


def test_exits_while_the_daemon_is_down_are_replayed_with_their_real_time(
    daemon: Daemon, rootfs: Path
) -> None:
    seen: list[dict[str, Any]] = []
    with daemon.client() as c:
        collect(c, seen)
        time.sleep(0.3)
        pid = run(
            c, rootfs, "lazarus", ["/bin/sh", "-c", "trap 'exit 7' USR1; while true; do sleep 0.1; done"]
        )
        wait_for(lambda: any(e["topic"] == "/tasks/start" for e in seen), 30, "the start event")
    last_seq = seen[-1]["seq"]
    daemon.kill_all()
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: not pid_alive(pid), 30, "the exit while the daemon is down")
    exited = time.time()
    time.sleep(0.2)
    daemon.start()
    with daemon.client() as c:
        replayed: list[dict[str, Any]] = []
        collect(c, replayed, since=last_seq)
        wait_for(lambda: any(e["topic"] == "/tasks/exit" for e in replayed), 30, "the exit, replayed")
        (exit_env,) = [e for e in replayed if e["topic"] == "/tasks/exit"]
        assert exit_env["seq"] > last_seq
        assert exit_env["event"]["exit_status"] == 7 and exit_env["event"]["pid"] == pid
        assert exit_env["timestamp"] == exit_env["event"]["exited_at"] <= exited, "when it really happened"
        c.delete_task("lazarus")


def test_events_command_prints_seq_and_replays(daemon: Daemon, rootfs: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO

    with daemon.client() as c:
        run(c, rootfs, "p", ["/bin/true"])
        c.wait("p")
        c.delete_task("p")
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "--config", str(daemon.config), "--json", "events", "--since", "0"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        import json

        lines = [json.loads(proc.stdout.readline()) for _ in range(5)]
        assert [e["seq"] for e in lines] == [1, 2, 3, 4, 5]
        assert lines[0]["topic"] == "/containers/create"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_a_bounded_log_says_clearly_what_it_no_longer_has(tmp_path: Path) -> None:
    import pytest

    from actors.errdefs import FailedPrecondition, InvalidArgument
    from actors.eventlog import EventLog
    from actors.events import envelope

    log = EventLog(tmp_path / "events.db", max_entries=10, max_age=3600)
    for i in range(2500):
        log.append(envelope("ns", "/tasks/start", {"container_id": f"c{i}"}))
    db = tmp_path / "events.db"
    kept = logged_since(db, 2490)
    assert [e.seq for e in kept] == list(range(2491, 2501))
    with pytest.raises(FailedPrecondition, match="no longer in the log"):
        logged_since(db, 5)
    with pytest.raises(InvalidArgument, match="past the last event"):
        logged_since(db, 9999)
    log.close()
    reopened = EventLog(tmp_path / "events.db")
    assert reopened.seq == 2500, "numbering goes on after a restart"
    reopened.close()


def test_the_client_iterator_resumes_across_a_daemon_restart(daemon: Daemon) -> None:
    got: list[dict[str, Any]] = []
    with daemon.client() as c:
        c.publish("/probe/before", {"n": "1"})
        t = collect(c, got, filters=['topic~="^/probe/"'], since=0)
        wait_for(lambda: len(got) == 1, 30, "the first event")
        daemon.stop()
        daemon.start()
    with daemon.client() as c:
        c.publish("/probe/after", {"n": "2"})
        wait_for(lambda: len(got) == 2, 60, "the event after the restart, through the same iterator")
    assert [e["topic"] for e in got] == ["/probe/before", "/probe/after"]
    assert got[1]["seq"] == got[0]["seq"] + 1 or got[1]["seq"] > got[0]["seq"]
    del t


def test_ten_thousand_events_to_five_subscribers_one_of_them_slow(tmp_path: Path) -> None:
    """Fast subscribers get every event in order; the slow one is told exactly what the log dropped."""
    import pytest

    from actors.client import EventsLost
    from actors.testing import private_daemon

    total, publishers = 10_000, 4
    flt = ['topic=="/load/tick"']
    limits = "[events]\nmax_entries = 1000\n[gateway]\nmax_backlog = 16384\n"
    with private_daemon(tmp_path, extra_config=limits) as d, d.client() as c, contextlib.ExitStack() as stack:
        start = c.publish("/load/start", {})
        fast: list[list[int]] = [[] for _ in range(4)]
        threads = []
        for out in fast:
            sub = stack.enter_context(d.client())

            def read(sub: Client = sub, out: list[int] = out) -> None:
                for env in sub.events(flt, since=start, timeout=120):
                    out.append(env["seq"])
                    if len(out) == total:
                        return

            threads.append(threading.Thread(target=read, daemon=True))
        slow = stack.enter_context(d.client())
        slow_events = slow.events(['topic~="^/load/"'], since=start - 1, timeout=120)
        assert next(slow_events)["seq"] == start  # subscribed; now it reads nothing while all is published
        published: list[int] = []

        def publish(k: int) -> None:
            with d.client() as p:
                for j in range(total // publishers):
                    published.append(p.publish("/load/tick", {"k": str(k), "j": str(j)}))

        threads += [threading.Thread(target=publish, args=(k,)) for k in range(publishers - 1)]
        for t in threads:
            t.start()
        publish(publishers - 1)
        for t in threads:
            t.join(timeout=300)
        assert len(published) == total
        expected = sorted(published)
        for out in fast:
            assert out == expected, "every event, once, in order of seq"

        got: list[int] = []
        with pytest.raises(EventsLost) as lost:
            for env in slow_events:
                got.append(env["seq"])
        assert got == expected[: len(got)], "what it read before the loss is complete and in order"
        assert lost.value.first == got[-1] + 1, "told exactly where the loss begins"
        assert lost.value.last < expected[-1]
        rest = []
        for env in slow.events(flt, since=lost.value.last, timeout=60):
            rest.append(env["seq"])
            if env["seq"] == expected[-1]:
                break
        assert rest == [s for s in expected if s > lost.value.last], "caught up with since, no gap after it"


def test_numbering_goes_on_when_age_empties_the_log(tmp_path: Path) -> None:
    from actors.eventlog import EventLog
    from actors.events import envelope

    log = EventLog(tmp_path / "events.db", max_entries=100, max_age=0.0)
    for i in range(5):
        log.append(envelope("ns", "/tasks/start", {"container_id": f"c{i}"}))
    log.prune()
    kept = logged_since(tmp_path / "events.db", 4)
    assert [e.seq for e in kept] == [5], "every entry is too old, but the newest stays"
    log.close()
    reopened = EventLog(tmp_path / "events.db")
    assert reopened.append(envelope("ns", "/tasks/start", {}))[0].seq == 6
    reopened.close()


def test_an_envelope_whose_key_the_log_holds_is_a_duplicate_even_after_a_reopen(tmp_path: Path) -> None:
    from actors.eventlog import EventLog
    from actors.events import envelope

    log = EventLog(tmp_path / "events.db", max_entries=3, max_age=3600)
    exit_ = envelope("ns", "/tasks/exit", {"container_id": "c", "pid": 7}, key="ns/c/exit/7")
    first, fresh = log.append(exit_)
    assert fresh and first.seq == 1
    assert log.append(envelope("ns", "/tasks/start", {}))[1], "no key: always new"
    log.close()
    log = EventLog(tmp_path / "events.db", max_entries=3, max_age=3600)
    again, fresh = log.append(exit_)
    assert not fresh and again.seq == 1, "told the first one's number"
    assert [e.topic for e in logged_since(tmp_path / "events.db", 0)] == ["/tasks/exit", "/tasks/start"]
    for i in range(6):
        log.append(envelope("ns", "/tasks/start", {}, key=f"k{i}"))
    log.prune()
    keys = log.db.execute("SELECT key FROM event_keys ORDER BY seq").fetchall()
    assert [k for (k,) in keys] == ["k3", "k4", "k5"], "keys go with their pruned events"
    log.close()


def test_an_envelope_published_again_is_logged_only_if_it_was_lost_not_pruned(tmp_path: Path) -> None:
    """A restored task publishes its create, start and exit again: each is logged once, and one
    older than what the log still holds is not told as news (its first copy went with the pruning)."""
    from actors.eventlog import EventLog
    from actors.events import envelope

    log = EventLog(tmp_path / "events.db", max_entries=3, max_age=3600)
    now = time.time()
    created = envelope("ns", "/tasks/create", {}, now - 100, key="ns/c/create")
    assert log.append(created, again=True)[1], "an empty log"
    assert not log.append(created, again=True)[1], "a duplicate"
    for i in range(6):
        log.append(envelope("ns", "/tasks/start", {}, now - 60 + i, key=f"k{i}"))
    log.prune()  # what is left starts at now - 57
    lost = envelope("ns", "/tasks/exit", {}, now - 56.5, key="ns/c/exit")
    pruned = envelope("ns", "/tasks/exit", {}, now - 58.5, key="ns/old/exit")
    assert not log.append(pruned, again=True)[1], "older than the log: maybe told and pruned"
    assert log.append(lost, again=True)[1], "within the log and not in it: lost, so logged"
    assert not log.append(lost, again=True)[1]
    assert log.append(pruned)[1], "a first publish is always news"
    assert [e.topic for e in logged_since(tmp_path / "events.db", 4)] == ["/tasks/start"] * 3 + ["/tasks/exit"] * 2
    log.close()
