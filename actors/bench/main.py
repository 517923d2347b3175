"""``scripts/bench``: measure contactor beside raw runc and containerd on this machine, in one run.

It builds a busybox rootfs, starts a private contactor daemon and (when installed,
or with --with-containerd) a private containerd, runs the figures interleaved
system by system, prints a table, and removes everything it started, also on
failure, Ctrl-C or SIGTERM.

Figures (ratios are contactor/peer, p50 of the same run):
  1 run_cli     `run --rm` of /bin/true through the CLI, sequential (ctr run --rm; runc run)
  2 run_client  the same through the Python client, no CLI process: Client.run, one request
                (runc create+start+wait+delete); 2b the same in separate calls (create, start, wait, delete)
  3 concurrent  20 and 100 Client.run at once: wall time and containers/s (parallel ctr run --rm; runc run)
  4 memory      PSS per running container (shim + its share of the TaskHosts; containerd's v2 and v1 shims)
                and the daemon's own PSS with 0, 10 and 100 containers running
  5 death       shim SIGKILL -> /tasks/exit seen by a subscriber (ctr events)
  6 restart     daemon restart with 10 and 100 containers running -> all listed (ctr tasks ls)
  7 ls          `tasks ls` with 500 containers running, CLI and client (ctr tasks ls)
--ksm turns the kernel's samepage merging on for the run (contactor marks its per-container
processes' memory mergeable; the host decides whether ksmd runs) and restores it after.
--quick uses small sizes (concurrency 5/10, memory 0/5, restart 5, ls 50) and 5 runs.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from actors.bench import report
from actors.bench.common import KSM, REPO, Ksmd, Progress, Samples, cmdline, pids, remove_cgroup
from actors.bench.figures import FIGURES, FULL, QUICK, Runner, parse_only
from actors.cgroups import remove_empty_parents
from actors.ksm import running


def install_containerd(progress: Progress) -> None:
    """apt-get install containerd, and make sure no containerd service came up or stays enabled."""
    before = set(_containerd_daemons())
    progress("installing containerd with apt-get")
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                                 "containerd"]):  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        )
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')[-500:]}")
    for pid in set(_containerd_daemons()) - before:  # a system containerd that apt started: ours to stop
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for link in Path("/etc/systemd/system").glob("*.wants/containerd.service"):
        link.unlink()


def _containerd_daemons() -> list[int]:
    return [p for p in pids() if cmdline(p)[:1] in (["containerd"], ["/usr/bin/containerd"])]


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return ""


def _unmount_under(path: Path) -> None:
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        target = line.split()[4]
        if target == str(path) or target.startswith(f"{path}/"):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, help="samples per figure and system (default 20, 5 with --quick)")
    p.add_argument(
        "--only", default=",".join(FIGURES), help="figures to run, by name or number: 1,2,death,..."
    )
    p.add_argument("--json", action="store_true", help="print the raw numbers (and summary) as JSON")
    p.add_argument("--png", default="bench.png", help="where to write the plot, if matplotlib is installed "
                                                      "('' for none; default bench.png)")  # fmt: skip
    p.add_argument(
        "--with-containerd", action="store_true", help="apt-get install containerd if it is missing"
    )
    p.add_argument("--ksm", action="store_true", help="turn the kernel's samepage merging on for the run "
                                                     "(restored after); memory figures wait for its scans")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small sizes, so a run takes about two minutes")
    args = p.parse_args(argv)
    try:
        only = parse_only(args.only)
    except ValueError as exc:
        p.error(str(exc))
    runs = args.runs or (5 if args.quick else 20)
    if os.geteuid() != 0 or runs < 1:
        p.error("run as root, with --runs >= 1")
    if args.ksm and not (KSM / "run").exists():
        p.error(f"--ksm: this kernel has no samepage merging ({KSM} is missing)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleans up as Ctrl-C does
    progress = Progress()
    if args.with_containerd and not (shutil.which("containerd") and shutil.which("ctr")):
        install_containerd(progress)
    with_containerd = bool(shutil.which("containerd") and shutil.which("ctr"))
    work = Path(tempfile.mkdtemp(prefix="contactor-bench-"))
    ns = f"contactor-bench-{os.getpid()}"
    samples = Samples()
    systems: dict[str, Any] = {}
    problems: list[str] = []
    meta: dict[str, Any] = {
        "runs": runs, "quick": args.quick, "figures": only, "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "started": time.time(),
        "runc": _version(["runc", "--version"]), "containerd": _version(["containerd", "--version"]),
    }  # fmt: skip
    ksmd = Ksmd() if args.ksm else contextlib.nullcontext()
    try:
        ksmd.__enter__()
        meta["ksm"] = running()
        from actors.bench.contactor import Contactor
        from actors.bench.peers import Containerd, Runc

        # What an installed contactor runs: bytecode, not source compiled afresh by every CLI process
        # (which PYTHONDONTWRITEBYTECODE would otherwise make it do, for about 16 ms of each run).
        progress("compiling contactor's bytecode")
        compileall.compile_dir(str(REPO / "actors"), quiet=1)
        progress("building the busybox rootfs")
        rootfs = work / "rootfs"
        subprocess.run([str(REPO / "scripts" / "mkrootfs"), str(rootfs)], check=True, capture_output=True)
        progress("starting a private contactor daemon")
        systems["contactor"] = Contactor(work / "contactor", rootfs, ns)
        if with_containerd:
            progress("starting a private containerd")
            systems["containerd"] = Containerd(work, rootfs, ns)
        systems["runc"] = Runc(work, rootfs, ns)
        Runner(systems, samples, progress, runs, QUICK if args.quick else FULL).run(only)
    except KeyboardInterrupt:
        progress.done()
        print("bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        ksmd.__exit__(None, None, None)
        for name in reversed(list(systems)):
            progress(f"cleaning up {name}")
            try:
                problems += systems[name].close()
            except Exception as exc:
                problems.append(f"{name}: cleanup failed: {exc!r}")
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
        remove_cgroup(ns)
        remove_empty_parents(f"/contactor/{ns}")
        progress.done()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.default_int_handler)
        for problem in problems:
            print(f"bench: left behind and removed by force: {problem}", file=sys.stderr)
    meta["loadavg_end"] = os.getloadavg()
    meta["seconds"] = time.time() - meta["started"]
    if args.json:
        print(json.dumps(report.as_json(samples, meta), indent=1))
    else:
        print(f"# {meta['cpus']} CPUs, load average {meta['loadavg_start'][0]:.2f} at the start and "
              f"{meta['loadavg_end'][0]:.2f} at the end; {runs} runs; {meta['seconds']:.0f} s; "
              f"KSM {'on' if meta.get('ksm') else 'off'}")  # fmt: skip
        print(report.table(samples))
        goals = report.goals_table(samples)
        if goals:
            print("\n" + goals)
    if args.png and report.png(samples, Path(args.png)):
        print(f"bench: plot written to {args.png}", file=sys.stderr)
    return 2 if problems else 0
