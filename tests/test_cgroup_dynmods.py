"""cgroup2's favordynmods: the remount that sets it keeps every other option, and the daemon sets it.

The first tests read mountinfo texts; the real one mounts the host's cgroup2 tree a second
time under tmp_path (with nosuid and nodev of its own), sets the option through that mount,
checks what the mount table then says, and puts the option back as it was and unmounts,
also when it fails.  The option is one global kernel switch (every cgroup2 mount shows it),
so the test restores it before it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, wait_for

from actors import _cgroup_dynmods as dyn
from actors.testing import private_daemon

HYBRID = """\
25 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
31 25 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
42 31 0:39 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,memory
"""


def test_the_remount_carries_the_mount_flags_and_the_trees_options() -> None:
    flags, data = dyn.remount_request("rw,nosuid,nodev,noexec,relatime", "rw,nsdelegate,memory_recursiveprot")

    assert flags == dyn.MS_REMOUNT | dyn.MS_NOSUID | dyn.MS_NODEV | dyn.MS_NOEXEC | dyn.MS_RELATIME
    assert data == "nsdelegate,memory_recursiveprot,favordynmods"


def test_clearing_takes_only_favordynmods_away() -> None:
    flags, data = dyn.remount_request("ro,noatime", "ro,favordynmods,nsdelegate", favor=False)

    assert flags == dyn.MS_REMOUNT | dyn.MS_RDONLY | dyn.MS_NOATIME
    assert data == "nsdelegate"


def test_the_hybrid_hosts_cgroup2_mount_is_found_and_a_set_option_is_left_alone() -> None:
    assert dyn._cgroup2_mount(Path("/sys/fs/cgroup"), HYBRID) == (
        Path("/sys/fs/cgroup/unified"), "rw,nosuid,nodev,noexec,relatime", "rw,nsdelegate",
    )  # fmt: skip
    already = HYBRID.replace("rw,nsdelegate", "rw,nsdelegate,favordynmods")
    assert dyn.favor_dynmods(True, Path("/sys/fs/cgroup"), already) == "already"


def test_a_host_without_cgroup2_is_told_so() -> None:
    v1_only = "\n".join(line for line in HYBRID.splitlines() if "cgroup2" not in line)

    assert dyn.favor_dynmods(True, Path("/sys/fs/cgroup"), v1_only) == "no cgroup2 mount under /sys/fs/cgroup"


def _cgroup2_line(point: Path) -> list[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(point):
            return fields
    return []


@pytest.fixture
def second_mount(tmp_path: Path) -> Iterator[Path]:
    """The host's cgroup2 tree mounted again at tmp_path/cg with nosuid,nodev; unmounted afterwards,
    with favordynmods as it was before."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    if "cgroup2" not in Path("/proc/filesystems").read_text():
        pytest.skip("no cgroup2 in this kernel")
    point = tmp_path / "cg"
    point.mkdir()
    subprocess.run(["mount", "-t", "cgroup2", "-o", "nosuid,nodev", "cgroup2", str(point)], check=True)
    was = dyn.OPTION in _cgroup2_line(point)[-1].split(",")
    try:
        yield point
    finally:
        with contextlib.suppress(OSError):
            dyn.favor_dynmods(was, point)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(str(point).encode(), 0)
        assert not _cgroup2_line(point), f"{point} is still mounted"


@pytest.mark.parametrize("start", [False, True])
def test_the_real_remount_sets_the_option_and_keeps_the_mounts_own_flags(second_mount: Path, start: bool) -> None:
    dyn.favor_dynmods(start, second_mount)
    before = _cgroup2_line(second_mount)
    assert (dyn.OPTION in before[-1].split(",")) is start

    outcome = dyn.favor_dynmods(True, second_mount)

    after = _cgroup2_line(second_mount)
    assert outcome == ("already" if start else "set")
    assert dyn.OPTION in after[-1].split(",")
    assert {"nosuid", "nodev"} <= set(after[5].split(","))
    assert after[5] == before[5]
    assert set(before[-1].split(",")) - {dyn.OPTION} == set(after[-1].split(",")) - {dyn.OPTION}


def _logged(d: Daemon) -> str:
    return d.log.read_text(errors="replace")


def test_the_daemon_sets_favordynmods_at_start(daemon: Daemon) -> None:
    wait_for(lambda: "cgroup_favor_dynmods" in _logged(daemon), 30, "the daemon's word on favordynmods")
    line = next(x for x in _logged(daemon).splitlines() if "cgroup_favor_dynmods" in x)

    assert '"outcome": "set"' in line or '"outcome": "already"' in line, line
    assert dyn.OPTION in dyn._cgroup2_mount(Path("/sys/fs/cgroup"), Path("/proc/self/mountinfo").read_text())[2]


def test_a_daemon_told_not_to_leaves_the_option_alone(tmp_path: Path, namespace: str) -> None:
    with private_daemon(tmp_path, namespace, extra_config="[cgroups]\nfavor_dynmods = false\n") as d:
        with d.client() as c:
            c.health()
        assert "cgroup_favor_dynmods" not in _logged(d)
