"""The peers contactor is measured beside: raw runc (the floor) and a private containerd with ctr.

containerd runs on temporary root, state, socket, FIFO and runc-root paths, with
the CRI and the snapshotters it does not need disabled; containers are started
with ``ctr run --rootfs`` on the benchmark's busybox rootfs, so no image is
needed.  Its cgroups live under ``/<namespace>``, a name of the benchmark's own.
Nothing outside those paths is touched, except the shim sockets that containerd
1.6 always puts in /run/containerd/s (removed again, with the dirs when we made them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from actors.bench.common import cmdline, pids, ppid_of, pss_kb, remove_cgroup, run, timed
from actors.bundle import create_bundle, delete_bundle
from actors.procs import wait_exit
from actors.spec import default_spec

SLEEP = ["/bin/sleep", "1000000"]
V1 = "io.containerd.runtime.v1.linux"
UNNEEDED = [
    "io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]  # fmt: skip


class Runc:
    """runc alone on a bundle per container: what any runtime on top of it cannot beat."""

    name = "runc"

    def __init__(self, work: Path, rootfs: Path, namespace: str) -> None:
        self.work, self.rootfs, self.ns = work, rootfs, namespace
        self.root = str(work / "runc-root")
        self.counter = 0

    def _bundle(self) -> tuple[str, Path]:
        self.counter += 1
        cid = f"r{self.counter}"
        spec = default_spec(["/bin/true"], hostname=cid, cgroups_path=f"/{self.ns}/{cid}")
        spec["root"] = {"path": str(self.rootfs), "readonly": True}
        return cid, create_bundle(self.work / "bundles", self.ns, cid, spec)

    def run_rm(self, _: str = "") -> float:
        """`runc run` of /bin/true, bundle written beforehand."""
        cid, bundle = self._bundle()
        try:
            return timed(["runc", "--root", self.root, "run", "--bundle", str(bundle), cid])
        finally:
            delete_bundle(bundle)

    def lifecycle(self) -> float:
        """runc create + start + wait for the init + delete: the floor of a shim's lifecycle."""
        cid, bundle = self._bundle()
        try:
            start = time.perf_counter()
            run(["runc", "--root", self.root, "create", "--bundle", str(bundle),
                 "--pid-file", str(bundle / "init.pid"), cid])  # fmt: skip
            run(["runc", "--root", self.root, "start", cid])
            if not wait_exit(int((bundle / "init.pid").read_text()), 30):
                raise RuntimeError("/bin/true did not exit under runc")
            run(["runc", "--root", self.root, "delete", cid])
            return time.perf_counter() - start
        finally:
            delete_bundle(bundle)

    def concurrent(self, n: int) -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(self.run_rm, [""] * n))
        return time.perf_counter() - start

    def close(self) -> list[str]:
        left = []
        with contextlib.suppress(RuntimeError, FileNotFoundError):
            for c in json.loads(run(["runc", "--root", self.root, "list", "--format", "json"]) or "[]") or []:
                left.append(f"runc container left: {c['id']}")
                subprocess.run(["runc", "--root", self.root, "delete", "--force", c["id"]], check=False,
                               capture_output=True)  # fmt: skip
        remove_cgroup(self.ns)
        return left


class Containerd:
    """A private containerd 1.6 and its ctr: the runtime contactor is to beat."""

    name = "containerd"

    def __init__(self, work: Path, rootfs: Path, namespace: str) -> None:
        self.work, self.rootfs, self.ns = work / "containerd", rootfs, namespace
        self.work.mkdir()
        self.sock = str(self.work / "sock")
        self.counter = 0
        self.sleepers: list[str] = []
        self.made_run_dirs = [
            d for d in (Path("/run/containerd"), Path("/run/containerd/s")) if not d.exists()
        ]
        self.config = self.work / "config.toml"
        self.config.write_text(
            f'version = 2\nroot = "{self.work}/root"\nstate = "{self.work}/state"\n'
            f"disabled_plugins = {json.dumps(UNNEEDED)}\n"
            f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
            f'[plugins."{V1}"]\n  runtime_root = "{self.work}/runc-v1"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.work / "containerd.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.config), "--root", f"{self.work}/root",
                 "--state", f"{self.work}/state", "--address", self.sock],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while subprocess.run(self.ctr("version"), capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"containerd did not start: {(self.work / 'containerd.log').read_text()[-800:]}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def ctr(self, *argv: str) -> list[str]:
        return ["ctr", "--address", self.sock, "--namespace", self.ns, *argv]

    def _run_args(self, *extra: str) -> list[str]:
        return self.ctr("run", "--rootfs", "--fifo-dir", f"{self.work}/fifo", "--runc-root", f"{self.work}/runc",
                        *extra)  # fmt: skip

    def _next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    # -- (1) (3) -------------------------------------------------------------------------------------------
    def run_rm(self, _: str = "") -> float:
        return timed(self._run_args("--rm", str(self.rootfs), self._next("c"), "/bin/true"))

    def concurrent(self, n: int) -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(self.run_rm, [""] * n))
        return time.perf_counter() - start

    # -- the running population for (4), (6), (7) ----------------------------------------------------------
    def _sleeper(self, cid: str, *extra: str) -> None:
        run(self._run_args("-d", "--null-io", *extra, str(self.rootfs), cid, *SLEEP))

    def grow(self, n: int) -> None:
        while len(self.sleepers) < n:
            cid = self._next("s")
            self._sleeper(cid)
            self.sleepers.append(cid)

    def tasks(self) -> dict[str, tuple[int, str]]:
        """ctr tasks ls: id -> (pid, status)."""
        out = {}
        for line in run(self.ctr("tasks", "ls")).splitlines()[1:]:
            f = line.split()
            if len(f) >= 3:
                out[f[0]] = (int(f[1]), f[2])
        return out

    def memory(self) -> tuple[float, float]:
        """(mean PSS kB of a running container's shim, containerd's own PSS kB)."""
        per = [pss_kb(ppid_of(pid)) for pid, status in self.tasks().values() if status == "RUNNING"]
        own = pss_kb(self.proc.pid) if self.proc else 0
        return (sum(per) / len(per) if per else 0.0), float(own)

    def memory_v1(self, n: int = 3) -> float:
        """Mean PSS kB of the v1 shim (containerd-shim) of ``n`` running containers."""
        ids = [self._next("v") for _ in range(n)]
        try:
            for cid in ids:
                self._sleeper(cid, "--runtime", V1)
            time.sleep(0.3)
            tasks = self.tasks()
            return sum(pss_kb(ppid_of(tasks[c][0])) for c in ids) / n
        finally:
            self._remove(ids)

    # -- (5) -----------------------------------------------------------------------------------------------
    def death(self) -> float:
        cid = self._next("d")
        self._sleeper(cid)
        lines: queue.Queue[tuple[float, str]] = queue.Queue()
        events = subprocess.Popen(self.ctr("events", 'topic=="/tasks/exit"'), stdout=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

        def read() -> None:
            assert events.stdout is not None
            for raw in events.stdout:
                lines.put((time.perf_counter(), raw.decode(errors="replace")))

        try:
            threading.Thread(target=read, daemon=True).start()
            time.sleep(0.3)  # ctr events has subscribed
            shim = ppid_of(self.tasks()[cid][0])
            start = time.perf_counter()
            os.kill(shim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while True:
                stamp, line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                if "/tasks/exit" in line and f'"{cid}"' in line:
                    return stamp - start
        finally:
            events.kill()
            events.wait()
            self._remove([cid])

    # -- (6) (7) -------------------------------------------------------------------------------------------
    def restart(self) -> float:
        self.stop()
        want = set(self.sleepers)
        start = time.perf_counter()
        self.start()
        deadline = time.monotonic() + 120
        while True:
            listed = {i for i, (_, s) in self.tasks().items() if s == "RUNNING"}
            if want <= listed:
                return time.perf_counter() - start
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all of {len(want)} tasks listed 120 s after containerd restarted")
            time.sleep(0.005)

    def ls(self) -> float:
        start = time.perf_counter()
        n = len(self.tasks())
        took = time.perf_counter() - start
        if n < len(self.sleepers):
            raise RuntimeError(f"ctr tasks ls listed {n} of {len(self.sleepers)}")
        return took

    # -- the end -------------------------------------------------------------------------------------------
    def _remove(self, ids: list[str]) -> None:
        def rm(cid: str) -> None:
            subprocess.run(self.ctr("tasks", "rm", "-f", cid), capture_output=True, check=False)
            subprocess.run(self.ctr("containers", "rm", cid), capture_output=True, check=False)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(rm, ids))

    def shrink(self) -> None:
        self._remove(self.sleepers)
        self.sleepers.clear()

    def our_shims(self) -> list[int]:
        return [p for p in pids() if any(a == self.sock or a.startswith(self.sock) for a in cmdline(p))
                and "containerd-shim" in " ".join(cmdline(p)[:1])]  # fmt: skip

    def shim_sockets(self) -> list[Path]:
        """The shim sockets of every container this run could have made: containerd 1.6 names them
        /run/containerd/s/<sha256 of its address/namespace/id>."""
        out = []
        for prefix in "csdv":
            for i in range(1, self.counter + 1):
                digest = hashlib.sha256(f"{self.sock}/{self.ns}/{prefix}{i}".encode()).hexdigest()
                path = Path("/run/containerd/s") / digest
                if path.is_socket():
                    out.append(path)
        return out

    def close(self) -> list[str]:
        problems: list[str] = []
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self._remove(list(self.tasks()))
        self.stop()
        deadline = time.monotonic() + 10  # shims of deleted tasks exit on their own, removing their sockets
        while self.our_shims() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.our_shims():
            problems.append(f"containerd shim left: {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_exit(pid, 5)
        for root in (self.work / "runc" / self.ns, self.work / "runc-v1" / self.ns):
            if root.is_dir():
                for c in root.iterdir():
                    problems.append(f"containerd container left: {c.name}")
                    subprocess.run(["runc", "--root", str(root), "delete", "--force", c.name],
                                   capture_output=True, check=False)  # fmt: skip
        remove_cgroup(self.ns)
        for sock in self.shim_sockets():  # a SIGKILLed shim leaves its socket, and containerd keeps it
            sock.unlink(missing_ok=True)
        for d in reversed(self.made_run_dirs):
            deadline = time.monotonic() + 5
            while d.exists():
                try:
                    d.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        problems.append(f"{d} not empty: {sorted(x.name for x in d.iterdir())[:5]}")
                        break
                    time.sleep(0.05)
        return problems
