"""Knowing a process again: pid files that carry the process's start time.

A pid alone is not an identity: after a crash and a restart the pid may
belong to someone else.  The kernel's start time of a process (field 22 of
``/proc/<pid>/stat``, in clock ticks since boot) never changes and is never
shared by two processes with the same pid, so ``<pid> <starttime>`` names one
process for good.  Stdlib only: the shim uses this too.
"""

from __future__ import annotations

import os

__all__ = ["starttime", "pid_file_line", "read_pid_file", "is_alive_process", "is_stopped", "wait_exit"]


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    return raw.rsplit(")", 1)[1].split()


def starttime(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_file_line(pid: int) -> str:
    return f"{pid} {starttime(pid) or 0}\n"


def read_pid_file(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(pid, starttime) from a pid file; starttime 0 when the file predates start times."""
    with open(path) as f:
        parts = f.read().split()
    pid = int(parts[0])
    return pid, int(parts[1]) if len(parts) > 1 else 0


def is_alive_process(pid: int, start: int) -> bool:
    """True if ``pid`` is still the process that started at ``start``, and not a zombie."""
    fields = _stat(pid)
    if not fields or len(fields) <= 19 or fields[0] in ("Z", "X"):
        return False
    return start == 0 or int(fields[19]) == start


def is_stopped(pid: int) -> bool:
    """True if ``pid`` is stopped by a signal (SIGSTOP and the like) or by a tracer."""
    fields = _stat(pid)
    return fields is not None and len(fields) > 0 and fields[0] in ("T", "t")


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits, through a pidfd: it works for a process that is not our child,
    and an exited zombie counts as gone (PID 1 may reap orphans late).  True once it is gone."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
