"""A warm shim factory: shims forked from a process that has already imported them.

Starting a shim by exec'ing a fresh interpreter costs about 65 ms (mostly
imports) and 12 MB of private memory per container.  The factory is one
single-threaded process, started by the daemon, that imports the shim once
and then forks a shim per request: the fork costs a few milliseconds and the
shims share the factory's pages.  Each shim still ends up where an exec'd one
would: in a session of its own, with no fd inherited but its readiness pipe;
it stays the factory's child, which the kernel reaps for it (the factory
ignores SIGCHLD), so it never waits on a shim.

Protocol (a unix socket, root-only): the client sends one datagram-like
message on a stream connection: the shim's argv as JSON (without the program
name and without ``--ready-fd``), with the write end of its readiness pipe
attached as SCM_RIGHTS.  The factory answers ``ok`` once the shim process
exists (the shim itself reports readiness on the pipe, as always).  Anything
else closes the connection.  ``start_shim`` falls back to exec'ing the shim
when the factory is not there.
"""

from __future__ import annotations

import array
import contextlib
import gc
import json
import os
import signal
import socket
import sys
from typing import Final

from actors.wire import peer_credentials, socket_name

__all__ = ["serve", "spawn", "start_factory", "MAX_REQUEST"]

MAX_REQUEST: Final = 64 * 1024


def spawn(address: str, argv: list[str], ready_fd: int, timeout: float = 5.0) -> None:
    """Ask the factory at ``address`` for a shim with ``argv``; raises OSError if it cannot."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        with socket_name(address) as name:
            sock.connect(name)
        payload = json.dumps(argv).encode()
        sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [ready_fd]))])
        sock.shutdown(socket.SHUT_WR)
        if sock.recv(16) != b"ok":
            raise OSError("the shim factory refused the request")


def _receive(conn: socket.socket) -> tuple[list[str], int]:
    fds = array.array("i")
    data = b""
    while True:
        chunk, ancdata, _, _ = conn.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, raw in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(raw[: len(raw) - (len(raw) % fds.itemsize)])
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    argv = json.loads(data)
    if len(fds) != 1 or not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        for fd in fds:
            os.close(fd)
        raise ValueError("a request is a JSON list of strings and one fd")
    if "--ready-fd" in argv:
        os.close(fds[0])
        raise ValueError("--ready-fd is the factory's to set")
    return argv, fds[0]


def _fork_shim(argv: list[str], ready_fd: int, keep: tuple[int, ...]) -> None:
    """Fork; the child becomes a shim in a session of its own (the kernel reaps it: SIGCHLD is
    ignored here, so the factory never waits on a shim and no shim is left a zombie).

    The options are parsed here, before the fork, where argparse's code is warm after the
    first shim; in each new shim it ran cold, for about 2 ms of every create.  Bad options
    are left for the child to report, as before.
    """
    from actors.shim.__main__ import main, parse, run

    argv = [*argv, "--ready-fd", "3"]
    try:
        args = parse(argv)
    except SystemExit:
        args = None
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd in keep:
                os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if ready_fd != 3:
                os.dup2(ready_fd, 3)
            os.closerange(4, 65536)
            # (run marks the shim's memory mergeable once it has reported ready: see actors.ksm)
            code = main(argv) if args is None else run(args, forked=True)
        finally:
            os._exit(code)


def serve(listener: socket.socket) -> None:
    """Serve forever: one shim per connection."""
    # Import everything a shim needs now, so every fork starts warm.
    import actors.shim.__main__  # noqa: F401

    # What the factory holds now lives as long as it does: move it out of the collector's
    # reach (no collection here, which would write to every object).  A full collection in
    # a shim, days into its life, would otherwise write to every object it inherited and
    # turn each of their pages into a private copy: about 5 MB per shim.
    gc.freeze()

    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # shims are reaped by the kernel (see _fork_shim)
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                conn.settimeout(5.0)
                _, uid, _ = peer_credentials(conn)
                if uid not in (0, os.geteuid()):
                    continue
                argv, ready_fd = _receive(conn)
                try:
                    _fork_shim(argv, ready_fd, (listener.fileno(), conn.fileno()))
                finally:
                    os.close(ready_fd)
                conn.sendall(b"ok")
            except (OSError, ValueError):
                continue


def start_factory(address: str) -> int:
    """Start a factory listening at ``address`` in a session of its own; returns its pid.

    Forked from the caller (the daemon process, before it starts any thread or actor
    system), twice, so that the factory is nobody's child and shares nothing but code.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket_name(address) as name:
        listener.bind(name)
    os.chmod(address, 0o600)
    listener.listen(64)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setsid()
            if os.fork():
                os._exit(0)
            os.write(w, f"{os.getpid()}\n".encode())
            os.close(w)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            keep = listener.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, 65536)
            serve(listener)
        finally:
            os._exit(0)
    os.close(w)
    listener.close()
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        return int(f.read().strip())
