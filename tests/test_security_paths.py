"""Path tricks and unprivileged users: nothing outside the runtime's own dirs, nothing readable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Daemon, wait_for
from test_daemon import run

from actors.errdefs import InvalidArgument
from actors.spec import default_spec

NOBODY = 65534


def as_nobody(fn: object) -> int:
    """Run ``fn()`` in a child as uid/gid nobody; returns its exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = fn()  # type: ignore[operator]
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_nobody_cannot_connect_or_read_state(daemon: Daemon, rootfs: Path) -> None:
    import socket

    with daemon.client() as c:
        run(c, rootfs, "secret", ["/bin/sleep", "1000"])
    bundle = daemon.state / daemon.namespace / "secret"

    def connect() -> int:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(daemon.address)
        except PermissionError:
            return 0
        return 1

    assert as_nobody(connect) == 0, "the Gateway accepted an unprivileged user"
    private = [daemon.root / "transport.key", daemon.root / "metadata.db", daemon.root / "events.db",
               bundle / "config.json", bundle / "shim.log", bundle / "task.json", bundle / "shim.sock"]  # fmt: skip
    # Thespian writes its log only when it has a warning to give: private too, when it is there.
    private += [p for p in [daemon.root / "thespian.log"] if p.exists()]
    for path in private:
        assert path.exists(), path

        def read(p: Path = path) -> int:
            try:
                with open(p, "rb"):
                    return 1
            except OSError:
                return 0

        assert as_nobody(read) == 0, f"nobody can read {path}"
    with daemon.client() as c:
        c.delete_task("secret", force=True)


@pytest.mark.parametrize("target", ["/", "state", "root", "parent-of-state"])
def test_a_rootfs_that_leads_to_the_host_or_the_daemon_is_refused(
    daemon: Daemon, rootfs: Path, tmp_path: Path, target: str
) -> None:
    dest = {
        "/": Path("/"),
        "state": daemon.state,
        "root": daemon.root,
        "parent-of-state": daemon.state.parent,
    }[target]
    link = tmp_path / "innocent-looking-rootfs"
    link.symlink_to(dest)
    with daemon.client() as c:
        c.create_container("esc", default_spec(["/bin/true"]), rootfs=str(link))
        with pytest.raises(InvalidArgument, match="rootfs"):
            c.create_task("esc")
        assert c.list_tasks() == []
        c.delete_container("esc")


def test_a_bundle_replaced_by_a_symlink_while_down_is_not_followed(daemon: Daemon, rootfs: Path,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "config.json").write_text("{}")
    (decoy / "precious").write_text("keep me")
    with daemon.client() as c:
        run(c, rootfs, "real", ["/bin/sleep", "1000"])
    daemon.stop()
    # While the daemon is down, someone plants a symlinked "bundle" in the state dir.
    (daemon.state / daemon.namespace / "planted").symlink_to(decoy)
    daemon.start()
    with daemon.client() as c:
        wait_for(lambda: [t.id for t in c.list_tasks()] == ["real"], 30, "only the real task restored")
        c.delete_task("real", force=True)
    assert (decoy / "precious").read_text() == "keep me", "restore never followed the symlink"
    (daemon.state / daemon.namespace / "planted").unlink()


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\x00b", "x" * 77, "", "..", "."])
def test_bad_ids_and_namespaces_never_reach_a_path(daemon: Daemon, bad: str) -> None:
    from actors.client import Client

    with daemon.client() as c:
        with pytest.raises(InvalidArgument):
            c.create_container(bad, default_spec(["/bin/true"]))
        with pytest.raises(InvalidArgument):
            c.call("tasks.kill", id=bad)
    with Client(daemon.address, namespace=bad) as c, pytest.raises(InvalidArgument):
        c.list_tasks() if bad else c.create_container("ok", default_spec(["/bin/true"]))
    assert {p.name for p in daemon.state.iterdir()} <= {
        "actors.pgid", "contactor.pid", "fifo", "runc", "shim-factory.pid", "shim-factory.sock", daemon.namespace
    }  # fmt: skip
