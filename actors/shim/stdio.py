"""Standard I/O of container processes.

Without a terminal, stdout and stderr are handed straight to the process:
the file or FIFO named by the client is opened here and becomes the
process's own fd, so output costs no copying and survives the shim.  stdin
goes through a pipe fed by a copier thread, because ``close_io`` must be able
to give the process EOF while the client keeps its FIFO open.

With a terminal, runc sends the pty master through a console socket; the
shim copies stdin to it and it to stdout, and ``resize_pty`` sets its size.

No lock is held while a FIFO is opened: an open that waits for a reader is
bounded by ``OPEN_TIMEOUT`` and happens in the caller's own thread.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import socket
import stat
import struct
import termios
import threading
import time
from collections.abc import Callable
from typing import Final

from actors.errdefs import FailedPrecondition, InvalidArgument, NotFound

__all__ = ["ProcessIO", "OPEN_TIMEOUT"]

OPEN_TIMEOUT: Final = 10.0


def _check_path(path: str, what: str) -> None:
    if not os.path.isabs(path):
        raise InvalidArgument(f"{what} path {path!r} must be absolute")


def open_output(path: str, what: str) -> int:
    """An fd for writing to ``path``: /dev/null if empty, a FIFO once it has a reader, or a file."""
    if not path:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    _check_path(path, what)
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        is_fifo = False
    if not is_fifo:
        try:
            # Symlinks are followed: the client may name /proc/<pid>/fd/1, its own stdout.
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise InvalidArgument(f"cannot open {what} {path!r}: {exc.strerror}") from None
    deadline = time.monotonic() + OPEN_TIMEOUT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise InvalidArgument(f"cannot open {what} {path!r}: {exc.strerror}") from None
            if time.monotonic() > deadline:
                raise FailedPrecondition(
                    f"{what} fifo {path!r} has no reader after {OPEN_TIMEOUT:.0f}s"
                ) from None
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd


def open_input(path: str) -> tuple[int, bool]:
    """(fd, is_fifo) for reading stdin; a FIFO is opened without waiting for a writer."""
    _check_path(path, "stdin")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise NotFound(f"stdin {path!r} does not exist") from None
    if stat.S_ISFIFO(mode):
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), True
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
    except OSError as exc:
        raise InvalidArgument(f"cannot open stdin {path!r}: {exc.strerror}") from None


def _nothing() -> None:
    pass


class _Stop:
    """A pipe that wakes copier threads blocked in poll when the I/O is closed."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC)

    def fire(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.w, b"x")

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _copy(src: int, dst: int, done: Callable[[], None], stop: int) -> None:
    """Copy src to dst until EOF, an error, or ``stop`` becomes readable; then call ``done``."""
    poller = select.poll()
    poller.register(src, select.POLLIN)
    poller.register(stop, select.POLLIN)
    try:
        while True:
            events = dict(poller.poll())
            if stop in events:
                return
            try:
                data = os.read(src, 65536)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the pty's last slave closed
                return
            if not data:
                return
            view = memoryview(data)
            while view:
                try:
                    n = os.write(dst, view)
                except BlockingIOError:
                    select.select([], [dst], [], 1.0)
                    continue
                except OSError:
                    return
                view = view[n:]
    finally:
        done()


class ProcessIO:
    """The stdio of one process, from open to close.  Owned by its Process."""

    def __init__(self, stdin: str, stdout: str, stderr: str, terminal: bool) -> None:
        self.terminal = terminal
        self._stop = _Stop()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._lock = threading.Lock()
        self._stdin_w: int | None = None
        self.master: int | None = None
        # fds handed to the runtime; closed here once the runtime call returned.
        self.child_fds: list[int] = []
        self._own: list[int] = []
        self._stdin_path = stdin
        self._stdout_path = stdout
        self._stderr_path = stderr
        self.child_stdin = self.child_stdout = self.child_stderr = -1

    def open(self) -> None:
        """Open everything the runtime needs before create/exec.  Rolls back on failure."""
        try:
            if self.terminal:
                self.child_stdin = self._null(os.O_RDONLY)
                self.child_stdout = self._null(os.O_WRONLY)
                self.child_stderr = self.child_stdout
                self._term_out = open_output(self._stdout_path, "stdout")
                self._own.append(self._term_out)
                if self._stdin_path:
                    self._term_in, _ = open_input(self._stdin_path)
                    self._own.append(self._term_in)
                return
            self.child_stdout = open_output(self._stdout_path, "stdout")
            self.child_fds.append(self.child_stdout)
            if self._stderr_path and self._stderr_path == self._stdout_path:
                self.child_stderr = self.child_stdout
            else:
                self.child_stderr = open_output(self._stderr_path, "stderr")
                self.child_fds.append(self.child_stderr)
            if not self._stdin_path:
                self.child_stdin = self._null(os.O_RDONLY)
                return
            src, is_fifo = open_input(self._stdin_path)
            if not is_fifo:
                self.child_stdin = src
                self.child_fds.append(src)
                return
            self._own.append(src)
            r, w = os.pipe2(os.O_CLOEXEC)
            self.child_stdin = r
            self.child_fds.append(r)
            self._stdin_w = w
            self._start(_copy, src, w, self.close_stdin)
        except BaseException:
            self.close()
            raise

    def _null(self, flags: int) -> int:
        fd = os.open(os.devnull, flags | os.O_CLOEXEC)
        self.child_fds.append(fd)
        return fd

    def _start(self, fn: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=fn, args=(*args, self._stop.r), daemon=True)
        t.start()
        self._threads.append(t)

    def release_child_fds(self) -> None:
        """After the runtime started the process it holds its own copies; drop ours."""
        for fd in set(self.child_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child_fds.clear()

    def attach_console(self, listener: socket.socket, timeout: float) -> None:
        """Receive the pty master from runc and start copying."""
        listener.settimeout(timeout)
        conn, _ = listener.accept()
        with conn:
            fds = array.array("i")
            _, ancdata, _, _ = conn.recvmsg(1024, socket.CMSG_SPACE(fds.itemsize))
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        if not fds:
            raise FailedPrecondition("runtime sent no console over the console socket")
        self.master = fds[0]
        os.set_inheritable(self.master, False)
        self._own.append(self.master)
        self._start(_copy, self.master, self._term_out, _nothing)
        if self._stdin_path:
            self._start(_copy, self._term_in, self.master, _nothing)

    def resize(self, width: int, height: int) -> None:
        if self.master is None:
            return
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def close_stdin(self) -> None:
        with self._lock:
            w, self._stdin_w = self._stdin_w, None
        if w is not None:
            with contextlib.suppress(OSError):
                os.close(w)
        if self.terminal and self.master is not None:
            # EOF on a terminal is the EOF character, as a user would type it.
            with contextlib.suppress(OSError):
                os.write(self.master, b"\x04")

    def wait_copied(self, timeout: float) -> None:
        """Let output copiers drain after the process exited (bounded)."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.fire()
        for t in self._threads:
            t.join(1.0)
        self.close_stdin()
        self.release_child_fds()
        for fd in self._own:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._own.clear()
        self._stop.close()
