"""Several hosts, one cluster: daemons in network namespaces of their own, joined through Thespian's conventions.

Each test makes its hosts with ``actors.cluster_hosts`` (a bridge, a namespace
and veth per host, own dirs, one key) and runs a real daemon in each; the
fixture removes every task, daemon, shim, namespace, veth and dir afterwards,
also when the test failed.  Timings are short (1 s re-registration, 3 misses)
so that a lost node is noticed in seconds; waits have generous deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import cluster_hosts
from actors.client import Client
from actors.errdefs import EXIT_CODES, Unavailable
from actors.spec import default_spec
from actors.testing import Daemon, tear_down

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc")

TIMINGS = {"reregister": 1, "miss_max": 3, "restart_period": 1}
DETECTION = TIMINGS["reregister"] * TIMINGS["miss_max"]
Cluster = tuple[cluster_hosts.Hosts, list[Daemon]]


@pytest.fixture
def cluster(namespace: str) -> Iterator[Callable[..., Cluster]]:
    """``cluster(n, leaders=1, keys=None, labels=None)``: n hosts, each running its daemon; all removed
    afterwards."""
    made: list[tuple[Path, list[Daemon]]] = []

    def make(n: int, leaders: int = 1, keys: dict[str, str] | None = None,
             labels: dict[str, list[str]] | None = None) -> Cluster:  # fmt: skip
        base = Path(tempfile.mkdtemp(prefix="ctc-", dir="/tmp"))  # short: sockets live under it
        daemons: list[Daemon] = []
        made.append((base, daemons))
        hosts = cluster_hosts.make(base, n, leaders, timings=TIMINGS, keys=keys, labels=labels)
        for host in hosts.hosts:
            daemons.append(cluster_hosts.daemon_of(host, namespace))
        for d in daemons:
            d.start()
        return hosts, daemons

    yield make
    problems: list[str] = []
    for base, daemons in made:
        for d in daemons:
            problems += tear_down(d)
        cluster_hosts.destroy(base)
        assert not base.exists()
    assert not problems, "; ".join(problems)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Unavailable as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def states(d: Daemon) -> dict[str, str]:
    with d.client() as c:
        return {n["name"]: n["state"] for n in c.list_nodes()}


def all_up(daemons: list[Daemon], names: list[str]) -> bool:
    return all(states(d) == dict.fromkeys(names, "up") for d in daemons)


def everywhere(d: Daemon) -> list[tuple[str, str, str]]:
    with d.client() as cl:
        return [(t.node, t.id, t.status) for t in cl.list_tasks(all_nodes=True)]


def run_on(d: Daemon, node: str, cid: str, rootfs: Path) -> int:
    """Create and start ``cid`` (sleep 1000) on ``node`` through ``d``; its pid."""
    with Client(d.address, namespace=d.namespace, node=node) as c:
        c.create_container(cid, default_spec(["sleep", "1000"], hostname=cid), str(rootfs))
        c.create_task(cid)
        return c.start(cid)


def task_events(d: Daemon, cid: str, until: str, timeout: float = 60) -> list[tuple[str, str]]:
    """(node, topic) of every logged event of task ``cid`` on ``d``, once ``until`` is among them."""
    out: list[tuple[str, str]] = []
    with d.client() as cl:
        for env in cl.events(['topic~="/tasks/.*"'], since=0, timeout=timeout):
            if env["event"].get("container_id") == cid:
                out.append((env.get("node", ""), env["topic"]))
                if env["topic"] == until:
                    return out
    raise AssertionError("unreachable")


def test_a_client_on_one_node_runs_a_task_on_another_and_every_node_lists_it(
    cluster: Callable[..., Cluster], rootfs: Path
) -> None:
    hosts, (a, b, c) = cluster(3)
    names = [h.name for h in hosts.hosts]
    wait_for("every node sees all three up", lambda: all_up([a, b, c], names))
    run_on(a, "node2", "t1", rootfs)

    # A start's reply and the runtime's record of it travel apart (TaskActor -> caller, TaskActor ->
    # RuntimeActor): a listing right after the reply may still say created.
    wait_for("it runs on B itself", lambda: everywhere(b) == [("node2", "t1", "running")])
    with b.client() as local:
        assert [(t.id, t.status) for t in local.list_tasks()] == [("t1", "running")]
    with a.client() as on_a:
        assert on_a.list_tasks() == [], "not on A"
    for d in (a, c):
        assert everywhere(d) == [("node2", "t1", "running")]
    with Client(c.address, namespace=c.namespace, node="node2") as via_c:
        via_c.kill("t1", signal.SIGKILL)
        assert via_c.wait("t1")["exit_status"] == 137
        via_c.delete_task("t1")
        via_c.delete_container("t1")
    # The task's events happened on B, and reach subscribers on A and C too: each once, in order, from B.
    expected = [("node2", t) for t in ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")]
    for d in (a, b, c):
        assert task_events(d, "t1", until="/tasks/delete") == expected


def test_a_killed_node_is_lost_on_the_others_and_rejoins_with_its_tasks(
    cluster: Callable[..., Cluster], rootfs: Path
) -> None:
    hosts, (a, b, c) = cluster(3)
    names = [h.name for h in hosts.hosts]
    wait_for("every node sees all three up", lambda: all_up([a, b, c], names))
    run_on(a, "node2", "t2", rootfs)
    doomed = run_on(a, "node2", "t2x", rootfs)
    # C lists them from B itself; it needs no heartbeat of B's to remember them once B is gone.
    wait_for("C lists node2's tasks running",
             lambda: everywhere(c) == [("node2", "t2", "running"), ("node2", "t2x", "running")])  # fmt: skip
    with a.client() as on_a:
        events = on_a.events(["topic==\"/nodes/lost\""], timeout=60)
        b.kill_all()
        killed = time.monotonic()
        lost = next(events)
        detected = time.monotonic() - killed
    assert lost["event"]["node"] == "node2"
    assert lost["node"] == "node1", "published by the leader"
    assert detected < 4 * DETECTION + 10, f"lost after {detected:.1f}s"
    wait_for("C sees node2 lost", lambda: states(c)["node2"] == "lost")
    for d in (a, c):
        assert everywhere(d) == [("node2", "t2", "unknown"), ("node2", "t2x", "unknown")]
    wait_for("C has /nodes/lost from the leader's log",
             lambda: any(e["topic"] == "/nodes/lost" for e in logged(c, "cluster")))  # fmt: skip

    os.kill(doomed, signal.SIGKILL)  # t2x exits while its node's daemon is down
    b.start()
    wait_for("node2 up again everywhere", lambda: all_up([a, b, c], names))
    wait_for("node2's tasks are listed again with their real state",
             lambda: everywhere(c) == [("node2", "t2", "running"), ("node2", "t2x", "stopped")])  # fmt: skip
    # B published the exit after its restore; C pulled it from B's log: once, from node2.
    exits = [(n, t) for n, t in task_events(c, "t2x", until="/tasks/exit") if t == "/tasks/exit"]
    assert exits == [("node2", "/tasks/exit")]
    time.sleep(2 * TIMINGS["reregister"])  # more pulls of B's log meanwhile: still one exit
    assert [t for t in logged(c, "default") if t["topic"] == "/tasks/exit"] == [
        t for t in logged(b, "default") if t["topic"] == "/tasks/exit"]  # fmt: skip


def logged(d: Daemon, ns: str) -> list[dict[str, Any]]:
    """Every event of namespace ``ns`` in ``d``'s log (without its local sequence numbers)."""
    out = []
    with d.client() as cl:
        stream = cl.events([f"namespace=={ns}"], since=0, timeout=2)
        try:
            for env in stream:
                out.append({k: v for k, v in env.items() if k != "seq"})
        except Unavailable:
            pass
    return out


def test_node_events_reach_every_node(cluster: Callable[..., Cluster]) -> None:
    hosts, (a, b, c) = cluster(3)
    wait_for("every node sees all three up", lambda: all_up([a, b, c], [h.name for h in hosts.hosts]))
    # The leader logs them; every other node pulls them from its log, also those from before it joined.
    for d in (a, b, c):
        with d.client() as cl:
            joined = cl.events(["topic==\"/nodes/join\""], since=0, timeout=30)
            seen = [next(joined) for _ in range(3)]
        assert {e["event"]["node"] for e in seen} == {"node1", "node2", "node3"}
        assert {e["node"] for e in seen} == {"node1"}


def test_the_cluster_keeps_working_through_the_second_leader(
    cluster: Callable[..., Cluster], rootfs: Path
) -> None:
    hosts, (a, b, c) = cluster(3, leaders=2)
    names = [h.name for h in hosts.hosts]
    wait_for("every node sees all three up", lambda: all_up([a, b, c], names))
    a.kill_all()
    wait_for("B and C see the first leader lost",
             lambda: states(b)["node1"] == "lost" and states(c)["node1"] == "lost")  # fmt: skip
    run_on(c, "node2", "t3", rootfs)
    with c.client() as on_c:
        assert [(t.node, t.id) for t in on_c.list_tasks(all_nodes=True)] == [("node2", "t3")]
    a.start()
    wait_for("the first leader is back", lambda: all_up([a, b, c], names))


def test_a_node_with_a_wrong_key_never_joins_and_forged_frames_are_never_acted_on(
    cluster: Callable[..., Cluster], tmp_path: Path, rootfs: Path
) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    # node3 has another key: its registrations (and anything else it sends) fail the leader's HMAC check.
    hosts, (a, b, c) = cluster(3, keys={"node3": str(wrong)})
    wait_for("node2 is up", lambda: states(a).get("node2") == "up")
    time.sleep(3 * DETECTION)  # several re-registrations of node3 went to the leader meanwhile
    assert "node3" not in states(a)
    assert "node3" not in states(b)
    with c.client() as on_c, pytest.raises(Unavailable):
        on_c.list_nodes()

    # Frames from outside, to every port of the leader's actor system (its admin's and each actor's).
    with a.client() as cl:
        supervisor = cl.health()["pids"]["supervisor"]
    leader = hosts.hosts[0]
    ports = listening_ports(a)
    assert cluster_hosts.ADMIN_PORT in ports and len(ports) >= 8, ports
    pwned = tmp_path / "pwned"
    right = Path(hosts.key_file).read_bytes()
    me = hosts.gateway.split("/")[0]  # this process's address on the hosts' bridge
    raw = pickle.dumps((None, _Pwn(str(pwned))))
    for port in ports:
        send_frame(leader.ip, port, b"%d>" % len(raw) + raw)  # no MAC at all
        for key, what in ((wrong.read_bytes(), "forged"), (right[:-1] + bytes([right[-1] ^ 1]), "flipped")):
            for message in (_create(a, what, rootfs), _register(me, what)):
                send_frame(leader.ip, port, thespian_frame(key, me, message))
    # The control: the same frame with the cluster's key is acted on, so the forged ones were well formed.
    for port in ports:
        send_frame(leader.ip, port, thespian_frame(right, me, _create(a, "control", rootfs)))
    wait_for("the control container exists", lambda: "control" in containers(a))
    assert containers(a) == ["control"]
    assert not pwned.exists()
    assert set(states(a)) == {"node1", "node2"}, "no forged node was registered"
    with a.client() as cl:
        assert cl.health()["pids"]["supervisor"] == supervisor, "the daemon is the same one, still up"
        assert cl.list_tasks() == []


class _Pwn:
    """Unpickling this runs a command: what an unauthenticated Thespian port would do with it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def listening_ports(d: Daemon) -> list[int]:
    """The TCP ports listening in the daemon's host (its own network namespace: only its actor system's)."""
    import psutil

    pgid = d.actor_pgid()
    member = next(p.pid for p in psutil.process_iter() if pgid and _pgid(p.pid) == pgid)
    ports = set()
    with open(f"/proc/{member}/net/tcp") as f:  # /proc/PID/net is that process's network namespace
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                ports.add(int(local.split(":")[1], 16))
    return sorted(ports)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return 0


def thespian_frame(key: bytes, sender_ip: str, message: Any) -> bytes:
    """A frame as Thespian's TCP transport sends it, its pickle authenticated with ``key``."""
    from thespian.actors import ActorAddress
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    from actors.transport import Serializer

    payload = Serializer(key).dumps((ActorAddress(TCPv4ActorAddress(sender_ip, 9, external=True)), message))
    return b"%d>" % len(payload) + payload


def send_frame(ip: str, port: int, frame: bytes) -> None:
    with socket.create_connection((ip, port), timeout=10) as s:
        s.sendall(frame)
        s.settimeout(1.0)  # one of the ports (Thespian's logger's) neither answers nor closes
        with contextlib.suppress(OSError):
            s.recv(4096)  # Thespian's ACK for a frame it took, or the end of a connection it dropped


def _create(d: Daemon, cid: str, rootfs: Path) -> Any:
    from actors.messages import Ask, CreateContainer

    record = {"namespace": d.namespace, "id": cid, "labels": {}, "image": "", "runtime_name": "runc",
              "runtime_options": {}, "spec": default_spec(["true"], hostname=cid), "rootfs": str(rootfs),
              "snapshot_key": "", "extensions": {}}  # fmt: skip
    return Ask(1, CreateContainer(record))


def _register(ip: str, name: str) -> Any:
    from thespian.actors import ActorAddress
    from thespian.system.messages.convention import ConventionRegister
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    caps = {"Admin Port": 1900, "contactor.node": name, "contactor.labels": {}}
    return ConventionRegister(ActorAddress(TCPv4ActorAddress(ip, 1900, external=True)), caps, firstTime=True)


def containers(d: Daemon) -> list[str]:
    with d.client() as cl:
        return sorted(r["id"] for r in cl.list_containers())


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """The real contactor command, run on ``d``'s host (its config; the CLI reaches the daemon's socket)."""
    return subprocess.run([sys.executable, "-m", "actors.cli", "--config", str(d.config), "-n", d.namespace, *args],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)  # fmt: skip


def test_the_cli_lists_nodes_and_places_tasks_by_node_labels_and_free_memory(
    cluster: Callable[..., Cluster], rootfs: Path
) -> None:
    hosts, (a, b, c) = cluster(3, labels={"node3": ["zone=b", "disk=ssd"]})
    names = [h.name for h in hosts.hosts]
    wait_for("every node sees all three up", lambda: all_up([a, b, c], names))

    r = cli(b, "nodes", "ls")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["NODE", "ADDRESS", "STATE", "TASKS"]
    assert [(ln.split()[0], ln.split()[1], ln.split()[2]) for ln in lines[1:]] == [
        (h.name, f"{h.ip}:{cluster_hosts.ADMIN_PORT}", "UP") for h in hosts.hosts]  # fmt: skip
    assert lines[3].endswith("disk=ssd,zone=b")
    nodes = json.loads(cli(c, "--json", "nodes", "ls").stdout)
    for n in nodes:  # every heartbeat carries the node's free memory
        assert 0 < n["free_memory"] <= n["memory"], n

    run = ("run", "-d", "--rootfs", str(rootfs))
    assert cli(a, *run, "--node", "node2", "c1", "sleep", "1000").returncode == 0
    r = cli(a, *run, "--constraint", "zone=b", "c2", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    r = cli(a, *run, "--constraint", "mem>=1M", "--constraint", "cpus>=1", "c3", "sleep", "1000")
    assert r.returncode == 0, r.stderr

    def all_running() -> dict[str, tuple[str, str]] | None:
        r = cli(c, "tasks", "ls", "--all-nodes")
        assert r.returncode == 0, r.stderr
        listed = {ln.split()[1]: (ln.split()[0], ln.split()[3]) for ln in r.stdout.splitlines()[1:]}
        return listed if {state for _, state in listed.values()} == {"RUNNING"} else None

    listed = wait_for("C lists the three tasks running", all_running)
    assert listed.keys() == {"c1", "c2", "c3"}
    assert listed["c1"][0] == "node2" and listed["c2"][0] == "node3" and listed["c3"][0] in names
    assert [ln.split()[0] for ln in cli(a, "--node", "node3", "tasks", "ls").stdout.splitlines()[1:]] == ["c2"]
    wait_for("node3's heartbeat counts its task",
             lambda: {n["name"]: n["tasks"] for n in json.loads(cli(b, "--json", "nodes", "ls").stdout)}["node3"]
             == 1 + (listed["c3"][0] == "node3"))  # fmt: skip

    # Bad input: a one-line error and the exit code of its kind; nothing is created.
    for args, category in [
        ((*run, "--constraint", "mem>=1E", "c4", "true"), "failed_precondition"),  # no node has an exabyte free
        ((*run, "--constraint", "zone=nowhere", "c4", "true"), "failed_precondition"),
        ((*run, "--constraint", "mem>=lots", "c4", "true"), "invalid_argument"),
        ((*run, "--constraint", "zone", "c4", "true"), "invalid_argument"),
        ((*run, "--node", "node2", "--constraint", "zone=b", "c4", "true"), "invalid_argument"),
        (("--node", "nosuch", "tasks", "ls"), "not_found"),
        ((*run, "--node", "nosuch", "c4", "true"), "not_found"),
    ]:
        r = cli(a, *args)
        assert r.returncode == EXIT_CODES[category], (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("contactor: "), (args, r.stderr)
    for d in (a, b, c):
        assert "c4" not in containers(d)

    for node, cid in (("node2", "c1"), ("node3", "c2"), (listed["c3"][0], "c3")):
        assert cli(b, "--node", node, "tasks", "kill", "-s", "KILL", cid).returncode == 0
    wait_for("every task stopped", lambda: {ln.split()[3] for ln in cli(b, "tasks", "ls", "--all-nodes")
                                            .stdout.splitlines()[1:]} == {"STOPPED"})  # fmt: skip
