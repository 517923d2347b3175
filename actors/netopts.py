"""A container's network options: what ``--net``, ``--ip`` and ``-p`` ask for, checked and carried.

The options live in the container record as labels (the way the restart policy
does): ``contactor.net`` (``none``, ``host`` or ``bridge``; absent means the
daemon's ``network.mode``), ``contactor.net.ip`` (a specific address on the
bridge's subnet) and ``contactor.net.ports`` (``HOST:CTR[/tcp|udp]`` mappings,
comma separated).  They are checked for form wherever a record is written and
again, against the daemon's configuration, when a task is created.

Plain functions: parsing, the label round trip, and the spec's network
namespace for each mode (``none``: a new one with only loopback; ``host``: the
host's; ``bridge``: the one the TaskActor makes and bind-mounts at a path).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from actors.errdefs import InvalidArgument

__all__ = [
    "MODES",
    "LABEL_MODE",
    "LABEL_IP",
    "LABEL_PORTS",
    "PortMapping",
    "NetOptions",
    "parse_port",
    "to_labels",
    "check_labels",
    "from_labels",
    "apply_to_spec",
]

MODES: Final = ("none", "host", "bridge")
LABEL_MODE: Final = "contactor.net"
LABEL_IP: Final = "contactor.net.ip"
LABEL_PORTS: Final = "contactor.net.ports"
PROTOCOLS: Final = ("tcp", "udp")


@dataclass(frozen=True, slots=True)
class PortMapping:
    """Traffic to the host's ``host_port`` goes to the container's ``container_port``."""

    host_port: int
    container_port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_port}:{self.container_port}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class NetOptions:
    """A task's network, resolved: the mode, the address asked for (or ""), the published ports."""

    mode: str = "none"
    ip: str = ""
    ports: tuple[PortMapping, ...] = ()


def _port_number(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidArgument(f"port mapping {spec!r}: {what} must be a port from 1 to 65535")
    return int(text)


def parse_port(spec: str) -> PortMapping:
    """``HOSTPORT:CTRPORT[/tcp|udp]`` (tcp when no protocol is given)."""
    ports, _, protocol = spec.strip().partition("/")
    protocol = protocol or "tcp"
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"port mapping {spec!r}: protocol must be tcp or udp")
    host, sep, ctr = ports.partition(":")
    if not sep:
        raise InvalidArgument(f"port mapping {spec!r} must be HOSTPORT:CTRPORT[/tcp|udp]")
    return PortMapping(_port_number(host, "the host port", spec), _port_number(ctr, "the container port", spec),
                       protocol)  # fmt: skip


def _parse_ports(text: str) -> tuple[PortMapping, ...]:
    ports = tuple(parse_port(p) for p in text.split(",") if p.strip())
    seen: set[tuple[int, str]] = set()
    for p in ports:
        if (p.host_port, p.protocol) in seen:
            raise InvalidArgument(f"host port {p.host_port}/{p.protocol} is published twice")
        seen.add((p.host_port, p.protocol))
    return ports


def _parse_ip(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InvalidArgument(f"--ip {text!r} is not an IPv4 address") from None


def to_labels(mode: str | None, ip: str = "", ports: Sequence[str] = ()) -> dict[str, str]:
    """The labels for ``--net``, ``--ip`` and ``-p`` (checked); no mode leaves the daemon's default."""
    labels: dict[str, str] = {}
    if mode is not None:
        labels[LABEL_MODE] = mode
    if ip:
        labels[LABEL_IP] = ip
    if ports:
        labels[LABEL_PORTS] = ",".join(str(parse_port(p)) for p in ports)
    check_labels(labels)
    return labels


def check_labels(labels: Mapping[str, str]) -> None:
    """The network labels' form (InvalidArgument naming the bad one); other labels are not looked at."""
    mode = labels.get(LABEL_MODE)
    if mode is not None and mode not in MODES:
        raise InvalidArgument(f"network mode must be one of {', '.join(MODES)}, not {mode!r}")
    if labels.get(LABEL_IP):
        _parse_ip(labels[LABEL_IP])
    if labels.get(LABEL_PORTS):
        _parse_ports(labels[LABEL_PORTS])
    if mode in ("none", "host") and (labels.get(LABEL_IP) or labels.get(LABEL_PORTS)):
        raise InvalidArgument(f"--ip and -p need --net bridge, not --net {mode}")


def from_labels(labels: Mapping[str, str], default_mode: str, subnet: ipaddress.IPv4Network) -> NetOptions:
    """A task's network from its container's labels and the daemon's ``[network]`` settings."""
    check_labels(labels)
    mode = labels.get(LABEL_MODE) or default_mode
    ip = _parse_ip(labels[LABEL_IP]) if labels.get(LABEL_IP) else ""
    ports = _parse_ports(labels.get(LABEL_PORTS, ""))
    if mode != "bridge":
        if ip or ports:
            raise InvalidArgument(f"--ip and -p need --net bridge, not --net {mode}")
        return NetOptions(mode)
    if ip:
        address = ipaddress.IPv4Address(ip)
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            raise InvalidArgument(f"--ip {ip} is not a host address of the subnet {subnet}")
        if address == subnet.network_address + 1:
            raise InvalidArgument(f"--ip {ip} is the bridge's own address")
    return NetOptions(mode, ip, ports)


def apply_to_spec(spec: Mapping[str, Any], mode: str, netns: str = "") -> dict[str, Any]:
    """The spec with the network namespace each mode wants (a copy; ``spec`` is left alone).

    ``none``: a new namespace (the runtime brings its loopback up); ``host``: no
    network namespace at all; ``bridge``: the namespace bind-mounted at ``netns``.
    The copy is new down to ``linux.namespaces``; below and beside that it shares
    ``spec``'s values (a deep copy was a tenth of the RuntimeActor's CPU per create).
    """
    out = dict(spec)
    linux = dict(out.get("linux") or {})
    others = [n for n in linux.get("namespaces") or [] if not (isinstance(n, dict) and n.get("type") == "network")]
    if mode == "none":
        others.append({"type": "network"})
    elif mode == "bridge":
        if not netns:
            raise InvalidArgument("a bridge network needs the path of its network namespace")
        others.append({"type": "network", "path": netns})
    elif mode != "host":
        raise InvalidArgument(f"network mode must be one of {', '.join(MODES)}, not {mode!r}")
    linux["namespaces"] = others
    out["linux"] = linux
    return out
