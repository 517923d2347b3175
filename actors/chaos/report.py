"""What a chaos run prints: progress while it runs, and the table at the end."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from actors.chaos.ledger import Ledger

__all__ = ["Result", "Progress", "render"]


@dataclass
class Result:
    seed: int
    duration: float
    clients: int
    ledger: Ledger
    violations: list[str] = field(default_factory=list)
    final_recovery: float | None = None  # seconds from the last fault until every invariant could be checked
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations


class Progress:
    """A line on the terminal every ``every`` seconds: time, operations, faults, errors."""

    def __init__(self, ledger: Ledger, stream: TextIO = sys.stderr, every: float = 2.0) -> None:
        self.ledger, self.stream, self.every = ledger, stream, every
        self.phase = "workload"
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="chaos-progress", daemon=True)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {text}", file=self.stream, flush=True)

    def _run(self) -> None:
        last, quiet = "", 0.0
        while not self.stop.wait(self.every):
            with self.ledger.lock:
                ops, faults = sum(self.ledger.ops.values()), len(self.ledger.faults)
                errors = sum(self.ledger.errors.values())
                tasks = len(self.ledger.tasks)
            line = f"{self.phase}: {ops} operations, {tasks} tasks, {faults} faults, {errors} errors"
            quiet += self.every
            if line != last or quiet >= 10 * self.every:  # a stuck run still says so now and then
                self.say(line if line != last else line + " (no progress)")
                last, quiet = line, 0.0

    def __enter__(self) -> Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _seconds(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


def render(result: Result) -> str:
    ledger = result.ledger
    lines = [
        f"contactor chaos: seed {result.seed}, {result.duration:.0f}s of faults, {result.clients} clients, "
        f"{result.elapsed:.0f}s in all",
        "",
        f"{'fault':<20} {'injected':>8} {'tasks':>6} {'unrecovered':>11}   recovery s (median / max)",
    ]
    kinds = sorted({f.kind for f in ledger.faults})
    for kind in kinds:
        faults = [f for f in ledger.faults if f.kind == kind]
        recovered = [f.recovered_after for f in faults if f.recovered_after is not None]
        tasks = {f.target.split(":")[0] for f in faults if f.target.split(":")[0] in ledger.tasks}
        lines.append(f"{kind:<20} {len(faults):>8} {len(tasks):>6} {len(faults) - len(recovered):>11}   "
                     f"{_seconds(recovered)}")  # fmt: skip
    all_recovered = [f.recovered_after for f in ledger.faults if f.recovered_after is not None]
    lines.append(f"{'total':<20} {len(ledger.faults):>8} "
                 f"{len({f.target.split(':')[0] for f in ledger.faults} & set(ledger.tasks)):>6} "
                 f"{len(ledger.faults) - len(all_recovered):>11}   {_seconds(all_recovered)}")  # fmt: skip
    lines.append("")
    ops = ", ".join(f"{k} {v}" for k, v in sorted(ledger.ops.items()))
    errors = ", ".join(f"{k} {v}" for k, v in sorted(ledger.errors.items())) or "none"
    lines.append(f"tasks: {len(ledger.tasks)}; operations: {ops}")
    lines.append(f"errors seen by clients (expected under faults): {errors}")
    final = "-" if result.final_recovery is None else f"{result.final_recovery:.2f}s"
    lines.append(f"time to recover after the last fault: {final}")
    lines.append(f"invariant violations: {len(result.violations)}")
    lines += [f"  - {v}" for v in result.violations]
    return "\n".join(lines)
