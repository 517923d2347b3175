"""Building OCI runtime specs (config.json) for busybox-style containers.

A plain function of its arguments: what ``runc spec`` would write, made for a
non-interactive container, with the process, terminal, hostname, env, cgroup
path and namespaces filled in by the caller.  The bundle module writes it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from actors.errdefs import InvalidArgument

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = ["default_spec", "process_spec", "check_spec", "DEFAULT_ENV", "DEFAULT_CAPABILITIES"]

DEFAULT_ENV: Final = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm")
DEFAULT_CAPABILITIES: Final = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip

_MOUNTS: Final[list[dict[str, Any]]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
]  # fmt: skip

_MASKED: Final = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
)  # fmt: skip
_READONLY: Final = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def check_spec(spec: object) -> dict[str, Any]:
    """The least an OCI spec needs before a runtime sees it: a process with args, and a root."""
    if not isinstance(spec, dict):
        raise InvalidArgument("spec must be a map (an OCI runtime spec)")
    process = spec.get("process")
    if not isinstance(process, dict):
        raise InvalidArgument("spec has no process")
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise InvalidArgument("spec.process.args must be a non-empty list of strings")
    root = spec.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str) or not root["path"]:
        raise InvalidArgument("spec.root.path is required")
    return spec


def process_spec(
    args: Sequence[str],
    env: Sequence[str] = (),
    cwd: str = "/",
    terminal: bool = False,
    uid: int = 0,
    gid: int = 0,
) -> dict[str, Any]:
    """An OCI process: used for the init process and for exec."""
    caps = list(DEFAULT_CAPABILITIES)
    return {
        "terminal": terminal,
        "user": {"uid": uid, "gid": gid},
        "args": list(args),
        "env": [*DEFAULT_ENV, *env],
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }


def default_spec(
    args: Sequence[str],
    *,
    hostname: str = "contactor",
    env: Sequence[str] = (),
    cwd: str = "/",
    terminal: bool = False,
    readonly_rootfs: bool = True,
    cgroups_path: str | None = None,
    namespaces: Sequence[str] = ("pid", "ipc", "uts", "mount", "network"),
    resources: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete spec whose rootfs is ``rootfs`` inside the bundle."""
    linux: dict[str, Any] = {
        "namespaces": [{"type": ns} for ns in namespaces],
        "maskedPaths": list(_MASKED),
        "readonlyPaths": list(_READONLY),
        "resources": {"devices": [{"allow": False, "access": "rwm"}], **(resources or {})},
    }
    if cgroups_path is not None:
        linux["cgroupsPath"] = cgroups_path
    return {
        "ociVersion": "1.0.2",
        "process": process_spec(args, env=env, cwd=cwd, terminal=terminal),
        "root": {"path": "rootfs", "readonly": readonly_rootfs},
        "hostname": hostname,
        "mounts": copy.deepcopy(_MOUNTS),
        "linux": linux,
    }
