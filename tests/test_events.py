"""Events nobody can miss: sequence numbers, the durable log, replay after a restart."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from conftest import Daemon, pid_alive, wait_for
from test_daemon import run

from actors.client import Client


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
    kept = list(log.since(2490))
    assert [e.seq for e in kept] == list(range(2491, 2501))
    with pytest.raises(FailedPrecondition, match="no longer in the log"):
        list(log.since(5))
    with pytest.raises(InvalidArgument, match="past the last event"):
        list(log.since(9999))
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
