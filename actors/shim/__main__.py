"""``contactor-shim``: the process that owns one container for its whole life.

Started by whoever creates the task (the TaskActor, a test, the demo) with the
namespace, id and bundle; it detaches into its own session so it outlives its
starter, becomes the child subreaper of the container's processes, listens on
a root-only unix socket and reports readiness (its pid, or an error) on
``--ready-fd``.  It writes ``shim.pid`` and ``address`` into the bundle.

Imports are kept lean on purpose: a shim is started per container.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from typing import Any

from actors.bundle import write_atomic
from actors.errdefs import ContactorError, InvalidArgument
from actors.identifiers import validate, validate_namespace
from actors.ksm import mark_mergeable
from actors.logs import JsonLineLogger
from actors.procs import pid_file_line
from actors.runc import Runtime, resolve_binary
from actors.shim.protocol import socket_name
from actors.shim.reaper import Reaper
from actors.shim.server import ShimServer
from actors.shim.service import ShimService

__all__ = ["main", "parse", "run"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contactor-shim", description="Own one container for its whole life.")
    p.add_argument("--namespace", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--bundle", required=True, help="absolute path of the task's bundle")
    p.add_argument("--runtime", default="runc", help="runc or crun, a name on PATH or a path")
    p.add_argument("--runtime-root", required=True, help="the runtime's --root for this namespace")
    p.add_argument("--socket", default="", help="socket path (default <bundle>/shim.sock)")
    p.add_argument("--log", default="", help="log file (default <bundle>/shim.log; '-' for stderr)")
    p.add_argument("--ready-fd", type=int, default=-1, help="fd on which to report readiness")
    p.add_argument("--systemd-cgroup", action="store_true")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--no-detach", action="store_true", help="stay in the foreground (debugging)")
    return p


def _report(fd: int, line: str) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.write(fd, line.encode() + b"\n")
            os.close(fd)


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with socket_name(path) as name:
        sock.bind(name)
    os.chmod(path, 0o600)  # before listen(): nobody can connect in between
    sock.listen(128)
    return sock


def _setup(args: argparse.Namespace) -> tuple[ShimService, ShimServer, Reaper, Any, int, list[str]]:
    namespace = validate_namespace(args.namespace)
    cid = validate(args.id, "container id")
    bundle = args.bundle
    if not os.path.isabs(bundle) or not os.path.isdir(bundle):
        raise InvalidArgument(f"bundle {bundle!r} is not an existing absolute directory")
    binary = resolve_binary(args.runtime)
    os.makedirs(args.runtime_root, mode=0o711, exist_ok=True)
    log_path = args.log or os.path.join(bundle, "shim.log")
    stream = sys.stderr if log_path == "-" else open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    log = JsonLineLogger(stream, "debug" if args.debug else "info", namespace=namespace, id=cid)
    runtime = Runtime(
        binary, args.runtime_root, os.path.join(bundle, "log.json"), args.systemd_cgroup, args.debug
    )
    server_box: list[ShimServer] = []

    def publish(kind: str, data: dict[str, Any]) -> None:
        server_box[0].publish(kind, data)

    service_box: list[ShimService] = []
    reaper = Reaper(lambda pid, status, when: service_box[0].on_exit(pid, status, when))
    service = ShimService(namespace, cid, bundle, runtime, reaper, publish, log)
    service_box.append(service)
    wakeup_fd = reaper.install()
    sock_path = args.socket or os.path.join(bundle, "shim.sock")
    server = ShimServer(_listen(sock_path), service, reaper, log)
    server_box.append(server)
    files = [sock_path, os.path.join(bundle, "address"), os.path.join(bundle, "shim.pid")]
    # No fsync: the bundle is in the volatile state dir, and after a power cut there is no shim
    # these could name (a torn or empty pid file reads as a dead shim, which is then the truth).
    write_atomic(files[2], pid_file_line(os.getpid()).encode(), 0o644, sync=False)
    write_atomic(files[1], sock_path.encode(), 0o644, sync=False)
    return service, server, reaper, log, wakeup_fd, files


_PARSER: list[argparse.ArgumentParser] = []


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The shim's options (exits with status 2 on bad ones, as argparse does).

    The parser is made once per process: the shim factory makes it before it forks, so a
    forked shim only parses (making one cost a fresh fork 1.5 ms, most of it gettext).
    """
    if not _PARSER:
        _PARSER.append(_parser())
    return _PARSER[0].parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse(argv))


def run(args: argparse.Namespace, forked: bool = False) -> int:
    """Be the shim for the parsed ``args`` until it is told to stop; its exit status.

    ``forked``: this process is a fresh fork of the shim factory, which never waits for its
    children (they are reaped by the kernel): it only needs a session of its own.
    """
    if args.ready_fd >= 0:
        os.set_inheritable(args.ready_fd, False)
    if not args.no_detach:
        # Leave the starter: the intermediate exits at once, we go on in a session of our own.
        if not forked and os.fork():
            os._exit(0)
        os.setsid()
    os.umask(0o077)
    try:
        service, server, _reaper, log, wakeup_fd, files = _setup(args)
    except ContactorError as exc:
        _report(args.ready_fd, f"error {exc.category} {exc.message}")
        return 1
    except OSError as exc:
        _report(args.ready_fd, f"error internal {exc}")
        return 1
    os.chdir(args.bundle)
    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, lambda s, f: server.stop(force=True))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if not args.no_detach:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1) if args.log == "-" else (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    log.info("shim_started", pid=os.getpid(), bundle=args.bundle, runtime=service.runtime.binary)
    _report(args.ready_fd, f"ok {os.getpid()}")
    if forked:
        # Most of a forked shim's private pages are copies of the factory's (see actors.ksm);
        # marked after the readiness report, where it costs the create nothing.
        mark_mergeable()
    server.serve(wakeup_fd)
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    log.info("shim_exited")
    return 0


if __name__ == "__main__":
    sys.exit(main())
