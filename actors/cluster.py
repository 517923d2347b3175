"""Node agents: every daemon's NodeActor, the node table its leaders keep, and requests for other nodes.

Each daemon's actor system joins a Thespian convention (``[cluster] leaders``)
and advertises its capabilities (node name, labels, cpus, memory, runtimes).
The NodeActor on a leader asks its admin for registration changes: a member
that registers gets a NodeAgent placed on it (``targetActorRequirements`` on
its node name), which hands the leader's address to that node's Supervisor
(found by its global name) and so to its NodeActor.  From then on every
NodeActor sends a heartbeat (its info, its actors' addresses and its tasks) to
every leader each ``cluster.reregister`` seconds, and each leader answers with
its node table (a ``Roster``).

A node is lost when the convention drops it or when ``miss_max`` heartbeats
are missed, whichever comes first: Thespian sends no ChildActorExited for
actors on a dead node.  The active leader (the first configured leader that
is up) publishes ``/nodes/join`` and ``/nodes/lost`` (namespace ``cluster``) on
its own Exchange and has every live node publish them on theirs.  Requests
for another node (``OnNode``) are relayed by the local NodeActor to that
node's actor and answered through it, so a node lost meanwhile answers its
callers Unavailable instead of leaving them waiting.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Final

from thespian.actors import ActorExitRequest

from actors._actor import ContactorActor
from actors.errdefs import FailedPrecondition, NotFound, Unavailable
from actors.events import envelope
from actors.messages import (
    Answer,
    Ask,
    Configure,
    ErrorReply,
    Introduce,
    ListAllTasks,
    ListNodes,
    ListTasks,
    NodeBeat,
    NodeEvent,
    NodeInfo,
    NodeList,
    NodeRow,
    OnNode,
    Peers,
    Placed,
    PlaceTask,
    Publish,
    Ready,
    Roster,
    TaskInfo,
    TaskList,
)

__all__ = ["NodeActor", "NodeAgent", "NodeTable", "NAMESPACE", "place"]

NAMESPACE: Final = "cluster"  # the namespace of node events
NODE_CAP: Final = "contactor.node"
GATHER_TIMEOUT: Final = 5.0
AGENT_LINGER: Final = 10.0


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

    def lose(self, name: str, reason: str) -> list[tuple[str, dict[str, Any]]]:
        node = self.nodes.get(name)
        if node is None or node.state != "up":
            return []
        node.state = "lost"
        return [("/nodes/lost", {"node": name, "address": node.info.address, "reason": reason})]

    def expire(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for name, node in self.nodes.items():
            if node.state == "up" and now - node.beat_at > self.timeout:
                out += self.lose(name, "missed heartbeats")
        return out

    def rows(self) -> tuple[NodeRow, ...]:
        return tuple(NodeRow(n.info, n.state, n.last_seen, n.tasks) for _, n in sorted(self.nodes.items()))

    def live_peers(self) -> dict[str, Peers]:
        return {k: n.peers for k, n in self.nodes.items() if n.state == "up" and n.peers is not None}


def place(rows: tuple[NodeRow, ...], constraints: dict[str, str]) -> str:
    """The live node whose labels (and name, as ``node``) match every constraint, fewest tasks first."""
    fits = [r for r in rows if r.state == "up"
            and all({**r.info.labels, "node": r.info.name}.get(k) == v for k, v in constraints.items())]  # fmt: skip
    if not fits:
        wanted = ",".join(f"{k}={v}" for k, v in sorted(constraints.items()))
        raise FailedPrecondition(f"no live node matches {wanted or 'any'}")
    return min(fits, key=lambda r: (len(r.tasks), r.info.name)).info.name


class NodeAgent(ContactorActor):
    """Placed on a member by a leader: introduces the leader to that node's NodeActor, then exits."""

    role = "node-agent"

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any], requirements: dict[str, Any]) -> bool:
        return bool(capabilities.get(NODE_CAP) == requirements.get(NODE_CAP))

    def on_Introduce(self, msg: Introduce, sender: Any) -> None:
        from actors.daemon import SUPERVISOR_NAME

        supervisor = self.createActor("actors.supervisor.Supervisor", globalName=SUPERVISOR_NAME)
        self.send(supervisor, msg)
        # Not at once: the send waits for the global name's lookup, and an exit now would drop it.
        self.wakeupAfter(AGENT_LINGER)

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        self.send(self.myAddress, ActorExitRequest())


@dataclass
class _Gather:
    ask: Ask
    sender: Any
    waiting: dict[int, str]  # corr -> node
    tasks: list[TaskInfo] = field(default_factory=list)
    rows: tuple[NodeRow, ...] = ()


class NodeActor(ContactorActor):
    role = "cluster"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cfg: Any = None
        self.peers: Peers | None = None
        self.info: NodeInfo | None = None
        self.table: NodeTable | None = None  # leaders only
        self.registrars: dict[str, tuple[Any, int]] = {}  # leader name -> (address, rank)
        self.rosters: dict[str, tuple[Roster, float]] = {}  # leader name -> (roster, monotonic)
        self.tasks: tuple[TaskInfo, ...] = ()
        self.corr = itertools.count(1)
        self.relayed: dict[int, tuple[Ask, Any, str]] = {}  # corr -> (the caller's ask, its sender, node)
        self.gathers: dict[int, _Gather] = {}
        self.gather_of: dict[int, int] = {}  # corr -> gather id
        self.counting: set[int] = set()

    # -- set-up and heartbeats ------------------------------------------------------------------------
    def on_Configure(self, msg: Configure, sender: Any) -> None:
        self.peers = msg.peers
        if self.cfg is None:
            self.cfg = msg.config
            c = self.cfg.cluster
            from actors.daemon import capabilities

            caps = capabilities(self.cfg)
            self.info = NodeInfo(c.node_name, c.advertise or "", dict(c.labels), caps.get("contactor.cpus", 1),
                                 caps.get("contactor.memory", 0), tuple(caps.get("contactor.runtimes", ())),
                                 c.is_leader)  # fmt: skip
            if c.clustered:
                if c.is_leader:
                    self.table = NodeTable(float(c.reregister * c.miss_max))
                    self.notifyOnSystemRegistrationChanges(True)
                self.wakeupAfter(0.1, payload="beat")
        self.send(sender, Ready(self.role, os.getpid()))

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        self.peers = msg

    @property
    def _period(self) -> float:
        return float(self.cfg.cluster.reregister)

    @property
    def _timeout(self) -> float:
        return float(self.cfg.cluster.reregister * self.cfg.cluster.miss_max)

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload == "beat":
            self._beat()
            self.wakeupAfter(self._period, payload="beat")
        elif isinstance(msg.payload, tuple) and msg.payload[0] == "gather":
            self._finish_gather(msg.payload[1])

    def _beat(self) -> None:
        assert self.info is not None and self.peers is not None
        corr = next(self.corr)
        self.counting.add(corr)
        self.send(self.peers.runtime, Ask(corr, ListTasks(), self.myAddress))
        beat = NodeBeat(self.info, self.peers, self.tasks)
        now = time.monotonic()
        for name, (address, _) in list(self.registrars.items()):
            if name in self.rosters and now - self.rosters[name][1] > self._timeout:
                del self.registrars[name]  # it introduces itself again when it is back
                del self.rosters[name]
                continue
            self.send(address, beat)
        if self.table is not None:
            self._events(self.table.beat(beat, now, time.time()) + self.table.expire(now))
            self._place_agents(now)

    def _place_agents(self, now: float) -> None:
        """An agent for every node the convention lists but no heartbeat comes from (its NodeActor is new)."""
        assert self.table is not None and self.info is not None
        for name, node in self.table.nodes.items():
            if node.admin is not None and node.state != "up" and now - node.agent_at > self._timeout:
                node.agent_at = now
                agent = self.createActor(NodeAgent, targetActorRequirements={NODE_CAP: name})
                self.send(agent, Introduce(self.myAddress, self.info.name, self.info.address))

    def on_ActorSystemConventionUpdate(self, msg: Any, sender: Any) -> None:
        name = (msg.remoteCapabilities or {}).get(NODE_CAP)
        if self.table is None or not isinstance(name, str):
            return
        self.log.info("convention_update", node=name, added=msg.remoteAdded)
        if msg.remoteAdded:
            caps = msg.remoteCapabilities
            info = NodeInfo(name, "", caps.get("contactor.labels", {}), caps.get("contactor.cpus", 0),
                            caps.get("contactor.memory", 0), tuple(caps.get("contactor.runtimes", ())))
            node = self.table.nodes.setdefault(name, _Node(info))
            node.admin, node.agent_at = msg.remoteAdminAddress, 0.0
            if node.state == "up":
                node.state = "rejoining"  # a restarted node: its old NodeActor is gone
            self._place_agents(time.monotonic())
        else:
            node_ = self.table.nodes.get(name)
            if node_ is not None:
                node_.admin = None
            self._events(self.table.lose(name, "left the convention"))

    def on_Introduce(self, msg: Introduce, sender: Any) -> None:
        leaders = self.cfg.cluster.leaders
        rank = leaders.index(msg.address) if msg.address in leaders else len(leaders)
        self.registrars[msg.leader] = (msg.registrar, rank)
        self.rosters.pop(msg.leader, None)
        self.log.info("cluster_leader_introduced", leader=msg.leader)
        if self.info is not None and self.peers is not None:
            self.send(msg.registrar, NodeBeat(self.info, self.peers, self.tasks))

    def on_NodeBeat(self, msg: NodeBeat, sender: Any) -> None:
        if self.table is None or self.info is None:
            return
        self._events(self.table.beat(msg, time.monotonic(), time.time()))
        self.send(msg.peers.cluster, Roster(self.info.name, self.table.rows(), self.table.live_peers()))

    def on_Roster(self, msg: Roster, sender: Any) -> None:
        if msg.leader in self.registrars:
            self.rosters[msg.leader] = (msg, time.monotonic())

    def on_NodeEvent(self, msg: NodeEvent, sender: Any) -> None:
        self._publish(msg.topic, msg.event)

    # -- events --------------------------------------------------------------------------------------
    def _active(self) -> bool:
        """A leader publishes node events only while no leader before it in the list is up."""
        if self.table is None or self.info is None:
            return False
        mine = self.cfg.cluster.leaders.index(self.cfg.cluster.advertise)
        for node in self.table.nodes.values():
            if node.state == "up" and node.info.leader and node.info.name != self.info.name \
                    and node.info.address in self.cfg.cluster.leaders[:mine]:  # fmt: skip
                return False
        return True

    def _events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        assert self.table is not None
        for topic, event in events:
            self.log.info("node_event", topic=topic, **event)
            name = event["node"]
            if topic == "/nodes/lost":
                self._fail_relayed(name)
            if not self._active():
                continue
            self._publish(topic, event)
            for other, peers in self.table.live_peers().items():
                if self.info is not None and other != self.info.name and peers.cluster is not None:
                    self.send(peers.cluster, NodeEvent(topic, event))

    def _publish(self, topic: str, event: dict[str, Any]) -> None:
        if topic == "/nodes/lost" and self.table is None:
            self._fail_relayed(str(event.get("node")))
        if self.peers is not None:
            self.send(self.peers.exchange, Publish(envelope(NAMESPACE, topic, event)))

    # -- the view: a leader's own table, else the freshest roster of the first leader -------------------
    def _rows(self) -> tuple[NodeRow, ...]:
        if self.table is not None:
            return self.table.rows()
        return self._roster().rows

    def _roster(self) -> Roster:
        now = time.monotonic()
        fresh = [(self.registrars[name][1], r) for name, (r, at) in self.rosters.items()
                 if name in self.registrars and now - at <= self._timeout]  # fmt: skip
        if not fresh:
            raise Unavailable("no cluster leader is reachable from this node")
        return min(fresh, key=lambda x: x[0])[1]

    def _peers_of(self, node: str) -> Peers:
        assert self.info is not None and self.peers is not None
        if node == self.info.name:
            return self.peers
        peers = self.table.live_peers() if self.table is not None else self._roster().peers
        if node not in peers:
            known = {r.info.name for r in self._rows()}
            if node in known:
                raise Unavailable(f"node {node} is lost")
            raise NotFound(f"node {node} not found")
        return peers[node]

    # -- requests ------------------------------------------------------------------------------------
    def ask_ListNodes(self, msg: ListNodes, ask: Ask, sender: Any) -> NodeList:
        if self.info is None or not self.cfg.cluster.clustered:
            return NodeList((NodeRow(self.info or NodeInfo("", "", {}, 0, 0, ()), "up", time.time(), self.tasks),))
        return NodeList(self._rows())

    def ask_PlaceTask(self, msg: PlaceTask, ask: Ask, sender: Any) -> Placed:
        return Placed(place(self._rows(), msg.constraints))

    def ask_OnNode(self, msg: OnNode, ask: Ask, sender: Any) -> None:
        peers = self._peers_of(msg.node)
        target = getattr(peers, msg.role, None)
        if target is None:
            raise Unavailable(f"node {msg.node} has no {msg.role}")
        corr = next(self.corr)
        self.relayed[corr] = (ask, sender, msg.node)
        self.send(target, Ask(corr, msg.message, self.myAddress))

    def ask_ListAllTasks(self, msg: ListAllTasks, ask: Ask, sender: Any) -> None:
        assert self.info is not None and self.peers is not None
        rows = self._rows() if self.cfg.cluster.clustered else ()
        live = self.table.live_peers() if self.table is not None else (self._roster().peers if rows else {})
        live = {**live, self.info.name: self.peers}
        gid = next(self.corr)
        gather = _Gather(ask, sender, {}, rows=rows)
        for node, peers in live.items():
            corr = next(self.corr)
            gather.waiting[corr] = node
            self.gather_of[corr] = gid
            self.send(peers.runtime, Ask(corr, ListTasks(msg.namespace), self.myAddress))
        self.gathers[gid] = gather
        self.wakeupAfter(GATHER_TIMEOUT, payload=("gather", gid))

    def _finish_gather(self, gid: int) -> None:
        gather = self.gathers.pop(gid, None)
        if gather is None:
            return
        for corr in gather.waiting:
            self.gather_of.pop(corr, None)
        answered = {t.node for t in gather.tasks}
        ns = gather.ask.body.namespace
        for row in gather.rows:  # nodes that did not answer: their last known tasks, state unknown
            if row.info.name not in answered:
                gather.tasks += [dataclasses.replace(t, node=row.info.name, status="unknown") for t in row.tasks
                                 if ns is None or t.namespace == ns]  # fmt: skip
        tasks = sorted(gather.tasks, key=lambda t: (t.node, t.namespace, t.id))
        self.answer(gather.ask, gather.sender, TaskList(tuple(tasks)))

    def on_Answer(self, msg: Answer, sender: Any) -> None:
        if msg.corr in self.counting:
            self.counting.discard(msg.corr)
            if isinstance(msg.body, TaskList):
                self.tasks = msg.body.tasks
            return
        gid = self.gather_of.pop(msg.corr, None)
        if gid is not None and gid in self.gathers:
            gather = self.gathers[gid]
            node = gather.waiting.pop(msg.corr)
            if isinstance(msg.body, TaskList):
                gather.tasks += [dataclasses.replace(t, node=node) for t in msg.body.tasks]
            if not gather.waiting:
                self._finish_gather(gid)
            return
        relayed = self.relayed.pop(msg.corr, None)
        if relayed is not None:
            self.answer(relayed[0], relayed[1], msg.body)

    def _fail_relayed(self, node: str) -> None:
        for corr, (ask, sender, target) in list(self.relayed.items()):
            if target == node:
                del self.relayed[corr]
                self.answer(ask, sender, ErrorReply("unavailable", f"node {node} was lost"))
