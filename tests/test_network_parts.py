"""The parts of container networking on their own: options, IPAM, links and nftables rules.

Link and rule tests run in a thread that unshared a network namespace of its
own, so the bridges, dummy links, rules and the forwarding switch they touch
are that namespace's, never the host's; the namespace ends with the thread.
"""

from __future__ import annotations

import ctypes
import ipaddress
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO
from pyroute2 import IPRoute

from actors import nat, network
from actors.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument
from actors.ipam import IPAM
from actors.netopts import (
    LABEL_IP,
    LABEL_MODE,
    LABEL_PORTS,
    NetOptions,
    PortMapping,
    apply_to_spec,
    check_labels,
    from_labels,
    parse_port,
    to_labels,
)
from actors.spec import default_spec

SUBNET = ipaddress.IPv4Network("10.77.0.0/24")


# -- options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "mapping"),
    [("8080:80", PortMapping(8080, 80, "tcp")), ("53:5353/udp", PortMapping(53, 5353, "udp")),
     ("1:65535/tcp", PortMapping(1, 65535, "tcp"))],
)  # fmt: skip
def test_port_mappings_parse(text: str, mapping: PortMapping) -> None:
    assert parse_port(text) == mapping and parse_port(str(mapping)) == mapping


@pytest.mark.parametrize(
    ("text", "problem"),
    [("8080", "HOSTPORT:CTRPORT"), ("0:80", "from 1 to 65535"), ("80:65536", "from 1 to 65535"),
     ("x:80", "from 1 to 65535"), ("80:80/sctp", "tcp or udp"), ("-1:80", "from 1 to 65535")],
)  # fmt: skip
def test_bad_port_mappings_are_refused(text: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        parse_port(text)


def test_labels_round_trip_and_the_default_mode_comes_from_the_config() -> None:
    labels = to_labels("bridge", "10.77.0.9", ["8080:80", "53:53/udp"])
    assert labels == {LABEL_MODE: "bridge", LABEL_IP: "10.77.0.9", LABEL_PORTS: "8080:80/tcp,53:53/udp"}
    assert from_labels(labels, "none", SUBNET) == NetOptions(
        "bridge", "10.77.0.9", (PortMapping(8080, 80), PortMapping(53, 53, "udp")))  # fmt: skip
    assert to_labels(None) == {}
    assert from_labels({}, "host", SUBNET) == NetOptions("host")
    assert from_labels({"app": "web"}, "bridge", SUBNET) == NetOptions("bridge")


@pytest.mark.parametrize(
    ("labels", "problem"),
    [({LABEL_MODE: "nat"}, "must be one of"), ({LABEL_MODE: "host", LABEL_PORTS: "80:80"}, "need --net bridge"),
     ({LABEL_MODE: "none", LABEL_IP: "10.77.0.5"}, "need --net bridge"), ({LABEL_IP: "10.77.0"}, "not an IPv4"),
     ({LABEL_PORTS: "80:80,80:81"}, "published twice")],
)  # fmt: skip
def test_bad_labels_are_refused_wherever_a_record_is_written(labels: dict[str, str], problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        check_labels(labels)


@pytest.mark.parametrize(
    ("ip", "problem"),
    [("10.78.0.5", "not a host address"), ("10.77.0.0", "not a host address"), ("10.77.0.255", "not a host address"),
     ("10.77.0.1", "the bridge's own address")],
)  # fmt: skip
def test_a_requested_address_must_be_a_containers_address_of_the_subnet(ip: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        from_labels({LABEL_MODE: "bridge", LABEL_IP: ip}, "none", SUBNET)


def test_each_mode_puts_its_own_network_namespace_in_the_spec() -> None:
    spec = default_spec(["/bin/true"])
    before = repr(spec)

    def network_ns(s: dict[str, object]) -> list[dict[str, str]]:
        return [n for n in s["linux"]["namespaces"] if n["type"] == "network"]  # type: ignore[index]

    assert network_ns(apply_to_spec(spec, "none")) == [{"type": "network"}]
    assert network_ns(apply_to_spec(spec, "host")) == []
    assert network_ns(apply_to_spec(spec, "bridge", "/run/x/.netns/ns/c")) == [
        {"type": "network", "path": "/run/x/.netns/ns/c"}]  # fmt: skip
    assert repr(spec) == before, "the caller's spec is not changed"
    with pytest.raises(InvalidArgument):
        apply_to_spec(spec, "bridge")


# -- IPAM -----------------------------------------------------------------------------------------------------
def test_addresses_go_round_robin_skip_the_reserved_ones_and_survive_a_reopen(tmp_path: Path) -> None:
    net = ipaddress.IPv4Network("10.77.0.0/29")  # .1 the bridge's, .2 to .6 for tasks, .7 broadcast
    with IPAM(tmp_path / "ipam.db") as ipam:
        got = [ipam.allocate(net, "ns", f"c{i}").address for i in range(5)]
        assert got == [f"10.77.0.{i}" for i in range(2, 7)]
        with pytest.raises(FailedPrecondition, match="no free address"):
            ipam.allocate(net, "ns", "one-too-many")
        assert ipam.allocate(net, "ns", "c3").address == "10.77.0.5", "a task keeps what it holds"
        ipam.release("ns", "c1")
        ipam.release("ns", "c3")
    with IPAM(tmp_path / "ipam.db") as ipam:
        assert [(a.id, a.address) for a in ipam.allocations()] == [
            ("c0", "10.77.0.2"), ("c2", "10.77.0.4"), ("c4", "10.77.0.6")]  # fmt: skip
        # After .6 the round goes on from the start: .3 first, then .5.
        assert [ipam.allocate(net, "ns", n).address for n in ("d0", "d1")] == ["10.77.0.3", "10.77.0.5"]
        assert ipam.lookup("ns", "d0") is not None and ipam.lookup("ns", "nobody") is None
        assert ipam.release("ns", "nobody") is None


def test_a_requested_address_or_host_port_is_never_given_twice(tmp_path: Path) -> None:
    with IPAM(tmp_path / "ipam.db") as ipam:
        first = ipam.allocate(SUBNET, "a", "web", "10.77.0.50", [PortMapping(8080, 80)])
        assert first.interface == ipaddress.IPv4Interface("10.77.0.50/24") and first.ports == (PortMapping(8080, 80),)
        with pytest.raises(AlreadyExists, match=r"10\.77\.0\.50 is taken by a/web"):
            ipam.allocate(SUBNET, "b", "web", "10.77.0.50")
        with pytest.raises(AlreadyExists, match="8080/tcp is published by a/web"):
            ipam.allocate(SUBNET, "b", "web", ports=[PortMapping(8080, 81)])
        assert ipam.lookup("b", "web") is None, "a refused allocation takes nothing"
        assert ipam.allocate(SUBNET, "b", "dns", ports=[PortMapping(8080, 53, "udp")]).ports  # another protocol
        ipam.release("a", "web")
        assert ipam.allocate(SUBNET, "b", "web", "10.77.0.50", [PortMapping(8080, 80)]).address == "10.77.0.50"


def test_processes_allocating_at_once_never_share_an_address(tmp_path: Path) -> None:
    script = (
        "import ipaddress, sys\nfrom actors.ipam import IPAM\n"
        "with IPAM(sys.argv[1]) as ipam:\n"
        "    for i in range(25):\n"
        "        print(ipam.allocate(ipaddress.IPv4Network('10.77.0.0/24'), sys.argv[2], str(i)).address)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "ipam.db"), f"p{n}"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for n in range(4)]  # fmt: skip
    outputs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    everything = [a for out in outputs for a in out]
    assert len(everything) == 100 and len(set(everything)) == 100


# -- links and rules, in a network namespace of the test's own ------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def in_own_netns(fn: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            assert _libc.unshare(0x40000000) == 0, "unshare(CLONE_NEWNET)"
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def test_a_bridge_is_made_once_and_a_clashing_subnet_or_name_is_refused() -> None:
    def body() -> None:
        gateway = ipaddress.IPv4Interface("10.77.0.1/24")
        network.ensure_bridge("br-test", gateway)
        network.ensure_bridge("br-test", gateway)  # idempotent
        with IPRoute() as ipr:
            (index,) = ipr.link_lookup(ifname="br-test")
            assert [a.get("address") for a in ipr.addr("dump", index=index, family=2)] == ["10.77.0.1"]
            ipr.link("add", ifname="veth0", kind="veth", peer="veth1")  # this kernel has no dummy links
            (other,) = ipr.link_lookup(ifname="veth0")
            ipr.addr("add", index=other, address="10.66.1.1", prefixlen=16)
        with pytest.raises(FailedPrecondition, match=r"overlaps 10\.66\.1\.1/16"):
            network.ensure_bridge("br-other", ipaddress.IPv4Interface("10.66.2.1/24"))
        with pytest.raises(FailedPrecondition, match="is not a bridge"):
            network.ensure_bridge("veth0", ipaddress.IPv4Interface("10.55.0.1/24"))
        assert network.delete_bridge("br-test") and not network.delete_bridge("br-test")

    in_own_netns(body)


def test_a_namespace_and_veth_pair_are_made_and_removed_completely(tmp_path: Path) -> None:
    def body() -> None:
        network.ensure_bridge("br-test", ipaddress.IPv4Interface("10.77.0.1/24"))
        path = network.netns_path(tmp_path, "ns", "c1")
        host_if = network.host_ifname(tmp_path, "ns", "c1")
        network.create_netns(path)
        with pytest.raises(FailedPrecondition, match="cannot make a network namespace"):
            network.create_netns(path)  # one task, one namespace
        network.attach(path, "br-test", host_if, ipaddress.IPv4Interface("10.77.0.2/24"),
                       ipaddress.IPv4Address("10.77.0.1"))  # fmt: skip
        assert network.bridge_ports("br-test") == [host_if]
        assert list(network.netns_files(tmp_path)) == [("ns", "c1", path)]
        assert network.detach(host_if) and not network.link_exists(host_if) and not network.detach(host_if)
        assert network.remove_netns(path) and not network.remove_netns(path)
        assert not (tmp_path / network.NETNS_DIR).exists(), "empty directories go too"
        assert str(path) not in Path("/proc/self/mountinfo").read_text()

    in_own_netns(body)


def test_nat_rules_follow_the_configuration_and_their_owners() -> None:
    def body() -> None:
        assert nat.rules("br-test") == [] and nat.unpublish("br-test", "ns/c1") == 0
        nat.ensure("br-test", SUBNET, masquerade=True)
        nat.ensure("br-test", SUBNET, masquerade=True)
        assert nat.rules("br-test") == [("postrouting", nat.MASQUERADE)]
        # This namespace's forwarding switch, not the host's.
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
        nat.publish("br-test", "ns/c1", "10.77.0.2", [PortMapping(8080, 80), PortMapping(53, 53, "udp")])
        nat.publish("br-test", "ns/c2", "10.77.0.3", [PortMapping(8081, 80)])
        assert sorted(nat.rules("br-test")).count(("output", "ns/c1")) == 2
        assert nat.unpublish("br-test", "ns/c1") == 4
        nat.ensure("br-test", SUBNET, masquerade=False)
        assert nat.rules("br-test") == [("prerouting", "ns/c2"), ("output", "ns/c2")]
        assert nat.delete_table("br-test") and not nat.delete_table("br-test")

    in_own_netns(body)
