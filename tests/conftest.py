"""Fixtures that own real resources: rootfs, bundles, shims, containers, cgroups.

Every fixture removes what it made in its finalizer, also when the test
fails: shims are shut down (forced, then SIGKILLed if they do not exit),
containers deleted with the runtime, rootfs mounts unmounted, bundles and the
test namespace's cgroup directories removed.  Names are unique per test.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors.bundle import create_bundle, delete_bundle
from actors.errdefs import ContactorError
from actors.mount import unmount_all
from actors.shim.client import ShimClient, ShimHandle, start_shim
from actors.spec import default_spec

REPO = Path(__file__).resolve().parent.parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "contactor"


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait for a process to exit, through a pidfd (works for non-children; zombies count as gone)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    return not wait_pid_gone(pid, 0)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs built by scripts/mkrootfs (reused from CONTACTOR_TEST_ROOTFS when set)."""
    given = os.environ.get("CONTACTOR_TEST_ROOTFS")
    if given and (Path(given) / "etc" / "hostname").exists():
        return Path(given)
    path = tmp_path_factory.mktemp("rootfs")
    subprocess.run([str(REPO / "scripts" / "mkrootfs"), str(path)], check=True, capture_output=True)
    return path


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace unique to this test; its cgroup directories are removed afterwards."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield ns
    remove_cgroups(ns)


def remove_cgroups(ns: str) -> None:
    for hierarchy in CGROUP_ROOT.iterdir():
        parent = hierarchy / CGROUP_PARENT
        target = parent / ns
        if target.is_dir():
            for d in sorted(target.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()
            with contextlib.suppress(OSError):
                target.rmdir()
        with contextlib.suppress(OSError):
            parent.rmdir()  # only succeeds once no other test uses it


@dataclass
class Task:
    """One container under its own shim, as the tests drive it."""

    namespace: str
    id: str
    bundle: Path
    runtime: str
    runtime_root: str
    handle: ShimHandle
    client: ShimClient
    rootfs: Path
    clients: list[ShimClient] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.handle.pid

    def connect(self) -> ShimClient:
        c = ShimClient(self.handle.address)
        self.clients.append(c)
        return c

    def create(self, **params: Any) -> int:
        params.setdefault("rootfs", [{"type": "bind", "source": str(self.rootfs), "options": ["rbind"]}])
        return int(self.client.call("create", **params)["pid"])

    def run(self, **params: Any) -> int:
        pid = self.create(**params)
        self.client.call("start")
        return pid

    def path(self, name: str) -> str:
        return str(self.bundle / name)

    def fifo(self, name: str) -> str:
        p = self.path(name)
        os.mkfifo(p, 0o600)
        return p


class Shims:
    """Makes tasks and guarantees their teardown."""

    def __init__(self, state: Path, namespace: str, rootfs: Path) -> None:
        self.state = state
        self.namespace = namespace
        self.rootfs = rootfs
        self.tasks: list[Task] = []
        self.counter = 0

    def bundle(self, args: Sequence[str], cid: str | None = None, **spec_kw: Any) -> tuple[str, Path]:
        self.counter += 1
        cid = cid or f"c{self.counter}"
        spec_kw.setdefault("cgroups_path", f"/{CGROUP_PARENT}/{self.namespace}/{cid}")
        spec = default_spec(args, hostname=cid, **spec_kw)
        return cid, create_bundle(self.state, self.namespace, cid, spec)

    def start(self, cid: str, bundle: Path, runtime: str = "runc") -> Task:
        runtime_root = str(self.state / "runc" / self.namespace)
        handle = start_shim(self.namespace, cid, str(bundle), runtime_root, runtime=runtime, debug=True)
        task = Task(
            self.namespace,
            cid,
            bundle,
            runtime,
            runtime_root,
            handle,
            ShimClient(handle.address),
            self.rootfs,
        )
        self.tasks.append(task)
        return task

    def new(self, args: Sequence[str], runtime: str = "runc", cid: str | None = None, **spec_kw: Any) -> Task:
        cid, bundle = self.bundle(args, cid, **spec_kw)
        try:
            return self.start(cid, bundle, runtime)
        except BaseException:
            delete_bundle(bundle)
            raise

    def teardown(self) -> list[str]:
        problems = []
        for task in self.tasks:
            problems += teardown_task(task)
        return problems


def teardown_task(task: Task) -> list[str]:
    """Remove everything a task made; returns what did not go away by the normal path."""
    problems = []
    for c in [task.client, *task.clients]:
        c.close()
    if pid_alive(task.pid):
        try:
            with ShimClient(task.handle.address, timeout=2) as c:
                c.call("shutdown", call_timeout=30, force=True)
        except ContactorError as exc:
            problems.append(f"shim {task.id}: shutdown failed: {exc}")
        if not wait_pid_gone(task.pid, 15):
            problems.append(f"shim {task.id} (pid {task.pid}) did not exit; killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(task.pid, signal.SIGKILL)
            wait_pid_gone(task.pid, 5)
    binary = shutil.which(task.runtime) or task.runtime
    state = subprocess.run(
        [binary, "--root", task.runtime_root, "state", task.id], capture_output=True, check=False
    )
    if state.returncode == 0:
        problems.append(f"container {task.id} was left in the runtime; deleted")
        subprocess.run([binary, "--root", task.runtime_root, "delete", "--force", task.id], check=False,
                       capture_output=True)  # fmt: skip
    rootfs = str(task.bundle / "rootfs")
    with open("/proc/self/mountinfo") as f:
        if any(line.split()[4] == rootfs for line in f):
            problems.append(f"rootfs of {task.id} was left mounted; unmounted")
            unmount_all(rootfs)
    delete_bundle(task.bundle)
    return problems


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o711)
    return d


@pytest.fixture
def shims(state_dir: Path, namespace: str, rootfs: Path) -> Iterator[Shims]:
    s = Shims(state_dir, namespace, rootfs)
    yield s
    problems = s.teardown()
    assert not problems, "teardown had to clean up: " + "; ".join(problems)


@pytest.fixture(params=["runc", "crun"])
def runtime_name(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if shutil.which(name) is None:
        pytest.fail(f"{name} is not installed: run scripts/setup")
    return name


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` (a hang guard, not a timing test)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# -- the daemon -----------------------------------------------------------------------------------------
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

    def client(self) -> Any:
        from actors.client import Client

        return Client(self.address, namespace=self.namespace)

    def start(self, timeout: float = 60) -> None:
        from actors.client import Client
        from actors.errdefs import Unavailable

        logf = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "actors.cli", "--config", str(self.config), "daemon"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, cwd=REPO,
        )  # fmt: skip
        logf.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with Client(self.address, timeout=2) as c:
                    if "gateway" in c.health()["ready"]:
                        return
            except Unavailable:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"daemon not ready after {timeout}s: {self.log.read_text()[-2000:]}")
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
            wait_for(lambda: not _group_members(pgid), 15, "the actor system's processes to die")


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


@pytest.fixture
def daemon(tmp_path: Path, namespace: str) -> Iterator[Daemon]:
    """A running daemon on private dirs; afterwards every task, shim and record of it is gone."""
    state, root = tmp_path / "state", tmp_path / "root"
    address = str(tmp_path / "contactor.sock")
    conf = tmp_path / "contactor.toml"
    conf.write_text(
        f'[daemon]\nstate = "{state}"\nroot = "{root}"\naddress = "{address}"\nadmin_port = {free_port()}\n'
        '[runtime]\nshim_debug = true\n[log]\nlevel = "debug"\n'
    )
    d = Daemon(conf, state, root, address, tmp_path / "daemon.log", namespace)
    d.start()
    yield d
    problems = []
    if d.proc is None:
        d.start()
    try:
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
    assert not problems, "; ".join(problems)
