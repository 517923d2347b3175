"""Fixtures that own real resources: rootfs, bundles, shims, containers, cgroups.

Every fixture removes what it made in its finalizer, also when the test
fails: shims are shut down (forced, then SIGKILLed if they do not exit),
containers deleted with the runtime, rootfs mounts unmounted, bundles and the
test namespace's cgroup directories removed.  Names are unique per test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
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
from actors.procs import wait_exit
from actors.shim.client import ShimClient, ShimHandle, start_shim
from actors.spec import default_spec

REPO = Path(__file__).resolve().parent.parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "contactor"


wait_pid_gone = wait_exit


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


from actors.testing import Daemon, private_daemon  # noqa: E402


@pytest.fixture
def daemon(tmp_path: Path, namespace: str) -> Iterator[Daemon]:
    """A running daemon on private dirs; afterwards every task, shim and record of it is gone."""
    with private_daemon(tmp_path, namespace) as d:
        yield d
