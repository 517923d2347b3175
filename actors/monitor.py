"""MonitorActor: every running task's cgroup is known, watched and measured.

``Monitor`` (sent by a TaskActor once its task has a pid, and again after a
restore) opens an OOM watch on the task's cgroup and keeps its path;
``StopMonitor`` (on delete and on dead-shim cleanup) drains the watch one last
time and closes it.  Both are idempotent.  OOM watches are fds in this
actor's ThespianWatch; each OOM becomes one /tasks/oom.

Ordering: a container the OOM killer takes dies at once, and its exit may
reach its TaskActor before this actor read the OOM.  So the TaskActor hands
the init's /tasks/exit to this actor inside ``StopMonitor``: the watch is
drained first (publishing any /tasks/oom), then the exit is published, both
from here, in that order; the task's /tasks/delete comes through here too, so
it never overtakes its exit.  No OOM is lost and none comes after its exit.

Metrics are read on request from the cgroup files (``actors.cgroups``).
"""

from __future__ import annotations

import os
from typing import Any

from actors._actor import ContactorActor
from actors.cgroups import Host, OomWatch, detect, read_metrics
from actors.errdefs import ContactorError, NotFound
from actors.events import envelope
from actors.messages import (
    Ask,
    Configure,
    Monitor,
    Peers,
    Publish,
    Ready,
    StopMonitor,
    TaskReply,
    TaskRequest,
)

__all__ = ["MonitorActor"]


class MonitorActor(ContactorActor):
    role = "monitor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host: Host | None = None
        self.peers: Peers | None = None
        self.tasks: dict[tuple[str, str], Monitor] = {}
        self.watches: dict[tuple[str, str], OomWatch] = {}

    def on_Configure(self, msg: Configure, sender: Any) -> None:
        self.peers = msg.peers
        if self.host is None:
            self.host = detect()
            self.log.info("cgroup_host", mode=self.host.mode, controllers=sorted(self.host.v1),
                          unified=str(self.host.unified) if self.host.unified else None)  # fmt: skip
        self.send(sender, Ready(self.role, os.getpid()))

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        self.peers = msg

    def _rewatch(self) -> None:
        self.watched = [w.fd for w in self.watches.values()]

    def on_Monitor(self, msg: Monitor, sender: Any) -> None:
        key = (msg.namespace, msg.id)
        self.tasks[key] = msg
        if key in self.watches or self.host is None:
            return
        try:
            self.watches[key] = OomWatch.open(self.host, msg.cgroups_path)
        except ContactorError as exc:
            # No memory controller, or the task is already gone: metrics may still work.
            self.log.warning("oom_watch_unavailable", namespace=msg.namespace, id=msg.id, error=exc.message)
        self._rewatch()

    def on_StopMonitor(self, msg: StopMonitor, sender: Any) -> None:
        key = (msg.namespace, msg.id)
        self.tasks.pop(key, None)
        watch = self.watches.pop(key, None)
        if watch is not None:
            self._drain(key, watch)
            watch.close()
        for env in msg.envelopes:
            self._publish(env, msg.ack_to)
        self._rewatch()

    def on_Publish(self, msg: Publish, sender: Any) -> None:
        """A TaskActor's envelope: all of a task's go through here, so they reach the Exchange in order."""
        self._publish(msg.envelope, msg.ack_to)

    def on_WatchMessage(self, msg: Any, sender: Any) -> None:
        for key, watch in list(self.watches.items()):
            if watch.fd in msg.ready:
                self._drain(key, watch)
                if watch.gone:
                    watch.close()
                    del self.watches[key]
        self._rewatch()

    def _drain(self, key: tuple[str, str], watch: OomWatch) -> None:
        try:
            count = watch.read()
        except ContactorError:
            return
        for _ in range(count):
            self.log.warning("oom", namespace=key[0], id=key[1])
            self._publish(envelope(key[0], "/tasks/oom", {"container_id": key[1]}))

    def _publish(self, env: Any, ack_to: Any = None) -> None:
        if self.peers is not None:
            self.send(self.peers.exchange, Publish(env, ack_to))

    def ask_TaskRequest(self, msg: TaskRequest, ask: Ask, sender: Any) -> TaskReply:
        """``metrics`` of a monitored task."""
        monitored = self.tasks.get((msg.namespace, msg.id))
        if monitored is None or self.host is None:
            raise NotFound(f"task {msg.id} is not running")
        return TaskReply(read_metrics(self.host, monitored.cgroups_path))

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        for watch in self.watches.values():
            watch.close()
        self.watches.clear()
        self.watched = []
