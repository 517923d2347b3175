"""The contactor command against a real daemon: exit codes, output, one-line errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, Daemon

from actors.errdefs import EXIT_CODES


def contactor(d: Daemon, *args: str, input: str | None = None, ns: str | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "actors.cli", "--config", str(d.config), "-n", ns or d.namespace, *args],
        capture_output=True, text=True, cwd=REPO, timeout=timeout, input=input,
    )  # fmt: skip


@pytest.mark.parametrize("status", [0, 3])
def test_run_rm_propagates_the_exit_status(daemon: Daemon, rootfs: str, status: int) -> None:
    r = contactor(daemon, "run", "--rm", "--rootfs", str(rootfs), "c1", "/bin/sh", "-c",
                  f"echo out; echo err >&2; hostname; exit {status}")  # fmt: skip
    assert r.returncode == status, r.stderr
    assert r.stdout == "out\nc1\n" and r.stderr == "err\n"
    assert contactor(daemon, "--json", "containers", "ls").stdout.strip() == "[]"
    assert contactor(daemon, "--json", "tasks", "ls").stdout.strip() == "[]"


def test_run_rm_of_a_killed_container_exits_137(daemon: Daemon, rootfs: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "--config", str(daemon.config), "-n", daemon.namespace,
         "run", "--rm", "--rootfs", str(rootfs), "k1", "/bin/sleep", "1000"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        with daemon.client() as c:
            deadline = time.monotonic() + 30
            while not [t for t in c.list_tasks() if t.id == "k1" and t.status == "running"]:
                assert time.monotonic() < deadline, "the task never ran"
                time.sleep(0.05)
        assert contactor(daemon, "tasks", "kill", "--signal", "KILL", "k1").returncode == 0
        assert proc.wait(60) == 137
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_detached_task_kill_wait_rm(daemon: Daemon, rootfs: str) -> None:
    assert contactor(daemon, "containers", "create", "--rootfs", str(rootfs), "--label", "app=web", "d1",
                     "--", "/bin/sleep", "1000").returncode == 0  # fmt: skip
    r = contactor(daemon, "tasks", "start", "--detach", "d1")
    assert r.returncode == 0 and int(r.stdout) > 0
    listed = json.loads(contactor(daemon, "--json", "tasks", "ls").stdout)
    assert [(t["id"], t["status"]) for t in listed] == [("d1", "running")]
    assert listed[0]["shim_pid"] > 0 and listed[0]["bundle"].endswith("/d1")
    r = contactor(daemon, "tasks", "rm", "d1")
    assert r.returncode == EXIT_CODES["failed_precondition"] and "stopped" in r.stderr
    assert contactor(daemon, "tasks", "kill", "d1").returncode == 0
    assert contactor(daemon, "tasks", "kill", "-s", "9", "d1").returncode == 0
    assert contactor(daemon, "tasks", "wait", "d1").returncode == 137
    assert contactor(daemon, "tasks", "rm", "d1").returncode == 0
    web = json.loads(contactor(daemon, "--json", "containers", "ls", "labels.app==web").stdout)
    assert [c["id"] for c in web] == ["d1"], "the container record outlives its task"
    assert contactor(daemon, "containers", "rm", "d1").returncode == 0


def test_exec_pause_resume_and_ps(daemon: Daemon, rootfs: str) -> None:
    assert contactor(daemon, "run", "-d", "--rootfs", str(rootfs), "e1", "/bin/sleep", "1000").returncode == 0
    r = contactor(daemon, "tasks", "exec", "--exec-id", "x1", "e1", "/bin/sh", "-c", "echo inside; exit 7")
    assert (r.returncode, r.stdout) == (7, "inside\n")
    assert "RUNNING" in contactor(daemon, "tasks", "ls").stdout
    assert contactor(daemon, "tasks", "pause", "e1").returncode == 0
    assert "PAUSED" in contactor(daemon, "tasks", "ls").stdout
    assert contactor(daemon, "tasks", "resume", "e1").returncode == 0
    ps = json.loads(contactor(daemon, "--json", "tasks", "ps", "e1").stdout)
    assert len(ps) == 1 and ps[0]["pid"] > 0
    assert contactor(daemon, "tasks", "rm", "--force", "e1").returncode == 0
    assert contactor(daemon, "containers", "rm", "e1").returncode == 0


def test_attached_stdio_round_trip(daemon: Daemon, rootfs: str) -> None:
    r = contactor(daemon, "run", "--rm", "-i", "--rootfs", str(rootfs), "io1", "/bin/sh", "-c",
                  "cat; echo done >&2", input="line one\nline two\n")  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (0, "line one\nline two\n", "done\n")
    assert not list((daemon.state / "fifo").iterdir()), "the stdio FIFOs and their directory are removed"


@pytest.mark.parametrize(
    "bad_id",
    ["../x", "x" * 77, "a..b", "ü", "a-", ""],
)
def test_bad_ids_are_refused_and_nothing_changes(daemon: Daemon, rootfs: str, bad_id: str) -> None:
    assert (
        contactor(daemon, "run", "-d", "--rootfs", str(rootfs), "keep", "/bin/sleep", "1000").returncode == 0
    )
    r = contactor(daemon, "run", "--rm", "--rootfs", str(rootfs), bad_id, "/bin/true")
    assert r.returncode == EXIT_CODES["invalid_argument"], r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("contactor: invalid argument")
    r = contactor(daemon, "tasks", "kill", bad_id)
    assert r.returncode == EXIT_CODES["invalid_argument"]
    tasks = json.loads(contactor(daemon, "--json", "tasks", "ls").stdout)
    assert [(t["id"], t["status"]) for t in tasks] == [("keep", "running")]
    contactor(daemon, "tasks", "rm", "-f", "keep")
    contactor(daemon, "containers", "rm", "keep")


def test_bad_requests_get_their_category(daemon: Daemon, rootfs: str) -> None:
    cases = [
        (("run", "--rm", "--rootfs", "/no/such/rootfs", "c1", "/bin/true"), "invalid_argument"),
        (("run", "--rm", "--rootfs", str(rootfs), "c1", "/no/such/binary"), "invalid_argument"),
        (("tasks", "kill", "nosuch"), "not_found"),
        (("containers", "info", "nosuch"), "not_found"),
        (("tasks", "start", "nosuch"), "not_found"),
        (("-n", "bad..ns", "tasks", "ls"), "invalid_argument"),
    ]
    for args, category in cases:
        r = contactor(daemon, *args)
        assert r.returncode == EXIT_CODES[category], (args, r.stderr)
        ours = [line for line in r.stderr.splitlines() if line.startswith("contactor: ")]
        assert len(ours) == 1, r.stderr
    assert (
        contactor(daemon, "containers", "create", "--rootfs", str(rootfs), "dup", "/bin/true").returncode == 0
    )
    r = contactor(daemon, "containers", "create", "--rootfs", str(rootfs), "dup", "/bin/true")
    assert r.returncode == EXIT_CODES["already_exists"]
    assert contactor(daemon, "containers", "create", "--runtime", "crun", "--rootfs", str(rootfs), "dup2",
                     "/bin/true").returncode == 0  # fmt: skip
    assert contactor(daemon, "tasks", "start", "dup2").returncode == 0
    r = contactor(daemon, "containers", "rm", "dup2")
    assert r.returncode == EXIT_CODES["failed_precondition"] and "has a task" in r.stderr
    assert contactor(daemon, "tasks", "rm", "dup2").returncode == 0
    assert contactor(daemon, "containers", "rm", "dup", "dup2").returncode == 0
    # The daemon still serves, and the unknown namespace is simply empty.
    assert json.loads(contactor(daemon, "--json", "-n", "nosuchns", "tasks", "ls").stdout) == []


def test_a_dead_daemon_is_reported_as_such(tmp_path: object, daemon: Daemon) -> None:
    r = subprocess.run([sys.executable, "-m", "actors.cli", "--address", "/nonexistent/contactor.sock", "tasks", "ls"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert r.returncode == EXIT_CODES["unavailable"]
    assert (
        r.stderr.strip() == "contactor: unavailable: the contactor daemon is not running "
        "(no socket at /nonexistent/contactor.sock)"
    )


def test_garbage_on_the_gateway_closes_only_that_connection(daemon: Daemon, rootfs: str) -> None:
    for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"\x00\x00\x00\x02\xc1\xc1", b"\x00\x00\x00\x01\x05"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(daemon.address)
            s.sendall(garbage)
            assert s.recv(1) == b""
    with daemon.client() as c:
        assert "gateway" in c.health()["ready"]
        with pytest.raises(Exception, match="unknown method"):
            c.call("tasks.explode")


def test_update_and_metrics_from_the_command_line(daemon: Daemon, rootfs: str) -> None:
    assert contactor(daemon, "run", "-d", "--memory-limit", str(64 << 20), "--rootfs", str(rootfs), "m1",
                     "/bin/sleep", "1000").returncode == 0  # fmt: skip
    assert (
        json.loads(contactor(daemon, "--json", "tasks", "metrics", "m1").stdout)["memory"]["limit"]
        == 64 << 20
    )
    assert contactor(daemon, "tasks", "update", "--memory-limit", str(32 << 20), "m1").returncode == 0
    table = contactor(daemon, "tasks", "metrics", "m1").stdout
    assert any(line.split() == ["memory", "limit", str(32 << 20)] for line in table.splitlines()), table
    r = contactor(daemon, "tasks", "update", "m1")
    assert r.returncode == EXIT_CODES["invalid_argument"]
    assert contactor(daemon, "tasks", "rm", "-f", "m1").returncode == 0


def test_the_parser_offers_every_network_mode() -> None:
    from actors import netopts
    from actors._cli_args import NET_MODES

    assert NET_MODES == netopts.MODES


def test_the_client_names_the_task_type() -> None:
    from actors import client
    from actors.taskinfo import TaskInfo

    assert client.Task is TaskInfo
    with pytest.raises(AttributeError):
        client.Tasks  # noqa: B018


def test_the_command_line_starts_without_its_heavy_imports() -> None:
    # typing, tomllib (for a plain file), socket's enums, dataclasses and pathlib were 10 ms of every
    # command's 45: a module that brings one back shows here.
    probe = (
        "import sys, actors.cli as cli\n"
        f"args = cli._parser().parse_args(['--config', {str(REPO / 'conf' / 'contactor.toml')!r}, 'tasks', 'ls'])\n"
        "cli._settings(args)\n"
        "print(' '.join(sorted(m for m in ('typing', 'tomllib', 'socket', 'dataclasses', 'pathlib', 'json')"
        " if m in sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == []
