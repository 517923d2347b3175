"""OOM notifications of one task's cgroup as a plain file descriptor an actor can watch.

A TaskActor waits on many things at once (ThespianWatch over fds), so an
OOM watch must never block and must hand out an fd that becomes readable when
something may have happened; ``read()`` then says how many OOMs that was.

cgroup v1 signals an eventfd registered through ``cgroup.event_control``
against ``memory.oom_control``.  The kernel also signals it once when the
cgroup is removed, so a wakeup is only an OOM while the cgroup still exists;
the open ``memory.oom_control`` fd tells, since reading it after rmdir fails
with ENODEV even if a new cgroup of the same name was made meanwhile.  The
eventfd counts OOM episodes, not kills; ``oom_kills()`` reads the kernel's
kill counter (4.13+) for callers that want kills.

cgroup v2 has no event registration: the kernel raises an inotify IN_MODIFY
on ``memory.events`` when a counter in it changes, and the change in its
``oom_kill`` counter is the number of kills (containerd missed OOMs on newer
kernels by watching the ``oom`` counter instead; that one is only the fallback
for kernels that predate ``oom_kill``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Final, Literal

from actors._cgroup_tree import Host, task_cgroup_paths
from actors.errdefs import FailedPrecondition, Internal, NotFound

__all__ = ["OomWatch"]

_IN_MODIFY: Final = 0x00000002
_INOTIFY_FLAGS: Final = os.O_NONBLOCK | os.O_CLOEXEC  # IN_NONBLOCK and IN_CLOEXEC are these values


class OomWatch:
    """A non-blocking OOM watch on one task's cgroup; make one with ``OomWatch.open``.

    Watch ``fd`` (or the object itself: it has ``fileno``) for readability, then
    call ``read()``.  ``gone`` turns true once ``read()`` has seen the cgroup
    removed; the watch then never reports again and should be closed.  The
    watch owns its fds until ``close()`` (or the end of a ``with`` block).
    """

    kind: ClassVar[Literal["v1", "v2"]]

    def __init__(self, fd: int, source_fd: int, source: Path) -> None:
        self.fd = fd
        self.source = source  # memory.oom_control (v1) or memory.events (v2)
        self._source_fd = source_fd
        self.gone = False
        self.closed = False

    @classmethod
    def open(cls, host: Host, cgroups_path: str) -> OomWatch:
        """Watch the task's memory cgroup: the v1 one if memory is a v1 controller, else the cgroup2 one.

        NotFound when the task's cgroup does not exist; FailedPrecondition when
        the host has no memory controller for it (containerd's
        ErrMemoryNotSupported: the caller may carry on without OOM events).
        """
        paths = task_cgroup_paths(host, cgroups_path)
        if "memory" in host.v1:
            return _V1OomWatch.watch(paths["memory"])
        if "unified" in paths:
            return _V2OomWatch.watch(paths["unified"])
        raise FailedPrecondition("this host mounts no memory controller")

    def fileno(self) -> int:
        return self.fd

    def read(self) -> int:
        """How many OOMs happened since the last read (0 after a spurious wakeup or the cgroup's removal)."""
        if self.closed:
            raise FailedPrecondition(f"OOM watch on {self.source.parent} is closed")
        if self.gone:
            return 0
        return self._read()

    def _read(self) -> int:
        raise NotImplementedError

    def oom_kills(self) -> int | None:
        """The kernel's OOM kill counter of the cgroup, or None when this kernel or a removed cgroup has none."""
        if self.closed:
            raise FailedPrecondition(f"OOM watch on {self.source.parent} is closed")
        text = self._source_text()
        return None if text is None else _oom_kill_count(text)

    def close(self) -> None:
        """Close the fds (which also ends a v1 registration); safe to call twice."""
        if not self.closed:
            self.closed = True
            for fd in (self.fd, self._source_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> OomWatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "gone" if self.gone else f"fd={self.fd}"
        return f"<{type(self).__name__} {self.source.parent} {state}>"

    def _source_text(self) -> str | None:
        """The watched file read through the fd held since open; None once its cgroup is removed.

        The held fd answers for the very cgroup that was opened (ENODEV after
        rmdir, even when a cgroup of the same name exists again); the path
        check covers files that are not cgroupfs ones.
        """
        try:
            data = os.pread(self._source_fd, 65536, 0)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise Internal(f"reading {self.source}: {e.strerror}") from e
        return data.decode() if self.source.exists() else None


class _V1OomWatch(OomWatch):
    kind = "v1"

    @classmethod
    def watch(cls, directory: Path) -> OomWatch:
        with contextlib.ExitStack() as undo:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            undo.callback(os.close, efd)
            control = directory / "memory.oom_control"
            cfd = _open(control, os.O_RDONLY)
            undo.callback(os.close, cfd)
            register = _open(directory / "cgroup.event_control", os.O_WRONLY)
            try:
                os.write(register, f"{efd} {cfd}".encode())
            except OSError as e:
                raise Internal(f"registering for OOM events of {directory}: {e.strerror}") from e
            finally:
                os.close(register)
            watch = cls(efd, cfd, control)
            undo.pop_all()
        return watch

    def _read(self) -> int:
        try:
            count = os.eventfd_read(self.fd)
        except BlockingIOError:  # nothing since the last read
            return 0
        if self._source_text() is None:  # the wakeup was the rmdir (plus any OOM not read before it)
            self.gone = True
            return 0
        return count


class _V2OomWatch(OomWatch):
    kind = "v2"

    def __init__(self, fd: int, source_fd: int, source: Path) -> None:
        super().__init__(fd, source_fd, source)
        text = self._source_text()
        self._last = 0 if text is None else (_oom_kill_count(text) or 0)

    @classmethod
    def watch(cls, directory: Path) -> OomWatch:
        if not directory.is_dir():
            raise NotFound(f"cgroup {directory} does not exist")
        events = directory / "memory.events"
        if not events.exists():
            raise FailedPrecondition(f"the memory controller is not enabled for {directory}")
        with contextlib.ExitStack() as undo:
            ifd = _inotify(events)
            undo.callback(os.close, ifd)
            efd = _open(events, os.O_RDONLY)
            undo.callback(os.close, efd)
            watch = cls(ifd, efd, events)  # reads the baseline count
            undo.pop_all()
        return watch

    def _read(self) -> int:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):  # drain: one read may not take every queued event
                pass
        text = self._source_text()
        if text is None:
            self.gone = True
            return 0
        count = _oom_kill_count(text) or 0
        new, self._last = max(0, count - self._last), count
        return new


def _oom_kill_count(text: str) -> int | None:
    """``oom_kill`` of memory.oom_control or memory.events (``oom`` on v2 kernels before 4.13)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        values[key] = value
    count = values.get("oom_kill", values.get("oom"))
    return int(count) if count is not None else None


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"cgroup {path.parent} does not exist") from None
    except OSError as e:
        raise Internal(f"opening {path}: {e.strerror}") from e


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    return libc


def _inotify(path: Path) -> int:
    """A non-blocking inotify fd watching ``path`` for IN_MODIFY (the stdlib has no inotify)."""
    libc = _libc()
    fd: int = libc.inotify_init1(_INOTIFY_FLAGS)
    if fd < 0:
        err = ctypes.get_errno()
        raise Internal(f"inotify_init1: {os.strerror(err)}")
    if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        if err == errno.ENOENT:
            raise NotFound(f"cgroup {path.parent} does not exist")
        raise Internal(f"watching {path}: {os.strerror(err)}")
    return fd
