"""``contactor``: the command line.

For now it runs a container directly under its own shim (``contactor run``);
the daemon and the ctr-like commands arrive with the actor runtime.  Every
failure is one line on stderr and an exit code that names its category
(``errdefs.EXIT_CODES``); a container's own exit status is passed through.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from actors import config as configuration
from actors.bundle import create_bundle, delete_bundle
from actors.cgroups import remove_empty_parents
from actors.errdefs import EXIT_CODES, ContactorError, InvalidArgument
from actors.identifiers import validate, validate_namespace
from actors.shim.client import DEFAULT_SHIM, ShimClient, start_shim
from actors.spec import default_spec

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contactor", description="A container runtime built as an actor system.")
    p.add_argument("--config", type=Path, help=f"configuration file (default {configuration.DEFAULT_PATH})")
    p.add_argument("-n", "--namespace", default=os.environ.get("CONTACTOR_NAMESPACE", "default"))
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a container on a rootfs directory and wait for it")
    run.add_argument(
        "--rootfs", required=True, type=Path, help="root filesystem directory (scripts/mkrootfs)"
    )
    run.add_argument("--rm", action="store_true", help="remove the container when it exits")
    run.add_argument("--runtime", choices=("runc", "crun"), help="OCI runtime (default from the config)")
    run.add_argument("--env", "-e", action="append", default=[], help="KEY=VALUE for the process")
    run.add_argument("--cwd", default="/")
    run.add_argument("id")
    run.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _shim_command(name: str) -> list[str]:
    """The shim program: the configured one, found on PATH or beside this interpreter."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    return [found] if found else list(DEFAULT_SHIM)


def _run(args: argparse.Namespace, cfg: configuration.Config) -> int:
    ns, cid = validate_namespace(args.namespace), validate(args.id, "container id")
    if not args.args:
        raise InvalidArgument("run needs a command to run in the container")
    rootfs = args.rootfs.resolve()
    if not (rootfs / "bin").is_dir():
        raise InvalidArgument(
            f"rootfs {args.rootfs} is not a root filesystem (no bin/); build one with scripts/mkrootfs"
        )
    runtime = args.runtime or cfg.runtime.command
    state = cfg.daemon.state
    state.mkdir(mode=0o711, parents=True, exist_ok=True)
    cgroups_path = f"{cfg.cgroups.parent.rstrip('/')}/{ns}/{cid}"
    spec = default_spec(args.args, hostname=cid, env=args.env, cwd=args.cwd, cgroups_path=cgroups_path)
    bundle = create_bundle(state, ns, cid, spec)
    client: ShimClient | None = None
    try:
        shim = start_shim(
            ns, cid, str(bundle), str(cfg.runtime_root / ns), runtime=runtime,
            shim=_shim_command(cfg.runtime.shim), debug=cfg.runtime.shim_debug,
        )  # fmt: skip
        client = ShimClient(shim.address)
        # The container writes into FIFOs in its bundle; we copy them to our own stdout and stderr.
        copiers = [_FifoCopier(bundle / name, fd) for name, fd in (("stdout", 1), ("stderr", 2))]
        client.call(
            "create", rootfs=[{"type": "bind", "source": str(rootfs), "options": ["rbind"]}],
            stdout=str(bundle / "stdout"), stderr=str(bundle / "stderr"),
        )  # fmt: skip
        client.call("start")

        def forward(signum: int, frame: FrameType | None) -> None:
            with contextlib.suppress(ContactorError):
                assert client is not None
                client.call("kill", signal=signum, all=True)

        for signo in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signo, forward)
        status = int(client.call("wait", call_timeout=None)["exit_status"])
        for copier in copiers:
            copier.thread.join(5.0)
        if args.rm:
            client.call("delete")
            client.call("shutdown")
        return status
    finally:
        if client is not None:
            client.close()
        if args.rm:
            _remove(bundle)
            remove_empty_parents(cgroups_path)


class _FifoCopier:
    """Copies a FIFO to one of our fds until EOF (the container's last writer closed it)."""

    def __init__(self, path: Path, out: int) -> None:
        os.mkfifo(path, 0o600)
        self.path, self.out = path, out
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # counts as a reader at once
        try:
            while data := os.read(fd, 65536):
                with contextlib.suppress(OSError):
                    os.write(self.out, data)
        finally:
            os.close(fd)


def _remove(bundle: Path) -> None:
    """After --rm: the shim removes its files on shutdown; wait briefly, then remove the bundle."""
    pid_file = bundle / "shim.pid"
    with contextlib.suppress(OSError, ValueError):
        fd = os.pidfd_open(int(pid_file.read_text()))
        try:
            select.select([fd], [], [], 5.0)
        finally:
            os.close(fd)
    delete_bundle(bundle)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        path = args.config or (configuration.DEFAULT_PATH if configuration.DEFAULT_PATH.exists() else None)
        cfg = configuration.load(path)
        if args.command == "run":
            return _run(args, cfg)
        raise InvalidArgument(f"unknown command {args.command!r}")
    except ContactorError as exc:
        print(f"contactor: {exc.category.replace('_', ' ')}: {exc.message}", file=sys.stderr)
        return EXIT_CODES[exc.category]
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
