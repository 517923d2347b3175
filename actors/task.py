"""TaskActor: one per container; owns that container's shim.

It starts the shim (or, on restore, reconnects to it), forwards task calls to
it, turns shim events into envelopes on the Exchange, and watches two fds with
ThespianWatch: an eventfd the shim connection's reader pokes on every event,
and the shim's pidfd (which works for a process that is not our child, so it
works after a daemon restart too).

A shim death (its pidfd readable, or its connection gone and the pid gone) is
handled as the seed's ``cleanupAfterDeadShim``: stop the monitor, delete the
container with the runtime under the namespace's root, unmount the rootfs,
publish /tasks/exit (the status the shim recorded in the bundle if the
container had exited, else 137), delete the bundle, publish /tasks/delete,
tell the RuntimeActor, exit.  Exactly once: our own delete or shutdown of a
shim is not a death, and what was published is remembered in the bundle so a
restored TaskActor never publishes it again.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from thespian.actors import ActorExitRequest

from actors import restart, task_network
from actors._actor import ContactorActor, error_reply
from actors.bundle import delete_bundle, write_atomic
from actors.cgroups import Host, detect, placement, remove_empty_parents, remove_task_cgroups
from actors.errdefs import ContactorError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from actors.events import envelope
from actors.ksm import mark_mergeable
from actors.messages import (
    Answer,
    Ask,
    CreateTask,
    Envelope,
    ErrorReply,
    Monitor,
    Peers,
    Publish,
    Respawn,
    Stdio,
    StopMonitor,
    TaskGone,
    TaskInfo,
    TaskReady,
    TaskReply,
    TaskRequest,
    TaskSetup,
)
from actors.mount import unmount_all
from actors.procs import is_alive_process, read_pid_file, wait_exit
from actors.runc import Runtime
from actors.shim.client import DEFAULT_SHIM, ShimClient, start_shim

__all__ = ["TaskActor", "DEAD_SHIM_STATUS"]

DEAD_SHIM_STATUS: Final = 128 + 9
PR_SET_PDEATHSIG: Final = 1
STATE_FILE_SIZE: Final = 4096
FORWARDED: Final = frozenset({"exec", "pids", "state", "close_io", "resize_pty", "update"})


def shim_command(name: str) -> list[str]:
    """The configured shim program, on PATH or beside this interpreter; else ``python -m actors.shim``."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    return [found] if found else list(DEFAULT_SHIM)


def live_shim(bundle: str | Path) -> int:
    """The pid of the bundle's shim if that very process still runs, else 0.

    ``shim.pid`` holds the shim's pid and kernel start time: a reused pid is never
    taken for the shim (and a shim forked from the factory has no telling cmdline).
    """
    try:
        pid, start = read_pid_file(Path(bundle) / "shim.pid")
    except (OSError, ValueError, IndexError):
        return 0
    return pid if is_alive_process(pid, start) else 0


_HOST: list[Host] = []


def _host() -> Host:
    """The cgroup layout of this host, detected once per process."""
    if not _HOST:
        _HOST.append(detect())
    return _HOST[0]


def _die_with_parent() -> None:
    """A TaskActor dies with its RuntimeActor: the new RuntimeActor restores every task from its
    bundle, and an orphaned TaskActor beside the new one would publish every event twice."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _container_pidfd(pid: int, namespace: str, cid: str) -> int | None:
    """A pidfd of ``pid`` if it is still this container's init (its cgroup names the task)."""
    if pid <= 0:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            if f"/{namespace}/{cid}" in f.read():
                return fd
    except OSError:
        pass
    os.close(fd)
    return None


class TaskActor(ContactorActor):
    role = "task"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _die_with_parent()
        self.setup: TaskSetup | None = None
        self.peers: Peers | None = None
        self.client: ShimClient | None = None
        self.notify_fd = -1
        self.pidfd = -1
        self.shim_pid = 0
        self.info: TaskInfo | None = None
        self.waiters: dict[str, list[tuple[Ask, Any]]] = {}
        self.state: dict[str, Any] = {"seq": 0, "exit_published": False, "created_at": time.time()}
        self.closing = False  # we are deleting or shutting the shim down ourselves
        self.gone = False

    # -- set-up -----------------------------------------------------------------------------------------
    def on_TaskSetup(self, msg: TaskSetup, sender: Any) -> None:
        mark_mergeable()  # most of our private pages are copies of the RuntimeActor's: see actors.ksm
        # Everything inherited from the RuntimeActor lives as long as we do: out of the collector's
        # reach, or the first full collection (after a few thousand requests) writes to every
        # object and turns each of their pages into our own copy (6.5 -> 13.6 MB, measured).
        gc.freeze()
        self.setup, self.peers = msg, msg.peers
        self.log = self.log.bind(namespace=msg.namespace, id=msg.id)
        self.runtime_parent = sender
        if msg.restore:
            self._restore()
        else:
            assert msg.create is not None
            self._create(msg.create, msg.create.reply_to)

    def _runtime_binary(self) -> str:
        """The configured runtime binary when this task uses the configured runtime, else its name."""
        assert self.setup is not None
        rt = self.setup.config.runtime
        if rt.binary is not None and self.setup.runtime_name == rt.name:
            return str(rt.binary)
        return shutil.which(self.setup.runtime_name) or self.setup.runtime_name

    @property
    def bundle(self) -> Path:
        assert self.setup is not None
        return Path(self.setup.bundle)

    def _runtime_root(self) -> str:
        assert self.setup is not None
        return str(Path(self.setup.config.runtime_root) / self.setup.namespace)

    def _save_state(self) -> None:
        """task.json: what was published (so a restored TaskActor never publishes it again).

        Kept at a page or more (JSON ignores the trailing blanks), so that on a full state
        filesystem, where the atomic rename cannot get a new file, the old copy is
        overwritten in place: forgetting what was published would publish it twice.
        """
        path = self.bundle / "task.json"
        data = json.dumps(self.state).encode()
        try:
            write_atomic(path, data.ljust(STATE_FILE_SIZE))
        except OSError as exc:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    size = os.fstat(fd).st_size
                    if len(data) > size:
                        raise exc
                    os.pwrite(fd, data.ljust(size), 0)
                finally:
                    os.close(fd)
            except OSError as final:
                self.log.error("task_state_not_saved", error=str(final))

    def _connect(self, since: int | None) -> None:
        assert self.setup is not None
        self.notify_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.client = ShimClient(str(self.bundle / "shim.sock"), notify_fd=self.notify_fd)
        self.pidfd = os.pidfd_open(self.shim_pid)
        self.watched = [self.notify_fd, self.pidfd]
        self.client.subscribe(since=since)

    def _create(self, ask: Ask, reply_to: Any) -> None:
        setup = self.setup
        assert setup is not None and isinstance(ask.body, CreateTask)
        cfg = setup.config
        stdio = ask.body.stdio
        try:
            self._setup_network()
            factory = Path(cfg.daemon.state) / "shim-factory.sock"
            handle = start_shim(
                setup.namespace, setup.id, str(self.bundle), self._runtime_root(),
                runtime=self._runtime_binary(), shim=shim_command(cfg.runtime.shim), debug=cfg.runtime.shim_debug,
                factory=str(factory) if factory.exists() else None, systemd_cgroup=cfg.cgroups.driver == "systemd",
            )  # fmt: skip
            self.shim_pid = handle.pid
            self._connect(since=0)
            assert self.client is not None
            params: dict[str, Any] = {"stdin": stdio.stdin, "stdout": stdio.stdout, "stderr": stdio.stderr,
                                      "terminal": stdio.terminal}  # fmt: skip
            if setup.rootfs:
                params["rootfs"] = [{"type": "bind", "source": setup.rootfs, "options": ["rbind"]}]
            # What a restart needs to create the container again, kept with the task.
            self.state.update(create=params, policy=setup.restart_policy, restarts=setup.restarts)
            pid = int(self.client.call("create", **params)["pid"])
            if setup.start:  # made again by its restart policy after its shim died
                self.client.call("start")
                self.state["started_at"] = time.time()
        except Exception as exc:
            self.log.warning("task_create_failed", error=str(exc))
            self._abandon_create()
            self.send(reply_to, Answer(ask.corr, error_reply(exc)))
            return
        self._save_state()
        self.info = self._make_info(pid, "running" if setup.start else "created")
        io = {
            "stdin": stdio.stdin,
            "stdout": stdio.stdout,
            "stderr": stdio.stderr,
            "terminal": stdio.terminal,
        }
        self._publish("/tasks/create", {"container_id": setup.id, "bundle": str(self.bundle), "rootfs": [],
                                        "io": io, "checkpoint": "", "pid": pid})  # fmt: skip
        self._monitor(pid)
        self.send(self.runtime_parent, TaskReady(self.info, reply_to, Answer(ask.corr, self.info)))
        self.log.info("task_created", pid=pid, shim_pid=self.shim_pid)
        if setup.start:
            self._publish("/tasks/start", {"container_id": setup.id, "pid": pid})
            self._publish("/tasks/restart", {"container_id": setup.id, "pid": pid, "restarts": setup.restarts})
            self.log.info("task_restarted", pid=pid, restarts=setup.restarts, after="shim died")

    def _abandon_create(self) -> None:
        """A create that failed leaves nothing: shim down, bundle gone, task dropped."""
        self.closing = True
        if self.client is not None:
            with contextlib.suppress(ContactorError):
                self.client.call("shutdown", call_timeout=30, force=True)
        self._wait_shim_gone(10)
        self._close_fds()
        with contextlib.suppress(Exception):
            self._cleanup_runtime_state()
        self._teardown_network()
        with contextlib.suppress(Exception):
            delete_bundle(self.bundle)
        self._leave("create failed")

    def _restore(self) -> None:
        setup = self.setup
        assert setup is not None
        with contextlib.suppress(OSError, ValueError):
            self.state.update(json.loads((self.bundle / "task.json").read_text()))
        self.shim_pid = live_shim(self.bundle)
        if not self.shim_pid:
            self.log.warning("restore_found_dead_shim")
            self._cleanup_after_dead_shim()
            return
        announced = (self.bundle / "task.json").exists()  # written once the create had returned
        try:
            self._connect(since=int(self.state.get("seq", 0)))
            assert self.client is not None
            st = self.client.call("state")
        except (FailedPrecondition, NotFound):
            # A shim without a container: the daemon died before its create reached the shim.
            self.log.warning("restore_found_shim_without_container")
            self._abandon_create()
            return
        except ContactorError as exc:
            self.log.warning("restore_connect_failed", error=str(exc))
            self._close_fds()
            if live_shim(self.bundle):
                # Alive but not answering: leave it to a later restore rather than kill a container.
                self._leave("shim not answering")
                return
            self._cleanup_after_dead_shim()
            return
        self._restored(st, announced)

    def _restored(self, st: dict[str, Any], announced: bool) -> None:
        """Take over a shim found alive, whatever the daemon was doing with it when it died."""
        setup = self.setup
        assert setup is not None and self.client is not None
        if st["status"] == "deleted":
            # The daemon died in the middle of a delete: finish it.
            self.closing = True
            self._drain_events()
            self._finish_delete({"pid": st["pid"], "exit_status": st["exit_status"],
                                 "exited_at": st["exited_at"]})  # fmt: skip
            return
        if st["status"] == "created" and int(st["pid"]) == 0:
            # The daemon died while the shim was creating the container: wait for the create's end.
            self.wakeupAfter(0.1, payload="await_create")
            return
        self.info = self._make_info(
            int(st["pid"]), str(st["status"]), int(st["exit_status"]), float(st["exited_at"])
        )
        if not announced:
            self._save_state()
            self._publish("/tasks/create", {"container_id": setup.id, "bundle": str(self.bundle), "rootfs": [],
                                            "io": {}, "checkpoint": "", "pid": self.info.pid})  # fmt: skip
        if st["status"] in ("running", "paused", "created"):
            self._monitor(int(st["pid"]))
        self.send(self.runtime_parent, TaskReady(self.info))
        self.log.info("task_restored", pid=self.info.pid, status=self.info.status, shim_pid=self.shim_pid)
        self._drain_events()

    def _await_create(self) -> None:
        assert self.client is not None
        try:
            st = self.client.call("state")
        except (FailedPrecondition, NotFound):
            self.log.warning("create_failed_while_the_daemon_was_down")
            self._abandon_create()
            return
        except ContactorError as exc:
            self.log.warning("await_create_failed", error=str(exc))
            self.wakeupAfter(0.5, payload="await_create")
            return
        self._restored(st, announced=False)

    def _make_info(self, pid: int, status: str, exit_status: int = -1, exited_at: float = 0.0) -> TaskInfo:
        setup = self.setup
        assert setup is not None
        net = self.state.get("net") or {}
        return TaskInfo(setup.namespace, setup.id, pid, status, exit_status, exited_at, self.shim_pid,
                        str(self.bundle), float(self.state.get("created_at", 0.0)), os.getpid(),
                        int(self.state.get("restarts", 0)), str(net.get("mode", "")),
                        task_network.address_of(net))  # fmt: skip

    def _update_info(self, **changes: Any) -> None:
        if self.info is None:
            return
        self.info = dataclasses.replace(self.info, **changes)
        self.send(self.runtime_parent, TaskReady(self.info))

    # -- events from the shim, and its death --------------------------------------------------------------
    def on_WatchMessage(self, msg: Any, sender: Any) -> None:
        if self.notify_fd in msg.ready:
            with contextlib.suppress(BlockingIOError, OSError):
                os.eventfd_read(self.notify_fd)
            self._drain_events()
        lost = self.pidfd in msg.ready or (self.client is not None and self.client.closed.is_set())
        if not lost or self.closing or self.gone:
            return
        # Death is EOF plus a readable pidfd; a dropped connection to a live shim is re-made.
        if self.pidfd in msg.ready or self._wait_shim_gone(2):
            self._drain_events()
            self._cleanup_after_dead_shim()
        else:
            self.log.warning("shim_connection_lost_reconnecting", shim_pid=self.shim_pid)
            self._close_fds()
            try:
                self._connect(since=int(self.state.get("seq", 0)))
            except ContactorError:
                if self._wait_shim_gone(2):
                    self._cleanup_after_dead_shim()
                else:
                    self.wakeupAfter(1.0, payload="restore")

    def _drain_events(self) -> None:
        client = self.client
        if client is None:
            return
        while True:
            try:
                frame = client.events.get_nowait()
            except Exception:
                return
            self._on_shim_event(frame)

    def _on_shim_event(self, frame: dict[str, Any]) -> None:
        setup = self.setup
        assert setup is not None
        kind, data, seq = frame.get("event"), frame.get("data") or {}, int(frame.get("seq", 0))
        if seq and seq <= int(self.state.get("seq", 0)):
            return  # already handled before a restart
        if kind == "exit":
            is_init = data.get("id") == setup.id
            record = {"container_id": setup.id, "id": data.get("id"), "pid": data.get("pid"),
                      "exit_status": data.get("exit_status"), "exited_at": data.get("exited_at")}  # fmt: skip
            if is_init:
                exit_env = envelope(setup.namespace, "/tasks/exit", record, data.get("exited_at"))
                self._stop_monitor(() if self.state.get("exit_published") else (exit_env,))
                self.state["exit_published"] = True
                self._update_info(status="stopped", exit_status=int(data.get("exit_status", -1)),
                                  exited_at=float(data.get("exited_at", 0.0)))  # fmt: skip
                self._consider_restart(int(data.get("exit_status", -1)), float(data.get("exited_at", 0.0)))
            else:
                self._publish("/tasks/exit", record, timestamp=data.get("exited_at"))
            self._answer_waiters("" if is_init else str(data.get("id")), data)
        elif kind == "exec_added":
            self._publish("/tasks/exec-added", {"container_id": setup.id, "exec_id": data.get("exec_id")})
        elif kind == "exec_started":
            self._publish(
                "/tasks/exec-started",
                {"container_id": setup.id, "exec_id": data.get("exec_id"), "pid": data.get("pid")},
            )
        elif kind == "oom":
            self._publish("/tasks/oom", {"container_id": setup.id})
        if seq:
            self.state["seq"] = seq
            self._save_state()

    def _answer_waiters(self, exec_id: str, data: dict[str, Any]) -> None:
        result = {
            "pid": data.get("pid"),
            "exit_status": data.get("exit_status"),
            "exited_at": data.get("exited_at"),
        }
        for ask, sender in self.waiters.pop(exec_id, []):
            self.answer(ask, sender, TaskReply(result))

    def _wait_shim_gone(self, timeout: float) -> bool:
        if not self.shim_pid:
            return True
        if self.pidfd >= 0:
            return bool(select.select([self.pidfd], [], [], timeout)[0])
        return wait_exit(self.shim_pid, timeout)

    def _cleanup_runtime_state(self, init_pid: int = 0, on_dead: Callable[[], None] | None = None) -> None:
        """Remove the container from the runtime, under this namespace's root (never the default root).

        ``delete --force`` would do, but runc sleeps a fixed 100 ms in it; kill, a wait on
        the init's pidfd and a plain delete do the same at once.  Force stays the fallback.
        ``on_dead`` is called as soon as the init is gone (before runc is even started
        when its pidfd could be had): the exit is told without waiting for runc.
        """
        setup = self.setup
        assert setup is not None
        rt = Runtime(self._runtime_binary(), self._runtime_root(),
                     systemd_cgroup=setup.config.cgroups.driver == "systemd")  # fmt: skip
        kill_all = rt.kill(setup.id, 9, all_processes=True)
        pidfd = _container_pidfd(init_pid, setup.namespace, setup.id)
        try:
            if pidfd is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                if not select.select([pidfd], [], [], 5.0)[0]:
                    subprocess.run(kill_all, capture_output=True, timeout=60, check=False)
                    select.select([pidfd], [], [], 5.0)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if on_dead is not None:
            on_dead()
        # Whatever else lives in the container's cgroup (a shared pid namespace), then the runtime's state.
        subprocess.run(kill_all, capture_output=True, timeout=60, check=False)
        done = subprocess.run(rt.delete(setup.id), capture_output=True, timeout=60, check=False)
        if done.returncode != 0 and b"does not exist" not in done.stderr:
            subprocess.run(rt.delete(setup.id, force=True), capture_output=True, timeout=60, check=False)

    def _cleanup_after_dead_shim(self) -> None:
        setup = self.setup
        assert setup is not None
        if live_shim(self.bundle):
            # Never clean up after a shim that lives: that would take its container away.
            self.log.error("cleanup_refused_shim_alive", shim_pid=self.shim_pid)
            self._close_fds()
            self.wakeupAfter(1.0, payload="restore")
            return
        self.log.warning("cleanup_after_dead_shim", shim_pid=self.shim_pid)
        self.closing = True
        self._close_fds()
        pid, status, exited_at = 0, DEAD_SHIM_STATUS, time.time()
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.bundle / "init.pid").read_text())
        with contextlib.suppress(OSError, ValueError, KeyError):
            # The container exited before its shim died: its real status, not an invented one.
            record = json.loads((self.bundle / "init.exit").read_text())
            status, exited_at = int(record["exit_status"]), float(record["exited_at"])
        event = {
            "container_id": setup.id,
            "id": setup.id,
            "pid": pid,
            "exit_status": status,
            "exited_at": exited_at,
        }
        told: list[bool] = []
        # The daemon died before this task's container existed: no process ran, nothing is announced.
        never_ran = not pid and not (self.bundle / "task.json").exists()

        def tell_exit() -> None:
            # The init is gone: its exit goes out now (after its last OOM), the cleanup follows.
            told.append(True)
            envelopes = []
            if not never_ran and not self.state.get("exit_published"):
                envelopes.append(envelope(setup.namespace, "/tasks/exit", event))
                self.state["exit_published"] = True
                self._save_state()
            self._stop_monitor(tuple(envelopes))
            self._answer_waiters("", event)

        try:
            self._cleanup_runtime_state(pid, on_dead=tell_exit)
        except Exception as exc:
            self.log.error("runtime_delete_failed", error=str(exc))
        if not told:
            tell_exit()
        try:
            unmount_all(str(self.bundle / "rootfs"))
        except OSError as exc:
            self.log.error("rootfs_unmount_failed", error=str(exc))
        self._teardown_network()
        self._fail_waiters("the task's shim died")
        try:
            delete_bundle(self.bundle)
        except Exception as exc:
            self.log.error("bundle_delete_failed", error=str(exc))
        self._remove_cgroups()
        if never_ran:
            self._leave("shim died before its container existed")
            return
        self._publish("/tasks/delete", {**event, "id": ""})  # through the Monitor, after the exit
        self._leave("shim died", respawn=self._respawn({k: v for k, v in event.items() if k != "id"}))

    # -- the task's network ---------------------------------------------------------------------------------
    def _setup_network(self) -> None:
        """A bridge task's network, made before its container; ``none`` and ``host`` need nothing."""
        setup = self.setup
        assert setup is not None
        options = setup.network
        if options is None or options.mode != "bridge":
            self.state["net"] = {"mode": options.mode if options else ""}
            return
        # Recorded before anything is made: whoever cleans up after us knows to look.
        self.state["net"] = {"mode": "bridge", "bridge": setup.config.network.bridge}
        self._save_state()
        self.state["net"] = task_network.setup(setup.config, setup.namespace, setup.id, options)
        self._save_state()
        self.log.info("network_ready", address=self.state["net"]["address"], veth=self.state["net"]["veth"])

    def _teardown_network(self) -> None:
        """Remove what the task's network made (before its bundle goes: a crash in between is retried)."""
        setup = self.setup
        assert setup is not None
        record = self.state.get("net")
        for problem in task_network.teardown(setup.config, setup.namespace, setup.id, record):
            self.log.error("network_teardown_failed", problem=problem)

    def _fail_waiters(self, why: str) -> None:
        for waiters in self.waiters.values():
            for ask, sender in waiters:
                self.answer(ask, sender, ErrorReply("unavailable", why))
        self.waiters.clear()

    def _cgroups_path(self) -> str:
        setup = self.setup
        assert setup is not None
        cfg = setup.config.cgroups
        return placement(cfg.driver, str(cfg.parent), setup.namespace, setup.id)

    def _remove_cgroups(self) -> None:
        """The task's cgroup in every hierarchy (whatever the runtime left), then empty parents."""
        setup = self.setup
        assert setup is not None
        parent = str(setup.config.cgroups.parent).rstrip("/")
        path = self._cgroups_path()
        try:
            busy = remove_task_cgroups(_host(), path)
            if busy:
                self.log.error("cgroups_left_busy", paths=[str(p) for p in busy])
            remove_empty_parents(path, keep=parent.count("/"))
        except ContactorError as exc:
            self.log.error("cgroup_removal_failed", error=exc.message)

    def _leave(self, reason: str, reply_to: Any = None, answer: Answer | None = None,
               respawn: Respawn | None = None) -> None:  # fmt: skip
        setup = self.setup
        assert setup is not None
        self.gone = True
        self.watched = []
        self.send(self.runtime_parent, TaskGone(setup.namespace, setup.id, reason, reply_to, answer, respawn))
        self.send(self.myAddress, ActorExitRequest())

    def _close_fds(self) -> None:
        self.watched = []
        if self.client is not None:
            self.client.close()
        for fd in (self.notify_fd, self.pidfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.notify_fd = self.pidfd = -1

    def _publish(self, topic: str, event: dict[str, Any], timestamp: float | None = None) -> None:
        setup, peers = self.setup, self.peers
        assert setup is not None and peers is not None
        # Through the Monitor, like the exit (which waits there for the task's last OOM): one path per
        # task keeps its envelopes in order (Thespian keeps no order between different paths).
        self.send(peers.monitor, Publish(envelope(setup.namespace, topic, event, timestamp)))

    def _monitor(self, pid: int) -> None:
        setup, peers = self.setup, self.peers
        assert setup is not None and peers is not None
        self.send(peers.monitor, Monitor(setup.namespace, setup.id, pid, self._cgroups_path()))

    def _stop_monitor(self, envelopes: tuple[Envelope, ...] = ()) -> None:
        """Stop watching the task's cgroup; ``envelopes`` are published after its last OOM."""
        setup, peers = self.setup, self.peers
        assert setup is not None and peers is not None
        self.send(peers.monitor, StopMonitor(setup.namespace, setup.id, envelopes))

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload == "restore" and not self.gone:
            self._restore()
        elif msg.payload == "await_create" and not self.gone and not self.closing:
            self._await_create()
        elif msg.payload == "restart" and not self.gone and not self.closing:
            self._restart()

    # -- restart policies ----------------------------------------------------------------------------------
    def _consider_restart(self, exit_status: int, exited_at: float) -> None:
        try:
            policy = restart.parse(self.state.get("policy"))
        except ContactorError:
            return
        assert self.setup is not None
        limits = self.setup.config.restart
        started = float(self.state.get("started_at", 0.0))
        if started and exited_at - started >= limits.reset_after:
            self.state["restarts"] = 0  # it ran long enough: count anew
        restarts = int(self.state.get("restarts", 0))
        stopped = bool(self.state.get("stopped_by_client"))
        if self.closing or not restart.should_restart(policy, exit_status, restarts, stopped):
            return
        wait = restart.delay(restarts, limits.base, limits.cap)
        self.log.info("restart_scheduled", restarts=restarts, seconds=wait, exit_status=exit_status)
        self.wakeupAfter(wait, payload="restart")

    def _respawn(self, exit: dict[str, Any]) -> Respawn | None:
        """After a dead shim: what the RuntimeActor needs to make the task again, if its policy wants it."""
        try:
            policy = restart.parse(self.state.get("policy"))
        except ContactorError:
            return None
        if not self.state.get("started_at"):
            return None  # never started: nothing to keep running
        assert self.setup is not None
        limits = self.setup.config.restart
        if float(exit["exited_at"]) - float(self.state["started_at"]) >= limits.reset_after:
            self.state["restarts"] = 0
        restarts = int(self.state.get("restarts", 0))
        stopped = bool(self.state.get("stopped_by_client"))
        if not restart.should_restart(policy, int(exit["exit_status"]), restarts, stopped):
            return None
        create = dict(self.state.get("create") or {})
        stdio = Stdio(str(create.get("stdin", "")), str(create.get("stdout", "")), str(create.get("stderr", "")),
                      bool(create.get("terminal", False)))  # fmt: skip
        wait = restart.delay(restarts, limits.base, limits.cap)
        self.log.info("restart_scheduled", restarts=restarts, seconds=wait, exit_status=exit["exit_status"],
                      after="shim died")  # fmt: skip
        return Respawn(wait, restarts + 1, stdio, exit)

    def _restart(self) -> None:
        setup = self.setup
        assert setup is not None
        if self.client is None or self.state.get("stopped_by_client"):
            return
        try:
            st = self.client.call("state")
            if st["status"] != "stopped":
                return  # started again by someone, or not stopped at all
            self.client.call("delete")
            pid = int(self.client.call("create", **dict(self.state.get("create") or {}))["pid"])
            self.client.call("start")
        except ContactorError as exc:
            self.log.error("restart_failed", error=exc.message)
            return
        restarts = int(self.state.get("restarts", 0)) + 1
        self.state.update(restarts=restarts, exit_published=False, started_at=time.time())
        self._save_state()
        self._monitor(pid)
        self.info = self._make_info(pid, "running")
        self.send(self.runtime_parent, TaskReady(self.info))
        self._publish("/tasks/restart", {"container_id": setup.id, "pid": pid, "restarts": restarts})
        self.log.info("task_restarted", pid=pid, restarts=restarts)

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        self.peers = msg

    # -- requests -------------------------------------------------------------------------------------------
    def ask_TaskRequest(self, msg: TaskRequest, ask: Ask, sender: Any) -> Any:
        if self.client is None or self.gone:
            raise Unavailable(f"task {msg.id} is not available")
        op, params = msg.op, dict(msg.params)
        exec_id = str(params.get("exec_id", ""))
        if op == "wait":
            st = self.client.call("state", exec_id=exec_id)
            if st["status"] in ("stopped", "deleted"):
                return TaskReply(
                    {"pid": st["pid"], "exit_status": st["exit_status"], "exited_at": st["exited_at"]}
                )
            self.waiters.setdefault(exec_id, []).append((ask, sender))
            return None
        if op == "delete":
            return self._delete(params, exec_id, ask, sender)
        if op in FORWARDED:
            return TaskReply(self.client.call(op, **params))
        if op == "start":
            result = self.client.call("start", **params)
            if not exec_id:
                self.state["started_at"] = time.time()
                self._save_state()
                self._update_info(status="running")
                self._publish("/tasks/start", {"container_id": msg.id, "pid": result.get("pid")})
            return TaskReply(result)
        if op == "kill":
            if not exec_id:
                # An explicit kill by a client is never undone by a restart policy.
                self.state["stopped_by_client"] = True
                self._save_state()
            return TaskReply(self.client.call("kill", **params))
        if op in ("pause", "resume"):
            result = self.client.call(op)
            self._update_info(status="paused" if op == "pause" else "running")
            self._publish(f"/tasks/{op}d", {"container_id": msg.id})
            return TaskReply(result)
        if op == "checkpoint":
            result = self.client.call("checkpoint", **params)
            self._publish(
                "/tasks/checkpointed", {"container_id": msg.id, "checkpoint": params.get("image_path", "")}
            )
            return TaskReply(result)
        raise InvalidArgument(f"unknown task operation {op!r}")

    def _delete(self, params: dict[str, Any], exec_id: str, ask: Ask, sender: Any) -> TaskReply | None:
        assert self.client is not None and self.setup is not None
        if exec_id:
            return TaskReply(self.client.call("delete", exec_id=exec_id))
        force = bool(params.get("force", False))
        st = self.client.call("state")
        if st["status"] in ("running", "paused"):
            if not force:
                raise FailedPrecondition(f"task must be stopped before deletion: {st['status']}")
            self.client.call("kill", signal=9, all=True)
            if st["status"] == "paused":
                self.client.call("resume")
            self.client.call("wait", timeout=30)
            self._drain_events()
        self.closing = True
        try:
            result = self.client.call("delete")
        except NotFound:
            result = {"pid": st["pid"], "exit_status": st["exit_status"], "exited_at": st["exited_at"]}
        except ContactorError:
            self.closing = False
            raise
        self._drain_events()
        self._finish_delete(result, ask.reply_to or sender, Answer(ask.corr, TaskReply(result)))
        return None

    def _finish_delete(self, result: dict[str, Any], reply_to: Any = None, answer: Answer | None = None) -> None:
        """The container is deleted in the shim: shut the shim down, remove the rest, publish, leave."""
        assert self.client is not None and self.setup is not None
        with contextlib.suppress(ContactorError):
            self.client.call("shutdown", call_timeout=30)
        if not self._wait_shim_gone(10):
            self.log.error("shim_did_not_exit_after_shutdown", shim_pid=self.shim_pid)
        self._close_fds()
        self._teardown_network()
        delete_bundle(self.bundle)
        self._remove_cgroups()
        event = {"container_id": self.setup.id, "pid": result.get("pid"), "exit_status": result.get("exit_status"),
                 "exited_at": result.get("exited_at"), "id": ""}  # fmt: skip
        self._stop_monitor((envelope(self.setup.namespace, "/tasks/delete", event),))
        self._fail_waiters("the task was deleted")
        self._leave("deleted", reply_to, answer)

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        # Stopping the daemon never touches shims or containers: only let go of the connection.
        self._fail_waiters("the daemon is stopping")
        self._close_fds()
