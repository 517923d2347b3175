"""A task's cgroups: where they live, what they measure, their OOMs, and removing them.

A task's cgroup is ``<parent>/<namespace>/<id>`` in every hierarchy (each v1
controller, and the v2 tree mounted at ``unified`` on a hybrid host).  This
module is the functional core the TaskActor (OOM watches, removal) and the
MonitorActor (metrics) build on: ``detect`` describes the host once,
``task_cgroup_paths`` places a task in it, ``read_metrics`` reads usage in one
shape on v1 and v2, ``OomWatch`` turns OOMs into an fd an actor can poll, and
``remove_task_cgroups`` removes a task's cgroups with any children.  The runtime
removes the task's own directory on delete; the namespace and parent directories
above it are removed here once they are empty.  ``rmdir`` of a non-empty cgroup
fails, so this never touches a cgroup still in use.

The machinery sits in private modules, one concern each: ``_cgroup_tree``
(mounts and paths), ``_cgroup_metrics`` (file formats) and ``_cgroup_oom``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from actors._cgroup_metrics import read_metrics
from actors._cgroup_oom import OomWatch
from actors._cgroup_tree import CGROUP_ROOT, Host, Mode, detect, remove_task_cgroups, task_cgroup_paths

__all__ = [
    "CGROUP_ROOT",
    "Host",
    "Mode",
    "detect",
    "task_cgroup_paths",
    "read_metrics",
    "OomWatch",
    "remove_task_cgroups",
    "placement",
    "hierarchies",
    "remove_empty_parents",
]


def placement(driver: str, parent: str, namespace: str, cid: str) -> str:
    """Where a task's cgroup goes: ``<parent>/<namespace>/<id>`` for cgroupfs; for the systemd
    driver, runc's ``slice:prefix:name`` form (a scope ``contactor-<namespace>-<id>.scope``)."""
    if driver == "systemd":
        return f"{parent}:contactor-{namespace}:{cid}"
    return f"{parent.rstrip('/')}/{namespace}/{cid}"


def hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """Mount points of every cgroup hierarchy under ``root`` (one for pure v2)."""
    if (root / "cgroup.controllers").exists():
        return [root]
    with contextlib.suppress(OSError):
        return [p for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink()]
    return []


def remove_empty_parents(cgroups_path: str, keep: int = 0, root: Path = CGROUP_ROOT) -> None:
    """rmdir the directories of ``cgroups_path`` from the leaf up, in every hierarchy, while empty.

    ``keep`` top components are left in place.  The leaf itself is included, so a
    cgroup the runtime failed to remove goes too, if it holds no process.
    """
    parts = [p for p in cgroups_path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"cgroup path {cgroups_path!r} must not contain . or ..")
    for hierarchy in hierarchies(root):
        for depth in range(len(parts), keep, -1):
            try:
                os.rmdir(hierarchy.joinpath(*parts[:depth]))
            except FileNotFoundError:
                continue
            except OSError:  # busy or not empty: so are its parents
                break
