"""The node table a cluster leader keeps, and placement: plain classes and functions, no actor.

``NodeTable`` turns heartbeats, convention updates and the passing of time
into the node events to publish (``/nodes/join``, ``/nodes/lost``); ``place``
picks a live node for a task from the rows of a table (labels, the node's
name, free memory, cpus).  ``Tasks`` is what a node remembers of every node's
task list, so that a lost node's last known tasks can still be listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from actors.errdefs import FailedPrecondition, InvalidArgument
from actors.messages import NodeBeat, NodeInfo, NodeRow, Peers, TaskInfo

__all__ = ["NodeTable", "Tasks", "place", "parse_size", "NUMERIC"]

# Constraints compared as "at least": the node's free memory (bytes) and its cpu count.
NUMERIC: Final = {"mem": "free_memory", "memory": "free_memory", "cpus": "cpus"}
_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?)([kmgtpe]?)(i?b)?", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}


def parse_size(text: str) -> int:
    """``512M``, ``1.5G``, ``2GiB``, ``1048576``: binary units; InvalidArgument for anything else."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise InvalidArgument(f"{text!r} is not a size (e.g. 512M, 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class _Node:
    info: NodeInfo
    state: str = "joining"
    last_seen: float = 0.0  # wall clock, for display
    beat_at: float = 0.0  # monotonic
    peers: Peers | None = None
    tasks: tuple[TaskInfo, ...] = ()
    admin: Any = None  # the node's admin while the convention lists it
    agent_at: float = 0.0


class NodeTable:
    """A leader's view of the nodes: what joined, what is lost.  Returns the events to publish."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.nodes: dict[str, _Node] = {}

    def beat(self, msg: NodeBeat, now: float, wall: float) -> list[tuple[str, dict[str, Any]]]:
        node = self.nodes.setdefault(msg.info.name, _Node(msg.info))
        node.info, node.peers, node.tasks = msg.info, msg.peers, msg.tasks
        node.beat_at, node.last_seen = now, wall
        if node.state != "up":
            node.state = "up"
            return [("/nodes/join", {"node": msg.info.name, "address": msg.info.address})]
        return []

    def listed(self, info: NodeInfo, admin: Any) -> None:
        """The convention lists the node (again): a node that was up restarted, its old actors are gone."""
        node = self.nodes.setdefault(info.name, _Node(info))
        node.admin, node.agent_at = admin, 0.0
        if node.state == "up":
            node.state = "rejoining"

    def lose(self, name: str, reason: str) -> list[tuple[str, dict[str, Any]]]:
        node = self.nodes.get(name)
        if node is None or node.state == "lost":
            return []
        was_up = node.state in ("up", "rejoining")
        node.state = "lost"
        if not was_up:
            return []
        return [("/nodes/lost", {"node": name, "address": node.info.address, "reason": reason})]

    def expire(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for name, node in self.nodes.items():
            if node.state in ("up", "rejoining") and now - node.beat_at > self.timeout:
                out += self.lose(name, "missed heartbeats")
        return out

    def unintroduced(self, now: float, every: float) -> list[str]:
        """Nodes the convention lists but no heartbeat comes from: each needs an introduction (again)."""
        out = []
        for name, node in self.nodes.items():
            if node.admin is not None and node.state != "up" and now - node.agent_at > every:
                node.agent_at = now
                out.append(name)
        return out

    def rows(self) -> tuple[NodeRow, ...]:
        return tuple(NodeRow(n.info, n.state, n.last_seen, n.tasks) for _, n in sorted(self.nodes.items()))

    def live_peers(self) -> dict[str, Peers]:
        return {k: n.peers for k, n in self.nodes.items() if n.state == "up" and n.peers is not None}


class Tasks:
    """Each node's task list as last heard (heartbeats, rosters, listings), with when it was heard."""

    def __init__(self) -> None:
        self.by_node: dict[str, tuple[float, tuple[TaskInfo, ...]]] = {}

    def heard(self, node: str, at: float, tasks: tuple[TaskInfo, ...]) -> None:
        if at >= self.by_node.get(node, (0.0, ()))[0]:
            self.by_node[node] = (at, tasks)

    def of(self, node: str) -> tuple[TaskInfo, ...]:
        return self.by_node.get(node, (0.0, ()))[1]


def _fits(row: NodeRow, constraints: dict[str, str]) -> bool:
    labels = {**row.info.labels, "node": row.info.name}
    for key, want in constraints.items():
        if key in NUMERIC:
            have = getattr(row.info, NUMERIC[key])
            need = parse_size(want[2:]) if NUMERIC[key] == "free_memory" else int(want[2:])
            if have < need:
                return False
        elif labels.get(key) != want:
            return False
    return True


def check_constraints(constraints: dict[str, str]) -> None:
    """``mem``/``memory`` and ``cpus`` take ``>=N``; every other key is a label (``node`` the node's name)."""
    for key, want in constraints.items():
        if key in NUMERIC:
            if not want.startswith(">="):
                raise InvalidArgument(f"constraint {key} takes >=N (e.g. {key}>=2G), not {want!r}")
            if NUMERIC[key] == "free_memory":
                parse_size(want[2:])
            elif not want[2:].strip().isdigit():
                raise InvalidArgument(f"constraint {key} takes a whole number, not {want[2:]!r}")


def place(rows: tuple[NodeRow, ...], constraints: dict[str, str]) -> str:
    """The live node that meets every constraint: fewest tasks first, then the most free memory."""
    check_constraints(constraints)
    fits = [r for r in rows if r.state == "up" and _fits(r, constraints)]
    if not fits:
        wanted = ",".join(f"{k}{'' if v.startswith('>=') else '='}{v}" for k, v in sorted(constraints.items()))
        raise FailedPrecondition(f"no live node matches {wanted or 'any'}")
    return min(fits, key=lambda r: (len(r.tasks), -r.info.free_memory, r.info.name)).info.name
