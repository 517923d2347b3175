"""The workload of a chaos run: several clients creating, starting, exec'ing into, killing and
deleting tasks in random order, each from its own thread and its own connections; now and then a
client runs a short container in one request (``Client.run`` with rm) and checks its exit status.

Each client owns its tasks (ids ``w<client>t<n>``), so two clients never race
on one task; the daemon still sees them all at once.  Errors are expected
while faults hit (a restarting daemon is Unavailable, a task whose shim died
is NotFound): they are counted by category, and the client carries on.  Only
an error that is not one of the daemon's categories counts as unexpected.
What each task was told to do (the status it exits with, the execs and their
statuses, every SIGKILL sent) goes into the ledger for the invariant checks.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from pathlib import Path
from typing import Any

from actors.chaos.ledger import Ledger
from actors.errdefs import AlreadyExists, ContactorError, NotFound, Unavailable
from actors.spec import default_spec

__all__ = ["Workload", "make_task"]


def make_task(client: Any, rootfs: Path, cid: str, args: list[str]) -> None:
    """Container record, task, start; a record that already exists (an earlier try got through) is kept."""
    spec = default_spec(args, hostname=cid, cgroups_path=f"/contactor/{client.namespace}/{cid}")
    with contextlib.suppress(AlreadyExists):
        client.create_container(cid, spec, rootfs=str(rootfs))


class Workload:
    def __init__(self, daemon: Any, ledger: Ledger, seed: int, clients: int, tasks: int, rootfs: Path) -> None:
        self.daemon = daemon
        self.ledger = ledger
        self.rootfs = rootfs
        self.stop = threading.Event()
        per_client = max(1, -(-tasks // clients))
        self.threads = [
            threading.Thread(target=self._client, args=(i, random.Random(seed * 1009 + i), per_client),
                             name=f"chaos-client-{i}", daemon=True)
            for i in range(clients)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self, timeout: float = 180.0) -> bool:
        """Stop the clients after their current call; True if all stopped within ``timeout``."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    # -- one client --------------------------------------------------------------------------------------
    def _client(self, index: int, rng: random.Random, quota: int) -> None:
        mine: list[str] = []
        made = runs = 0
        while not self.stop.is_set():
            if made < quota and rng.random() < 0.08:
                runs += 1
                self._guarded("run", self._run, f"w{index}r{runs}", rng)
            elif made < quota and (not mine or rng.random() < 0.35):
                made += 1
                cid = f"w{index}t{made}"
                mine.append(cid)
                self._guarded("create", self._create, cid, rng)
            elif mine:
                cid = rng.choice(mine)
                op = rng.choices(["exec", "kill", "delete", "state"], [4, 1, 2, 2])[0]
                if op == "delete":
                    if self._guarded("delete", self._delete, cid):
                        mine.remove(cid)
                elif op == "exec":
                    self._guarded("exec", self._exec, cid, rng)
                elif op == "kill":
                    self._guarded("kill", self._kill, cid)
                else:
                    self._guarded("state", self._state, cid)
            else:
                self.stop.wait(0.2)  # its share is done
            self.stop.wait(rng.uniform(0.02, 0.2))

    def _guarded(self, name: str, fn: Any, *args: Any) -> bool:
        """Run one operation; True if it reached its end (a task that is gone counts as deleted)."""
        self.ledger.op(name)
        try:
            with self.daemon.client() as c:
                fn(c, *args)
            return True
        except NotFound:
            self.ledger.error("not_found")
            return name == "delete"
        except Unavailable:
            self.ledger.error("unavailable")
            self.stop.wait(0.3)
        except ContactorError as exc:
            self.ledger.error(exc.category)
        except Exception as exc:  # anything else is a finding, reported as such
            self.ledger.error("unexpected", f"{name}: {type(exc).__name__}: {exc}")
        return False

    def _create(self, c: Any, cid: str, rng: random.Random) -> None:
        if rng.random() < 0.5:
            rec = self.ledger.task(cid, None)
            args = ["/bin/sleep", "1000"]
        else:
            status = rng.randint(1, 120)
            rec = self.ledger.task(cid, status)
            args = ["/bin/sh", "-c", f"sleep {rng.uniform(0.5, 4):.2f}; exit {status}"]
        make_task(c, self.rootfs, cid, args)
        rec.container_created = True
        task = c.create_task(cid)
        self.ledger.saw_shim(cid, task.shim_pid)
        c.start(cid)

    def _run(self, c: Any, cid: str, rng: random.Random) -> None:
        """A container run in one request with rm: its answer must be its own exit status, and (unless a
        fault cut the run short) nothing of it is left; the record is the run's, never kept."""
        status = rng.randint(0, 120)
        rec = self.ledger.task(cid, status)
        spec = default_spec(["/bin/sh", "-c", f"sleep {rng.uniform(0, 0.5):.2f}; exit {status}"], hostname=cid,
                            cgroups_path=f"/contactor/{c.namespace}/{cid}")  # fmt: skip
        got = c.run(cid, spec, rootfs=str(self.rootfs))["exit_status"]
        if got != status and not (got == 137 and rec.sigkilled):
            self.ledger.error("unexpected", f"run {cid}: answered exit status {got}, exits with {status}")

    def _exec(self, c: Any, cid: str, rng: random.Random) -> None:
        rec = self.ledger.task(cid)
        eid = f"e{len(rec.execs) + 1}"
        status = rng.randint(1, 120)
        with self.ledger.lock:
            rec.execs[eid] = status
        c.exec(cid, eid, ["/bin/sh", "-c", f"exit {status}"])
        c.start(cid, exec_id=eid)
        c.wait(cid, exec_id=eid, timeout=30)
        c.delete_task(cid, exec_id=eid)

    def _kill(self, c: Any, cid: str) -> None:
        self.ledger.mark_sigkilled(cid)
        c.kill(cid, 9)

    def _state(self, c: Any, cid: str) -> None:
        c.state(cid)

    def _delete(self, c: Any, cid: str) -> None:
        st = c.state(cid)
        if st["status"] != "stopped":
            # A running task is killed by the forced delete; a created one's init by the runtime's delete.
            self.ledger.mark_sigkilled(cid)
        c.delete_task(cid, force=st["status"] in ("running", "paused"))
