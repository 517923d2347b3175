"""Several hosts, one cluster: daemons in network namespaces of their own, joined through Thespian's conventions.

Each test makes its hosts with ``actors.cluster_hosts`` (a bridge, a namespace
and veth per host, own dirs, one key) and runs a real daemon in each; the
fixture removes every task, daemon, shim, namespace, veth and dir afterwards,
also when the test failed.  Timings are short (1 s re-registration, 3 misses)
so that a lost node is noticed in seconds; waits have generous deadlines.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import cluster_hosts
from actors.client import Client
from actors.errdefs import Unavailable
from actors.spec import default_spec
from actors.testing import Daemon, tear_down

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc")

TIMINGS = {"reregister": 1, "miss_max": 3, "restart_period": 1}
DETECTION = TIMINGS["reregister"] * TIMINGS["miss_max"]
Cluster = tuple[cluster_hosts.Hosts, list[Daemon]]


@pytest.fixture
def cluster(namespace: str) -> Iterator[Callable[..., Cluster]]:
    """``cluster(n, leaders=1, keys=None)``: n hosts, each running its daemon; all removed afterwards."""
    made: list[tuple[Path, list[Daemon]]] = []

    def make(n: int, leaders: int = 1, keys: dict[str, str] | None = None) -> Cluster:
        base = Path(tempfile.mkdtemp(prefix="ctc-", dir="/tmp"))  # short: sockets live under it
        daemons: list[Daemon] = []
        made.append((base, daemons))
        hosts = cluster_hosts.make(base, n, leaders, timings=TIMINGS, keys=keys)
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


def run_on(d: Daemon, node: str, cid: str, rootfs: Path) -> None:
    with Client(d.address, namespace=d.namespace, node=node) as c:
        c.create_container(cid, default_spec(["sleep", "1000"], hostname=cid), str(rootfs))
        c.create_task(cid)
        c.start(cid)


def test_a_client_on_one_node_runs_a_task_on_another_and_every_node_lists_it(
    cluster: Callable[..., Cluster], rootfs: Path
) -> None:
    hosts, (a, b, c) = cluster(3)
    names = [h.name for h in hosts.hosts]
    wait_for("every node sees all three up", lambda: all_up([a, b, c], names))
    run_on(a, "node2", "t1", rootfs)

    with b.client() as local:
        assert [(t.id, t.status) for t in local.list_tasks()] == [("t1", "running")], "it runs on B itself"
    with a.client() as on_a:
        assert on_a.list_tasks() == [], "not on A"
    for d in (a, b, c):
        with d.client() as cl:
            listed = [(t.node, t.id, t.status) for t in cl.list_tasks(all_nodes=True)]
        assert listed == [("node2", "t1", "running")]
    with Client(c.address, namespace=c.namespace, node="node2") as via_c:
        via_c.kill("t1", signal.SIGKILL)
        assert via_c.wait("t1")["exit_status"] == 137
        via_c.delete_task("t1")
        via_c.delete_container("t1")


@pytest.mark.xfail(reason="known gap: heartbeats carry no tasks yet (rows show 0), so a lost node's tasks "
                   "are not listed as unknown", strict=True)
def test_a_killed_node_is_lost_on_the_others_and_rejoins_with_its_tasks(
    cluster: Callable[..., Cluster], rootfs: Path
) -> None:
    hosts, (a, b, c) = cluster(3)
    names = [h.name for h in hosts.hosts]
    wait_for("every node sees all three up", lambda: all_up([a, b, c], names))
    run_on(a, "node2", "t2", rootfs)
    wait_for("C lists node2's task", lambda: everywhere(c) == [("node2", "t2", "running")])
    with a.client() as on_a:
        events = on_a.events(["topic==\"/nodes/lost\""], timeout=60)
        b.kill_all()
        killed = time.monotonic()
        lost = next(events)
        detected = time.monotonic() - killed
    assert lost["event"]["node"] == "node2"
    assert detected < 4 * DETECTION + 10, f"lost after {detected:.1f}s"
    wait_for("C sees node2 lost", lambda: states(c)["node2"] == "lost")
    with c.client() as on_c:
        listed = [(t.node, t.id, t.status) for t in on_c.list_tasks(all_nodes=True)]
    assert listed == [("node2", "t2", "unknown")]

    b.start()
    wait_for("node2 up again everywhere", lambda: all_up([a, b, c], names))
    wait_for("node2's task is listed again with its real state",
             lambda: everywhere(c) == [("node2", "t2", "running")])  # fmt: skip


@pytest.mark.xfail(reason="known gap: /nodes/join sent by the leader does not reach the other nodes' "
                   "event logs yet (it does now and then: the gap is intermittent)", strict=False)
def test_node_events_reach_every_node(cluster: Callable[..., Cluster]) -> None:
    hosts, (a, b, c) = cluster(3)
    wait_for("every node sees all three up", lambda: all_up([a, b, c], [h.name for h in hosts.hosts]))
    with c.client() as on_c:
        joined = on_c.events(["topic==\"/nodes/join\""], since=0, timeout=30)
        seen = {next(joined)["event"]["node"] for _ in range(2)}
    # The leader's own join came before anyone else was there to hear it.
    assert seen == {"node2", "node3"}


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


def test_a_node_with_a_wrong_key_never_joins(cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    # node3 has another key: its registrations (and anything else it sends) fail the leader's HMAC check.
    _, (a, b, c) = cluster(3, keys={"node3": str(wrong)})
    wait_for("node2 is up", lambda: states(a).get("node2") == "up")
    time.sleep(3 * DETECTION)  # several re-registrations of node3 went to the leader meanwhile
    assert "node3" not in states(a)
    assert "node3" not in states(b)
    with c.client() as on_c, pytest.raises(Unavailable):
        on_c.list_nodes()
