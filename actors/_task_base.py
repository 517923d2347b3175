"""What every part of a TaskActor shares: its state, its shim connection, publishing, leaving.

The TaskActor (``actors/task.py``) is built in layers, one concern each: this base;
its cgroup's OOM kills (``_task_oom``); restart policies (``_task_restart``); the shim's
events (``_task_events``); cleanup after
a delete or a dead shim (``_task_cleanup``); restore after a daemon restart
(``_task_restore``); the actor itself, its set-up and requests (``task``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from thespian.actors import ActorExitRequest

from actors import task_network
from actors._actor import ContactorActor
from actors.bundle import write_atomic
from actors.cgroups import Host, OomWatch, detect, placement, remove_task_cgroups
from actors.errdefs import ContactorError
from actors.events import envelope
from actors.messages import (
    Answer,
    Ask,
    Committed,
    Envelope,
    ErrorReply,
    Peers,
    Publish,
    Respawn,
    TaskGone,
    TaskInfo,
    TaskReady,
    TaskReply,
    TaskSetup,
)
from actors.procs import is_alive_process, read_pid_file, wait_exit
from actors.shim.client import Request, ShimClient

DEAD_SHIM_STATUS: Final = 128 + 9
STATE_FILE_SIZE: Final = 4096
# How long a cleanup waits for its /tasks/delete to be in the log before it goes on without word.
COMMIT_WAIT: Final = 10.0


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


class TaskBase(ContactorActor):
    """The state and the shared steps of a TaskActor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setup: TaskSetup | None = None
        self.peers: Peers | None = None
        self.client: ShimClient | None = None
        self.notify_fd = -1
        self.pidfd = -1
        self.oom: OomWatch | None = None  # the task's cgroup, watched for OOM kills while it runs
        self.shim_pid = 0
        self.info: TaskInfo | None = None
        self.waiters: dict[str, list[tuple[Ask, Any]]] = {}
        self.state: dict[str, Any] = {"seq": 0, "exit_published": False, "created_at": time.time()}
        self.closing = False  # we are deleting or shutting the shim down ourselves
        # The envelope whose commit to the log the cleanup waits for, and what then follows.
        self.commit_wait: tuple[str, Callable[[], None]] | None = None
        # Meanwhile: the task's exit (what requests are answered with) and deletes held till it is gone.
        self.final_exit: dict[str, Any] = {}
        self.parked: list[tuple[Ask, Any]] = []
        self.gone = False
        self.runtime_parent: Any = None  # the RuntimeActor that sent TaskSetup

    @property
    def _incarnation(self) -> int:
        return self.setup.incarnation if self.setup is not None else 0

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
        """task.json: what a restored TaskActor needs (the last shim event handled, whether the
        create was announced, the restart policy and count).

        Kept at a page or more (JSON ignores the trailing blanks), so that on a full state
        filesystem, where the atomic rename cannot get a new file, the old copy is
        overwritten in place: forgetting the last event handled would hand it over again.
        """
        path = self.bundle / "task.json"
        data = json.dumps(self.state).encode()
        try:
            # No fsync (it sat on every create, start and delete): the file lives in the volatile
            # state dir, a daemon's death never loses what the kernel was given, and after a power
            # cut every container is gone; whatever is then published again, the event log's keys
            # drop as a duplicate.
            write_atomic(path, data.ljust(STATE_FILE_SIZE), sync=False)
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

    def _connect(self, since: int | None, wait: bool = True) -> Request:
        """Connect to the shim and subscribe to its events; the subscribe's answer is waited
        for unless ``wait`` is False (the caller then takes the returned Request's result)."""
        assert self.setup is not None
        self.notify_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.client = ShimClient(str(self.bundle / "shim.sock"), notify_fd=self.notify_fd)
        self.pidfd = os.pidfd_open(self.shim_pid)
        self.watched = [self.notify_fd, self.pidfd, *self._oom_fds()]
        subscribed = self.client.subscribing(since)
        if wait:
            subscribed.result()
        return subscribed

    def _make_info(self, pid: int, status: str, exit_status: int = -1, exited_at: float = 0.0) -> TaskInfo:
        setup = self.setup
        assert setup is not None
        net = self.state.get("net") or {}
        return TaskInfo(setup.namespace, setup.id, pid, status, exit_status, exited_at, self.shim_pid,
                        str(self.bundle), float(self.state.get("created_at", 0.0)), os.getpid(),
                        int(self.state.get("restarts", 0)), str(net.get("mode", "")),
                        task_network.address_of(net), rm=bool(self.state.get("rm")))  # fmt: skip

    def _update_info(self, reply_to: Any = None, answer: Answer | None = None, **changes: Any) -> None:
        """Tell the RuntimeActor the task's new facts; ``answer`` goes out once its table has them,
        so a client that lists tasks after the answer sees what it just did."""
        if self.info is None:
            if reply_to is not None and answer is not None:
                self.send(reply_to, answer)
            return
        self.info = dataclasses.replace(self.info, **changes)
        self.send(self.runtime_parent, TaskReady(self.info, reply_to, answer, self._incarnation))

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
        """The task's cgroup in every hierarchy (whatever the runtime left).

        The namespace's directory above it stays (the daemon removes the empty ones when it
        stops): removed here whenever its last task went, it raced the runtime creating the
        next task's cgroup under it (its mkdir of the leaf failed with ENOENT), and every
        create in an emptied namespace made it again in every hierarchy.
        """
        try:
            busy = remove_task_cgroups(_host(), self._cgroups_path())
            if busy:
                self.log.error("cgroups_left_busy", paths=[str(p) for p in busy])
        except ContactorError as exc:
            self.log.error("cgroup_removal_failed", error=exc.message)

    def _leave(self, reason: str, reply_to: Any = None, answer: Answer | None = None,
               respawn: Respawn | None = None) -> None:  # fmt: skip
        setup = self.setup
        assert setup is not None
        self.gone = True
        self.watched = []
        self._close_oom()
        # Deletes that came while it was being removed: answered, like the first, once it is out of the table.
        also = tuple((ask.reply_to or sender, Answer(ask.corr, TaskReply(dict(self.final_exit))))
                     for ask, sender in self.parked)  # fmt: skip
        self.parked = []
        self.send(self.runtime_parent, TaskGone(setup.namespace, setup.id, reason, reply_to, answer, respawn, also,
                                                     setup.incarnation))
        self.send(self.myAddress, ActorExitRequest())

    def _close_fds(self) -> None:
        """The shim's connection, its events' eventfd and its pidfd (the OOM watch stays)."""
        self.watched = self._oom_fds()
        if self.client is not None:
            self.client.close()
        for fd in (self.notify_fd, self.pidfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.notify_fd = self.pidfd = -1

    def _publish(self, topic: str, event: dict[str, Any], timestamp: float | None = None, key: str = "",
                 ack: bool = False, again: bool = False) -> None:  # fmt: skip
        setup = self.setup
        assert setup is not None
        self._send_envelope(envelope(setup.namespace, topic, event, timestamp, key), ack, again)

    def _send_envelope(self, env: Envelope, ack: bool = False, again: bool = False) -> None:
        """To the Exchange; ``ack``: told Committed once it is in the log; ``again``: see Publish.again."""
        # Straight to the Exchange, all of a task's envelopes from this one actor: one path keeps them in
        # order (Thespian keeps none between different paths), and the exit's last OOM is read here.
        peers = self.peers
        assert peers is not None
        self.send(peers.exchange, Publish(env, self.myAddress if ack else None, again))

    def _after_commit(self, key: str, then: Callable[[], None], final_exit: dict[str, Any]) -> None:
        """Run ``then`` once the envelope ``key`` is in the log (or after COMMIT_WAIT without word).

        Until then the shim is gone but the task is still listed: requests are answered from
        ``final_exit`` (see TaskActor._while_finishing), a delete once the task is gone.
        """
        self.commit_wait = (key, then)
        self.final_exit = {k: final_exit.get(k) for k in ("pid", "exit_status", "exited_at")}
        self.wakeupAfter(COMMIT_WAIT, payload="commit_wait")

    def on_Committed(self, msg: Committed, sender: Any) -> None:
        waiting = self.commit_wait
        if waiting is not None and waiting[0] == msg.key:
            self.commit_wait = None
            waiting[1]()

    def _commit_timed_out(self) -> None:
        waiting, self.commit_wait = self.commit_wait, None
        if waiting is not None:
            self.log.error("event_not_committed", key=waiting[0], seconds=COMMIT_WAIT)
            waiting[1]()

    def _key(self, kind: str, *parts: Any) -> str:
        """The event's identity (Envelope.key): this incarnation of the task, what happened, to which process."""
        setup = self.setup
        assert setup is not None
        return "/".join([setup.namespace, setup.id, repr(float(self.state.get("created_at", 0.0))), kind,
                         *(str(p) for p in parts)])  # fmt: skip

    def _exit_envelope(self, st: dict[str, Any]) -> Envelope:
        """The init's /tasks/exit from its pid, exit_status and exited_at (a shim's exit event or state,
        or what a dead shim left): one shape and one key wherever it is published from."""
        setup = self.setup
        assert setup is not None
        record = {"container_id": setup.id, "id": setup.id, "pid": st["pid"], "exit_status": st["exit_status"],
                  "exited_at": st["exited_at"]}  # fmt: skip
        return envelope(setup.namespace, "/tasks/exit", record, st["exited_at"], key=self._key("exit", "", st["pid"]))

    def _announced(self) -> bool:
        """Whether the task's /tasks/create was published (task.json past its reservation)."""
        return (self.bundle / "task.json").exists() and not self.state.get("reserved")

    def _oom_fds(self) -> list[int]:
        """The OOM watch's fd, if the task has one (see TaskOom): watched with the shim's."""
        return [self.oom.fd] if self.oom is not None else []

    def _close_oom(self) -> None:
        watch, self.oom = self.oom, None
        if watch is not None:
            self.watched = [fd for fd in self.watched if fd != watch.fd]
            watch.close()

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        self.peers = msg
