"""What every system under measurement shares: processes' memory, waiting on them, progress, samples.

The benchmark drives three systems (contactor, raw runc, containerd) through the same figures;
the helpers here are the parts that do not depend on which system it is.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parent.parent.parent


def pss_kb(pid: int) -> int:
    """Proportional set size of a process in kB (0 for one that is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pgid_of(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


def ppid_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def pids() -> list[int]:
    return [int(x) for x in os.listdir("/proc") if x.isdigit()]


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def run(argv: Sequence[str], timeout: float = 120, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its stdout, or RuntimeError with its stderr.

    Output goes through files, not pipes: a container that `runc create` leaves running
    inherits runc's stdio, and would hold a pipe open until it exits.

    The end is seen through a pidfd the moment it happens.  ``subprocess.run(timeout=...)``
    polls with sleeps that double up to 50 ms, which added up to 30 ms to a 100 ms command
    and nearly doubled each of runc's 4 ms ones.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        pidfd = os.pidfd_open(proc.pid)
        try:
            if not select.select([pidfd], [], [], timeout)[0]:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(list(argv), timeout)
        finally:
            os.close(pidfd)
        returncode = proc.wait()
        out.seek(0)
        err.seek(0)
        if returncode != 0:
            message = err.read().decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"{' '.join(argv[:4])}... exited {returncode}: {message}")
        return out.read().decode(errors="replace")


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    run(argv, env=env)
    return time.perf_counter() - start


def remove_cgroup(path: str) -> None:
    """Remove a cgroup directory tree (children first) in every hierarchy, if empty of processes."""
    roots = [Path("/sys/fs/cgroup")]
    if not (roots[0] / "cgroup.controllers").exists():  # v1: one hierarchy per controller
        roots = [p for p in roots[0].iterdir() if p.is_dir() and not p.is_symlink()]
    for root in roots:
        top = root / path.strip("/")
        if not top.is_dir():
            continue
        for sub in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
            if sub.is_dir():
                with contextlib.suppress(OSError):
                    sub.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


KSM = Path("/sys/kernel/mm/ksm")


class Ksmd:
    """ksmd on for the run (``--ksm``), scanning fast enough to settle within a figure; restored after.

    contactor marks its TaskHosts' and shims' memory mergeable (actors/ksm.py); whether
    the kernel merges it is the host's setting, so the benchmark only turns it on when asked.
    """

    SETTINGS: ClassVar[dict[str, str]] = {"pages_to_scan": "2000", "sleep_millisecs": "20", "run": "1"}

    def __init__(self) -> None:
        self.saved: dict[str, str] = {}

    def __enter__(self) -> Ksmd:
        for name, value in self.SETTINGS.items():
            self.saved[name] = (KSM / name).read_text().strip()
            (KSM / name).write_text(value)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in reversed(list(self.saved)):
            with contextlib.suppress(OSError):
                (KSM / name).write_text(self.saved[name])


def ksm_settle(progress: Progress, scans: int = 2, timeout: float = 600) -> None:
    """If ksmd runs, wait until it has scanned everything ``scans`` more times (merging is gradual).

    ksmd sleeps, and counts no scans, while no process has a mergeable mapping: a scan
    counter that has not moved for two seconds while nothing was scanned means that.
    """

    def read(name: str) -> int:
        return int((KSM / name).read_text())

    try:
        if (KSM / "run").read_text().strip() != "1":
            return
        start, scanned, moved = read("full_scans"), read("pages_scanned"), time.monotonic()
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while read("full_scans") < start + scans and time.monotonic() < deadline:
        if read("pages_scanned") != scanned:
            scanned, moved = read("pages_scanned"), time.monotonic()
        elif time.monotonic() - moved > 2:
            return
        progress(f"waiting for ksmd to scan everything {scans} times")
        time.sleep(0.5)


class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per step otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.quiet = quiet
        self.width = 0

    def __call__(self, text: str) -> None:
        if self.quiet:
            return
        line = f"[{time.monotonic() - self.start:6.1f}s] {text}"
        if self.tty:
            print("\r" + line.ljust(self.width), end="", file=sys.stderr, flush=True)
            self.width = len(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty and self.width:
            print(file=sys.stderr, flush=True)
            self.width = 0


class Samples:
    """Raw numbers: figure -> system -> values, with a unit per figure."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = {}
        self.units: dict[str, str] = {}

    def add(self, figure: str, system: str, value: float, unit: str = "s") -> None:
        self.values.setdefault(figure, {}).setdefault(system, []).append(value)
        self.units[figure] = unit

    def extend(self, figure: str, system: str, values: Iterable[float], unit: str = "s") -> None:
        for v in values:
            self.add(figure, system, v, unit)
