"""The faults a chaos run injects, one method per kind, each with its own idea of "recovered".

Every fault acts on the real thing: signals to the real shim, container init,
actor, Thespian admin or daemon process (pids from the daemon's ``health``
and task list, the admin as the Supervisor actor's parent); daemon restarts
(crash or SIGTERM) while a create or delete is in the runtime; the runtime
wrapper failing or hanging one call; the state dir's tmpfs filled up; a
container that forks a hundred children and exits.  Each returns once the
daemon serves normally again (or a bound passed), and records how long that
took.  ``release()`` undoes whatever is still in force (a stopped shim, a
full disk, an armed wrapper), also after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import psutil

from actors.chaos.ledger import Ledger
from actors.chaos.runtime_wrapper import RuntimeWrapper
from actors.chaos.workload import make_task
from actors.errdefs import ContactorError

__all__ = ["FAULT_KINDS", "Injector", "RECOVERY_TIMEOUT"]

FAULT_KINDS: Final = (
    "shim-kill", "shim-stop", "init-kill", "task-actor-kill", "runtime-kill", "metadata-kill",
    "admin-kill", "daemon-kill", "restart-mid-create", "restart-mid-delete", "runtime-fail",
    "runtime-hang", "state-full", "fork-100",
)  # fmt: skip
RECOVERY_TIMEOUT: Final = 90.0
ROLES: Final = frozenset({"exchange", "metadata", "monitor", "runtime", "gateway"})
FILLER: Final = ".chaos-filler"  # hidden: restore skips names that start with a dot
FORK_100: Final = "i=0; while [ $i -lt 100 ]; do sleep 1000 & i=$((i+1)); done; exit 7"


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (ContactorError, OSError) as exc:
            if os.environ.get("CHAOS_DEBUG"):
                print("wait_until:", exc)
        time.sleep(0.05)
    return False


class Injector:
    def __init__(self, daemon: Any, ledger: Ledger, rng: random.Random, rootfs: Path,
                 wrapper: RuntimeWrapper) -> None:  # fmt: skip
        self.daemon = daemon
        self.ledger = ledger
        self.rng = rng
        self.rootfs = rootfs
        self.wrapper = wrapper
        self.stopped: set[int] = set()
        self.counter = 0
        self.lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        with self.daemon.client() as c:
            return dict(c.health())

    def healthy(self) -> bool:
        with self.daemon.client() as c:
            h = c.health()
            c.list_tasks()
            return set(h["ready"]) >= ROLES

    def restored(self) -> bool:
        """Every bundle on disk has its task listed again, none still ``restoring`` (a restore is complete)."""
        bundles = self.daemon.state / self.daemon.namespace
        on_disk = {p.name for p in bundles.iterdir() if not p.name.startswith(".")} if bundles.is_dir() else set()
        with self.daemon.client() as c:
            listed = c.list_tasks()
        return on_disk <= {t.id for t in listed} and all(t.status != "restoring" for t in listed)

    def _new_id(self) -> str:
        self.counter += 1
        return f"f{self.counter}"

    def _own_task(self, args: list[str], natural: int | None, start: bool = True) -> str:
        cid = self._new_id()
        rec = self.ledger.task(cid, natural)
        with self.daemon.client() as c:
            make_task(c, self.rootfs, cid, args)
            rec.container_created = True
            task = c.create_task(cid)
            self.ledger.saw_shim(cid, task.shim_pid)
            if start:
                c.start(cid)
        return cid

    def _target(self) -> Any:
        """A running task, the workload's if there is one, else one of our own."""
        with self.daemon.client() as c:
            running = [t for t in c.list_tasks() if t.status == "running" and t.pid > 0]
        if running:
            return self.rng.choice(running)
        cid = self._own_task(["/bin/sleep", "1000"], None)
        with self.daemon.client() as c:
            return next(t for t in c.list_tasks() if t.id == cid)

    def _task(self, cid: str) -> Any:
        with self.daemon.client() as c:
            return next((t for t in c.list_tasks() if t.id == cid), None)

    def restart_daemon(self, crash: bool) -> None:
        """Crash (SIGKILL of every daemon process, never a shim) or stop, then start it again."""
        if crash:
            self.daemon.kill_all()
        else:
            self.daemon.stop()
        self.daemon.start()

    # -- the faults -----------------------------------------------------------------------------------------
    def inject(self, kind: str) -> None:
        method = getattr(self, "f_" + kind.replace("-", "_"))
        method()

    def _done(self, rec: Any, predicate: Callable[[], bool]) -> None:
        ok = wait_until(predicate, RECOVERY_TIMEOUT)
        rec.recovered_after = time.monotonic() - rec.started if ok else None

    def f_shim_kill(self) -> None:
        t = self._target()
        self.ledger.task(t.id).sigkilled = True  # the daemon reports 137 for a container it had to kill
        self.ledger.saw_shim(t.id, t.shim_pid)
        rec = self.ledger.fault("shim-kill", t.id)
        with contextlib.suppress(ProcessLookupError):
            os.kill(t.shim_pid, signal.SIGKILL)
        self._done(rec, lambda: self._task(t.id) is None)

    def f_shim_stop(self) -> None:
        t = self._target()
        self.ledger.saw_shim(t.id, t.shim_pid)
        rec = self.ledger.fault("shim-stop", t.id)
        with self.lock:
            self.stopped.add(t.shim_pid)
        os.kill(t.shim_pid, signal.SIGSTOP)
        time.sleep(self.rng.uniform(0.5, 3.0))
        os.kill(t.shim_pid, signal.SIGCONT)
        with self.lock:
            self.stopped.discard(t.shim_pid)

        def answers() -> bool:
            with self.daemon.client() as c:
                c.state(t.id)
            return True

        self._done(rec, lambda: self._task(t.id) is None or answers())

    def f_init_kill(self) -> None:
        t = self._target()
        self.ledger.mark_sigkilled(t.id)
        self.ledger.task(t.id).sigkilled = True
        rec = self.ledger.fault("init-kill", t.id)
        with contextlib.suppress(ProcessLookupError):
            os.kill(t.pid, signal.SIGKILL)

        def settled() -> bool:
            now = self._task(t.id)
            return now is None or now.status == "stopped"

        self._done(rec, settled)

    def f_task_actor_kill(self) -> None:
        """SIGKILL of the process running the task's TaskActor: its TaskHost, with every TaskActor in it."""
        t = self._target()
        rec = self.ledger.fault("task-actor-kill", t.id)
        with contextlib.suppress(ProcessLookupError):
            os.kill(t.actor_pid, signal.SIGKILL)

        def replaced() -> bool:
            now = self._task(t.id)
            return now is None or now.actor_pid not in (0, t.actor_pid)

        self._done(rec, replaced)

    def _kill_role(self, kind: str, role: str) -> None:
        victim = int(self.health()["pids"][role])
        rec = self.ledger.fault(kind, role)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        self._done(rec, lambda: self.healthy() and int(self.health()["pids"].get(role, victim)) != victim)

    def f_runtime_kill(self) -> None:
        self._kill_role("runtime-kill", "runtime")

    def f_metadata_kill(self) -> None:
        self._kill_role("metadata-kill", "metadata")

    def f_admin_kill(self) -> None:
        supervisor = int(self.health()["pids"]["supervisor"])
        admin = psutil.Process(supervisor).ppid()
        rec = self.ledger.fault("admin-kill", "admin")
        with contextlib.suppress(ProcessLookupError):
            os.kill(admin, signal.SIGKILL)
        self._done(rec, lambda: self.healthy() and int(self.health()["pids"]["supervisor"]) != supervisor)

    def f_daemon_kill(self) -> None:
        """SIGKILL of the daemon process alone; its service manager (here: us) starts it again."""
        rec = self.ledger.fault("daemon-kill", "daemon")
        proc = self.daemon.proc
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.daemon.proc = None
        self.daemon.start()
        self._done(rec, self.healthy)

    def _restart_during(self, kind: str, command: str, cid: str, call: Callable[[Any], Any]) -> None:
        """Hang ``command`` in the runtime, make ``call`` reach it, restart the daemon meanwhile."""
        crash = self.rng.random() < 0.5
        rec = self.ledger.fault(kind, cid, "crash" if crash else "sigterm")
        self.wrapper.hang_next(command, self.rng.uniform(1.0, 3.0))

        def client_call() -> None:
            with contextlib.suppress(ContactorError), self.daemon.client() as c:
                call(c)

        caller = threading.Thread(target=client_call, daemon=True)
        caller.start()
        if not wait_until(lambda: self.wrapper.hanging(command), 20):
            rec.note += ", the call never reached the runtime"
            self.wrapper.disarm()
        rec.started = time.monotonic()  # the fault is the restart: recovery counts from it
        self.restart_daemon(crash)
        caller.join(30)
        self._done(rec, self.healthy)

    def f_restart_mid_create(self) -> None:
        cid = self._new_id()
        rec = self.ledger.task(cid, None)
        with self.daemon.client() as c:
            make_task(c, self.rootfs, cid, ["/bin/sleep", "1000"])
        rec.container_created = True
        self._restart_during("restart-mid-create", "create", cid, lambda c: c.create_task(cid))

    def f_restart_mid_delete(self) -> None:
        cid = self._own_task(["/bin/sleep", "1000"], None)
        self.ledger.mark_sigkilled(cid)
        self._restart_during("restart-mid-delete", "delete", cid, lambda c: c.delete_task(cid, force=True))

    def _runtime_fault(self, kind: str, arm: Callable[[str], None]) -> None:
        command = self.rng.choice(["create", "start", "exec", "delete"])
        rec = self.ledger.fault(kind, command)
        try:
            if command == "create":
                arm("create")
                cid = self._own_task(["/bin/sleep", "1000"], None)
            else:
                cid = self._own_task(["/bin/sleep", "1000"], None, start=command != "start")
                arm(command)
                with self.daemon.client() as c:
                    if command == "start":
                        c.start(cid)
                    elif command == "exec":
                        self.ledger.task(cid).execs["x"] = 5
                        c.exec(cid, "x", ["/bin/sh", "-c", "exit 5"])
                        c.start(cid, exec_id="x")
                        c.wait(cid, exec_id="x", timeout=30)
                    else:
                        self.ledger.mark_sigkilled(cid)
                        c.delete_task(cid, force=True)
            rec.target += ": went through"
        except ContactorError as exc:
            rec.target += f": {exc.category}"
        finally:
            self.wrapper.disarm()
        self._done(rec, self.healthy)

    def f_runtime_fail(self) -> None:
        self._runtime_fault("runtime-fail", self.wrapper.fail_next)

    def f_runtime_hang(self) -> None:
        self._runtime_fault("runtime-hang", lambda cmd: self.wrapper.hang_next(cmd, self.rng.uniform(1.0, 4.0)))

    def f_state_full(self) -> None:
        rec = self.ledger.fault("state-full", "state dir")
        fill(self.daemon.state / FILLER)
        try:
            with contextlib.suppress(ContactorError):
                self._own_task(["/bin/sleep", "1000"], None)  # refused cleanly, or fits in what is left
            time.sleep(self.rng.uniform(0.5, 2.0))
        finally:
            (self.daemon.state / FILLER).unlink(missing_ok=True)
        self._done(rec, self.healthy)

    def f_fork_100(self) -> None:
        cid = self._own_task(["/bin/sh", "-c", FORK_100], 7)
        rec = self.ledger.fault("fork-100", cid)

        def exited() -> bool:
            with self.daemon.client() as c:
                c.wait(cid, timeout=30)
            return True

        self._done(rec, exited)

    def release(self) -> None:
        """Undo what is still in force: SIGCONT stopped shims, free the state fs, disarm the runtime."""
        with self.lock:
            stopped, self.stopped = set(self.stopped), set()
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        (self.daemon.state / FILLER).unlink(missing_ok=True)
        self.wrapper.disarm()


def fill(path: Path) -> None:
    """Fill the filesystem holding ``path`` with one file, to the last block."""
    st = os.statvfs(path.parent)
    with open(path, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize)
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]
