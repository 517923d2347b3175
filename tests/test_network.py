"""Container networks against a real daemon: bridge, veth, netns, IPAM, DNAT; nothing left behind.

Every test runs its own daemon on its own bridge (``ctr<random>``) and a random
10.x.y.0/24 that no interface of this machine uses, and deletes the bridge and
its nftables table afterwards.  Traffic only flows between the test's own
namespaces and the host's side of the test's bridge: nothing leaves this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Daemon, wait_for, wait_pid_gone
from pyroute2 import IPRoute

from actors import nat, network
from actors.client import Client, Task
from actors.errdefs import EXIT_CODES, ContactorError
from actors.ipam import IPAM
from actors.spec import default_spec
from actors.testing import private_daemon


@dataclass
class Net:
    daemon: Daemon
    bridge: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def allocations(self) -> list[tuple[str, str]]:
        path = self.daemon.root / "ipam.db"
        if not path.exists():
            return []
        with IPAM(path) as ipam:
            return [(a.id, a.address) for a in ipam.allocations()]

    def netns_files(self) -> list[str]:
        return [f"{ns}/{cid}" for ns, cid, _ in network.netns_files(self.daemon.state)]

    def nsfs_mounts(self) -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f if str(self.daemon.state) in line.split()[4]]

    def veth(self, cid: str) -> str:
        return network.host_ifname(self.daemon.state, self.daemon.namespace, cid)

    def leftovers(self) -> list[str]:
        """Everything a task's network could leave behind, described; empty when nothing is left."""
        left = [f"bridge port {p}" for p in network.bridge_ports(self.bridge)]
        left += [f"netns {n}" for n in self.netns_files()] + [f"mount {m}" for m in self.nsfs_mounts()]
        left += [f"address {a} of {cid}" for cid, a in self.allocations()]
        left += [f"rule {c} {o}" for c, o in nat.rules(self.bridge) if o != nat.MASQUERADE]
        return left


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that overlaps no address and no route of this machine."""
    with IPRoute() as ipr:
        used = [ipaddress.IPv4Network(f"{a.get('address')}/{a['prefixlen']}", strict=False)
                for a in ipr.addr("dump", family=2)]  # fmt: skip
        used += [ipaddress.IPv4Network(f"{r.get('dst')}/{r['dst_len']}", strict=False)
                 for r in ipr.route("dump", family=2) if r.get("dst")]  # fmt: skip
    for _ in range(100):
        candidate = ipaddress.IPv4Network(f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 on this machine")


@pytest.fixture
def net(tmp_path: Path, namespace: str) -> Iterator[Net]:
    """A daemon whose bridge network is this test's own; afterwards nothing of it is left."""
    bridge, subnet = f"ctr{uuid.uuid4().hex[:8]}", _free_subnet()
    config = f'[network]\nbridge = "{bridge}"\nsubnet = "{subnet}"\n'
    try:
        with private_daemon(tmp_path, namespace, config) as d:
            n = Net(d, bridge, subnet)
            yield n
        left = n.leftovers()  # the daemon has deleted every task by now
        assert not left, f"the network left: {left}"
    finally:
        nat.delete_table(bridge)
        network.delete_bridge(bridge)


def create(c: Client, rootfs: Path, cid: str, args: list[str], **net: object) -> dict[str, object]:
    spec = default_spec(args, hostname=cid)
    return c.create_container(cid, spec, rootfs=str(rootfs), **net)  # type: ignore[arg-type]


def start(c: Client, rootfs: Path, cid: str, args: list[str], **net: object) -> str:
    """Create and start a task; its address."""
    create(c, rootfs, cid, args, **net)
    c.create_task(cid)
    c.start(cid)
    return task(c, cid).address


def task(c: Client, cid: str) -> Task:
    return next(t for t in c.list_tasks() if t.id == cid)


def sh(c: Client, cid: str, script: str, tmp: Path) -> tuple[int, str]:
    """Run ``script`` in the task; its exit status and output."""
    exec_id = f"x{uuid.uuid4().hex[:8]}"
    out = tmp / f"{exec_id}.out"
    c.exec(cid, exec_id, ["/bin/sh", "-c", script], stdout=str(out), stderr=str(out))
    c.start(cid, exec_id)
    status = int(c.wait(cid, exec_id=exec_id, timeout=60)["exit_status"])
    c.delete_task(cid, exec_id=exec_id)
    return status, out.read_text()


def contactor(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "actors.cli", "--config", str(d.config), "-n", d.namespace, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip


# Retry until the server listens (never a fixed sleep): busybox nc fails at once on a refused connect.
CONNECT = "for i in $(seq 100); do out=$(nc -w 5 {ip} {port} </dev/null) && [ -n \"$out\" ] && echo $out && exit 0; " \
          "usleep 50000; done; exit 1"  # fmt: skip


def test_two_bridge_containers_ping_each_other_and_talk_tcp(net: Net, rootfs: Path, tmp_path: Path) -> None:
    with net.daemon.client() as c:
        a = start(c, rootfs, "a", ["/bin/sleep", "1000"], net="bridge")
        b = start(c, rootfs, "b", ["/bin/sh", "-c", "echo pong | nc -l -p 7000; sleep 1000"], net="bridge")
        assert a != b and {ipaddress.IPv4Address(a), ipaddress.IPv4Address(b)} <= set(net.subnet.hosts())
        status, out = sh(c, "a", "ip -o -4 addr show eth0; ip route; cat /proc/net/dev", tmp_path)
        assert status == 0 and f"inet {a}/24" in out and f"default via {net.gateway} dev eth0" in out
        status, out = sh(c, "a", f"ping -c 1 -W 5 {b}", tmp_path)
        assert status == 0, out
        status, out = sh(c, "a", CONNECT.format(ip=b, port=7000), tmp_path)
        assert (status, out) == (0, "pong\n")
        assert sorted(net.allocations()) == sorted([("a", a), ("b", b)])
        assert sorted(network.bridge_ports(net.bridge)) == sorted([net.veth("a"), net.veth("b")])
    listed = {t["id"]: t for t in json.loads(contactor(net.daemon, "--json", "tasks", "ls").stdout)}
    assert (listed["a"]["network"], listed["a"]["address"]) == ("bridge", a)
    info = json.loads(contactor(net.daemon, "containers", "info", "b").stdout)
    assert info["task"]["address"] == b and info["labels"]["contactor.net"] == "bridge"
    assert b in contactor(net.daemon, "tasks", "ls").stdout


def test_fifty_create_delete_cycles_leave_no_netns_veth_or_address(net: Net, rootfs: Path) -> None:
    seen = set()
    with net.daemon.client() as c:
        create(c, rootfs, "cyc", ["/bin/sleep", "1000"], net="bridge")
        for i in range(50):
            info = c.create_task("cyc")
            seen.add(info.address)
            if i % 10 == 0:  # now and then a running container, killed by the delete
                c.start("cyc")
            assert network.link_exists(net.veth("cyc")) and net.netns_files() == [f"{net.daemon.namespace}/cyc"]
            c.delete_task("cyc", force=True)
            assert net.leftovers() == [] and not network.link_exists(net.veth("cyc"))
    assert len(seen) == 50, "round robin: no address is handed out again at once"


def test_shim_sigkill_frees_the_address_and_removes_the_links(net: Net, rootfs: Path) -> None:
    with net.daemon.client() as c:
        a = start(c, rootfs, "victim", ["/bin/sleep", "1000"], net="bridge", ports=["18080:80"])
        keep = start(c, rootfs, "bystander", ["/bin/sleep", "1000"], net="bridge")
        assert ("prerouting", f"{net.daemon.namespace}/victim") in nat.rules(net.bridge)
        victim = task(c, "victim")
        os.kill(victim.shim_pid, signal.SIGKILL)
        wait_for(lambda: all(t.id != "victim" for t in c.list_tasks()), 30, "the dead shim's cleanup")
        assert wait_pid_gone(victim.pid, 10)
        assert not network.link_exists(net.veth("victim"))
        assert net.allocations() == [("bystander", keep)] and a != keep
        assert net.netns_files() == [f"{net.daemon.namespace}/bystander"]
        assert [o for _, o in nat.rules(net.bridge) if o.endswith("/victim")] == []
        # The address is free again: asked for by name, it is given.
        assert start(c, rootfs, "again", ["/bin/sleep", "1000"], net="bridge", ip=a) == a


def test_daemon_restart_keeps_every_address_and_frees_it_later(net: Net, rootfs: Path, tmp_path: Path) -> None:
    with net.daemon.client() as c:
        addresses = {cid: start(c, rootfs, cid, ["/bin/sleep", "1000"], net="bridge") for cid in ("r1", "r2", "r3")}
    net.daemon.kill_all()
    net.daemon.start()
    with net.daemon.client() as c:
        wait_for(lambda: [t.status for t in c.list_tasks()] == ["running"] * 3, 30, "the tasks to be restored")
        assert {t.id: t.address for t in c.list_tasks()} == addresses
        assert dict(net.allocations()) == addresses
        status, out = sh(c, "r1", f"ping -c 1 -W 5 {addresses['r2']}", tmp_path)
        assert status == 0, out
        # A new task gets none of the kept addresses.
        fresh = start(c, rootfs, "r4", ["/bin/sleep", "1000"], net="bridge")
        assert fresh not in addresses.values()
        for cid in ("r1", "r2", "r3", "r4"):
            c.delete_task(cid, force=True)
        assert net.leftovers() == []


def test_a_task_that_died_while_the_daemon_was_down_gives_its_network_back(net: Net, rootfs: Path) -> None:
    with net.daemon.client() as c:
        start(c, rootfs, "gone", ["/bin/sleep", "1000"], net="bridge", ports=["18081:80/udp"])
        shim = task(c, "gone").shim_pid
    net.daemon.kill_all()
    os.kill(shim, signal.SIGKILL)
    assert wait_pid_gone(shim, 10)
    net.daemon.start()
    # The restored TaskActor finds the shim dead and cleans up: the network goes with the rest.
    wait_for(lambda: not net.leftovers(), 30, "the restore's cleanup of the network")
    assert not network.link_exists(net.veth("gone"))
    with net.daemon.client() as c:
        wait_for(lambda: not c.list_tasks(), 30, "the task to go")


def test_host_network_is_the_hosts_and_none_has_only_loopback(net: Net, rootfs: Path, tmp_path: Path) -> None:
    host_ns = os.readlink("/proc/self/ns/net")
    with net.daemon.client() as c:
        start(c, rootfs, "h", ["/bin/sleep", "1000"], net="host")
        start(c, rootfs, "n", ["/bin/sleep", "1000"], net="none")
        start(c, rootfs, "d", ["/bin/sleep", "1000"])  # the configured default: none
        assert sh(c, "h", "readlink /proc/self/ns/net", tmp_path) == (0, host_ns + "\n")
        for cid in ("n", "d"):
            status, out = sh(c, cid, "readlink /proc/self/ns/net; ip -o link; ip -o -4 addr", tmp_path)
            lines = out.splitlines()
            assert status == 0 and lines[0] != host_ns
            assert [line.split(":")[1].strip() for line in lines[1:] if "link/" in line] == ["lo"]
            assert "inet 127.0.0.1/8" in out and "LOOPBACK,UP" in out
        assert {t.id: (t.network, t.address) for t in c.list_tasks()} == {
            "h": ("host", ""), "n": ("none", ""), "d": ("none", "")}  # fmt: skip
    assert net.allocations() == [] and net.netns_files() == []


def test_published_port_reaches_the_container_through_dnat(net: Net, rootfs: Path) -> None:
    port = random.randint(20000, 30000)
    with net.daemon.client() as c:
        start(c, rootfs, "web", ["/bin/sh", "-c", "while true; do echo hello | nc -l -p 80; done"], net="bridge",
              ports=[f"{port}:80/tcp"])  # fmt: skip
        # From the host, to a host address (the bridge's), the published port answers for the container.
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((net.gateway, port), timeout=5) as s:
                    assert s.makefile().readline() == "hello\n"
                    break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the published port never answered"
                time.sleep(0.05)
        r = contactor(net.daemon, "run", "-d", "--net", "bridge", "-p", f"{port}:80", "--rootfs", str(rootfs),
                      "web2", "/bin/sleep", "1000")  # fmt: skip
        assert r.returncode == EXIT_CODES["already_exists"] and f"{port}/tcp" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert [t.id for t in c.list_tasks()] == ["web"], "the daemon is up and nothing else was made"
        c.delete_container("web2")
        c.delete_task("web", force=True)
        assert net.leftovers() == []


def test_bad_network_requests_are_refused_with_one_line_and_leave_nothing(net: Net, rootfs: Path) -> None:
    outside = str(net.subnet.network_address + 300)
    cases = [
        (["--net", "bridge", "--ip", outside], "invalid_argument", "is not a host address"),
        (["--net", "bridge", "--ip", net.gateway], "invalid_argument", "the bridge's own address"),
        (["--net", "bridge", "--ip", "banana"], "invalid_argument", "not an IPv4 address"),
        (["--net", "host", "-p", "80:80"], "invalid_argument", "need --net bridge"),
        (["--net", "bridge", "-p", "80:99999"], "invalid_argument", "from 1 to 65535"),
        (["--net", "bridge", "-p", "80:80/sctp"], "invalid_argument", "tcp or udp"),
    ]
    for i, (flags, category, text) in enumerate(cases):
        r = contactor(net.daemon, "run", "-d", *flags, "--rootfs", str(rootfs), f"bad{i}", "/bin/true")
        assert r.returncode == EXIT_CODES[category] and text in r.stderr, (flags, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
        with contextlib.suppress(Exception), net.daemon.client() as c:
            c.delete_container(f"bad{i}")
    with net.daemon.client() as c:
        mine = start(c, rootfs, "first", ["/bin/sleep", "1000"], net="bridge")
        r = contactor(net.daemon, "run", "-d", "--net", "bridge", "--ip", mine, "--rootfs", str(rootfs), "second",
                      "/bin/true")  # fmt: skip
        assert r.returncode == EXIT_CODES["already_exists"] and f"address {mine} is taken" in r.stderr
        assert [t.id for t in c.list_tasks()] == ["first"] and c.health()["ready"]
        assert net.allocations() == [("first", mine)]
        c.delete_container("second")
        # A create that fails after the network was made (the runtime cannot exec the command) rolls it back.
        with pytest.raises(ContactorError):
            start(c, rootfs, "broken", ["/no/such/program"], net="bridge", ports=["18082:80"])
        assert [t.id for t in c.list_tasks()] == ["first"]
        assert net.allocations() == [("first", mine)] and not network.link_exists(net.veth("broken"))
        assert net.netns_files() == [f"{net.daemon.namespace}/first"] and nat.rules(net.bridge) == []


def test_start_up_gives_back_the_network_of_tasks_whose_bundles_are_gone(net: Net) -> None:
    # What a daemon that died between deleting a bundle and tearing its network down leaves.
    net.daemon.stop()
    path = network.netns_path(net.daemon.state, net.daemon.namespace, "ghost")
    with IPAM(net.daemon.root / "ipam.db") as ipam:
        held = ipam.allocate(net.subnet, net.daemon.namespace, "ghost")
    network.ensure_bridge(net.bridge, ipaddress.IPv4Interface(f"{net.gateway}/24"))
    network.create_netns(path)
    network.attach(path, net.bridge, net.veth("ghost"), held.interface, ipaddress.IPv4Address(net.gateway))
    assert net.leftovers() != []
    net.daemon.start()
    wait_for(lambda: not net.leftovers(), 30, "the orphaned network to go")
    assert not network.link_exists(net.veth("ghost")) and not path.exists()
