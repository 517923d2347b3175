"""What a chaos run did: every task it tried to make, every signal it sent, every fault.

The workload and the fault injector write here from several threads; the
invariant checks read it at the end.  It records intent and facts the tool
itself caused (a SIGKILL it sent, the status a container was told to exit
with), never what the daemon reported: the invariants compare the two.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Ledger", "TaskRecord", "FaultRecord"]


@dataclass
class TaskRecord:
    """One task id the run created (or tried to)."""

    id: str
    # The status its init exits with on its own; None: it never exits on its own.
    natural_status: int | None
    container_created: bool = False
    # A SIGKILL was sent to it (by a client kill, a forced delete, a fault on its init or its shim):
    # only then is 137 an honest exit status.
    sigkilled: bool = False
    # exec id -> the status that exec exits with on its own
    execs: dict[str, int] = field(default_factory=dict)
    # (pid, start time) of every shim seen for it
    shims: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class FaultRecord:
    kind: str
    target: str
    started: float
    recovered_after: float | None = None  # seconds until the daemon served normally again
    note: str = ""


class Ledger:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: dict[str, TaskRecord] = {}
        self.faults: list[FaultRecord] = []
        self.ops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.unexpected: list[str] = []

    def task(self, cid: str, natural_status: int | None = None) -> TaskRecord:
        with self.lock:
            rec = self.tasks.get(cid)
            if rec is None:
                rec = self.tasks[cid] = TaskRecord(cid, natural_status)
            return rec

    def mark_sigkilled(self, cid: str) -> None:
        with self.lock:
            if cid in self.tasks:
                self.tasks[cid].sigkilled = True

    def saw_shim(self, cid: str, pid: int) -> None:
        from actors.procs import starttime

        start = starttime(pid)
        if pid > 0 and start is not None:
            with self.lock:
                if cid in self.tasks:
                    self.tasks[cid].shims.add((pid, start))

    def op(self, name: str) -> None:
        with self.lock:
            self.ops[name] += 1

    def error(self, category: str, detail: str = "") -> None:
        with self.lock:
            self.errors[category] += 1
            if category == "unexpected":
                self.unexpected.append(detail)

    def fault(self, kind: str, target: str, note: str = "") -> FaultRecord:
        rec = FaultRecord(kind, target, time.monotonic(), note=note)
        with self.lock:
            self.faults.append(rec)
        return rec

    def snapshot(self) -> list[TaskRecord]:
        with self.lock:
            return list(self.tasks.values())
