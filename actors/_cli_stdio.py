"""Attached stdio for the command line: FIFOs in a private directory, relayed to our own stdio."""

from __future__ import annotations

import contextlib
import os
import threading
import time

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from typing import Any


def _private_dir(base: str, prefix: str) -> str:
    """A new directory of ours under ``base`` (tempfile.mkdtemp's job, without tempfile's import)."""
    while True:
        path = os.path.join(base, f"{prefix}{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path


class _Relay:
    """FIFOs for a task's stdio in a private directory, copied to and from our own fds."""

    def __init__(self, state: str, stdin: bool, terminal: bool) -> None:
        base = os.path.join(state, "fifo")
        os.makedirs(base, mode=0o700, exist_ok=True)
        self.dir = _private_dir(base, "io-")
        self.terminal = terminal
        self.paths = {"stdout": os.path.join(self.dir, "stdout")}
        if not terminal:
            self.paths["stderr"] = os.path.join(self.dir, "stderr")
        if stdin:
            self.paths["stdin"] = os.path.join(self.dir, "stdin")
        for path in self.paths.values():
            os.mkfifo(path, 0o600)
        self.threads = [self._copy_out("stdout", 1)]
        if "stderr" in self.paths:
            self.threads.append(self._copy_out("stderr", 2))

    def _copy_out(self, name: str, out: int) -> threading.Thread:
        def run() -> None:
            fd = os.open(self.paths[name], os.O_RDONLY | os.O_CLOEXEC)  # a reader at once
            try:
                while data := os.read(fd, 65536):
                    with contextlib.suppress(OSError):
                        os.write(out, data)
            finally:
                os.close(fd)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def start_stdin(self) -> None:
        if "stdin" not in self.paths:
            return

        def run() -> None:
            fd = os.open(self.paths["stdin"], os.O_WRONLY | os.O_CLOEXEC)
            try:
                while data := os.read(0, 65536):
                    os.write(fd, data)
            except OSError:
                pass
            finally:
                os.close(fd)

        threading.Thread(target=run, daemon=True).start()

    def drain(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def remove(self) -> None:
        for path in self.paths.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


@contextlib.contextmanager


def _raw_terminal(enabled: bool) -> Any:
    if not enabled or not os.isatty(0):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


# -- commands ---------------------------------------------------------------------------------------------
