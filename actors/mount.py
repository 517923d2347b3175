"""Mounting and unmounting a task's rootfs, with the syscalls and nothing else.

The rootfs mounts a client asks for are mounted on ``<bundle>/rootfs`` before
the runtime creates the container and unmounted after it is deleted.  An
unmount that finds the mount busy falls back to a lazy detach, so a delete
always converges (containerd users were stuck on EBUSY forever).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from actors.errdefs import InvalidArgument

__all__ = ["Mount", "mount", "mount_all", "unmount_all", "parse_mounts", "is_mountpoint"]

MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_REMOUNT: Final = 0x20
MS_NOATIME: Final = 0x400
MS_NODIRATIME: Final = 0x800
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 1 << 18
MS_RELATIME: Final = 1 << 21
MS_STRICTATIME: Final = 1 << 24
MNT_DETACH: Final = 2
UMOUNT_NOFOLLOW: Final = 8

_FLAGS: Final = {
    "ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
    "bind": MS_BIND, "rbind": MS_BIND | MS_REC,
}  # fmt: skip
_CLEAR: Final = {"rw": MS_RDONLY, "suid": MS_NOSUID, "dev": MS_NODEV, "exec": MS_NOEXEC}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


@dataclass(frozen=True, slots=True)
class Mount:
    type: str
    source: str
    options: tuple[str, ...] = ()

    def flags_and_data(self) -> tuple[int, str]:
        flags, data = 0, []
        for opt in self.options:
            if opt in _FLAGS:
                flags |= _FLAGS[opt]
            elif opt in _CLEAR:
                flags &= ~_CLEAR[opt]
            else:
                data.append(opt)
        if self.type == "bind":
            flags |= MS_BIND
        return flags, ",".join(data)


def parse_mounts(raw: object) -> list[Mount]:
    """Validate rootfs mounts received over a wire: a list of {type, source, options}."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidArgument("rootfs must be a list of mounts")
    mounts = []
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidArgument("each rootfs mount must be a map")
        mtype, source, options = item.get("type"), item.get("source"), item.get("options", [])
        if not isinstance(mtype, str) or not mtype or not isinstance(source, str) or not source:
            raise InvalidArgument("a rootfs mount needs a type and a source")
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise InvalidArgument("rootfs mount options must be a list of strings")
        is_bind = mtype == "bind" or "bind" in options or "rbind" in options
        if is_bind and not (os.path.isabs(source) and os.path.isdir(source)):
            raise InvalidArgument(f"rootfs source {source!r} is not an existing absolute directory")
        mounts.append(Mount(mtype, source, tuple(options)))
    return mounts


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2); OSError naming what failed."""
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount every entry on ``target`` in order; on failure unmount what was done and raise."""
    done = 0
    try:
        for m in mounts:
            flags, data = m.flags_and_data()
            mount(m.source, target, m.type, flags & ~MS_RDONLY if flags & MS_BIND else flags, data)
            done += 1
            if flags & MS_BIND and flags & MS_RDONLY:
                # A bind mount only becomes read-only through a remount.
                mount("", target, "", MS_REMOUNT | MS_BIND | MS_RDONLY, "")
            if flags & MS_BIND:
                mount("", target, "", MS_PRIVATE | (flags & MS_REC), "")
    except OSError as exc:
        if done:
            unmount_all(target)
        raise InvalidArgument(f"cannot mount rootfs: {exc.strerror}") from None


def is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


def unmount_all(target: str) -> None:
    """Unmount everything stacked on ``target``; a busy mount is detached lazily."""
    for _ in range(64):
        if _libc.umount2(target.encode(), UMOUNT_NOFOLLOW) == 0:
            continue
        err = ctypes.get_errno()
        if err == errno.EBUSY and _libc.umount2(target.encode(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0:
            continue
        if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
            return
        raise OSError(err, f"unmount {target}: {os.strerror(err)}")
