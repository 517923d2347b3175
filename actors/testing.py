"""Fault injection for your own tests: a private contactor daemon, and its shims to kill.

Installed as a pytest plugin (entry point ``contactor``), so a test can say::

    def test_my_code_sees_the_exit(contactor_daemon, kill_shim):
        with contactor_daemon.client() as c:
            ...create and start task "t1"...
            kill_shim("t1")
            assert c.wait("t1")["exit_status"] == 137

``contactor_daemon`` runs a daemon on temporary state and root dirs, a private
socket and a free admin port, in a namespace of its own, and removes
everything afterwards (tasks, shims, bundles, records, its actor system).
``shim_of(task_id)`` is the pid of a task's shim; ``kill_shim(task_id)`` SIGKILLs
it and waits until the daemon has cleaned up after it.  ``Daemon.kill_all()``
kills every daemon process but the shims; ``Daemon.start()`` brings it back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.bundle import delete_bundle
from actors.cgroups import remove_empty_parents
from actors.mount import unmount_all

__all__ = ["Daemon", "tear_down", "private_daemon", "contactor_daemon", "shim_of", "kill_shim"]

# The directory that holds the `actors` package this module belongs to.
_PACKAGE_HOME = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    """A contactor daemon of this test's own: its dirs, socket, port, and process."""

    config: Path
    state: Path
    root: Path
    address: str
    log: Path
    namespace: str
    proc: subprocess.Popen[bytes] | None = None
    launcher: tuple[str, ...] = ()  # an argv prefix the daemon runs under (e.g. entering a network namespace)

    def client(self) -> Any:
        from actors.client import Client

        return Client(self.address, namespace=self.namespace)

    def start(self, timeout: float = 60) -> None:
        from actors.client import Client
        from actors.errdefs import Unavailable

        # Ready means *this* daemon's actor system answers, not an orphaned old one still serving.
        stale = None
        with contextlib.suppress(Unavailable, KeyError), Client(self.address, timeout=2) as c:
            stale = c.call("health", timeout=5)["pids"]["supervisor"]
        logf = open(self.log, "ab")  # noqa: SIM115
        # `python -m` puts its working directory first on sys.path: run it where this very `actors`
        # package lives, so the daemon runs the code its caller imported, wherever the caller runs.
        self.proc = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "actors.cli", "--config", str(self.config), "daemon"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, cwd=_PACKAGE_HOME,
        )  # fmt: skip
        logf.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                with Client(self.address, timeout=2) as c:
                    health = c.health()
                    if "gateway" in health["ready"] and health["pids"].get("supervisor") != stale:
                        return
            except Unavailable:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon not ready after {timeout}s: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def actor_pgid(self) -> int | None:
        try:
            return int((self.state / "actors.pgid").read_text())
        except (OSError, ValueError):
            return None

    def kill_all(self) -> None:
        """SIGKILL every daemon process (supervisor, admin, actors), never the shims."""
        pgid = self.actor_pgid()
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        if pgid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while _group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.02)


def _group_members(pgid: int) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
    return out


def _shims_under(state: Path) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if any("actors.shim" in c or c.endswith("contactor-shim") for c in cmd[:3]) and any(
            c.startswith(str(state)) for c in cmd
        ):
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
    return out


@contextlib.contextmanager
def private_daemon(tmp_path: Path, namespace: str = "default", extra_config: str = "",
                   runtime_config: str = "") -> Iterator[Daemon]:  # fmt: skip
    """A running daemon on private dirs and a free port; afterwards every task, shim, bundle and
    record of it is gone, and an AssertionError says what had to be cleaned up by force.
    ``extra_config`` is TOML appended to its configuration (sections other than daemon/runtime/log);
    ``runtime_config`` is TOML lines added to its [runtime] section (e.g. a ``binary``)."""
    state, root = tmp_path / "state", tmp_path / "root"
    address = str(tmp_path / "contactor.sock")
    conf = tmp_path / "contactor.toml"
    conf.write_text(
        f'[daemon]\nstate = "{state}"\nroot = "{root}"\naddress = "{address}"\nadmin_port = {free_port()}\n'
        f'[runtime]\nshim_debug = true\n{runtime_config}\n[log]\nlevel = "debug"\n' + extra_config
    )
    d = Daemon(conf, state, root, address, tmp_path / "daemon.log", namespace)
    d.start()
    try:
        yield d
    finally:
        # Also when the test failed: nothing it started may outlive it.
        problems = tear_down(d)
    assert not problems, "; ".join(problems)


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def tear_down(d: Daemon) -> list[str]:
    """Remove everything a private daemon ran; returns what had to be removed by force."""
    state = d.state
    problems: list[str] = []
    try:
        if d.proc is None or d.proc.poll() is not None:  # never started, or died: a new one cleans up
            if d.proc is not None:
                problems.append(f"the daemon had exited with {d.proc.returncode}")
            d.start()
        with d.client() as c:
            for t in c.list_tasks():
                c.delete_task(t.id, force=True)
            for rec in c.list_containers():
                c.delete_container(rec["id"])
    except Exception as exc:
        problems.append(f"could not clean up through the daemon: {exc}")
    pgid = d.actor_pgid()
    d.stop()
    if pgid and _group_members(pgid):
        problems.append(f"actor system processes left: {_group_members(pgid)}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    factory = _read_pid(state / "shim-factory.pid")
    if factory and _alive(factory):
        problems.append(f"shim factory left running: {factory}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(factory, signal.SIGKILL)
    left = _shims_under(state)
    if left:
        problems.append(f"shims left running: {left}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for ns_dir in state.glob("*"):
        for bundle in ns_dir.glob("*"):
            if (bundle / "config.json").exists():
                problems.append(f"bundle left: {bundle}")
                subprocess.run(["runc", "--root", str(state / "runc" / ns_dir.name), "delete", "--force",
                                bundle.name], capture_output=True, check=False)  # fmt: skip
                unmount_all(str(bundle / "rootfs"))
                delete_bundle(bundle)
    # The daemon keeps its cgroup parent; a test's daemon leaves not even that, once it is empty.
    remove_empty_parents(f"/contactor/{d.namespace}")
    return problems


@pytest.fixture
def contactor_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A private contactor daemon in a namespace of its own, removed with all it ran afterwards."""
    with private_daemon(tmp_path, f"t{uuid.uuid4().hex[:10]}") as d:
        yield d


@pytest.fixture
def shim_of(contactor_daemon: Daemon) -> Callable[[str], int]:
    """``shim_of(task_id)``: the pid of that task's shim."""

    def find(task_id: str) -> int:
        with contactor_daemon.client() as c:
            for t in c.list_tasks():
                if t.id == task_id:
                    return int(t.shim_pid)
        raise LookupError(f"no task {task_id!r}")

    return find


@pytest.fixture
def kill_shim(contactor_daemon: Daemon, shim_of: Callable[[str], int]) -> Callable[[str], None]:
    """``kill_shim(task_id)``: SIGKILL the task's shim and wait until the daemon cleaned up after it."""

    def kill(task_id: str, timeout: float = 30.0) -> None:
        os.kill(shim_of(task_id), signal.SIGKILL)
        deadline = time.monotonic() + timeout
        with contactor_daemon.client() as c:
            while any(t.id == task_id for t in c.list_tasks()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the daemon did not clean up after {task_id}'s shim in {timeout}s")
                time.sleep(0.02)

    return kill
