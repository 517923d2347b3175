"""One chaos run, start to end: a private daemon, the workload, the faults, the checks, the cleanup.

The daemon is the run's own (``actors.testing.private_daemon``): dirs under a
temporary directory, its state dir on a small tmpfs (so it can be filled), its
own socket, admin port and namespace, the runtime wrapper as its runtime
binary.  The faults come one at a time at random moments while the workload
runs: first every kind of the mix once (in a seeded random order), then at
random.  Afterwards: every fault is released, the daemon must recover, the
tasks it still lists must answer, nothing may be left of the others; then
every task is deleted and the whole event log and system are checked again.
Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from actors.chaos import invariants
from actors.chaos.faults import FAULT_KINDS, RECOVERY_TIMEOUT, ROLES, Injector, wait_until
from actors.chaos.ledger import Ledger
from actors.chaos.report import Progress, Result
from actors.chaos.runtime_wrapper import RuntimeWrapper
from actors.chaos.workload import Workload
from actors.errdefs import ContactorError

__all__ = ["Options", "run", "state_tmpfs"]


@dataclass(frozen=True, slots=True)
class Options:
    rootfs: Path
    seed: int = 1
    duration: float = 60.0
    clients: int = 3
    tasks: int = 30
    faults: tuple[str, ...] = FAULT_KINDS
    state_size_mb: int = 64
    gap: tuple[float, float] = (0.1, 0.8)  # seconds between one fault's recovery and the next fault
    keep_logs: Path | None = None  # copy the daemon's logs here at the end


@contextlib.contextmanager
def state_tmpfs(path: Path, size_mb: int) -> Any:
    """A tmpfs of ``size_mb`` at ``path``, unmounted afterwards."""
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0711", "contactor-chaos", str(path)],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def run(options: Options, stream: TextIO = sys.stderr) -> Result:
    from actors.testing import private_daemon

    unknown = set(options.faults) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    ledger = Ledger()
    result = Result(options.seed, options.duration, options.clients, ledger)
    tmp = Path(tempfile.mkdtemp(prefix="contactor-chaos-"))
    namespace = f"chaos{options.seed}x{uuid.uuid4().hex[:6]}"
    progress = Progress(ledger, stream)
    progress.say(f"private daemon in {tmp}, namespace {namespace}, seed {options.seed}")
    try:
        with state_tmpfs(tmp / "state", options.state_size_mb):
            wrapper = RuntimeWrapper(tmp)
            try:
                with private_daemon(tmp, namespace, runtime_config=f'binary = "{wrapper.binary}"') as daemon:
                    _drive(daemon, options, ledger, result, wrapper, progress)
            except AssertionError as exc:  # the private daemon's teardown had to remove leftovers
                result.violations.append(f"teardown: {exc}")
    finally:
        if options.keep_logs is not None:
            options.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in (tmp / "daemon.log", tmp / "root" / "thespian.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(log, options.keep_logs / log.name)
        shutil.rmtree(tmp, ignore_errors=True)
    result.elapsed = time.monotonic() - started
    return result


def _drive(daemon: Any, options: Options, ledger: Ledger, result: Result, wrapper: RuntimeWrapper,
           progress: Progress) -> None:  # fmt: skip
    rng = random.Random(options.seed)
    injector = Injector(daemon, ledger, random.Random(options.seed + 1), options.rootfs, wrapper)
    workload = Workload(daemon, ledger, options.seed, options.clients, options.tasks, options.rootfs)
    schedule = list(options.faults)
    rng.shuffle(schedule)
    last_fault = time.monotonic()
    try:
        with progress:
            workload.start()
            deadline = time.monotonic() + options.duration
            while time.monotonic() < deadline and options.faults:
                time.sleep(rng.uniform(*options.gap))
                kind = schedule.pop(0) if schedule else rng.choice(options.faults)
                progress.say(f"fault: {kind}")
                try:
                    injector.inject(kind)
                except (ContactorError, OSError, StopIteration) as exc:
                    ledger.fault(kind, "-", note=f"not injected: {exc}").recovered_after = 0.0
                    progress.say(f"fault {kind} not injected: {exc}")
                last_fault = time.monotonic()
            progress.phase = "stopping the workload"
            if not workload.finish():
                result.violations.append("a client call did not return within 180s")
    finally:
        workload.stop.set()
        injector.release()
    progress.say("checking invariants")
    # Recovered: the daemon answers, and every task whose bundle is on disk is listed again.
    if not wait_until(lambda: injector.healthy() and injector.restored(), RECOVERY_TIMEOUT):
        result.violations.append(f"the daemon did not recover within {RECOVERY_TIMEOUT}s of the last fault")
        return
    result.final_recovery = time.monotonic() - last_fault
    _check(daemon, ledger, result)


def _check(daemon: Any, ledger: Ledger, result: Result) -> None:
    v = result.violations
    v += [f"fault {f.kind} on {f.target}: no recovery within {RECOVERY_TIMEOUT}s"
          for f in ledger.faults if f.recovered_after is None]  # fmt: skip
    v += [f"client error not of a daemon category: {u}" for u in ledger.unexpected]
    with daemon.client() as c:
        live = c.list_tasks()
    for t in live:
        ledger.saw_shim(t.id, t.shim_pid)
    v += invariants.check_live(daemon, live)
    v += invariants.check_leftovers(daemon, ledger, set(ledger.tasks) - {t.id for t in live})
    # Then every task goes, and nothing of any may be left.
    for t in live:
        ledger.mark_sigkilled(t.id)
        try:
            with daemon.client() as c:
                c.delete_task(t.id, force=True)
        except ContactorError as exc:
            v.append(f"{t.id}: forced delete failed: {exc.category}: {exc.message}")
    v += invariants.check_leftovers(daemon, ledger, set(ledger.tasks))
    v += invariants.check_events(ledger, invariants.collect_events(daemon, daemon.namespace), live=set())
    v += invariants.check_records(daemon, ledger)
    v += invariants.check_answers(daemon, ROLES)
