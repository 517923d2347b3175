"""Container processes inside one shim: their states and the legal moves between them.

The init process (the container itself) and each exec'd process have a state
drawn from ``State``; the transition tables below are the only place that
decides which move is legal (containerd's shim state machines, with the
category kept: an illegal move is FailedPrecondition, always).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import Any, Final

from actors.errdefs import FailedPrecondition

__all__ = ["State", "Process", "INIT_TRANSITIONS", "EXEC_TRANSITIONS", "check_transition"]


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


_S = State
INIT_TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    _S.CREATED: frozenset({_S.RUNNING, _S.STOPPED, _S.DELETED}),
    _S.RUNNING: frozenset({_S.PAUSED, _S.STOPPED}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.STOPPED}),
    _S.STOPPED: frozenset({_S.DELETED}),
    _S.DELETED: frozenset(),
}
EXEC_TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    _S.CREATED: frozenset({_S.RUNNING, _S.STOPPED, _S.DELETED}),
    _S.RUNNING: frozenset({_S.STOPPED}),
    _S.PAUSED: frozenset(),
    _S.STOPPED: frozenset({_S.DELETED}),
    _S.DELETED: frozenset(),
}

_VERBS: Final = {
    _S.RUNNING: "start",
    _S.PAUSED: "pause",
    _S.STOPPED: "stop",
    _S.DELETED: "delete",
    _S.CREATED: "create",
}


def check_transition(is_init: bool, src: State, dst: State, resume: bool = False) -> None:
    """Raise FailedPrecondition unless ``src -> dst`` is legal for this kind of process."""
    table = INIT_TRANSITIONS if is_init else EXEC_TRANSITIONS
    if dst not in table[src]:
        verb = "resume" if resume else _VERBS[dst]
        kind = "container" if is_init else "exec process"
        raise FailedPrecondition(f"cannot {verb} {kind} in {src.value} state")


@dataclass(eq=False)
class Process:
    """One process the shim owns.  ``exec_id`` is "" for the init process."""

    exec_id: str
    terminal: bool = False
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    spec: dict[str, Any] | None = None
    pid: int = 0
    state: State = State.CREATED
    exit_status: int = -1
    exited_at: float = 0.0
    # Serializes operations (start, pause, delete...) on this process; held across runtime calls.
    op_lock: threading.Lock = field(default_factory=threading.Lock)
    # Guards the fields above for short moments; taken by the reaper, never held across I/O.
    cond: threading.Condition = field(default_factory=threading.Condition)
    io: Any = None

    @property
    def is_init(self) -> bool:
        return self.exec_id == ""

    def move(self, dst: State, resume: bool = False) -> None:
        """Change state if legal; caller holds ``cond``."""
        check_transition(self.is_init, self.state, dst, resume)
        self.state = dst

    def set_exited(self, status: int, when: float) -> bool:
        """Record an exit (first one wins); returns False if the exit was already known."""
        with self.cond:
            if self.state in (State.STOPPED, State.DELETED):
                return False
            self.state = State.STOPPED
            self.exit_status = status
            self.exited_at = when
            self.cond.notify_all()
            return True

    def wait(self, timeout: float | None) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.state in (State.STOPPED, State.DELETED), timeout)

    def describe(self) -> dict[str, Any]:
        with self.cond:
            return {
                "exec_id": self.exec_id,
                "pid": self.pid,
                "status": self.state.value,
                "stdin": self.stdin,
                "stdout": self.stdout,
                "stderr": self.stderr,
                "terminal": self.terminal,
                "exit_status": self.exit_status,
                "exited_at": self.exited_at,
            }
