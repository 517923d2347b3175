"""scripts/bench runs end to end and leaves nothing behind; its numbers are measured, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from actors.bench.common import Samples
from actors.bench.figures import parse_only
from actors.bench.report import goals, table


def _ours() -> dict[str, set[str]]:
    """Everything a bench run can leave, by the name all of it carries: contactor-bench-."""
    procs = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "contactor-bench-" in cmd:
            procs.add(f"{pid}: {cmd[:200]}")
    cgroups = {str(p) for p in Path("/sys/fs/cgroup").glob("*/contactor-bench-*")}
    cgroups |= {str(p) for p in Path("/sys/fs/cgroup").glob("*/contactor/contactor-bench-*")}
    cgroups |= {str(p) for p in Path("/sys/fs/cgroup").glob("contactor-bench-*")}
    mounts = {line for line in Path("/proc/mounts").read_text().splitlines() if "contactor-bench-" in line}
    dirs = {str(p) for p in Path("/tmp").glob("contactor-bench-*")}
    return {"processes": procs, "cgroups": cgroups, "mounts": mounts, "dirs": dirs}


@pytest.mark.slow
def test_a_quick_bench_reports_positive_figures_and_leaves_nothing_behind(tmp_path: Path) -> None:
    before = _ours()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench"), "--quick", "--runs", "2", "--only", "run_client,death",
         "--json", "--png", str(tmp_path / "bench.png")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run 2/2" in done.stderr  # progress is shown while it runs
    out = json.loads(done.stdout)
    figures = out["figures"]
    assert set(figures) == {"2 run --rm (client)", "2b the same in separate calls (client)",
                            "5 shim SIGKILL -> /tasks/exit"}  # fmt: skip
    assert set(figures["2 run --rm (client)"]) >= {"contactor", "runc"}
    assert set(figures["2b the same in separate calls (client)"]) == {"contactor", "runc"}
    assert "contactor" in figures["5 shim SIGKILL -> /tasks/exit"]
    for figure, systems in figures.items():
        for system, values in systems.items():
            assert len(values) == 2 and all(v > 0 for v in values), (figure, system, values)
    assert out["meta"]["runs"] == 2
    after = _ours()
    for kind, things in after.items():
        assert not things - before[kind], f"{kind} left behind: {sorted(things - before[kind])}"


def test_figures_are_chosen_by_name_or_number() -> None:
    assert parse_only("1,death,7") == ["run_cli", "death", "ls"]
    with pytest.raises(ValueError, match="unknown figure"):
        parse_only("8")


def test_ratios_and_goals_compare_p50s_of_the_same_run() -> None:
    s = Samples()
    s.extend("1 run --rm (CLI)", "contactor", [0.070, 0.080, 0.090])
    s.extend("1 run --rm (CLI)", "containerd", [0.100, 0.100, 0.200])
    s.extend("3 20 concurrent: containers/s", "contactor", [30.0], "/s")
    s.extend("3 20 concurrent: containers/s", "containerd", [20.0], "/s")
    s.extend("4 PSS per container @10", "contactor", [6000.0], "kB")
    assert "contactor: 0.80x" in table(s)
    met = {g.split(" (")[0]: ok for g, _, ok in goals(s)}
    assert met == {
        "(1) at most 0.8x containerd's ctr run --rm": True,
        "(3) at least 1.25x containerd's containers/s": True,
        "(4) at most 5 MB PSS per container": False,
    }
