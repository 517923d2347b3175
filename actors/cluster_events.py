"""Events across nodes: every node pulls every other node's own events into its log, by sequence number.

A node's events (its tasks', and a leader's /nodes/* events) are committed to
its own log first, as on a single node.  Every other node's NodeActor pulls
them (``PullEvents`` since its cursor for that node, answered with an
``EventBatch`` read from the log) and hands them to its Exchange
(``ImportEvents``), which logs each one once, stamped with its node and its
``origin_seq``.  The cursor is the Exchange's: the highest origin_seq of that
node in the log, so a node that was down, or whose NodeActor restarted,
resumes where its log ends, and a batch pulled twice is logged once.  Nothing
is lost while a node is away: its events wait in its log until the others
pull them.

Pulls happen each heartbeat period and as soon as a node says it has new
events (an empty ``EventBatch`` sent as a nudge); one pull per node is under
way at a time.  Only a node's own events are served, never the ones it
imported, so every event travels once from its node to each other node.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from actors.errdefs import Unavailable
from actors.eventlog import LogReader
from actors.messages import (
    Appended,
    Ask,
    Envelope,
    EventBatch,
    Imported,
    ImportEvents,
    NodeInfo,
    Peers,
    PullEvents,
)

__all__ = ["Puller", "EventPulling", "serve", "BATCH"]

BATCH: Final = 256


@dataclass
class _Pull:
    cursor: int | None = None  # None until the Exchange said where its log is in this node's events
    busy_since: float | None = None
    again: bool = False  # asked for more while a pull was under way


class Puller:
    """Per other node: the cursor, and whether a pull (or the import of its answer) is under way."""

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after
        self.nodes: dict[str, _Pull] = {}

    def next(self, node: str, now: float) -> tuple[str, int] | None:
        """What to do for ``node`` now: ("cursor", 0) ask the Exchange, ("pull", since), or nothing."""
        p = self.nodes.setdefault(node, _Pull())
        if p.busy_since is not None and now - p.busy_since < self.stuck_after:
            p.again = True
            return None
        p.busy_since, p.again = now, False
        return ("cursor", 0) if p.cursor is None else ("pull", p.cursor)

    def answered(self, node: str, batch: EventBatch) -> tuple[Envelope, ...]:
        """The envelopes of a pull's answer, ready for ImportEvents; () ends this pull."""
        p = self.nodes.setdefault(node, _Pull())
        envs = tuple(dataclasses.replace(e, node=node, seq=0, origin_seq=e.seq) for e in batch.envelopes)
        if not envs:
            p.busy_since = None
        return envs

    def imported(self, node: str, cursor: int, full: bool) -> bool:
        """The Exchange logged up to ``cursor``; True if another pull should follow at once."""
        p = self.nodes.setdefault(node, _Pull())
        p.cursor, p.busy_since = cursor, None
        again, p.again = p.again or full, False
        return again

    def idle(self, node: str) -> bool:
        """True if a nudge that came meanwhile asks for another pull (the last one ended empty)."""
        p = self.nodes.get(node)
        if p is None or p.busy_since is not None:
            return False
        again, p.again = p.again, False
        return again

    def forget(self, node: str) -> None:
        """The node is lost: a pull under way will not be answered."""
        p = self.nodes.get(node)
        if p is not None:
            p.busy_since, p.again = None, False


def serve(reader: LogReader, node: str, since: int, limit: int) -> EventBatch:
    """This node's own events after ``since`` (not those it imported), for a puller."""
    envs = reader.own_after(since, max(1, min(limit, BATCH)))
    return EventBatch(node, tuple(envs), envs[-1].seq if envs else since)


class EventPulling:
    """The NodeActor's side of it: pull from the other live nodes, serve pulls, nudge on new events."""

    puller: Puller | None
    reader: LogReader | None
    peers: Peers | None
    info: NodeInfo | None
    corr: itertools.count[int]
    pulls: dict[int, str]  # corr of a PullEvents or ImportEvents -> the node pulled from
    nudged: int  # our own events up to here were announced to the other nodes
    log: Any
    myAddress: Any

    if TYPE_CHECKING:  # the NodeActor's (a definition here would shadow Thespian's send)

        def send(self, target: Any, msg: Any) -> None: ...
        def _live(self) -> dict[str, Peers]: ...
        def _own_events(self) -> None: ...

    def _pull(self, node: str) -> None:
        if self.puller is None or self.peers is None:
            return
        step = self.puller.next(node, time.monotonic())
        if step is None:
            return
        corr = next(self.corr)
        self.pulls[corr] = node
        if step[0] == "cursor":
            self.send(self.peers.exchange, Ask(corr, ImportEvents(node, ()), self.myAddress))
        else:
            target = self._live().get(node)
            if target is None or target.cluster is None:
                self.puller.forget(node)
                return
            assert self.info is not None
            self.send(target.cluster, Ask(corr, PullEvents(self.info.name, step[1], BATCH), self.myAddress))

    def ask_PullEvents(self, msg: PullEvents, ask: Ask, sender: Any) -> EventBatch:
        if self.reader is None or self.info is None:
            raise Unavailable("this node is not in a cluster")
        return serve(self.reader, self.info.name, msg.since, msg.limit)

    def on_EventBatch(self, msg: EventBatch, sender: Any) -> None:
        """A nudge from a node that has new events of its own."""
        self._pull(msg.node)

    def on_Appended(self, msg: Appended, sender: Any) -> None:
        """Our log grew: if by our own events, nudge the other nodes to pull them."""
        if self.reader is None or self.info is None or msg.seq <= self.nudged:
            return
        own = self.reader.own_after(self.nudged, 1)
        self.nudged = msg.seq
        if own:
            self._own_events()
            for peers in self._live().values():
                if peers.cluster is not None:
                    self.send(peers.cluster, EventBatch(self.info.name, (), msg.seq))

    def _pulled(self, node: str, body: Any) -> None:
        assert self.puller is not None and self.peers is not None
        if isinstance(body, EventBatch):
            envs = self.puller.answered(node, body)
            if envs:
                corr = next(self.corr)
                self.pulls[corr] = node
                self.send(self.peers.exchange, Ask(corr, ImportEvents(node, envs), self.myAddress))
            elif self.puller.idle(node):
                self._pull(node)
        elif isinstance(body, Imported):
            before = self.puller.nodes[node].cursor or 0
            full = body.cursor > before and body.cursor - before >= BATCH
            if self.puller.imported(node, body.cursor, full):
                self._pull(node)
        else:
            self.log.warning("event_pull_failed", node=node, reply=repr(body))
            self.puller.forget(node)
