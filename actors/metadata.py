"""MetadataActor: container records, namespaced, in sqlite (the one writer).

Each request is written durably before the reply (``actors.metadata_store``
commits every change); creations, updates and deletions are published as
/containers/* events.  This actor has no children, so its sqlite handle is
never inherited by another process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from actors._actor import ContactorActor
from actors.events import envelope
from actors.messages import (
    Ask,
    Configure,
    ContainerList,
    ContainerReply,
    CreateContainer,
    DeleteContainer,
    GetContainer,
    ListContainers,
    Ok,
    Peers,
    Publish,
    Ready,
    UpdateContainer,
)
from actors.metadata_store import Container, ContainerStore

__all__ = ["MetadataActor"]


class MetadataActor(ContactorActor):
    role = "metadata"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store: ContainerStore | None = None
        self.peers: Peers | None = None

    def on_Configure(self, msg: Configure, sender: Any) -> None:
        self.peers = msg.peers
        if self.store is None:
            self.store = ContainerStore(Path(msg.config.daemon.root) / "metadata.db")
        self.send(sender, Ready(self.role, os.getpid()))

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        self.peers = msg

    def _publish(self, namespace: str, topic: str, event: dict[str, Any]) -> None:
        if self.peers is not None:
            self.send(self.peers.exchange, Publish(envelope(namespace, topic, event)))

    def _store(self) -> ContainerStore:
        assert self.store is not None, "not configured"
        return self.store

    def ask_CreateContainer(self, msg: CreateContainer, ask: Ask, sender: Any) -> ContainerReply:
        record = dict(msg.record)
        record.setdefault("created_at", time.time())
        record.setdefault("updated_at", record["created_at"])
        created = self._store().create(Container.from_wire(record))
        event = {"id": created.id, "image": created.image, "runtime": {"name": created.runtime_name}}
        self._publish(created.namespace, "/containers/create", event)
        return ContainerReply(created.to_wire())

    def ask_GetContainer(self, msg: GetContainer, ask: Ask, sender: Any) -> ContainerReply:
        return ContainerReply(self._store().get(msg.namespace, msg.id).to_wire())

    def ask_ListContainers(self, msg: ListContainers, ask: Ask, sender: Any) -> ContainerList:
        return ContainerList(tuple(c.to_wire() for c in self._store().list(msg.namespace, msg.filters)))

    def ask_UpdateContainer(self, msg: UpdateContainer, ask: Ask, sender: Any) -> ContainerReply:
        updated = self._store().update(msg.namespace, msg.id, labels=msg.labels, image=msg.image,
                                       fieldpaths=msg.fieldpaths)  # fmt: skip
        self._publish(updated.namespace, "/containers/update",
                      {"id": updated.id, "image": updated.image, "labels": updated.labels})  # fmt: skip
        return ContainerReply(updated.to_wire())

    def ask_DeleteContainer(self, msg: DeleteContainer, ask: Ask, sender: Any) -> Ok:
        self._store().delete(msg.namespace, msg.id)
        self._publish(msg.namespace, "/containers/delete", {"id": msg.id})
        return Ok()

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
