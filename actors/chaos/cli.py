"""``contactor-chaos``: the command line of a chaos run."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from actors.chaos.faults import FAULT_KINDS
from actors.chaos.report import render
from actors.chaos.runner import Options, run

__all__ = ["main"]

EXIT_VIOLATIONS = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contactor-chaos",
        description="Run a workload against a private contactor daemon while injecting faults, "
        "then check that nothing was lost or leaked.  Exit status 0: no invariant violated.",
    )
    p.add_argument("--seed", type=int, default=1, help="every run is reproducible from its seed (default 1)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults (default 60)")
    p.add_argument("--clients", type=int, default=3, help="concurrent clients (default 3)")
    p.add_argument("--tasks", type=int, default=30, help="tasks the clients create in all (default 30)")
    p.add_argument("--faults", default="all",
                   help=f"comma-separated fault mix, or 'all' (default): {', '.join(FAULT_KINDS)}")
    p.add_argument("--rootfs", type=Path, default=None,
                   help="container root filesystem (default: $CONTACTOR_TEST_ROOTFS, else .cache/rootfs)")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the daemon's logs to this dir at the end")
    p.add_argument("--state-size", type=int, default=64, help="MiB of the state dir's tmpfs (default 64)")
    return p


def _rootfs(given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("CONTACTOR_TEST_ROOTFS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "rootfs"


def _interrupt(signo: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    faults = FAULT_KINDS if args.faults == "all" else tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = sorted(set(faults) - set(FAULT_KINDS))
    rootfs = _rootfs(args.rootfs)
    problem = ""
    if unknown:
        problem = f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}"
    elif not (rootfs / "bin" / "sh").exists():
        problem = f"no container root filesystem at {rootfs} (build one with scripts/mkrootfs)"
    elif args.duration <= 0 or args.clients < 1 or args.tasks < 1 or args.state_size < 8:
        problem = "duration must be positive, clients and tasks at least 1, state-size at least 8"
    elif os.geteuid() != 0:
        problem = "contactor-chaos must run as root (it runs containers)"
    if problem:
        print(f"contactor-chaos: {problem}", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _interrupt)
    options = Options(rootfs=rootfs, seed=args.seed, duration=args.duration, clients=args.clients,
                      tasks=args.tasks, faults=faults, state_size_mb=args.state_size,
                      keep_logs=args.keep_logs)  # fmt: skip
    try:
        result = run(options)
    except KeyboardInterrupt:
        print("contactor-chaos: interrupted; everything it started was removed", file=sys.stderr)
        return 130
    print(render(result))
    return 0 if result.ok else EXIT_VIOLATIONS


if __name__ == "__main__":
    sys.exit(main())
