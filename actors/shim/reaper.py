"""The shim's one and only reaper.

The shim is a child subreaper: the container's processes become its children
when runc exits, so something must ``wait`` for them.  Exactly one place does:
``Reaper.reap``, woken by SIGCHLD.  Everything else the shim runs (runc
itself) is started *through* the reaper with a subscription registered under
the same lock as the fork, so the reaper can never take a runc exit status
away from the code that waits for it, and nobody ever sees ECHILD (the race
containerd fixed by routing every exec through its reaper's Start/Wait).

Exits of pids that nobody subscribed to go to the ``on_exit`` callback (the
service matches them to container processes).  An exit that arrives while a
container process is being started, before its pid is known from runc's pid
file, is held until the starter claims it; ``hold``/``release`` bracket such a
start.  Rules that follow: never call ``Popen.wait/poll/communicate`` or
``subprocess.run`` in the shim; ``on_exit`` must not block and must not call
back into the reaper.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["Reaper", "Result", "exit_code", "set_child_subreaper"]

PR_SET_CHILD_SUBREAPER: Final = 36


def set_child_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def exit_code(wait_status: int) -> int:
    """WEXITSTATUS, or 128+signal for a signalled process (the shell's convention)."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


@dataclass(frozen=True, slots=True)
class Result:
    status: int
    stdout: bytes
    stderr: bytes


class _Waiter:
    __slots__ = ("event", "status", "when")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.status = -1
        self.when = 0.0


class Reaper:
    def __init__(self, on_exit: Callable[[int, int, float], bool]) -> None:
        """``on_exit(pid, status, when)`` returns True if it knew the pid."""
        self._on_exit = on_exit
        self.lock = threading.RLock()
        self._waiters: dict[int, _Waiter] = {}
        self._holds = 0
        self._unclaimed: dict[int, tuple[int, float]] = {}
        self._wakeup_r = -1

    # -- installation (main thread, before the first child) ------------------------------------
    def install(self) -> int:
        """Become a subreaper and route SIGCHLD to a pipe; returns the fd to watch."""
        set_child_subreaper()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._wakeup_r = r
        return r

    def drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_r, 4096):
                pass

    # -- the reap loop ---------------------------------------------------------------------------
    def reap(self) -> int:
        """Reap every exited child; returns how many.  Signals coalesce, so loop until none."""
        count = 0
        with self.lock:
            while True:
                try:
                    pid, status, _ = os.wait4(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                count += 1
                code, when = exit_code(status), time.time()
                waiter = self._waiters.pop(pid, None)
                if waiter is not None:
                    waiter.status, waiter.when = code, when
                    waiter.event.set()
                elif not self._on_exit(pid, code, when) and self._holds:
                    self._unclaimed[pid] = (code, when)
        return count

    # -- container process starts ----------------------------------------------------------------
    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Keep exits of unknown pids while a container process is being started."""
        with self.lock:
            self._holds += 1
        try:
            yield
        finally:
            with self.lock:
                self._holds -= 1
                if not self._holds:
                    self._unclaimed.clear()

    def claim(self, pid: int) -> tuple[int, float] | None:
        """The exit of ``pid`` if it was reaped before its owner knew the pid."""
        with self.lock:
            return self._unclaimed.pop(pid, None)

    # -- running helpers (runc) ------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        pass_fds: Sequence[int] = (),
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run ``argv`` to completion through the reaper.

        ``stdin``/``stdout``/``stderr`` given as fds are handed to the child (the
        container's stdio for ``runc create``/``exec``); those left None are pipes
        read here.  On timeout the child is killed and TimeoutError raised.
        """
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        with self.lock:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE
                if input is not None
                else (stdin if stdin is not None else subprocess.DEVNULL),
                stdout=subprocess.PIPE if stdout is None else stdout,
                stderr=subprocess.PIPE if stderr is None else stderr,
                pass_fds=tuple(pass_fds),
                cwd=cwd,
                env=env,
                close_fds=True,
            )
            waiter = _Waiter()
            self._waiters[proc.pid] = waiter
        out, err = _collect(proc, input, timeout)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 1.0)
        if not waiter.event.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            with self.lock:
                if not waiter.event.is_set():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
            waiter.event.wait()
            proc.returncode = waiter.status
            raise TimeoutError(f"{os.path.basename(argv[0])} did not finish within {timeout}s")
        # The status came from the reaper; tell Popen so it never waits itself.
        proc.returncode = waiter.status
        return Result(waiter.status, out, err)


def _collect(
    proc: subprocess.Popen[bytes], input: bytes | None, timeout: float | None
) -> tuple[bytes, bytes]:
    """Write ``input`` and read the stdout/stderr pipes to EOF without ever calling wait()."""
    if proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            if input:
                proc.stdin.write(input)
            proc.stdin.close()
    chunks: dict[int, list[bytes]] = {}
    names: dict[str, int] = {}
    sel = selectors.DefaultSelector()
    try:
        for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
            if stream is not None:
                names[name] = stream.fileno()
                chunks[stream.fileno()] = []
                sel.register(stream.fileno(), selectors.EVENT_READ)
        deadline = None if timeout is None else time.monotonic() + timeout
        while sel.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
    finally:
        sel.close()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    out = b"".join(chunks[names["out"]]) if "out" in names else b""
    err = b"".join(chunks[names["err"]]) if "err" in names else b""
    return out, err
