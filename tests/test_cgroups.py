"""cgroups: host detection, task paths, metrics in one shape on v1 and v2, OOM watches, removal.

The first half specifies the functional core on fake cgroup trees written
under tmp_path (file formats as the kernel prints them) and on mountinfo texts
of real distributions.  The second half runs on this machine's real cgroup v1
hierarchies as root: real processes are moved into ``/contactor-test-<uuid>``
cgroups, one of them is OOM-killed for real, and every test removes its
processes and cgroups in a finalizer, also when it fails.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for, wait_pid_gone

from actors.cgroups import (
    CGROUP_ROOT,
    Host,
    OomWatch,
    detect,
    hierarchies,
    read_metrics,
    remove_task_cgroups,
    task_cgroup_paths,
)
from actors.errdefs import FailedPrecondition, InvalidArgument, NotFound

TASK = "/contactor/ns/task1"
MiB = 2**20
V1_UNLIMITED = "9223372036854771712\n"  # what memory.limit_in_bytes says when no limit is set (x86-64)


def write_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def mountinfo_line(n: int, point: Path | str, fstype: str, options: str) -> str:
    return f"{n} 25 0:{n} / {point} rw,nosuid,nodev,noexec,relatime shared:{n} - {fstype} {fstype} {options}"


def v1_host(root: Path, *, comounted: bool = True, unified: bool = False) -> Host:
    """A fake v1 (or hybrid) host under ``root``, described by a mountinfo text as the kernel writes it."""
    cpu = ["cpu,cpuacct"] if comounted else ["cpu", "cpuacct"]
    lines = [f"25 1 0:20 / {root} rw - tmpfs tmpfs rw,mode=755"]
    for n, name in enumerate([*cpu, "memory", "pids", "blkio"], start=30):
        lines.append(mountinfo_line(n, root / name, "cgroup", f"rw,{name}"))
    if unified:
        lines.append(mountinfo_line(40, root / "unified", "cgroup2", "rw,nsdelegate"))
    return detect(root, "\n".join(lines) + "\n")


def v2_host(root: Path) -> Host:
    return detect(root, mountinfo_line(30, root, "cgroup2", "rw,nsdelegate,memory_recursiveprot") + "\n")


V1_FILES: dict[str, dict[str, str]] = {
    "cpu,cpuacct": {
        "cpuacct.usage": "123456789\n",
        "cpuacct.usage_user": "100000000\n",
        "cpuacct.usage_sys": "20000000\n",
        "cpuacct.stat": "user 10\nsystem 2\n",
        "cpu.stat": "nr_periods 10\nnr_throttled 3\nthrottled_time 4500\nnr_bursts 0\nburst_time 0\n",
    },
    "memory": {
        "memory.usage_in_bytes": "1048576\n",
        "memory.limit_in_bytes": "16777216\n",
        "memory.max_usage_in_bytes": "2097152\n",
        "memory.stat": "cache 100\nrss 200\nrss_huge 0\nshmem 0\nmapped_file 0\n"
        "hierarchical_memory_limit 16777216\ntotal_cache 4096\ntotal_rss 8192\ntotal_rss_huge 0\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    },
    "pids": {"pids.current": "3\n", "pids.max": "64\n"},
    "blkio": {
        "blkio.throttle.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 8192\n8:0 Async 4096\n"
        "8:0 Discard 0\n8:0 Total 12288\n8:16 Read 100\n8:16 Write 0\n8:16 Total 100\nTotal 12388\n",
        "blkio.throttle.io_serviced_recursive": "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\n8:16 Read 4\n8:16 Write 5\n"
        "8:16 Total 9\nTotal 12\n",
    },
}

V2_FILES: dict[str, str] = {
    "cgroup.procs": "",
    "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 7\nnr_throttled 2\n"
    "throttled_usec 30\nnr_bursts 0\nburst_usec 0\n",
    "memory.current": "1048576\n",
    "memory.max": "33554432\n",
    "memory.peak": "2097152\n",
    "memory.stat": "anon 8192\nfile 4096\nkernel 512\nshmem 0\n",
    "memory.events": "low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\noom_group_kill 0\n",
    "pids.current": "3\n",
    "pids.max": "64\n",
    "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
    "259:0 rbytes=100 wbytes=0 rios=4 wios=5 dbytes=0 dios=0\n",
}

EXPECTED = {
    "cpu": {
        "usage_total": 123456789,
        "usage_user": 100000000,
        "usage_system": 20000000,
        "periods": 10,
        "throttled_periods": 3,
        "throttled_time": 4500,
    },
    "memory": {
        "usage": MiB,
        "limit": 16 * MiB,
        "max_usage": 2 * MiB,
        "rss": 8192,
        "cache": 4096,
        "oom_kills": 2,
    },
    "pids": {"current": 3, "limit": 64},
    "io": {"read_bytes": 4196, "write_bytes": 8192, "read_ops": 5, "write_ops": 7},
}


def make_v1_task(root: Path, files: dict[str, dict[str, str]] = V1_FILES) -> Host:
    host = v1_host(root)
    for mount, content in files.items():
        write_files(root / mount / TASK.lstrip("/"), content)
    return host


# -- read_metrics on fake trees ----------------------------------------------------------------------------


def test_v1_metrics_map_every_source_file_to_its_field(tmp_path: Path) -> None:
    assert read_metrics(make_v1_task(tmp_path), TASK) == EXPECTED


def test_v2_metrics_have_the_same_fields_in_the_same_units_as_v1(tmp_path: Path) -> None:
    host = v2_host(tmp_path)
    write_files(tmp_path / TASK.lstrip("/"), V2_FILES)
    assert read_metrics(host, TASK) == {
        "cpu": {
            "usage_total": 1_500_000,
            "usage_user": 1_000_000,
            "usage_system": 500_000,
            "periods": 7,
            "throttled_periods": 2,
            "throttled_time": 30_000,
        },
        "memory": {
            "usage": MiB,
            "limit": 32 * MiB,
            "max_usage": 2 * MiB,
            "rss": 8192,
            "cache": 4096,
            "oom_kills": 1,
        },
        "pids": {"current": 3, "limit": 64},
        "io": {"read_bytes": 4196, "write_bytes": 8192, "read_ops": 5, "write_ops": 7},
    }


def test_v1_unlimited_memory_and_pids_limits_are_absent_not_zero(tmp_path: Path) -> None:
    files = {k: dict(v) for k, v in V1_FILES.items()}
    files["memory"]["memory.limit_in_bytes"] = V1_UNLIMITED
    files["pids"]["pids.max"] = "max\n"
    metrics = read_metrics(make_v1_task(tmp_path, files), TASK)
    assert "limit" not in metrics["memory"] and "limit" not in metrics["pids"]
    assert metrics["memory"]["usage"] == MiB and metrics["pids"]["current"] == 3


def test_v2_max_limits_are_absent_not_zero(tmp_path: Path) -> None:
    host = v2_host(tmp_path)
    write_files(tmp_path / TASK.lstrip("/"), V2_FILES | {"memory.max": "max\n", "pids.max": "max\n"})
    metrics = read_metrics(host, TASK)
    assert "limit" not in metrics["memory"] and "limit" not in metrics["pids"]


def test_v1_cpuacct_stat_ticks_become_nanoseconds_on_kernels_without_usage_user(tmp_path: Path) -> None:
    files = {k: dict(v) for k, v in V1_FILES.items()}
    del files["cpu,cpuacct"]["cpuacct.usage_user"], files["cpu,cpuacct"]["cpuacct.usage_sys"]
    cpu = read_metrics(make_v1_task(tmp_path, files), TASK)["cpu"]
    tick = 10**9 // os.sysconf("SC_CLK_TCK")
    assert (cpu["usage_user"], cpu["usage_system"]) == (10 * tick, 2 * tick)
    assert cpu["usage_total"] == 123456789


def test_v1_memory_stat_without_hierarchical_totals_uses_the_local_counters(tmp_path: Path) -> None:
    files = {k: dict(v) for k, v in V1_FILES.items()}
    files["memory"]["memory.stat"] = "cache 100\nrss 200\n"
    memory = read_metrics(make_v1_task(tmp_path, files), TASK)["memory"]
    assert (memory["rss"], memory["cache"]) == (200, 100)


@pytest.mark.parametrize(
    "names",
    [
        ("blkio.throttle.io_service_bytes", "blkio.throttle.io_serviced"),
        ("blkio.io_service_bytes_recursive", "blkio.io_serviced_recursive"),
    ],
)
def test_v1_io_falls_back_to_the_other_blkio_files(tmp_path: Path, names: tuple[str, str]) -> None:
    files = {k: dict(v) for k, v in V1_FILES.items()}
    blkio = files["blkio"]
    files["blkio"] = {
        names[0]: blkio.pop("blkio.throttle.io_service_bytes_recursive"),
        names[1]: blkio.pop("blkio.throttle.io_serviced_recursive"),
    }
    assert read_metrics(make_v1_task(tmp_path, files), TASK)["io"] == EXPECTED["io"]


def test_no_io_yet_reads_as_zero_because_the_files_exist(tmp_path: Path) -> None:
    files = {k: dict(v) for k, v in V1_FILES.items()}
    files["blkio"] = {name: "Total 0\n" for name in V1_FILES["blkio"]}
    assert read_metrics(make_v1_task(tmp_path, files), TASK)["io"] == dict.fromkeys(EXPECTED["io"], 0)
    host = v2_host(tmp_path / "v2")
    write_files(tmp_path / "v2" / TASK.lstrip("/"), V2_FILES | {"io.stat": ""})
    assert read_metrics(host, TASK)["io"] == dict.fromkeys(EXPECTED["io"], 0)


def test_v1_kernel_without_oom_kill_counter_leaves_oom_kills_out(tmp_path: Path) -> None:
    files = {k: dict(v) for k, v in V1_FILES.items()}
    files["memory"]["memory.oom_control"] = "oom_kill_disable 0\nunder_oom 0\n"  # before 4.13
    assert "oom_kills" not in read_metrics(make_v1_task(tmp_path, files), TASK)["memory"]


def test_v2_without_cpu_controller_or_memory_peak_leaves_those_fields_out(tmp_path: Path) -> None:
    host = v2_host(tmp_path)
    files = dict(V2_FILES, **{"cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"})
    del files["memory.peak"]  # before 5.19
    write_files(tmp_path / TASK.lstrip("/"), files)
    metrics = read_metrics(host, TASK)
    assert metrics["cpu"] == {"usage_total": 1_500_000, "usage_user": 1_000_000, "usage_system": 500_000}
    assert "max_usage" not in metrics["memory"]


def test_a_hierarchy_without_the_task_leaves_its_group_out(tmp_path: Path) -> None:
    files = {k: v for k, v in V1_FILES.items() if k not in ("pids", "blkio")}
    metrics = read_metrics(make_v1_task(tmp_path, files), TASK)
    assert set(metrics) == {"cpu", "memory"}


def test_hybrid_reads_cgroup2_only_for_what_no_v1_controller_provides(tmp_path: Path) -> None:
    # Only memory is a v1 controller here; cgroup2's core cpu.stat still gives CPU usage.
    root = tmp_path
    mountinfo = "\n".join(
        [
            mountinfo_line(30, root / "memory", "cgroup", "rw,memory"),
            mountinfo_line(31, root / "unified", "cgroup2", "rw,nsdelegate"),
        ]
    )
    host = detect(root, mountinfo)
    assert host.mode == "hybrid"
    write_files(root / "memory" / TASK.lstrip("/"), V1_FILES["memory"])
    write_files(
        root / "unified" / TASK.lstrip("/"), {"cpu.stat": "usage_usec 2\nuser_usec 1\nsystem_usec 1\n"}
    )
    metrics = read_metrics(host, TASK)
    assert metrics == {
        "cpu": {"usage_total": 2000, "usage_user": 1000, "usage_system": 1000},
        "memory": EXPECTED["memory"],
    }


def test_metrics_of_a_task_without_any_cgroup_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_metrics(v1_host(tmp_path), TASK)
    with pytest.raises(NotFound):
        read_metrics(v2_host(tmp_path), TASK)


# -- detect ------------------------------------------------------------------------------------------------

CENTOS7_V1 = """\
18 62 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,xattr,\
release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpuacct,cpu
29 24 0:25 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup \
rw,net_prio,net_cls
30 24 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
31 24 0:27 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpuset
32 24 0:28 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,blkio
33 24 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
"""

UBUNTU2004_HYBRID = """\
34 24 0:29 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
35 34 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 34 0:31 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
39 34 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
40 34 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
44 34 0:39 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:21 - cgroup cgroup rw,pids
"""

FEDORA_V2 = """\
22 64 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw,seclabel
26 22 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,seclabel,nsdelegate,memory_recursiveprot
"""

# This machine's layout: cpu and cpuacct mounted separately, a controller-less cgroup2 at unified.
SEPARATE_CPU_HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

CG = Path("/sys/fs/cgroup")


def test_detect_v1_maps_comounted_controllers_to_their_shared_mount() -> None:
    host = detect(CG, CENTOS7_V1)
    assert host.mode == "v1" and host.unified is None and host.root == CG
    assert host.v1 == {
        "name=systemd": CG / "systemd",
        "cpuacct": CG / "cpu,cpuacct",
        "cpu": CG / "cpu,cpuacct",
        "net_prio": CG / "net_cls,net_prio",
        "net_cls": CG / "net_cls,net_prio",
        "memory": CG / "memory",
        "cpuset": CG / "cpuset",
        "blkio": CG / "blkio",
        "pids": CG / "pids",
    }


def test_detect_hybrid_has_v1_controllers_and_the_unified_tree() -> None:
    host = detect(CG, UBUNTU2004_HYBRID)
    assert host.mode == "hybrid" and host.unified == CG / "unified"
    assert host.v1["cpu"] == host.v1["cpuacct"] == CG / "cpu,cpuacct"
    assert set(host.v1) == {"name=systemd", "cpu", "cpuacct", "memory", "pids"}


def test_detect_pure_v2_is_cgroup2_at_the_root() -> None:
    assert detect(CG, FEDORA_V2) == Host("v2", CG, {}, CG)


def test_detect_separately_mounted_cpu_and_cpuacct() -> None:
    host = detect(CG, SEPARATE_CPU_HYBRID)
    assert host.mode == "hybrid" and host.unified == CG / "unified"
    assert (host.v1["cpu"], host.v1["cpuacct"]) == (CG / "cpu", CG / "cpuacct")
    paths = task_cgroup_paths(host, TASK)
    assert paths["cpu"] != paths["cpuacct"]


def test_detect_ignores_other_filesystems_and_cgroup_mounts_outside_the_root() -> None:
    text = FEDORA_V2 + mountinfo_line(90, "/run/other/cgroup", "cgroup", "rw,memory") + "\n"
    text += "91 22 0:50 / /sys/fs/cgroup/x rw - tmpfs cgroup rw\n"
    assert detect(CG, text) == Host("v2", CG, {}, CG)
    assert detect(CG, CENTOS7_V1 + mountinfo_line(92, "/elsewhere", "cgroup2", "rw") + "\n").mode == "v1"


def test_detect_decodes_escaped_mount_points() -> None:
    root = Path("/srv/my cgroups")
    host = detect(root, mountinfo_line(30, r"/srv/my\040cgroups/memory", "cgroup", "rw,memory"))
    assert host.v1 == {"memory": root / "memory"}


def test_detect_without_any_cgroup_mount_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition):
        detect(CG, "24 18 0:20 / /sys/fs/cgroup ro shared:7 - tmpfs tmpfs ro,mode=755\n")


def test_detect_reads_this_hosts_mountinfo() -> None:
    host = detect()
    assert host.root == CGROUP_ROOT
    assert (host.mode == "v2") == (CGROUP_ROOT / "cgroup.controllers").exists()
    assert all(mount.is_dir() for mount in host.v1.values())
    assert set(hierarchies()) >= set(host.v1.values())


# -- task_cgroup_paths and remove_task_cgroups -------------------------------------------------------------


def test_task_cgroup_paths_name_the_task_in_every_hierarchy() -> None:
    paths = task_cgroup_paths(detect(CG, UBUNTU2004_HYBRID), "/contactor//ns/task1/")
    assert paths["memory"] == CG / "memory/contactor/ns/task1"
    assert paths["cpu"] == paths["cpuacct"] == CG / "cpu,cpuacct/contactor/ns/task1"
    assert paths["name=systemd"] == CG / "systemd/contactor/ns/task1"
    assert paths["unified"] == CG / "unified/contactor/ns/task1"
    assert "unified" not in task_cgroup_paths(detect(CG, CENTOS7_V1), TASK)


@pytest.mark.parametrize("bad", ["contactor/ns/t", "/contactor/../etc", "/contactor/./t", "/", "", "/a\0b"])
def test_task_cgroup_paths_refuse_paths_that_are_not_a_cgroup_below_the_root(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        task_cgroup_paths(detect(CG, FEDORA_V2), bad)


def test_remove_task_cgroups_removes_children_first_in_every_hierarchy_and_is_idempotent(
    tmp_path: Path,
) -> None:
    host = v1_host(tmp_path, comounted=True, unified=True)
    dirs = set(task_cgroup_paths(host, TASK).values())
    for d in dirs:
        (d / "sub" / "deeper").mkdir(parents=True)
        (d / "other").mkdir()
    assert remove_task_cgroups(host, TASK) == []
    assert not any(d.exists() for d in dirs)
    assert all(d.parent.is_dir() for d in dirs)  # the namespace level is not the task's to remove
    assert remove_task_cgroups(host, TASK) == []


def test_remove_task_cgroups_reports_what_stays_and_removes_the_rest(tmp_path: Path) -> None:
    host = v1_host(tmp_path)
    task = tmp_path / "memory" / TASK.lstrip("/")
    (task / "busy").mkdir(parents=True)
    (task / "busy" / "cgroup.procs").write_text("1\n")  # stands in for a cgroup that still holds a process
    (task / "empty").mkdir()
    (tmp_path / "pids" / TASK.lstrip("/")).mkdir(parents=True)
    assert remove_task_cgroups(host, TASK) == [task / "busy", task]
    assert not (task / "empty").exists() and not (tmp_path / "pids" / TASK.lstrip("/")).exists()


# -- OomWatch on fake trees --------------------------------------------------------------------------------


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_v1_oom_watch_registers_its_eventfd_against_oom_control(tmp_path: Path) -> None:
    host = make_v1_task(tmp_path)
    memory = tmp_path / "memory" / TASK.lstrip("/")
    (memory / "cgroup.event_control").write_text("")
    with OomWatch.open(host, TASK) as watch:
        assert watch.kind == "v1" and watch.fileno() == watch.fd
        efd, cfd = map(int, (memory / "cgroup.event_control").read_text().split())
        assert efd == watch.fd
        assert os.readlink(f"/proc/self/fd/{cfd}") == str(memory / "memory.oom_control")
        assert not readable(watch.fd, 0) and watch.read() == 0
        assert watch.oom_kills() == 2
    assert watch.closed
    with pytest.raises(OSError):
        os.fstat(efd)


def test_v1_oom_watch_counts_wakeups_but_not_the_one_from_removal(tmp_path: Path) -> None:
    host = make_v1_task(tmp_path)
    memory = tmp_path / "memory" / TASK.lstrip("/")
    (memory / "cgroup.event_control").write_text("")
    with OomWatch.open(host, TASK) as watch:
        os.eventfd_write(watch.fd, 2)  # what the kernel does on two OOMs
        assert readable(watch.fd, 0)
        assert watch.read() == 2
        assert watch.read() == 0 and not readable(watch.fd, 0)
        for f in memory.iterdir():
            f.unlink()
        memory.rmdir()
        os.eventfd_write(watch.fd, 1)  # what the kernel does on rmdir
        assert watch.read() == 0
        assert watch.gone and watch.oom_kills() is None


def test_v2_oom_watch_reports_new_oom_kills_from_memory_events(tmp_path: Path) -> None:
    host = v2_host(tmp_path)
    task = tmp_path / TASK.lstrip("/")
    write_files(task, V2_FILES)  # oom_kill 1 before the watch: not new
    events = task / "memory.events"
    with OomWatch.open(host, TASK) as watch:
        assert watch.kind == "v2"
        assert not readable(watch.fd, 0) and watch.read() == 0
        events.write_text(V2_FILES["memory.events"].replace("max 5", "max 6"))
        assert readable(watch.fd, 5) and watch.read() == 0  # another counter moved
        events.write_text(V2_FILES["memory.events"].replace("oom_kill 1", "oom_kill 4"))
        assert readable(watch.fd, 5) and watch.read() == 3
        assert not readable(watch.fd, 0) and watch.read() == 0
        assert watch.oom_kills() == 4


def test_v2_oom_watch_reads_zero_once_the_cgroup_is_gone(tmp_path: Path) -> None:
    host = v2_host(tmp_path)
    task = tmp_path / TASK.lstrip("/")
    write_files(task, V2_FILES)
    with OomWatch.open(host, TASK) as watch:
        (task / "memory.events").write_text(V2_FILES["memory.events"].replace("oom_kill 1", "oom_kill 9"))
        for f in task.iterdir():
            f.unlink()
        task.rmdir()
        assert readable(watch.fd, 5)
        assert watch.read() == 0 and watch.gone


def test_oom_watch_of_a_missing_cgroup_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        OomWatch.open(v1_host(tmp_path / "v1"), TASK)
    with pytest.raises(NotFound):
        OomWatch.open(v2_host(tmp_path / "v2"), TASK)


def test_v2_oom_watch_without_the_memory_controller_is_a_failed_precondition(tmp_path: Path) -> None:
    host = v2_host(tmp_path)
    write_files(tmp_path / TASK.lstrip("/"), {"cgroup.procs": "", "cpu.stat": "usage_usec 1\n"})
    with pytest.raises(FailedPrecondition):
        OomWatch.open(host, TASK)


def test_a_closed_oom_watch_refuses_reads_and_closes_once(tmp_path: Path) -> None:
    host = v2_host(tmp_path)
    write_files(tmp_path / TASK.lstrip("/"), V2_FILES)
    watch = OomWatch.open(host, TASK)
    watch.close()
    watch.close()
    with pytest.raises(FailedPrecondition):
        watch.read()
    with pytest.raises(FailedPrecondition):
        watch.oom_kills()


# -- on this machine's real cgroups ------------------------------------------------------------------------

REAL_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio")


class RealCgroup:
    """A task cgroup ``/contactor-test-<uuid>`` in the real v1 hierarchies, and the processes put in it.

    ``cleanup`` kills and reaps every process and removes every directory,
    deepest first, in every hierarchy; it does not use the code under test.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.path = f"/contactor-test-{uuid.uuid4().hex[:12]}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.paths = task_cgroup_paths(host, self.path)
        self.dirs = [self.paths[c] for c in REAL_CONTROLLERS]
        for d in dict.fromkeys(self.dirs):
            d.mkdir()

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        """Run ``argv`` inside the cgroup from its first instruction: it waits for a line until moved."""
        proc = subprocess.Popen(["sh", "-c", 'read _moved && exec "$@"', "sh", *argv], stdin=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdin is not None
        for d in dict.fromkeys(self.dirs):
            (d / "cgroup.procs").write_text(str(proc.pid))
        proc.stdin.write(b"\n")
        proc.stdin.close()
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            if proc.stdin is not None:
                proc.stdin.close()
        tops = list(dict.fromkeys(self.paths.values()))
        for top in tops:  # anything else that ended up inside (nothing should)
            for procs in top.rglob("cgroup.procs"):
                for pid in map(int, procs.read_text().split()):
                    os.kill(pid, signal.SIGKILL)
                    wait_pid_gone(pid, 30)
        left: list[Path] = []
        deadline = time.monotonic() + 30
        for top in tops:
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, top] if top.is_dir() else []:
                while True:
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # a killed process may take a moment to leave
                        if time.monotonic() > deadline:
                            left.append(d)
                            break
                        time.sleep(0.02)
        assert not left, f"cgroups left behind: {left}"


@pytest.fixture
def real_cgroup() -> Iterator[RealCgroup]:
    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups")
    host = detect()
    if any(c not in host.v1 for c in REAL_CONTROLLERS):
        pytest.skip(f"needs the v1 controllers {REAL_CONTROLLERS} (this host is {host.mode})")
    cg = RealCgroup(host)
    try:
        yield cg
    finally:
        cg.cleanup()
    assert not [p for p in hierarchies() if (p / cg.path.lstrip("/")).exists()]


def test_real_metrics_of_a_busy_process(real_cgroup: RealCgroup) -> None:
    real_cgroup.spawn("sh", "-c", "while :; do :; done")
    host, path = real_cgroup.host, real_cgroup.path
    first = read_metrics(host, path)
    assert first["pids"] == {"current": 1}  # pids.max is "max": no limit field
    # No limit set, so no limit field.  (v1 leaves memory charged before the move in the old cgroup, so usage
    # may well read 0 here: a number, not an absence.)
    assert set(first["memory"]) == {"usage", "max_usage", "rss", "cache", "oom_kills"}
    assert set(first["cpu"]) == set(EXPECTED["cpu"]) and set(first["io"]) == set(EXPECTED["io"])
    wait_for(
        lambda: read_metrics(host, path)["cpu"]["usage_total"] > first["cpu"]["usage_total"] + 10**7,
        10,
        "cpu usage to rise",
    )


def test_real_oom_kill_wakes_the_watch_and_the_cgroups_removal_is_not_an_oom(real_cgroup: RealCgroup) -> None:
    memory = real_cgroup.paths["memory"]
    (memory / "memory.limit_in_bytes").write_text(str(16 * MiB))
    if (memory / "memory.memsw.limit_in_bytes").exists():  # with swap, the hog would swap instead of dying
        (memory / "memory.memsw.limit_in_bytes").write_text(str(16 * MiB))
    with OomWatch.open(real_cgroup.host, real_cgroup.path) as watch:
        assert watch.read() == 0 and watch.oom_kills() == 0
        hog = real_cgroup.spawn(sys.executable, "-c", "b = b'x' * (256 << 20)")
        assert readable(watch.fd, 60), "no OOM notification"
        assert watch.read() >= 1
        assert hog.wait(timeout=60) == -signal.SIGKILL
        watch.read()  # notifications of any later OOM episodes before the hog died
        assert watch.oom_kills() == 1
        metrics = read_metrics(real_cgroup.host, real_cgroup.path)["memory"]
        assert metrics["oom_kills"] == 1 and metrics["limit"] == 16 * MiB

        assert remove_task_cgroups(real_cgroup.host, real_cgroup.path) == []
        assert readable(watch.fd, 30), "rmdir did not signal the eventfd"
        assert watch.read() == 0 and watch.gone
        assert watch.oom_kills() is None


def test_real_watch_of_a_removed_cgroup_stays_gone_when_its_name_is_reused(real_cgroup: RealCgroup) -> None:
    memory = real_cgroup.paths["memory"]
    with OomWatch.open(real_cgroup.host, real_cgroup.path) as watch:
        memory.rmdir()
        memory.mkdir()  # a new task of the same id
        assert readable(watch.fd, 30)
        assert watch.read() == 0 and watch.gone


def test_real_remove_task_cgroups_reports_busy_cgroups_then_removes_them(real_cgroup: RealCgroup) -> None:
    host, path = real_cgroup.host, real_cgroup.path
    for d in real_cgroup.dirs:
        (d / "child" / "grandchild").mkdir(parents=True)
    sleeper = real_cgroup.spawn("sleep", "600")
    # The cgroups holding the process stay; their empty children go.
    assert sorted(remove_task_cgroups(host, path)) == sorted(real_cgroup.dirs)
    assert not any((d / "child").exists() for d in real_cgroup.dirs)
    sleeper.kill()
    sleeper.wait(timeout=30)
    assert remove_task_cgroups(host, path) == []
    assert not any(d.exists() for d in real_cgroup.dirs)
    assert remove_task_cgroups(host, path) == []
    with pytest.raises(NotFound):
        read_metrics(host, path)
