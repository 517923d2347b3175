"""contactor under measurement: a private daemon on temporary dirs, driven by its CLI and its client.

The daemon runs on a temporary state and root dir, a private socket and a free
admin port, in a namespace of the benchmark's own, with warning-level logs (what
a production daemon would log); everything it ran is removed in ``close``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from actors.bench.common import REPO, pgid_of, pids, ppid_of, pss_kb, run
from actors.cgroups import remove_empty_parents
from actors.client import Client, Task
from actors.spec import default_spec
from actors.testing import Daemon, free_port, tear_down

SLEEP = ["/bin/sleep", "1000000"]


class Contactor:
    name = "contactor"

    def __init__(self, work: Path, rootfs: Path, namespace: str) -> None:
        self.work = work
        self.rootfs = rootfs
        self.ns = namespace
        self.counter = 0
        self.sleepers: list[str] = []
        self.env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        work.mkdir()
        conf = work / "contactor.toml"
        state, root, address = work / "state", work / "root", str(work / "contactor.sock")
        conf.write_text(
            f'[daemon]\nstate = "{state}"\nroot = "{root}"\naddress = "{address}"\n'
            f'admin_port = {free_port()}\n[log]\nlevel = "warning"\n'
        )
        self.daemon = Daemon(conf, state, root, address, work / "daemon.log", namespace)
        self.daemon.start()

    def client(self) -> Client:
        return Client(self.daemon.address, namespace=self.ns)

    def _cli(self, *argv: str) -> list[str]:
        """The ``contactor`` command as installed beside this interpreter (what a user runs, as
        ``ctr`` is for containerd), else ``python -m actors.cli``, which also imports runpy."""
        command = Path(sys.executable).with_name("contactor")
        prefix = [str(command)] if os.access(command, os.X_OK) else [sys.executable, "-m", "actors.cli"]
        return [*prefix, "--config", str(self.daemon.config), "-n", self.ns, *argv]

    def _next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def _create(self, c: Client, cid: str, args: list[str]) -> None:
        spec = default_spec(args, hostname=cid, cgroups_path=f"/contactor/{self.ns}/{cid}")
        c.create_container(cid, spec, rootfs=str(self.rootfs))
        c.create_task(cid)
        c.start(cid)

    # -- (1) and (2) ---------------------------------------------------------------------------------------
    def run_rm(self) -> float:
        argv = self._cli("run", "--rm", "--rootfs", str(self.rootfs), self._next("cli"), "/bin/true")
        start = time.perf_counter()
        run(argv, env=self.env)
        return time.perf_counter() - start

    def lifecycle(self, cid: str | None = None) -> float:
        """`run --rm` through the client: ``Client.run``, one request (the daemon takes the steps)."""
        cid = cid or self._next("py")
        spec = default_spec(["/bin/true"], hostname=cid)
        start = time.perf_counter()
        with self.client() as c:
            c.run(cid, spec, rootfs=str(self.rootfs))
        return time.perf_counter() - start

    def calls(self, cid: str | None = None) -> float:
        """The same lifecycle in separate calls: create the record and the task, start, wait, delete both."""
        cid = cid or self._next("pc")
        start = time.perf_counter()
        with self.client() as c:
            self._create(c, cid, ["/bin/true"])
            c.wait(cid)
            c.delete_task(cid)
            c.delete_container(cid)
        return time.perf_counter() - start

    # -- (3) -----------------------------------------------------------------------------------------------
    def concurrent(self, n: int) -> float:
        """Wall time of ``n`` client lifecycles at once, each on its own connection and thread."""
        ids = [self._next("cc") for _ in range(n)]
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(self.lifecycle, ids))
        return time.perf_counter() - start

    # -- the running population for (4), (6), (7) ----------------------------------------------------------
    def grow(self, n: int) -> None:
        with self.client() as c:
            while len(self.sleepers) < n:
                cid = self._next("s")
                self._create(c, cid, SLEEP)
                self.sleepers.append(cid)

    def memory(self) -> tuple[float, float]:
        """(mean PSS kB per running container, the daemon's own PSS kB).

        A container's share is its shim plus its part of the TaskHost processes that run the
        TaskActors (their PSS shared out over the containers they serve).
        """
        with self.client() as c:
            tasks = [t for t in c.list_tasks() if t.status == "running"]
        own = float(sum(pss_kb(p) for p in self.daemon_pids(tasks)))
        if not tasks:
            return 0.0, own
        hosts = {t.actor_pid for t in tasks}
        return (sum(pss_kb(t.shim_pid) for t in tasks) + sum(pss_kb(p) for p in hosts)) / len(tasks), own

    def daemon_pids(self, tasks: Sequence[Task]) -> list[int]:
        """The daemon's own processes: supervisor, actor system, shim factory and its spare, less
        the TaskHosts that run the tasks' TaskActors (an empty, warm host counts as the daemon's)."""
        pgid = self.daemon.actor_pgid()
        own = {p for p in pids() if pgid_of(p) == pgid} if pgid else set()
        if self.daemon.proc is not None:
            own.add(self.daemon.proc.pid)
        with contextlib.suppress(OSError, ValueError):
            factory = int((self.daemon.state / "shim-factory.pid").read_text().split()[0])
            own.add(factory)
            # The spare stays in the factory's session; a shim has a session of its own.
            own.update(p for p in pids() if ppid_of(p) == factory and pgid_of(p) == pgid_of(factory))
        return sorted(own - {t.actor_pid for t in tasks})

    # -- (5) -----------------------------------------------------------------------------------------------
    def death(self) -> float:
        cid = self._next("d")
        with self.client() as c, self.client() as listener:
            self._create(c, cid, SLEEP)
            shim = next(t.shim_pid for t in c.list_tasks() if t.id == cid)
            seen = threading.Event()
            stamp: list[float] = []

            def listen() -> None:
                for _ in listener.events([f'topic=="/tasks/exit",event.container_id=={cid}']):
                    stamp.append(time.perf_counter())
                    seen.set()
                    return

            threading.Thread(target=listen, daemon=True).start()
            time.sleep(0.3)  # the subscription reaches the Exchange
            start = time.perf_counter()
            os.kill(shim, signal.SIGKILL)
            if not seen.wait(30):
                raise RuntimeError(f"no /tasks/exit for {cid} 30 s after its shim's SIGKILL")
            deadline = time.monotonic() + 30
            while any(t.id == cid for t in c.list_tasks()) and time.monotonic() < deadline:
                time.sleep(0.02)
            c.delete_container(cid)
        return stamp[0] - start

    # -- (6) -----------------------------------------------------------------------------------------------
    def restart(self) -> float:
        """SIGTERM the daemon, start it again: seconds from its start until every sleeper is listed."""
        self.daemon.stop()
        want = set(self.sleepers)
        start = time.perf_counter()
        self.daemon.start()
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(Exception), self.client() as c:
                if want <= {t.id for t in c.list_tasks() if t.status == "running"}:
                    return time.perf_counter() - start
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all of {len(want)} tasks listed 120 s after a restart")
            time.sleep(0.005)

    # -- (7) -----------------------------------------------------------------------------------------------
    def ls_cli(self) -> float:
        start = time.perf_counter()
        out = run(self._cli("tasks", "ls"), env=self.env)
        took = time.perf_counter() - start
        if out.count("\n") < len(self.sleepers):
            raise RuntimeError(f"tasks ls listed {out.count(chr(10))} lines for {len(self.sleepers)} tasks")
        return took

    def ls_client(self) -> float:
        start = time.perf_counter()
        with self.client() as c:
            n = len(c.list_tasks())
        took = time.perf_counter() - start
        if n < len(self.sleepers):
            raise RuntimeError(f"list_tasks gave {n} tasks for {len(self.sleepers)}")
        return took

    # -- the end -------------------------------------------------------------------------------------------
    def shrink(self) -> None:
        """Remove every running sleeper (a few at a time, as the population can be 500)."""

        def rm(cid: str) -> None:
            with self.client() as c:
                c.delete_task(cid, force=True)
                c.delete_container(cid)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(rm, self.sleepers))
        self.sleepers.clear()

    def close(self) -> list[str]:
        """Remove all the daemon ran and the daemon; what had to be removed by force."""
        with contextlib.suppress(Exception):
            self.shrink()
        problems: list[str] = tear_down(self.daemon)
        remove_empty_parents(f"/contactor/{self.ns}")
        return problems
