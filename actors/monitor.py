"""MonitorActor: the host's cgroups, and a running task's metrics on request.

It detects the cgroup layout once (v1, v2 or hybrid, and which controllers each
hierarchy carries) and logs it.  ``metrics`` (forwarded by the RuntimeActor for a
task in its table) is read from the task's cgroup files (``actors.cgroups``); the
task's cgroup is where the config places it (``cgroups.placement``), so this
actor needs no word from the task.

OOM kills are watched by each TaskActor on its own cgroup, not here: the exit
that an OOM kill causes is published by the TaskActor, which drains its OOM
watch first, so no OOM comes after its exit; and a task's envelopes all go
straight from it to the Exchange, in order, one hop each.
"""

from __future__ import annotations

import os
from typing import Any

from actors._actor import ContactorActor
from actors.cgroups import Host, detect, placement, read_metrics
from actors.errdefs import NotFound
from actors.messages import Ask, Configure, Ready, TaskReply, TaskRequest

__all__ = ["MonitorActor"]


class MonitorActor(ContactorActor):
    role = "monitor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host: Host | None = None
        self.config: Any = None

    def on_Configure(self, msg: Configure, sender: Any) -> None:
        self.config = msg.config
        if self.host is None:
            self.host = detect()
            self.log.info("cgroup_host", mode=self.host.mode, controllers=sorted(self.host.v1),
                          unified=str(self.host.unified) if self.host.unified else None)  # fmt: skip
        self.send(sender, Ready(self.role, os.getpid()))

    def ask_TaskRequest(self, msg: TaskRequest, ask: Ask, sender: Any) -> TaskReply:
        """``metrics`` of a task (the RuntimeActor forwards it only for a task in its table)."""
        if self.host is None or self.config is None:
            raise NotFound(f"task {msg.id} is not running")
        cfg = self.config.cgroups
        return TaskReply(
            read_metrics(self.host, placement(cfg.driver, str(cfg.parent), msg.namespace, msg.id))
        )
