"""Bundles: the on-disk directory of one task, ``<state>/<namespace>/<id>/``.

A bundle holds ``config.json`` (the OCI spec), ``rootfs/`` (the mount point of
the container's root), and what the shim writes there: ``shim.pid``,
``address``, ``init.pid``, ``init.exit``, ``log.json``, ``shim.log``.  A bundle
on disk means a task exists; restore trusts nothing else.

Ids and namespaces are validated before any path is built.  Deletion renames
the bundle to a hidden name first (so a half-deleted bundle is never mistaken
for a task) and never recurses into a rootfs that is still mounted: that would
delete the files of the image it came from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from actors.errdefs import AlreadyExists, FailedPrecondition, NotFound
from actors.identifiers import validate, validate_namespace
from actors.mount import is_mountpoint, unmount_all

__all__ = ["bundle_path", "create_bundle", "delete_bundle", "write_atomic", "read_spec"]


def bundle_path(state_dir: str | os.PathLike[str], namespace: str, cid: str) -> Path:
    return Path(state_dir) / validate_namespace(namespace) / validate(cid, "container id")


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600, sync: bool = True) -> None:
    """Write a file so that readers see the old content or the new one, never a part.

    ``sync=False`` skips the fsync: for a file whose loss in a power cut leaves a state
    that is true anyway (see TaskActor's task.json reservation).
    """
    path = os.fspath(path)
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def create_bundle(state_dir: str | os.PathLike[str], namespace: str, cid: str, spec: dict[str, Any]) -> Path:
    """Make ``<state>/<ns>/<id>`` with config.json and an empty rootfs mount point."""
    path = bundle_path(state_dir, namespace, cid)
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o711)
    except FileExistsError:
        raise AlreadyExists(f"bundle for {namespace}/{cid} already exists") from None
    try:
        (path / "rootfs").mkdir(mode=0o711)
        write_atomic(path / "config.json", json.dumps(spec).encode(), sync=False)  # the state dir is volatile
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def read_spec(bundle: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(Path(bundle) / "config.json", "rb") as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise NotFound(f"bundle {bundle} has no config.json") from None
    if not isinstance(spec, dict):
        raise FailedPrecondition(f"config.json of {bundle} is not an object")
    return spec


def delete_bundle(bundle: str | os.PathLike[str]) -> None:
    """Remove a bundle; its rootfs is unmounted first and never recursed into while mounted."""
    tomb = bury_bundle(bundle)
    if tomb is not None:
        shutil.rmtree(tomb)


def bury_bundle(bundle: str | os.PathLike[str]) -> Path | None:
    """The first half of ``delete_bundle``: the rootfs unmounted, the bundle renamed to a hidden name of
    its own beside it (None if there was none).  The path is free at once for a new bundle of the same
    id; the tomb (never mounted, never restored: see ``sweep_tombs``) is the caller's to remove."""
    path = Path(bundle)
    if not path.exists():
        return None
    rootfs = path / "rootfs"
    unmount_all(str(rootfs))
    if is_mountpoint(str(rootfs)):
        raise FailedPrecondition(f"rootfs {rootfs} is still mounted; not deleting the bundle")
    tomb = path.with_name(f".{path.name}.{os.urandom(4).hex()}")
    os.rename(path, tomb)
    return tomb


def sweep_tombs(state_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove what ``bury_bundle`` left of bundles whose removal was cut short (hidden directories in a
    namespace's directory of the state dir, symlinks never followed); returns what it removed."""
    removed = []
    with contextlib.suppress(OSError):
        for ns_dir in Path(state_dir).iterdir():
            if ns_dir.name.startswith(".") or ns_dir.name == "runc" or ns_dir.is_symlink() or not ns_dir.is_dir():
                continue
            for entry in ns_dir.iterdir():
                if not entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
                    continue
                if not ((entry / "config.json").exists() or (entry / "rootfs").is_dir()):
                    continue
                if not is_mountpoint(str(entry / "rootfs")):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
    return removed
