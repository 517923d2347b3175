"""The Exchange: event fan-out with containerd's topics and filters.

``Publish`` takes an envelope {timestamp, namespace, topic, event}; every
subscription whose filters match gets a ``Delivery``.  Sends are
asynchronous, so a slow subscriber holds up no one; a dead one is dropped
when its delivery comes back as a dead letter (the Supervisor tells us).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors._actor import ContactorActor
from actors.errdefs import FailedPrecondition, InvalidArgument
from actors.eventlog import EventLog
from actors.filters import Filter, parse_any
from actors.identifiers import validate
from actors.messages import (
    Ask,
    Configure,
    Delivery,
    Envelope,
    Publish,
    Published,
    Ready,
    Subscribe,
    Subscribed,
    Unsubscribe,
)

__all__ = ["Exchange", "envelope", "check_topic"]

def check_topic(topic: str) -> str:
    """containerd's rule: starts with '/', at least one component, each a valid identifier."""
    if not topic.startswith("/") or topic == "/":
        raise InvalidArgument(f"topic {topic!r} must start with '/' and have a component")
    for part in topic[1:].split("/"):
        validate(part, "topic component")
    return topic


def envelope(namespace: str, topic: str, event: dict[str, Any], timestamp: float | None = None) -> Envelope:
    if not namespace:
        raise FailedPrecondition("namespace is required")
    return Envelope(time.time() if timestamp is None else timestamp, namespace, check_topic(topic), event)


@dataclass
class _Subscription:
    address: Any
    filter: Filter


class Exchange(ContactorActor):
    role = "exchange"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subs: dict[str, _Subscription] = {}
        self.log_: EventLog | None = None

    def on_Configure(self, msg: Configure, sender: Any) -> None:
        if self.log_ is None:
            limits = msg.config.events
            self.log_ = EventLog(
                Path(msg.config.daemon.root) / "events.db", limits.max_entries, limits.max_age
            )
        self.send(sender, Ready(self.role, os.getpid()))

    def on_Publish(self, msg: Publish, sender: Any) -> None:
        self._publish(msg.envelope)

    def ask_Publish(self, msg: Publish, ask: Ask, sender: Any) -> Published:
        """A client's own event (containerd's Events.Publish), acknowledged with its number."""
        return Published(self._publish(msg.envelope).seq)

    def _publish(self, envelope_: Envelope) -> Envelope:
        # Logged (committed) before anyone is told: a late subscriber can always ask for it.
        env = self.log_.append(envelope_) if self.log_ is not None else envelope_
        wire = env.to_wire()
        for token, sub in list(self.subs.items()):
            if sub.filter.match(wire):
                self.send(sub.address, Delivery(token, env))
        return env

    def ask_Subscribe(self, msg: Subscribe, ask: Ask, sender: Any) -> Subscribed:
        flt, address = parse_any(msg.filters), msg.subscriber or sender
        # Replay and go live in one handler: nothing is published in between, so no gap and no duplicate.
        if self.log_ is not None and (msg.since_seq is not None or msg.since_time is not None):
            for env in self.log_.since(msg.since_seq, msg.since_time):
                if flt.match(env.to_wire()):
                    self.send(address, Delivery(msg.token, env))
        self.subs[msg.token] = _Subscription(address, flt)
        return Subscribed(msg.token, self.log_.seq if self.log_ is not None else 0)

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        if self.log_ is not None:
            self.log_.close()
            self.log_ = None

    def on_Unsubscribe(self, msg: Unsubscribe, sender: Any) -> None:
        self.subs.pop(msg.token, None)
