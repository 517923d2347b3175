"""Supervisor: the one top-level actor; it owns the others and restarts them.

Thespian supervises nothing by itself (an actor created under a global name
is silently re-created empty), so the daemon creates only this actor, and it
creates the Exchange, MetadataActor, MonitorActor, RuntimeActor and Gateway
as its children.  It therefore receives their ChildActorExited and replaces
a dead one, then tells everyone the new addresses.  It is also the dead-letter
handler: a delivery to a subscriber that died ends that subscription.
"""

from __future__ import annotations

import os
from typing import Any, Final

from thespian.actors import ActorExitRequest, ChildActorExited, DeadEnvelope

from actors._actor import ContactorActor
from actors.cluster import NodeActor
from actors.events import Exchange
from actors.gateway import Gateway
from actors.messages import (
    Appended,
    Ask,
    Boot,
    Booted,
    Configure,
    Drain,
    Drained,
    Health,
    HealthReply,
    Introduce,
    Peers,
    Ready,
    Unfollow,
)
from actors.metadata import MetadataActor
from actors.monitor import MonitorActor
from actors.runtime import RuntimeActor

__all__ = ["Supervisor", "ROLES"]

# Creation order: those others depend on come first.
ROLES: Final[dict[str, type]] = {
    "exchange": Exchange,
    "metadata": MetadataActor,
    "monitor": MonitorActor,
    "runtime": RuntimeActor,
    "cluster": NodeActor,
    "gateway": Gateway,
}


class Supervisor(ContactorActor):
    role = "supervisor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Any = None
        self.children: dict[str, Any] = {}
        self.ready: set[str] = set()
        self.pids: dict[str, int] = {}
        self.boot_waiter: Any = None
        self.drain_waiter: Any = None
        self.stopping = False

    def _peers(self) -> Peers:
        return Peers(**{role: self.children.get(role) for role in ROLES})

    def on_Boot(self, msg: Boot, sender: Any) -> None:
        self.config = msg.config
        self.boot_waiter = sender
        self.handleDeadLetters(True)
        for role, cls in ROLES.items():
            self.children[role] = self.createActor(cls)
        peers = self._peers()
        for role in ROLES:
            self.send(self.children[role], Configure(self.config, peers))

    def on_Ready(self, msg: Ready, sender: Any) -> None:
        self.ready.add(msg.role)
        self.pids[msg.role] = msg.pid
        if msg.role == "gateway" and self.boot_waiter is not None:
            self.send(self.boot_waiter, Booted(os.getppid(), os.getpgid(0), os.getpid()))
            self.boot_waiter = None

    def ask_Health(self, msg: Health, ask: Ask, sender: Any) -> HealthReply:
        return HealthReply(tuple(sorted(self.ready)), {"supervisor": os.getpid(), **self.pids})

    def on_Drain(self, msg: Drain, sender: Any) -> None:
        self.stopping = True
        runtime = self.children.get("runtime")
        if runtime is None:
            self.send(sender, Drained())
            return
        self.drain_waiter = sender
        self.send(runtime, ActorExitRequest())

    def on_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        for role, address in list(self.children.items()):
            if address == msg.childAddress:
                if self.stopping:
                    if role == "runtime" and self.drain_waiter is not None:
                        self.send(self.drain_waiter, Drained())
                        self.drain_waiter = None
                    return
                self.log.warning("child_died", child=role)
                self.ready.discard(role)
                self.children[role] = self.createActor(ROLES[role])
                peers = self._peers()
                self.send(self.children[role], Configure(self.config, peers))
                for other, addr in self.children.items():
                    if other != role:
                        self.send(addr, peers)
                return

    def on_Introduce(self, msg: Introduce, sender: Any) -> None:
        """From a NodeAgent a cluster leader placed here (this actor's global name is how it found us)."""
        if "cluster" in self.children:
            self.send(self.children["cluster"], msg)

    def on_DeadEnvelope(self, msg: DeadEnvelope, sender: Any) -> None:
        dead = msg.deadMessage
        if not isinstance(dead, Appended):
            self.log.debug("dead_letter", message=type(dead).__name__, address=str(msg.deadAddress))
        if isinstance(dead, Appended) and "exchange" in self.children:
            self.send(self.children["exchange"], Unfollow(msg.deadAddress))

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self.stopping = True
