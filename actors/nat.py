"""NAT for a bridge network, as nftables rules made over netlink (pyroute2; no ``nft`` binary).

Each bridge gets its own table, ``ip contactor-<bridge>``, with three NAT base
chains: ``prerouting`` and ``output`` (dstnat) for published ports, and
``postrouting`` (srcnat) for the optional outbound masquerade.  A published
port is one DNAT rule in each dstnat chain:

    fib daddr type local meta l4proto tcp th dport 8080 dnat to 10.88.0.5:80

so only traffic addressed to one of this host's own addresses is redirected
(never traffic passing through to another machine).  Every rule carries its
owner (``<namespace>/<id>``) as its comment: a task's rules are found and
removed by that name alone, after a delete, a dead shim or a daemon restart.

The masquerade rule (``ip saddr <subnet> oifname != <bridge> masquerade``) is
there only while ``network.nat`` is true; turning it on also turns on the
host's IPv4 forwarding, without which nothing would leave the host anyway.
Traffic to 127.0.0.1 is not redirected (the kernel does not route loopback
traffic out of the host's loopback); publish and connect to a host address.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from actors.errdefs import FailedPrecondition
from actors.netopts import PortMapping
from actors.network import netlink_error

__all__ = ["table_name", "ensure", "publish", "unpublish", "delete_table", "rules", "MASQUERADE"]

MASQUERADE: Final = "masquerade"  # the comment of the masquerade rule
_CHAINS: Final = (("prerouting", "prerouting", -100), ("output", "output", -100), ("postrouting", "postrouting", 100))
_DSTNAT: Final = ("prerouting", "output")
_ACCEPT: Final = 1
_RTN_LOCAL: Final = 2
_FIB_F_DADDR: Final = 2
_META_L4PROTO: Final = 16
_META_OIFNAME: Final = 7
_PAYLOAD_NETWORK: Final = 1
_PAYLOAD_TRANSPORT: Final = 2
_NAT_DNAT: Final = 1
_CMP_EQ: Final = 0
_CMP_NEQ: Final = 1
_IPPROTO: Final = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_FORWARDING: Final = Path("/proc/sys/net/ipv4/ip_forward")


def table_name(bridge: str) -> str:
    return f"contactor-{bridge}"


def _data(value: bytes) -> dict[str, Any]:
    return {"attrs": [("NFTA_DATA_VALUE", value)]}


def _cmp(op: int, value: bytes) -> Any:
    from pyroute2.nftables.expressions import genex

    return genex("cmp", {"sreg": 1, "op": op, "data": _data(value)})


def _dnat(address: str, port: PortMapping) -> list[Any]:
    from pyroute2.netlink.nfnetlink.nftsocket import NFPROTO_IPV4
    from pyroute2.nftables.expressions import genex

    return [
        # fib daddr type local: the fib result ADDRTYPE is 3, which pyroute2 only spells as a flag set.
        genex("fib", {"dreg": 1, "result": {"NFT_FIB_RESULT_UNSPEC", "NFT_FIB_RESULT_OIF"}, "flags": _FIB_F_DADDR}),
        _cmp(_CMP_EQ, struct.pack("=I", _RTN_LOCAL)),
        genex("meta", {"dreg": 1, "key": _META_L4PROTO}),
        _cmp(_CMP_EQ, bytes([_IPPROTO[port.protocol]])),
        genex("payload", {"dreg": 1, "base": _PAYLOAD_TRANSPORT, "offset": 2, "len": 2}),
        _cmp(_CMP_EQ, struct.pack(">H", port.host_port)),
        genex("immediate", {"dreg": 1, "data": _data(socket.inet_aton(address))}),
        genex("immediate", {"dreg": 2, "data": _data(struct.pack(">H", port.container_port))}),
        genex("nat", {"type": _NAT_DNAT, "family": NFPROTO_IPV4, "reg_addr_min": 1, "reg_proto_min": 2}),
    ]


def _masquerade(subnet: ipaddress.IPv4Network, bridge: str) -> list[Any]:
    from pyroute2.nftables.expressions import genex

    return [
        genex("payload", {"dreg": 1, "base": _PAYLOAD_NETWORK, "offset": 12, "len": 4}),
        genex("bitwise", {"sreg": 1, "dreg": 1, "len": 4, "mask": _data(subnet.netmask.packed),
                          "xor": _data(bytes(4))}),
        _cmp(_CMP_EQ, subnet.network_address.packed),
        genex("meta", {"dreg": 1, "key": _META_OIFNAME}),
        _cmp(_CMP_NEQ, bridge.encode().ljust(16, b"\0")),
        genex("masq", {}),
    ]


@contextmanager
def _nft() -> Iterator[Any]:
    # pyroute2 loads on first use: see actors.network.netlink_error.
    from pyroute2.netlink.nfnetlink.nftsocket import NFPROTO_IPV4
    from pyroute2.nftables.main import NFTables

    try:
        nft = NFTables(nfgen_family=NFPROTO_IPV4)
    except OSError as exc:
        raise FailedPrecondition(f"nftables is not available: {exc}") from None
    try:
        yield nft
    except netlink_error() as exc:
        raise FailedPrecondition(f"nftables refused a change: {os.strerror(exc.code) if exc.code else exc}") from None
    finally:
        nft.close()


def _rules(nft: Any, table: str) -> list[tuple[str, int, str]]:
    """(chain, handle, comment) of every rule in ``table``."""
    out = []
    for rule in nft.get_rules():
        if rule.get_attr("NFTA_RULE_TABLE") == table:
            comment = rule.get_attr("NFTA_RULE_USERDATA")
            out.append((str(rule.get_attr("NFTA_RULE_CHAIN")), int(rule.get_attr("NFTA_RULE_HANDLE")),
                        comment if isinstance(comment, str) else ""))  # fmt: skip
    return out


def _has_table(nft: Any, table: str) -> bool:
    return any(t.get_attr("NFTA_TABLE_NAME") == table for t in nft.get_tables())


def ensure(bridge: str, subnet: ipaddress.IPv4Network, masquerade: bool) -> None:
    """The bridge's table and chains, with the masquerade rule exactly when ``masquerade``; idempotent."""
    table = table_name(bridge)
    with _nft() as nft:
        have = {c.get_attr("NFTA_CHAIN_NAME") for c in nft.get_chains() if c.get_attr("NFTA_CHAIN_TABLE") == table}
        if not _has_table(nft, table):
            nft.table("add", name=table)
        for name, hook, priority in _CHAINS:
            if name not in have:  # each change is a transaction of its own, and they are slow
                nft.chain("add", table=table, name=name, hook=hook, type="nat", priority=priority, policy=_ACCEPT)
        present = [(c, h) for c, h, comment in _rules(nft, table) if comment == MASQUERADE]
        if masquerade and not present:
            nft.rule("add", table=table, chain="postrouting", expressions=[_masquerade(subnet, bridge)],
                     userdata=MASQUERADE)  # fmt: skip
        elif not masquerade:
            for chain, handle in present:
                nft.rule("del", table=table, chain=chain, handle=handle)
    if masquerade and _FORWARDING.read_text().strip() != "1":
        _FORWARDING.write_text("1\n")


def publish(bridge: str, owner: str, address: str, ports: Sequence[PortMapping]) -> None:
    """DNAT each host port to ``address`` (the table must exist: see ``ensure``)."""
    if not ports:
        return
    table = table_name(bridge)
    with _nft() as nft:
        for chain in _DSTNAT:
            for port in ports:
                nft.rule("add", table=table, chain=chain, expressions=[_dnat(address, port)], userdata=owner)


def unpublish(bridge: str, owner: str) -> int:
    """Remove every rule ``owner`` has in the bridge's table; how many there were."""
    table = table_name(bridge)
    try:
        with _nft() as nft:
            if not _has_table(nft, table):
                return 0
            mine = [(c, h) for c, h, comment in _rules(nft, table) if comment == owner]
            for chain, handle in mine:
                nft.rule("del", table=table, chain=chain, handle=handle)
            return len(mine)
    except FailedPrecondition:
        if not _nftables_present():
            return 0  # no nftables at all: nothing was ever published
        raise


def delete_table(bridge: str) -> bool:
    """Remove the bridge's table with all its rules; False if there was none."""
    table = table_name(bridge)
    with _nft() as nft:
        if not _has_table(nft, table):
            return False
        try:
            nft.table("del", name=table)
        except netlink_error() as exc:
            if exc.code == errno.ENOENT:
                return False
            raise
        return True


def rules(bridge: str) -> list[tuple[str, str]]:
    """(chain, comment) of every rule in the bridge's table (none if it has no table)."""
    table = table_name(bridge)
    with _nft() as nft:
        return [(chain, comment) for chain, _, comment in _rules(nft, table)]


def _nftables_present() -> bool:
    try:
        with _nft() as nft:
            nft.get_tables()
    except FailedPrecondition:
        return False
    return True
