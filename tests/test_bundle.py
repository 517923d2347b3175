"""Bundles: removal in two halves (bury, then the tomb), and the sweep of tombs a crash left."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.bundle import bury_bundle, create_bundle, delete_bundle, sweep_tombs
from actors.mount import is_mountpoint, unmount_all
from actors.spec import default_spec


def _bundle(state: Path, cid: str) -> Path:
    return create_bundle(state, "ns", cid, default_spec(["/bin/true"]))


def test_a_buried_bundle_frees_its_path_at_once_and_keeps_its_files_in_a_hidden_tomb(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "b1")
    (bundle / "task.json").write_text("{}")

    tomb = bury_bundle(bundle)

    assert tomb is not None and tomb.parent == bundle.parent and tomb.name.startswith(".b1.")
    assert not bundle.exists()
    assert (tomb / "task.json").read_text() == "{}"
    again = _bundle(tmp_path, "b1")  # a new task of the same id may come at once
    assert bury_bundle(again) != tomb, "every burial has a tomb of its own"
    assert bury_bundle(tmp_path / "ns" / "none") is None


def test_the_sweep_removes_tombs_and_nothing_else(tmp_path: Path) -> None:
    live = _bundle(tmp_path, "live")
    tomb = bury_bundle(_bundle(tmp_path, "dead"))
    assert tomb is not None
    (tmp_path / "ns" / ".task.json.tmp").write_text("x")  # a file, not a bundle
    (tmp_path / "ns" / ".other").mkdir()  # a hidden dir that is no bundle
    runtime_root = tmp_path / "runc" / "ns" / ".looks-like"
    runtime_root.mkdir(parents=True)
    (runtime_root / "config.json").write_text("{}")  # the runtime's own root is never swept

    assert sweep_tombs(tmp_path) == [tomb]

    assert not tomb.exists() and live.exists() and runtime_root.exists()
    assert (tmp_path / "ns" / ".task.json.tmp").exists() and (tmp_path / "ns" / ".other").exists()


@pytest.fixture
def mounted_tomb(tmp_path: Path) -> Iterator[Path]:
    """A tomb whose rootfs something mounted again (it should never happen): unmounted afterwards."""
    tomb = bury_bundle(_bundle(tmp_path, "m"))
    assert tomb is not None
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tomb / "rootfs")], check=True)
    try:
        yield tomb
    finally:
        unmount_all(str(tomb / "rootfs"))
        assert not is_mountpoint(str(tomb / "rootfs"))


def test_the_sweep_never_recurses_into_a_mount(mounted_tomb: Path, tmp_path: Path) -> None:
    (mounted_tomb / "rootfs" / "precious").write_text("x")

    assert sweep_tombs(tmp_path) == []

    assert (mounted_tomb / "rootfs" / "precious").exists()


def test_delete_bundle_leaves_no_tomb(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "d1")

    delete_bundle(bundle)

    assert list((tmp_path / "ns").iterdir()) == []


def test_the_daemon_sweeps_tombs_at_start(tmp_path: Path, namespace: str) -> None:
    from conftest import wait_for

    from actors.testing import private_daemon

    tomb = bury_bundle(create_bundle(tmp_path / "state", namespace, "old", default_spec(["/bin/true"])))
    assert tomb is not None and tomb.exists()
    with private_daemon(tmp_path, namespace) as d:
        wait_for(lambda: not tomb.exists(), 30, "the tomb swept")
        with d.client() as c:
            assert c.list_tasks() == []
