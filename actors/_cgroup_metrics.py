"""A task's resource usage, read from its cgroup files into one shape on v1 and v2.

Consumers (the metrics reply, the Prometheus text) must not care which cgroup
version a host runs, so both versions are mapped onto the same field names and
units: nanoseconds for time, bytes for memory and I/O, plain counts otherwise.
A field the host cannot provide is left out rather than reported as zero,
because a zero is a measurement ("no throttling happened") and an absence is
not ("this kernel does not count throttling"); an unlimited limit is left out
for the same reason, since no number means "unlimited" in every consumer.

For every controller the v1 directory is read when the controller is mounted
as v1 and the task's directory exists there, else the task's cgroup2
directory: a controller is bound to one hierarchy at a time, and cgroup2's
core cpu.stat gives CPU usage even where no controller is enabled.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from actors._cgroup_tree import Host, task_cgroup_paths
from actors.errdefs import Internal, NotFound

__all__ = ["read_metrics"]

_Reader = Callable[[Path], dict[str, int]]

# v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes (2**63 - 4096 on x86-64); any value this
# large is no limit a container could have been given.
_UNLIMITED: Final = 2**62
_NS_PER_USEC: Final = 1000

# cgroup2 cpu.stat key -> (our field, factor to nanoseconds or 1)
_V2_CPU: Final = {
    "usage_usec": ("usage_total", _NS_PER_USEC),
    "user_usec": ("usage_user", _NS_PER_USEC),
    "system_usec": ("usage_system", _NS_PER_USEC),
    "nr_periods": ("periods", 1),
    "nr_throttled": ("throttled_periods", 1),
    "throttled_usec": ("throttled_time", _NS_PER_USEC),
}
_V1_CPU_STAT: Final = {
    "nr_periods": "periods",
    "nr_throttled": "throttled_periods",
    "throttled_time": "throttled_time",
}
_V2_IO: Final = {"rbytes": "read_bytes", "wbytes": "write_bytes", "rios": "read_ops", "wios": "write_ops"}

# blkio files, best first.  The recursive ones count the task's sub-cgroups too, as cpuacct.usage,
# memory.stat's total_* and cgroup2's io.stat do; the throttle files are kept by every kernel, the
# plain ones only under the CFQ scheduler (gone since 5.0).
_BLKIO_BYTES: Final = (
    "blkio.throttle.io_service_bytes_recursive",
    "blkio.throttle.io_service_bytes",
    "blkio.io_service_bytes_recursive",
)
_BLKIO_OPS: Final = (
    "blkio.throttle.io_serviced_recursive",
    "blkio.throttle.io_serviced",
    "blkio.io_serviced_recursive",
)


def read_metrics(host: Host, cgroups_path: str) -> dict[str, Any]:
    """The task's metrics: ``{"cpu": {...}, "memory": {...}, "pids": {...}, "io": {...}}``.

    cpu: usage_total, usage_user, usage_system, throttled_time (ns); periods, throttled_periods.
    memory: usage, limit, max_usage, rss, cache (bytes); oom_kills.
    pids: current, limit.  io: read_bytes, write_bytes, read_ops, write_ops (summed over devices).
    Missing files leave their fields out, and a group with no field is left out.
    NotFound when the task has a cgroup directory in no hierarchy.
    """
    paths = task_cgroup_paths(host, cgroups_path)
    if not any(p.is_dir() for p in paths.values()):
        raise NotFound(f"cgroup {cgroups_path} does not exist")
    unified = paths.get("unified")
    v2 = unified if unified is not None and unified.is_dir() else None

    def source(controller: str) -> tuple[Path | None, bool]:
        """The directory to read ``controller`` from, and whether it is a v1 one."""
        if controller in host.v1 and paths[controller].is_dir():
            return paths[controller], True
        return v2, False

    # group -> (controller, how to read it from a v1 directory, how from a cgroup2 one)
    readers: dict[str, list[tuple[str, _Reader, _Reader]]] = {
        "cpu": [("cpuacct", _v1_cpu_usage, _v2_cpu_usage), ("cpu", _v1_cpu_throttling, _v2_cpu_throttling)],
        "memory": [("memory", _v1_memory, _v2_memory)],
        "pids": [("pids", _pids, _pids)],
        "io": [("blkio", _v1_io, _v2_io)],
    }
    metrics: dict[str, Any] = {}
    for group, parts in readers.items():
        fields: dict[str, int] = {}
        for controller, read_v1, read_v2 in parts:
            directory, is_v1 = source(controller)
            if directory is not None:
                fields.update(read_v1(directory) if is_v1 else read_v2(directory))
        if fields:
            metrics[group] = fields
    return metrics


# -- v1 ----------------------------------------------------------------------------------------------------


def _v1_cpu_usage(d: Path) -> dict[str, int]:
    out = _pick({"usage_total": _number(d / "cpuacct.usage")})
    user, system = _number(d / "cpuacct.usage_user"), _number(d / "cpuacct.usage_sys")
    if user is None or system is None:
        # Kernels before 4.7 have only cpuacct.stat, in USER_HZ ticks.
        stat = _flat(d / "cpuacct.stat")
        tick = 10**9 // os.sysconf("SC_CLK_TCK")
        user = stat["user"] * tick if "user" in stat else None
        system = stat["system"] * tick if "system" in stat else None
    return out | _pick({"usage_user": user, "usage_system": system})


def _v1_cpu_throttling(d: Path) -> dict[str, int]:
    stat = _flat(d / "cpu.stat")
    return {ours: stat[theirs] for theirs, ours in _V1_CPU_STAT.items() if theirs in stat}


def _v1_memory(d: Path) -> dict[str, int]:
    limit = _number(d / "memory.limit_in_bytes")
    stat = _flat(d / "memory.stat")
    oom = _flat(d / "memory.oom_control")  # the oom_kill line came with 4.13
    return _pick(
        {
            "usage": _number(d / "memory.usage_in_bytes"),
            "limit": limit if limit is not None and limit < _UNLIMITED else None,
            "max_usage": _number(d / "memory.max_usage_in_bytes"),
            # total_* include sub-cgroups (with use_hierarchy, always on since 5.x); older files lack them.
            "rss": stat.get("total_rss", stat.get("rss")),
            "cache": stat.get("total_cache", stat.get("cache")),
            "oom_kills": oom.get("oom_kill"),
        }
    )


def _v1_io(d: Path) -> dict[str, int]:
    out: dict[str, int | None] = {}
    kinds = ((_BLKIO_BYTES, "read_bytes", "write_bytes"), (_BLKIO_OPS, "read_ops", "write_ops"))
    for names, read_field, write_field in kinds:
        totals = next((t for t in map(_blkio, (d / n for n in names)) if t is not None), None)
        if totals is not None:
            out[read_field], out[write_field] = totals.get("Read", 0), totals.get("Write", 0)
    return _pick(out)


# -- v2 ----------------------------------------------------------------------------------------------------


def _v2_cpu_usage(d: Path) -> dict[str, int]:
    return _v2_cpu(d, ("usage_usec", "user_usec", "system_usec"))


def _v2_cpu_throttling(d: Path) -> dict[str, int]:
    return _v2_cpu(d, ("nr_periods", "nr_throttled", "throttled_usec"))


def _v2_cpu(d: Path, keys: tuple[str, ...]) -> dict[str, int]:
    stat = _flat(d / "cpu.stat")
    return {_V2_CPU[k][0]: stat[k] * _V2_CPU[k][1] for k in keys if k in stat}


def _v2_memory(d: Path) -> dict[str, int]:
    stat = _flat(d / "memory.stat")
    return _pick(
        {
            "usage": _number(d / "memory.current"),
            "limit": _number(d / "memory.max"),
            "max_usage": _number(d / "memory.peak"),  # since 5.19
            "rss": stat.get("anon"),
            "cache": stat.get("file"),
            "oom_kills": _flat(d / "memory.events").get("oom_kill"),
        }
    )


def _v2_io(d: Path) -> dict[str, int]:
    text = _read(d / "io.stat")
    if text is None:
        return {}
    out = dict.fromkeys(_V2_IO.values(), 0)
    for line in text.splitlines():
        for item in line.split()[1:]:  # "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0"
            key, _, value = item.partition("=")
            if key in _V2_IO:
                out[_V2_IO[key]] += int(value)
    return out


# -- both --------------------------------------------------------------------------------------------------


def _pids(d: Path) -> dict[str, int]:
    return _pick({"current": _number(d / "pids.current"), "limit": _number(d / "pids.max")})


# -- file formats ------------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    """The text of a cgroup file, or None when it does not exist (any more).

    ENODEV is what reading gives when the cgroup is removed between open and
    read; that is "gone", like ENOENT.  Other errors are not absences and are
    raised as Internal.
    """
    try:
        return path.read_text()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV, errno.ENOTDIR):
            return None
        raise Internal(f"reading {path}: {e.strerror}") from e


def _number(path: Path) -> int | None:
    """A single-value file; "max" (cgroup2's no-limit) reads as None."""
    text = _read(path)
    if text is None or text.strip() in ("", "max"):
        return None
    return int(text.strip())


def _flat(path: Path) -> dict[str, int]:
    """A flat-keyed file ("key value" per line), e.g. memory.stat or cpu.stat."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _blkio(path: Path) -> dict[str, int] | None:
    """A v1 blkio stat file summed over devices by operation ("8:0 Read 4096"); None when absent."""
    text = _read(path)
    if text is None:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3:  # skips the final "Total <n>" line
            out[fields[1]] = out.get(fields[1], 0) + int(fields[2])
    return out


def _pick(values: Mapping[str, int | None]) -> dict[str, int]:
    """Drop the fields that could not be read, so absence stays visible."""
    return {k: v for k, v in values.items() if v is not None}
