"""A task's bridge network as one unit: made in order, rolled back on failure, removed by name.

``prepare`` runs in the RuntimeActor before a bridge task is spawned (the
bridge and its NAT table, made on demand, one actor at a time).  ``setup`` runs
in the TaskActor before the shim creates the container: an address from IPAM
(with the published host ports), the network namespace, the veth pair, the
DNAT rules; a failure half-way undoes what was done.  ``teardown`` removes all
of it (rules, veth, namespace, allocation) from the names alone, so it works
after a delete, after a dead shim, and on restore; it is idempotent, tries
every step, and reports what failed.  ``reconcile`` runs at start-up and
removes the network of every task that no longer has a bundle (a daemon that
died between the two could otherwise hold an address forever).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from actors import nat, network
from actors.config import Config, NetworkConfig
from actors.errdefs import ContactorError, FailedPrecondition, InvalidArgument
from actors.identifiers import validate, validate_namespace
from actors.ipam import IPAM, gateway_of
from actors.logs import get_logger
from actors.netopts import NetOptions

__all__ = ["ipam_path", "prepare", "setup", "teardown", "reconcile"]

log = get_logger(component="network")


def ipam_path(cfg: Config) -> Path:
    return Path(cfg.daemon.root) / "ipam.db"


def _owner(namespace: str, cid: str) -> str:
    return f"{namespace}/{cid}"


def prepare(net: NetworkConfig, options: NetOptions) -> None:
    """The bridge (with its address, up) and, when NAT or published ports need it, its nftables table."""
    network.ensure_bridge(net.bridge, gateway_of(net.subnet))
    try:
        nat.ensure(net.bridge, net.subnet, net.nat)
    except FailedPrecondition as exc:
        if net.nat or options.ports:
            raise FailedPrecondition(f"network.nat and -p need nftables: {exc.message}") from None
        log.debug("nftables_unavailable", error=exc.message)


def setup(cfg: Config, namespace: str, cid: str, options: NetOptions) -> dict[str, Any]:
    """Give the task its network; the record of what was made (kept in the task's state)."""
    net, state = cfg.network, cfg.daemon.state
    path, host_if = network.netns_path(state, namespace, cid), network.host_ifname(state, namespace, cid)
    gateway = gateway_of(net.subnet)
    # Each undo is registered before its step: a step that fails half-way is undone too (all are idempotent).
    with contextlib.ExitStack() as undo:
        with IPAM(ipam_path(cfg)) as ipam:
            held = ipam.allocate(net.subnet, namespace, cid, options.ip, options.ports)
        undo.callback(_release, cfg, namespace, cid)
        network.remove_netns(path)  # one left by a create that died half-way
        undo.callback(network.remove_netns, path)
        network.create_netns(path)
        network.detach(host_if)
        undo.callback(network.detach, host_if)
        network.attach(path, net.bridge, host_if, held.interface, gateway.ip)
        if options.ports:
            undo.callback(nat.unpublish, net.bridge, _owner(namespace, cid))
            nat.publish(net.bridge, _owner(namespace, cid), held.address, options.ports)
        undo.pop_all()
    return {"mode": "bridge", "bridge": net.bridge, "address": str(held.interface), "gateway": str(gateway.ip),
            "netns": str(path), "veth": host_if, "ports": [str(p) for p in options.ports]}  # fmt: skip


def _release(cfg: Config, namespace: str, cid: str) -> None:
    path = ipam_path(cfg)
    if path.exists():
        with IPAM(path) as ipam:
            ipam.release(namespace, cid)


def teardown(cfg: Config, namespace: str, cid: str, record: dict[str, Any] | None = None) -> list[str]:
    """Remove the task's rules, veth pair, namespace and allocation; the steps that failed (none: all gone).

    A task that never had a bridge network (``record`` says so and no namespace
    file of it exists) costs nothing here.
    """
    record = record or {}
    state = cfg.daemon.state
    path = network.netns_path(state, namespace, cid)
    if record.get("mode") != "bridge" and not path.exists():
        return []
    problems: list[str] = []
    bridge = str(record.get("bridge") or cfg.network.bridge)

    def unpublish() -> None:
        if record.get("ports") != []:  # none published: nothing to look for; not known: look
            nat.unpublish(bridge, _owner(namespace, cid))

    steps = (
        ("rules", unpublish),
        ("veth", lambda: network.detach(network.host_ifname(state, namespace, cid))),
        ("netns", lambda: network.remove_netns(path)),
        ("address", lambda: _release(cfg, namespace, cid)),
    )
    for name, step in steps:
        try:
            step()
        except ContactorError as exc:
            problems.append(f"{name}: {exc.message}")
        except OSError as exc:
            problems.append(f"{name}: {exc}")
    return problems


def reconcile(cfg: Config, keep: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Tear down the network of every task not in ``keep`` (those with a bundle); the tasks it did."""
    kept = set(keep)
    orphans: set[tuple[str, str]] = set()
    if ipam_path(cfg).exists():
        with IPAM(ipam_path(cfg)) as ipam:
            orphans.update((a.namespace, a.id) for a in ipam.allocations())
    orphans.update((ns, cid) for ns, cid, _ in network.netns_files(cfg.daemon.state))
    done = []
    for namespace, cid in sorted(orphans - kept):
        try:
            validate_namespace(namespace)
            validate(cid, "container id")
        except InvalidArgument:
            log.error("orphan_network_name_invalid", namespace=namespace, id=cid)
            continue
        problems = teardown(cfg, namespace, cid, {"mode": "bridge"})
        if problems:
            log.error("orphan_network_teardown_failed", namespace=namespace, id=cid, problems=problems)
        else:
            log.info("orphan_network_removed", namespace=namespace, id=cid)
        done.append((namespace, cid))
    return done


def address_of(record: dict[str, Any] | None) -> str:
    """The task's address without its prefix ("" when it has none)."""
    text = str((record or {}).get("address") or "")
    return str(ipaddress.IPv4Interface(text).ip) if text else ""
