"""The cgroup2 ``favordynmods`` mount option: moving a process between cgroups without an RCU wait.

Every task start moves a process into a new cgroup (runc writes its init's pid to
``cgroup.procs``), and each such move takes the kernel's global
``cgroup_threadgroup_rwsem`` for writing.  By default that lock is a per-CPU
rwsem tuned for fork and exit: a writer waits out an RCU grace period first,
unless another writer came through shortly before.  On this kind of 2-core host
that wait is 8-10 ms of every ``runc create`` that follows a quiet moment (raw
``runc create`` 25 -> 17 ms after an idle 100 ms, and the same inside a shim),
which is most creates outside a benchmark's tight loop.

``favordynmods`` (cgroup2, Linux 6.0+) keeps that lock in its slow mode for good:
no grace period on a move, at the cost of an atomic operation on every fork and
exit (cgroup-v2.rst: "at the cost of making hot path operations such as forks
and exits more expensive").  The lock is global, so setting the option on the
cgroup2 mount of a hybrid host serves the v1 hierarchies too.  v1 hierarchies
cannot take it on a remount (the kernel refuses changed flags there), so a
host without a cgroup2 mount keeps the default.

A remount of cgroup2 sets its root flags to exactly the options given (``nsdelegate``
and the ``memory_*`` ones would be cleared if left out), and a legacy remount
sets the mount's own flags (nosuid, nodev, ...) to those given, so both are
carried over from the mount table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from actors._cgroup_tree import CGROUP_ROOT, _cgroup_mounts
from actors.mount import (
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_RELATIME,
    MS_REMOUNT,
    MS_STRICTATIME,
    mount,
)

__all__ = ["OPTION", "remount_request", "favor_dynmods"]

OPTION: Final = "favordynmods"

# A mount's own options (mountinfo's sixth field) as mount(2) flags; "rw" and the rest need none.
_MOUNT_FLAGS: Final = {
    "ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME,
}  # fmt: skip


def remount_request(mount_options: str, super_options: str, favor: bool = True) -> tuple[int, str]:
    """The mount(2) flags and data that remount a cgroup2 tree with its options as they are,
    ``favordynmods`` added (or, with ``favor`` False, taken away)."""
    flags = MS_REMOUNT
    for option in mount_options.split(","):
        flags |= _MOUNT_FLAGS.get(option, 0)
    keep = [o for o in super_options.split(",") if o and o not in ("rw", "ro", OPTION)]
    return flags, ",".join([*keep, OPTION] if favor else keep)


def _cgroup2_mount(root: Path, mountinfo: str) -> tuple[Path, str, str] | None:
    """The cgroup2 mount under ``root`` (``root`` itself first): its point, mount and super options."""
    found: tuple[Path, str, str] | None = None
    for m in _cgroup_mounts(mountinfo):
        under = m.point == root or root in m.point.parents
        if m.fstype == "cgroup2" and under and (found is None or m.point == root):
            found = (m.point, m.mount_options, ",".join(m.options))
    return found


def favor_dynmods(favor: bool = True, root: Path = CGROUP_ROOT, mountinfo: str | None = None) -> str:
    """Set (or clear) ``favordynmods`` on the host's cgroup2 mount; what happened, in a word or a line:
    "set", "cleared", "already", or why it could not be."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    found = _cgroup2_mount(root, mountinfo)
    if found is None:
        return f"no cgroup2 mount under {root}"
    point, mount_options, super_options = found
    if (OPTION in super_options.split(",")) == favor:
        return "already"
    flags, data = remount_request(mount_options, super_options, favor)
    try:
        mount("cgroup2", str(point), "cgroup2", flags, data)
    except OSError as exc:
        return f"remount of {point} failed: {os.strerror(exc.errno or 0)}"
    return "set" if favor else "cleared"
