"""MonitorActor: the cgroups of running tasks (placement, OOM and metrics come with their own work).

For now it keeps the table of monitored tasks: Monitor once a task has a
pid, StopMonitor on delete and on dead-shim cleanup; both idempotent.
"""

from __future__ import annotations

import os
from typing import Any

from actors._actor import ContactorActor
from actors.messages import Configure, Monitor, Peers, Ready, StopMonitor

__all__ = ["MonitorActor"]


class MonitorActor(ContactorActor):
    role = "monitor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks: dict[tuple[str, str], Monitor] = {}

    def on_Configure(self, msg: Configure, sender: Any) -> None:
        self.send(sender, Ready(self.role, os.getpid()))

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        pass

    def on_Monitor(self, msg: Monitor, sender: Any) -> None:
        self.tasks[(msg.namespace, msg.id)] = msg

    def on_StopMonitor(self, msg: StopMonitor, sender: Any) -> None:
        self.tasks.pop((msg.namespace, msg.id), None)
