"""A short chaos run: every fault kind at least once, a fixed seed, zero invariant violations.

The run drives a private daemon of its own (real runc, cgroups, shims, actor
system) with several clients while the faults land; ``actors.chaos`` checks
the invariants against the real system and removes everything afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.chaos import FAULT_KINDS, Options, run
from actors.chaos.report import render

SEED = 20261129


@pytest.mark.slow
def test_a_short_chaos_run_injects_every_fault_kind_and_violates_no_invariant(rootfs: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"  # the daemon's logs, kept for a failure's post-mortem
    result = run(Options(rootfs=rootfs, seed=SEED, duration=45.0, clients=3, tasks=45, keep_logs=logs))
    table = render(result) + f"\n(daemon logs in {logs})"
    print(table)
    injected = {f.kind for f in result.ledger.faults if not f.note.startswith("not injected")}
    assert injected == set(FAULT_KINDS), f"kinds never injected: {set(FAULT_KINDS) - injected}\n{table}"
    assert sum(result.ledger.ops.values()) > 50, f"the workload hardly ran\n{table}"
    assert result.violations == [], table
