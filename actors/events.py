"""The Exchange: numbers every event and commits it to the log before anyone hears of it.

``Publish`` takes an envelope {timestamp, namespace, topic, event}; the
Exchange gives it the next sequence number, appends it to the durable log and
tells each follower (the Gateway) ``Appended(seq)``.  Followers read the log
themselves, each subscription at its own cursor and pace, with containerd's
filters: order and completeness come from the log, not from message delivery
(Thespian may reorder messages between two actors), and a slow subscriber holds
up no one.  A dead follower is dropped when its ``Appended`` comes back as a
dead letter (the Supervisor tells us).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from actors._actor import ContactorActor
from actors.errdefs import FailedPrecondition, InvalidArgument
from actors.eventlog import EventLog
from actors.identifiers import validate
from actors.messages import (
    Appended,
    Ask,
    Committed,
    Configure,
    Envelope,
    Follow,
    Imported,
    ImportEvents,
    Publish,
    Published,
    Ready,
    Unfollow,
)

__all__ = ["Exchange", "envelope", "check_topic"]

def check_topic(topic: str) -> str:
    """containerd's rule: starts with '/', at least one component, each a valid identifier."""
    if not topic.startswith("/") or topic == "/":
        raise InvalidArgument(f"topic {topic!r} must start with '/' and have a component")
    for part in topic[1:].split("/"):
        validate(part, "topic component")
    return topic


def envelope(
    namespace: str, topic: str, event: dict[str, Any], timestamp: float | None = None, key: str = ""
) -> Envelope:
    if not namespace:
        raise FailedPrecondition("namespace is required")
    return Envelope(time.time() if timestamp is None else timestamp, namespace, check_topic(topic), event, key=key)


class Exchange(ContactorActor):
    role = "exchange"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.followers: list[Any] = []
        self.follow_gens: dict[str, int] = {}  # str(follower) -> newest Follow/Unfollow number acted on
        self.log_: EventLog | None = None
        self.node = ""  # clustered: this node's name, stamped on its own envelopes
        self.origins: dict[str, int] = {}  # node -> highest origin_seq of its envelopes logged here

    def on_Configure(self, msg: Configure, sender: Any) -> None:
        if self.log_ is None:
            limits = msg.config.events
            self.log_ = EventLog(
                Path(msg.config.daemon.root) / "events.db", limits.max_entries, limits.max_age
            )
            self.origins = self.log_.origins()
            if msg.config.cluster.clustered:
                self.node = msg.config.cluster.node_name
        self.send(sender, Ready(self.role, os.getpid()))

    def on_Publish(self, msg: Publish, sender: Any) -> None:
        env = self._publish(msg.envelope, again=msg.again)
        if msg.ack_to is not None:
            self.send(msg.ack_to, Committed(env.key, env.seq))

    def ask_Publish(self, msg: Publish, ask: Ask, sender: Any) -> Published:
        """A client's own event (containerd's Events.Publish), acknowledged with its number."""
        return Published(self._publish(msg.envelope).seq)

    def ask_ImportEvents(self, msg: ImportEvents, ask: Ask, sender: Any) -> Imported:
        """Another node's envelopes, pulled by the NodeActor: each logged once, in its node's order."""
        cursor = self.origins.get(msg.node, 0)
        for env in msg.envelopes:
            if env.node == msg.node and env.origin_seq > cursor:
                self._publish(env)
                cursor = env.origin_seq
        self.origins[msg.node] = cursor
        return Imported(msg.node, cursor)

    def _publish(self, envelope_: Envelope, again: bool = False) -> Envelope:
        if self.node and not envelope_.node:
            envelope_ = dataclasses.replace(envelope_, node=self.node)
        # Logged (committed) before anyone is told: a late subscriber can always read it.
        if self.log_ is None:
            return envelope_
        env, fresh = self.log_.append(envelope_, again=again)
        if not fresh:
            self.log.debug("duplicate_dropped", namespace=env.namespace, topic=env.topic, key=env.key, seq=env.seq)
            return env
        for follower in self.followers:
            self.send(follower, Appended(env.seq))
        return env

    def _newest(self, follower: Any, gen: int | None) -> bool:
        key = str(follower)  # addresses are not hashable
        if gen is None:  # a dead follower (the Supervisor's word): whatever it said last
            self.follow_gens.pop(key, None)
            return True
        if gen < self.follow_gens.get(key, 0):
            return False  # overtaken by a newer Follow/Unfollow of the same follower
        self.follow_gens[key] = gen
        return True

    def on_Follow(self, msg: Follow, sender: Any) -> None:
        follower = msg.follower or sender
        if not self._newest(follower, msg.gen):
            return
        if follower not in self.followers:
            self.followers.append(follower)
        self.send(follower, Appended(self.log_.seq if self.log_ is not None else 0))

    def on_Unfollow(self, msg: Unfollow, sender: Any) -> None:
        if self._newest(msg.follower, msg.gen) and msg.follower in self.followers:
            self.followers.remove(msg.follower)

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        if self.log_ is not None:
            self.log_.close()
            self.log_ = None
