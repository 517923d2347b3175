"""Marking memory mergeable: every private writable mapping of ours, never a process we exec."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

from actors.ksm import mark_mergeable, running

PROBE = """
import subprocess, sys
from actors.ksm import mark_mergeable
marked = mark_mergeable()
own = open("/proc/self/smaps").read()
child = subprocess.run(["cat", "/proc/self/smaps"], capture_output=True, text=True).stdout
print(marked)
print(sum(1 for l in own.splitlines() if l.startswith("VmFlags:") and " mg" in l))
print(sum(1 for l in child.splitlines() if l.startswith("VmFlags:") and " mg" in l))
"""


def test_marking_covers_the_heap_and_an_exec_drops_it() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, check=True)
    marked, own, child = (int(x) for x in done.stdout.split())
    assert marked > 1 << 20, "the interpreter's heap and arenas are marked"
    assert own > 0
    assert child == 0, "a program we exec (runc, a container) has no mergeable mapping"


def test_a_missing_maps_file_marks_nothing() -> None:
    assert mark_mergeable("/nonexistent/maps") == 0


def test_running_reads_ksmd_state(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.write_text("1\n")
    assert running(str(run))
    run.write_text("0\n")
    assert not running(str(run))
    assert not running(str(tmp_path / "missing"))
