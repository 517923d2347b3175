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

A spare: the factory keeps one child forked ahead, waiting on a socketpair, and
hands it the next request (argv and readiness fd) instead of forking then; a new
spare is forked once the requester has its answer.  The fork, the page-table
copy and the first writes to the inherited pages happen while nobody waits for
them: about 3 ms of every shim start (6.5 -> 3.5 ms here).  A spare whose
factory is gone reads EOF and exits; one that cannot be handed a request (dead,
or never forked) leaves the request to a plain fork, as before.
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
    ignored here, so the factory never waits on a shim and no shim is left a zombie).  What a
    request gets when no spare could take it."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _leave_factory(keep)
            code = _become_shim(argv, ready_fd)
        finally:
            os._exit(code)


def _leave_factory(keep: tuple[int, ...]) -> None:
    """In a fresh child: close the factory's sockets, take back the signals it handles its own way."""
    for fd in keep:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Spare:
    """A child forked ahead of need, blocked on its end of a socketpair until handed a request."""

    def __init__(self, keep: tuple[int, ...]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                _leave_factory(keep)
                code = _wait_for_work(theirs)
            finally:
                os._exit(code)
        theirs.close()
        self.sock, self.pid = ours, pid

    def hand(self, argv: list[str], ready_fd: int) -> bool:
        """Give the spare its shim's argv and readiness fd; False if it cannot take them."""
        try:
            self.sock.sendmsg([json.dumps(argv).encode()],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [ready_fd]))])  # fmt: skip
        except OSError:
            return False
        finally:
            self.sock.close()
        return True


def _wait_for_work(sock: socket.socket) -> int:
    """In the spare: wait for a request (EOF: the factory is gone, so are we), then be its shim."""
    fds = array.array("i")
    try:
        data, ancdata, _, _ = sock.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(fds.itemsize))
    except OSError:
        return 0
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(raw[: len(raw) - (len(raw) % fds.itemsize)])
    if not data or len(fds) != 1:
        return 0
    sock.close()
    return _become_shim(json.loads(data), fds[0])


def _become_shim(argv: list[str], ready_fd: int) -> int:
    """In a fresh child of the factory: fd 3 the readiness pipe, nothing else inherited; run the shim."""
    from actors.shim.__main__ import parse, run

    argv = [*argv, "--ready-fd", "3"]
    if ready_fd != 3:
        os.dup2(ready_fd, 3)
    os.closerange(4, 65536)
    try:
        args = parse(argv)
    except SystemExit as exc:  # bad options: argparse's status, as an exec'd shim would exit
        return exc.code if isinstance(exc.code, int) else 2
    # (run marks the shim's memory mergeable once it has reported ready: see actors.ksm)
    return run(args, forked=True)


def serve(listener: socket.socket) -> None:
    """Serve forever: one shim per connection."""
    # Import everything a shim needs now, so every fork starts warm; parse once to warm argparse too.
    from actors.shim.__main__ import parse

    parse(["--namespace", "n", "--id", "i", "--bundle", "/", "--runtime-root", "/", "--ready-fd", "3"])

    # What the factory holds now lives as long as it does: move it out of the collector's
    # reach (no collection here, which would write to every object).  A full collection in
    # a shim, days into its life, would otherwise write to every object it inherited and
    # turn each of their pages into a private copy: about 5 MB per shim.
    gc.freeze()

    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # shims are reaped by the kernel (see _fork_shim)
    spare: _Spare | None = None
    while True:
        if spare is None:
            with contextlib.suppress(OSError):
                spare = _Spare((listener.fileno(),))
        conn, _ = listener.accept()
        with conn:
            try:
                conn.settimeout(5.0)
                _, uid, _ = peer_credentials(conn)
                if uid not in (0, os.geteuid()):
                    continue
                argv, ready_fd = _receive(conn)
                try:
                    handed, spare = spare is not None and spare.hand(argv, ready_fd), None
                    if not handed:
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
