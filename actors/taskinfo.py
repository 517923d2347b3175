"""A task as the daemon describes it (``tasks ls``), in a module of its own.

The Python client and the CLI need this one class of the actors' messages;
importing ``actors.messages`` (some forty dataclasses) would cost every CLI
call about 15 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["TaskInfo"]


@dataclass(frozen=True, slots=True)
class TaskInfo:
    namespace: str
    id: str
    pid: int
    status: str
    exit_status: int
    exited_at: float
    shim_pid: int
    bundle: str
    created_at: float
    actor_pid: int = 0
    restarts: int = 0
    network: str = ""  # none, host or bridge
    address: str = ""  # the task's address on the bridge
    node: str = ""  # the node it runs on (filled in by a cluster-wide listing)
    rm: bool = False  # a run's task with rm: it and its record are removed once it exited

    def __reduce__(self) -> tuple[type[TaskInfo], tuple[Any, ...]]:
        # Pickled as its values in field order: a listing of 500 tasks and every TaskReady cross
        # actors this way, and the dataclass default (a state dict, set field by field) took
        # about twice as long each way.
        return TaskInfo, tuple(getattr(self, name) for name in _FIELDS)

    def as_dict(self) -> dict[str, Any]:
        """Its fields as a map: what ``dataclasses.asdict`` gives (every field is a plain value),
        without its deep copy, which took 5.6 ms of a 500-task listing."""
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(TaskInfo))
