"""Node agents: every daemon's NodeActor, and requests, listings and events across nodes.

Each daemon's actor system joins a Thespian convention (``[cluster] leaders``)
and advertises its capabilities (node name, labels, cpus, memory, runtimes).
The NodeActor on a leader asks its admin for registration changes: a member
that registers gets a NodeAgent placed on it (``targetActorRequirements`` on
its node name), which hands the leader's address to that node's Supervisor
(found by its global name) and so to its NodeActor (held until that one is
configured: the introduction may come first).  From then on every NodeActor
sends a heartbeat (its info with its free memory, its actors' addresses and
its tasks, read just before) to every leader each ``cluster.reregister``
seconds, and each leader answers with its node table (a ``Roster``).

A node is lost when the convention drops it or when ``miss_max`` heartbeats
are missed, whichever comes first: Thespian sends no ChildActorExited for
actors on a dead node.  The active leader (the first configured leader that
is up) publishes ``/nodes/join`` and ``/nodes/lost`` (namespace ``cluster``)
on its own Exchange; like every node's events they reach the other nodes by
being pulled from its log (``actors.cluster_events``).  Requests for another
node (``OnNode``) are relayed by the local NodeActor to that node's actor and
answered through it, so a node lost meanwhile answers its callers Unavailable
instead of leaving them waiting.  Every node remembers each node's last task
list it heard of, so ``tasks ls --all-nodes`` lists a lost node's tasks with
status ``unknown``.  The node table itself is ``actors.cluster_table``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

from actors._actor import ContactorActor
from actors.cluster_agent import NODE_CAP, NodeAgent
from actors.cluster_events import EventPulling, Puller
from actors.cluster_table import NodeTable, Tasks, place
from actors.errdefs import NotFound, Unavailable
from actors.eventlog import LogReader
from actors.events import envelope
from actors.messages import (
    Answer,
    Ask,
    Configure,
    ErrorReply,
    Follow,
    Introduce,
    ListAllTasks,
    ListNodes,
    ListTasks,
    NodeBeat,
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

__all__ = ["NodeActor", "NodeAgent", "NAMESPACE"]

NAMESPACE: Final = "cluster"  # the namespace of node events
GATHER_TIMEOUT: Final = 5.0


@dataclass
class _Gather:
    ask: Ask
    sender: Any
    waiting: dict[int, str]  # corr -> node
    tasks: list[TaskInfo] = field(default_factory=list)
    rows: tuple[NodeRow, ...] = ()
    answered: set[str] = field(default_factory=set)


class NodeActor(EventPulling, ContactorActor):
    role = "cluster"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cfg: Any = None
        self.peers: Peers | None = None
        self.info: NodeInfo | None = None
        self.table: NodeTable | None = None  # leaders only
        self.registrars: dict[str, tuple[Any, int]] = {}  # leader name -> (address, rank)
        self.rosters: dict[str, tuple[Roster, float]] = {}  # leader name -> (roster, monotonic)
        self.introductions: list[Introduce] = []  # those that came before Configure
        self.tasks: tuple[TaskInfo, ...] = ()
        self.heard = Tasks()  # every node's task list as last heard, for a lost node's listing
        self.corr = itertools.count(1)
        self.relayed: dict[int, tuple[Ask, Any, str]] = {}  # corr -> (the caller's ask, its sender, node)
        self.gathers: dict[int, _Gather] = {}
        self.gather_of: dict[int, int] = {}  # corr -> gather id
        self.counting: set[int] = set()
        self.pulls: dict[int, str] = {}  # corr of a PullEvents or ImportEvents -> the node pulled from
        self.puller: Puller | None = None
        self.reader: LogReader | None = None
        self.nudged = 0  # our own events up to here were announced to the other nodes

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
                    self.table = NodeTable(self._timeout)
                    self.notifyOnSystemRegistrationChanges(True)
                self.puller = Puller(self._timeout)
                self.reader = LogReader(Path(self.cfg.daemon.root) / "events.db")
                self.send(self.peers.exchange, Follow(self.myAddress))
                self.wakeupAfter(0.1, payload="beat")
        self.send(sender, Ready(self.role, os.getpid()))
        for intro in self.introductions:
            self.on_Introduce(intro, None)
        self.introductions.clear()

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        if self.reader is not None and (self.peers is None or self.peers.exchange != msg.exchange):
            self.send(msg.exchange, Follow(self.myAddress))
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
        """Read our tasks (the heartbeat goes when they come), expire lost nodes, pull events."""
        assert self.info is not None and self.peers is not None
        if self.counting:  # the runtime did not answer within a period: beat with what we have
            self.counting.clear()
            self._send_beat()
        self._read_tasks()
        now = time.monotonic()
        for name in [n for n, (_, at) in self.rosters.items() if now - at > self._timeout]:
            self.registrars.pop(name, None)  # it introduces itself again when it is back
            del self.rosters[name]
        if self.table is not None:
            self._events(self.table.expire(now))
            self._introduce(now)
        for node in self._live():
            self._pull(node)

    def _introduce(self, now: float) -> None:
        """An agent to every node the convention lists but no heartbeat comes from (its NodeActor is new)."""
        assert self.table is not None and self.info is not None
        for name in self.table.unintroduced(now, self._timeout):
            agent = self.createActor(NodeAgent, targetActorRequirements={NODE_CAP: name})
            self.send(agent, Introduce(self.myAddress, self.info.name, self.info.address))

    def _read_tasks(self) -> None:
        """Ask the runtime for our tasks; the heartbeat goes out with the answer."""
        if not self.counting and self.peers is not None:
            corr = next(self.corr)
            self.counting.add(corr)
            self.send(self.peers.runtime, Ask(corr, ListTasks(), self.myAddress))

    def _own_events(self) -> None:
        """Something happened here (a task's event, say): tell the leaders our tasks now, not next period."""
        self._read_tasks()

    def _send_beat(self) -> None:
        assert self.info is not None and self.peers is not None
        self.info = dataclasses.replace(self.info, free_memory=psutil.virtual_memory().available)
        beat = NodeBeat(self.info, self.peers, self.tasks)
        self.heard.heard(self.info.name, time.time(), self.tasks)
        for address, _ in list(self.registrars.values()):
            self.send(address, beat)
        if self.table is not None:
            self._events(self.table.beat(beat, time.monotonic(), time.time()))

    def on_ActorSystemConventionUpdate(self, msg: Any, sender: Any) -> None:
        name = (msg.remoteCapabilities or {}).get(NODE_CAP)
        if self.table is None or not isinstance(name, str):
            return
        self.log.info("convention_update", node=name, added=msg.remoteAdded)
        if msg.remoteAdded:
            caps = msg.remoteCapabilities
            self.table.listed(NodeInfo(name, "", caps.get("contactor.labels", {}), caps.get("contactor.cpus", 0),
                                       caps.get("contactor.memory", 0), tuple(caps.get("contactor.runtimes", ()))),
                              msg.remoteAdminAddress)  # fmt: skip
            self._introduce(time.monotonic())
        else:
            node = self.table.nodes.get(name)
            if node is not None:
                node.admin = None
            self._events(self.table.lose(name, "left the convention"))

    def on_Introduce(self, msg: Introduce, sender: Any) -> None:
        if self.cfg is None:
            self.introductions.append(msg)  # the Supervisor passed it on before configuring us
            return
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
        self.heard.heard(msg.info.name, time.time(), msg.tasks)
        self._events(self.table.beat(msg, time.monotonic(), time.time()))
        self.send(msg.peers.cluster, Roster(self.info.name, self.table.rows(), self.table.live_peers()))

    def on_Roster(self, msg: Roster, sender: Any) -> None:
        if msg.leader not in self.registrars:
            return
        self.rosters[msg.leader] = (msg, time.monotonic())
        for row in msg.rows:
            self.heard.heard(row.info.name, row.last_seen, row.tasks)
        if self._roster() is msg:
            for node in {target for _, _, target in self.relayed.values()} - set(msg.peers):
                self._lost(node)

    # -- node events ---------------------------------------------------------------------------------
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
        for topic, event in events:
            self.log.info("node_event", topic=topic, **event)
            if topic == "/nodes/lost":
                self._lost(event["node"])
            if self._active() and self.peers is not None:
                self.send(self.peers.exchange, Publish(envelope(NAMESPACE, topic, event)))

    def _lost(self, node: str) -> None:
        if self.puller is not None:
            self.puller.forget(node)
        for corr, (ask, sender, target) in list(self.relayed.items()):
            if target == node:
                del self.relayed[corr]
                self.answer(ask, sender, ErrorReply("unavailable", f"node {node} was lost"))

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

    def _live(self) -> dict[str, Peers]:
        """Every other live node's actors."""
        try:
            live = self.table.live_peers() if self.table is not None else self._roster().peers
        except Unavailable:
            return {}
        return {k: v for k, v in live.items() if self.info is None or k != self.info.name}

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
        live = {**self._live(), self.info.name: self.peers}
        gid = next(self.corr)
        gather = _Gather(ask, sender, {}, rows=rows)
        for node, peers in live.items():
            corr = next(self.corr)
            gather.waiting[corr] = node
            self.gather_of[corr] = gid
            self.send(peers.runtime, Ask(corr, ListTasks(), self.myAddress))
        self.gathers[gid] = gather
        self.wakeupAfter(GATHER_TIMEOUT, payload=("gather", gid))

    def _finish_gather(self, gid: int) -> None:
        gather = self.gathers.pop(gid, None)
        if gather is None:
            return
        for corr in gather.waiting:
            self.gather_of.pop(corr, None)
        for row in gather.rows:  # nodes that did not answer: their last known tasks, state unknown
            if row.info.name not in gather.answered:
                self.heard.heard(row.info.name, row.last_seen, row.tasks)
                gather.tasks += [dataclasses.replace(t, node=row.info.name, status="unknown")
                                 for t in self.heard.of(row.info.name)]  # fmt: skip
        ns = gather.ask.body.namespace
        tasks = sorted((t for t in gather.tasks if ns is None or t.namespace == ns),
                       key=lambda t: (t.node, t.namespace, t.id))  # fmt: skip
        self.answer(gather.ask, gather.sender, TaskList(tuple(tasks)))

    def on_Answer(self, msg: Answer, sender: Any) -> None:
        if msg.corr in self.counting:
            self.counting.discard(msg.corr)
            if isinstance(msg.body, TaskList):
                self.tasks = msg.body.tasks
            self._send_beat()
            return
        if msg.corr in self.pulls:
            self._pulled(self.pulls.pop(msg.corr), msg.body)
            return
        gid = self.gather_of.pop(msg.corr, None)
        if gid is not None and gid in self.gathers:
            gather = self.gathers[gid]
            node = gather.waiting.pop(msg.corr)
            if isinstance(msg.body, TaskList):
                self.heard.heard(node, time.time(), msg.body.tasks)
                gather.answered.add(node)
                gather.tasks += [dataclasses.replace(t, node=node) for t in msg.body.tasks]
            if not gather.waiting:
                self._finish_gather(gid)
            return
        relayed = self.relayed.pop(msg.corr, None)
        if relayed is not None:
            if isinstance(msg.body, TaskInfo):  # a task created there: known here even if its node dies now
                old = [t for t in self.heard.of(relayed[2]) if (t.namespace, t.id) != (msg.body.namespace, msg.body.id)]
                self.heard.heard(relayed[2], time.time(), (*old, msg.body))
            self.answer(relayed[0], relayed[1], msg.body)

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
