"""Which cgroup hierarchies a host mounts, and where a task's cgroup sits in each.

runc places a task in ``<mount point>/<cgroupsPath>`` of every hierarchy, so
whatever reads, watches or removes a task's cgroup first needs the same
picture of the host: which v1 controllers are mounted where (several may share
one mount, as "cpu,cpuacct" does on most distributions), and whether a cgroup2
tree exists beside them (hybrid) or alone (v2).  The picture comes from
/proc/self/mountinfo rather than from directory names under /sys/fs/cgroup,
because distributions name and symlink those directories differently
(``cpu -> cpu,cpuacct``) while the mount table says what the kernel bound where.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from actors.errdefs import FailedPrecondition, InvalidArgument

__all__ = ["CGROUP_ROOT", "Mode", "Host", "detect", "task_cgroup_paths", "remove_task_cgroups"]

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")

Mode = Literal["v1", "hybrid", "v2"]

# What the kernel shows among a v1 hierarchy's super options besides its controllers
# (cgroup1_show_options), plus the VFS's rw/ro.  Every other option names a controller, or a named
# hierarchy as "name=<x>"; "key=value" options such as release_agent= are never controllers.
_NOT_CONTROLLERS: Final = frozenset(
    {"rw", "ro", "none", "noprefix", "xattr", "clone_children", "cpuset_v2_mode", "favordynmods"}
)
_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Host:
    """The cgroup hierarchies of this host, as runc will see them.

    ``v1`` maps each v1 controller (and each named hierarchy, as ``name=systemd``)
    to its mount point; co-mounted controllers map to the same directory.
    ``unified`` is the cgroup2 mount point, if any: ``root`` itself on a pure v2
    host, ``root/unified`` on a typical hybrid one.
    """

    mode: Mode
    root: Path
    v1: dict[str, Path]
    unified: Path | None


@dataclass(frozen=True, slots=True)
class _Mount:
    point: Path
    fstype: str
    options: tuple[str, ...]  # the tree's (super) options
    mount_options: str = ""  # the mount's own (rw, nosuid, relatime, ...)


def detect(root: Path = CGROUP_ROOT, mountinfo: str | None = None) -> Host:
    """Read the cgroup layout under ``root`` from ``mountinfo`` (default: /proc/self/mountinfo).

    The host is "v2" when a cgroup2 tree is mounted at ``root`` itself (runc's
    own test, a statfs of /sys/fs/cgroup), "hybrid" when v1 hierarchies and a
    cgroup2 tree sit side by side, and "v1" without any cgroup2 tree.  Mounts
    outside ``root`` are ignored, as runc ignores them; of several mounts of
    one controller the first wins, as in runc.  No cgroup mount at all is a
    FailedPrecondition: nothing could be placed, measured or watched.
    """
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for mount in _cgroup_mounts(mountinfo):
        if mount.point != root and root not in mount.point.parents:
            continue
        if mount.fstype == "cgroup2":
            if unified is None or mount.point == root:
                unified = mount.point
            continue
        for option in mount.options:
            if option in _NOT_CONTROLLERS or ("=" in option and not option.startswith("name=")):
                continue
            v1.setdefault(option, mount.point)
    if unified == root:
        return Host("v2", root, {}, unified)
    if v1:
        return Host("hybrid" if unified is not None else "v1", root, v1, unified)
    if unified is not None:
        return Host("v2", root, {}, unified)
    raise FailedPrecondition(f"no cgroup hierarchy is mounted under {root}")


def _cgroup_mounts(mountinfo: str) -> Iterator[_Mount]:
    """The cgroup and cgroup2 mounts of a mountinfo text (proc(5): optional fields end at a lone "-")."""
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 4 or fields[sep + 1] not in ("cgroup", "cgroup2"):
            continue
        point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        yield _Mount(Path(point), fields[sep + 1], tuple(fields[sep + 3].split(",")), fields[5])


def _parts(cgroups_path: str) -> tuple[str, ...]:
    """The components of a cgroupfs-style ``cgroupsPath``, refused unless it names a cgroup below the root.

    "." and ".." are refused because they would let a task's path climb out of its
    parent; an empty path is refused because it names the root cgroup, which
    nothing here may remove.
    """
    if not cgroups_path.startswith("/") or "\0" in cgroups_path:
        raise InvalidArgument(f"cgroups path {cgroups_path!r} must be absolute")
    parts = tuple(p for p in cgroups_path.split("/") if p)
    if not parts:
        raise InvalidArgument("cgroups path must name a cgroup below the root, not the root itself")
    if any(p in (".", "..") for p in parts):
        raise InvalidArgument(f"cgroups path {cgroups_path!r} must not contain . or ..")
    return parts


def task_cgroup_paths(host: Host, cgroups_path: str) -> dict[str, Path]:
    """The directory of a task's cgroup in every hierarchy: v1 controller -> dir, and "unified" -> v2 dir.

    The directories need not exist (runc may not have created them yet, or
    they were removed already); co-mounted controllers share one directory.
    """
    parts = _parts(cgroups_path)
    paths = {name: mount.joinpath(*parts) for name, mount in host.v1.items()}
    if host.unified is not None:
        paths["unified"] = host.unified.joinpath(*parts)
    return paths


def remove_task_cgroups(host: Host, cgroups_path: str) -> list[Path]:
    """rmdir a task's cgroup in every hierarchy, children first, and return the directories still there.

    Children are included because a container may make cgroups of its own below
    its cgroup (systemd in a container does), and rmdir refuses a parent with
    children.  A directory that still holds a process (EBUSY) or a child that
    could not go (so the parent is ENOTEMPTY) is returned, not raised: the
    caller decides whether to kill, wait and call again.  Already gone counts as
    removed, so calling again is harmless.
    """
    remaining: list[Path] = []
    # Co-mounted controllers map to one directory: visit it once.
    for top in dict.fromkeys(task_cgroup_paths(host, cgroups_path).values()):
        remaining += _rmdir_tree(top)
    return remaining


def _rmdir_tree(top: Path) -> list[Path]:
    """rmdir ``top`` after its subdirectories (post-order); the directories that remain."""
    try:
        with os.scandir(top) as entries:
            children = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    remaining: list[Path] = []
    for child in children:
        remaining += _rmdir_tree(child)
    try:
        os.rmdir(top)
    except FileNotFoundError:
        pass
    except OSError:  # EBUSY: it holds a process; ENOTEMPTY: a child stayed
        remaining.append(top)
    return remaining
