"""RuntimeActor: one per node; the task table ``(namespace, id) -> TaskActor``.

TaskActors run in TaskHost processes (``actors/task_host.py``), up to
``TASKS_PER_HOST`` each; the RuntimeActor starts hosts as they fill, keeps one
warm, and lets go of empty ones beyond that.

Create: validate, read the container record from the MetadataActor, write
the bundle, spawn a TaskActor that starts the shim and answers the client
itself once the shim reported the pid.  Calls on a task are forwarded to its
TaskActor with the client's address, so the answer goes straight back.  At
start-up every bundle in the state dir gets a TaskActor in restore mode (a
bundle on disk means a task exists).  A TaskActor that dies without a delete
is replaced by a new one in restore mode: the container does not notice.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from thespian.actors import ActorExitRequest, ChildActorExited

from actors import netopts, network, respawns, restart, task_network
from actors._actor import ContactorActor, error_reply
from actors._runtime_run import RuntimeRuns
from actors.bundle import bundle_path, create_bundle, delete_bundle, sweep_tombs
from actors.cgroups import placement
from actors.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from actors.identifiers import validate, validate_namespace
from actors.messages import (
    TASK_OPS,
    Answer,
    Ask,
    Configure,
    CreateTask,
    DeleteContainer,
    ErrorReply,
    GetContainer,
    ListTasks,
    Peers,
    Ready,
    Respawn,
    TaskActorLost,
    TaskGone,
    TaskInfo,
    TaskList,
    TaskReady,
    TaskReply,
    TaskRequest,
    TaskSetup,
)
from actors.procs import is_alive_process, read_pid_file
from actors.spec import check_spec
from actors.task import live_shim
from actors.task_host import TASKS_PER_HOST, TaskHost

__all__ = ["RuntimeActor", "restore_plan"]


# How often the RuntimeActor looks whether its TaskActors still live (see RuntimeActor._sweep).
SWEEP_PERIOD: Final = 5.0
# Empty TaskHosts kept ready for the next tasks (the rest are let go).
WARM_HOSTS: Final = 1


@dataclass
class _Entry:
    namespace: str
    id: str
    address: Any
    runtime_name: str
    rootfs: str
    info: TaskInfo | None = None
    incarnation: int = 0


@dataclass(eq=False)
class _Host:
    """A TaskHost child and the tasks it runs."""

    address: Any
    tasks: set[tuple[str, str]]
    pid: int = 0  # from its tasks' reports


def restore_plan(state: Path) -> list[tuple[str, str]]:
    """Every ``<ns>/<id>`` bundle under the state dir with valid names; hidden ones are half-deleted."""
    plan: list[tuple[str, str]] = []
    if not state.is_dir():
        return plan
    for ns_dir in sorted(state.iterdir()):
        # A symlink in the state dir is never followed: it could lead restore anywhere.
        if ns_dir.is_symlink() or not ns_dir.is_dir() or ns_dir.name.startswith(".") or ns_dir.name == "runc":
            continue
        for task_dir in sorted(ns_dir.iterdir()):
            if (
                task_dir.is_symlink()
                or task_dir.name.startswith(".")
                or not (task_dir / "config.json").exists()
            ):
                continue
            try:
                plan.append((validate_namespace(ns_dir.name), validate(task_dir.name)))
            except InvalidArgument:
                continue
    return plan


def check_rootfs(rootfs: str, config: Any) -> None:
    """A rootfs must be a real directory of its own: not the host's root (through a symlink or
    not), and not the daemon's state or root dir, or any directory holding them."""
    if not rootfs:
        return
    if not os.path.isabs(rootfs):
        raise InvalidArgument(f"rootfs {rootfs!r} must be an absolute path")
    real = Path(os.path.realpath(rootfs))
    if not real.is_dir():
        raise InvalidArgument(f"rootfs {rootfs!r} is not a directory")
    for own in (Path(config.daemon.state), Path(config.daemon.root)):
        own_real = Path(os.path.realpath(own))
        if real == own_real or real in own_real.parents:
            # A container must never see the daemon's key, database or bundles.
            raise InvalidArgument(f"rootfs {rootfs!r} is (or holds) the daemon's own {own}")
    if real == Path("/"):
        raise InvalidArgument(f"rootfs {rootfs!r} is the host's root directory")


def restoring_info(state: str, ns: str, cid: str) -> TaskInfo:
    """What the bundle alone tells of a task being restored (status ``restoring``)."""
    bundle = bundle_path(state, ns, cid)
    pid = shim_pid = 0
    created_at, rm = 0.0, False
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = read_pid_file(bundle / "init.pid")[0]
    with contextlib.suppress(OSError, ValueError, IndexError):
        shim_pid = read_pid_file(bundle / "shim.pid")[0]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        record = json.loads((bundle / "task.json").read_text())
        created_at, rm = float(record.get("created_at", 0.0)), bool(record.get("rm", False))
    return TaskInfo(ns, cid, pid, "restoring", -1, 0.0, shim_pid, str(bundle), created_at, rm=rm)


class RuntimeActor(ContactorActor, RuntimeRuns):
    role = "runtime"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Any = None
        self.peers: Peers | None = None
        self.tasks: dict[tuple[str, str], _Entry] = {}
        self.hosts: list[_Host] = []
        self.incarnations = itertools.count(1)
        self.pending: dict[int, tuple[Ask, Respawn | None]] = {}
        self.corr = itertools.count(1)
        # Tasks whose shim died, waiting to be made again by their restart policy.
        self.respawning: dict[tuple[str, str], Respawn] = {}
        self._runs_init()

    def on_Configure(self, msg: Configure, sender: Any) -> None:
        first = self.config is None
        self.config, self.peers = msg.config, msg.peers
        self.send(sender, Ready(self.role, os.getpid()))
        if first:
            self._new_host()
            for tomb in sweep_tombs(self.config.daemon.state):  # bundles whose removal was cut short
                self.log.info("half_deleted_bundle_removed", path=str(tomb))
            plan = restore_plan(Path(self.config.daemon.state))
            try:
                # Addresses and namespaces of tasks whose bundles are gone go back first.
                task_network.reconcile(self.config, plan)
            except Exception as exc:
                self.log.error("network_reconcile_failed", error=str(exc))
            for ns, cid in plan:
                runtime_name = self._runtime_of_bundle(ns, cid)
                self._spawn(ns, cid, restore=True, runtime_name=runtime_name, rootfs="")
                # Listed at once, as "restoring", until its TaskActor reports what its shim says.
                self.tasks[(ns, cid)].info = restoring_info(self.config.daemon.state, ns, cid)
            self.log.info("restore_started", tasks=len(self.tasks))
            for ns, cid, respawn in respawns.load_all(self.config.daemon.state):
                if (ns, cid) in self.tasks:  # made again already, the record outlived it
                    respawns.remove(self.config.daemon.state, ns, cid)
                    continue
                self.respawning[(ns, cid)] = respawn
                self.wakeupAfter(respawn.delay, payload=("respawn", ns, cid))
                self.log.info("restart_rescheduled", namespace=ns, id=cid, seconds=round(respawn.delay, 3))
            self.wakeupAfter(SWEEP_PERIOD, payload="sweep")

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        if self.peers is not None and self.peers.metadata != msg.metadata:
            # The MetadataActor that was to answer these creates died: they fail, and may be retried.
            for ask, _ in self.pending.values():
                self.send(ask.reply_to, Answer(ask.corr, ErrorReply("unavailable", "the metadata actor restarted")))
            self.pending.clear()
            self._runs_lost_metadata()
        self.peers = msg
        for host in self.hosts:
            self.send(host.address, msg)

    def _runtime_of_bundle(self, ns: str, cid: str) -> str:
        path = bundle_path(self.config.daemon.state, ns, cid) / "runtime"
        try:
            return path.read_text().strip() or "runc"
        except OSError:
            return "runc"

    def _spawn(self, ns: str, cid: str, restore: bool, runtime_name: str, rootfs: str, create: Ask | None = None,
               policy: str = "", net: netopts.NetOptions | None = None,
               respawn: Respawn | None = None, run: bool = False, rm: bool = False) -> None:  # fmt: skip
        assert self.peers is not None
        host = self._host_for_task()
        host.tasks.add((ns, cid))
        incarnation = next(self.incarnations)
        self.tasks[(ns, cid)] = _Entry(ns, cid, host.address, runtime_name, rootfs, incarnation=incarnation)
        bundle = str(bundle_path(self.config.daemon.state, ns, cid))
        self.send(
            host.address,
            TaskSetup(
                ns, cid, bundle, restore, self.config, self.peers, runtime_name, rootfs, create, policy, net,
                respawn.restarts if respawn else 0, respawn is not None, run, rm, incarnation,
            ),
        )

    # -- task hosts ---------------------------------------------------------------------------------------
    def _new_host(self) -> _Host:
        host = _Host(self.createActor(TaskHost), set())
        self.hosts.append(host)
        return host

    def _host_for_task(self) -> _Host:
        """The fullest host with room (few hosts, each well used), else a new one."""
        room = [h for h in self.hosts if len(h.tasks) < TASKS_PER_HOST]
        if not room:
            return self._new_host()
        return max(room, key=lambda h: len(h.tasks))

    def _host_at(self, address: Any) -> _Host | None:
        for host in self.hosts:
            if host.address == address:
                return host
        return None

    def _release(self, key: tuple[str, str], address: Any) -> None:
        """``key`` left its host; a host left empty is let go if enough others stay ready."""
        host = self._host_at(address)
        if host is None:
            return
        host.tasks.discard(key)
        if not host.tasks and sum(1 for h in self.hosts if not h.tasks) > WARM_HOSTS:
            self.hosts.remove(host)
            self.send(host.address, ActorExitRequest())

    def _host_died(self, host: _Host) -> None:
        """Every task of a dead host gets a new TaskActor (in restore mode) in a live one."""
        self.hosts.remove(host)
        self.log.warning("task_host_died", tasks=len(host.tasks), host_pid=host.pid)
        for key in sorted(host.tasks):
            entry = self.tasks.get(key)
            if entry is not None and entry.address == host.address:
                self._task_actor_died(key, entry)
        if not self.hosts and not self.exiting:
            self._new_host()

    # -- create ------------------------------------------------------------------------------------------
    def ask_CreateTask(self, msg: CreateTask, ask: Ask, sender: Any) -> None:
        ns, cid = validate_namespace(msg.namespace), validate(msg.id, "container id")
        if (ns, cid) in self.tasks or (ns, cid) in self.respawning:
            raise AlreadyExists(f"task {cid}: already exists")
        assert self.peers is not None
        corr = next(self.corr)
        self.pending[corr] = (Ask(ask.corr, msg, ask.reply_to or sender), None)
        self.send(self.peers.metadata, Ask(corr, GetContainer(ns, cid)))

    def on_Answer(self, msg: Answer, sender: Any) -> None:
        if self._run_answered(msg.corr, msg.body):
            return
        pending = self.pending.pop(msg.corr, None)
        if pending is None:
            return
        ask, respawn = pending
        body = ask.body
        assert isinstance(body, CreateTask)
        if isinstance(msg.body, ErrorReply):
            self.send(ask.reply_to, Answer(ask.corr, msg.body))
            return
        try:
            self._create_from_record(ask, body, msg.body.record, respawn)
        except Exception as exc:
            self.send(ask.reply_to, Answer(ask.corr, error_reply(exc)))

    def _create_from_record(
        self, ask: Ask, body: CreateTask, record: dict[str, Any], respawn: Respawn | None = None, run: bool = False,
        rm: bool = False,
    ) -> None:
        ns, cid = body.namespace, body.id
        if (ns, cid) in self.tasks:  # a second create raced the first
            raise AlreadyExists(f"task {cid}: already exists")
        runtime_name = str(record.get("runtime_name") or "runc")
        if runtime_name not in ("runc", "crun"):
            raise InvalidArgument(f"unknown runtime {runtime_name!r}")
        path = bundle_path(self.config.daemon.state, ns, cid)
        if path.exists():
            # A bundle without a task: left by a cleanup that did not finish.  Never reuse a live one.
            if live_shim(path):
                raise AlreadyExists(f"task {cid}: a shim still owns its bundle")
            delete_bundle(path)
        check_rootfs(str(record.get("rootfs") or ""), self.config)
        labels = record.get("labels") or {}
        policy = str(labels.get(restart.LABEL, ""))
        restart.parse(policy)  # a bad policy fails the create, before anything is made
        net_cfg = self.config.network
        net = netopts.from_labels(labels, net_cfg.mode, net_cfg.subnet)
        spec = check_spec(record.get("spec"))
        netns = str(network.netns_path(self.config.daemon.state, ns, cid)) if net.mode == "bridge" else ""
        spec = netopts.apply_to_spec(spec, net.mode, netns)
        # Placement is the runtime's: every task's cgroup sits where the monitor and cleanup look.
        cfg = self.config.cgroups
        spec = {
            **spec,
            "linux": {**(spec.get("linux") or {}), "cgroupsPath": placement(cfg.driver, cfg.parent, ns, cid)},
        }
        if net.mode == "bridge":
            task_network.prepare(net_cfg, net)  # the bridge is made on demand, by this one actor
        created = create_bundle(self.config.daemon.state, ns, cid, spec)
        (created / "runtime").write_text(runtime_name)
        self._spawn(ns, cid, False, runtime_name, str(record.get("rootfs") or ""), create=ask, policy=policy,
                    net=net, respawn=respawn, run=run, rm=rm)  # fmt: skip

    # -- everything else --------------------------------------------------------------------------------
    def ask_TaskRequest(self, msg: TaskRequest, ask: Ask, sender: Any) -> TaskReply | None:
        ns, cid = validate_namespace(msg.namespace), validate(msg.id, "container id")
        if msg.op not in TASK_OPS:
            raise InvalidArgument(f"unknown task operation {msg.op!r}")
        entry = self.tasks.get((ns, cid))
        if entry is None and (ns, cid) in self.respawning:
            return self._while_respawning(ns, cid, msg)
        if entry is None:
            raise NotFound(f"task {cid} not found")
        info = entry.info
        if msg.op == "wait" and not msg.params.get("exec_id") and info is not None and info.status == "stopped":
            # The exit is in the table (the TaskActor reports it as soon as its shim does): the answer
            # the TaskActor would give after asking its shim, without either of them, and without
            # waiting for a TaskHost that is busy.
            return TaskReply({"pid": info.pid, "exit_status": info.exit_status, "exited_at": info.exited_at})
        assert self.peers is not None
        target = self.peers.monitor if msg.op == "metrics" else entry.address
        self.send(target, Ask(ask.corr, msg, ask.reply_to or sender))
        return None  # answered by the task

    def _while_respawning(self, ns: str, cid: str, msg: TaskRequest) -> TaskReply:
        """A task between its dead shim and its restart: a kill or delete ends it for good."""
        respawn = self.respawning[(ns, cid)]
        if msg.op in ("kill", "delete") and not msg.params.get("exec_id"):
            del self.respawning[(ns, cid)]
            respawns.remove(self.config.daemon.state, ns, cid)
            self.log.info("restart_cancelled", namespace=ns, id=cid, op=msg.op)
            return TaskReply(dict(respawn.exit) if msg.op == "delete" else {})
        if msg.op in ("state", "wait"):
            return TaskReply({**respawn.exit, "status": "stopped", "restarting_in": respawn.delay})
        raise FailedPrecondition(f"task {cid} is waiting to be restarted by its policy: kill or delete it first")

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if self.exiting:
            return
        if msg.payload == "sweep":
            self._sweep()
            return
        if isinstance(msg.payload, tuple) and msg.payload[0] == "respawn":
            key = (msg.payload[1], msg.payload[2])
            respawn = self.respawning.pop(key, None)
            if respawn is None or key in self.tasks:
                return
            # Off the record once asked for: a daemon dying in the create leaves a half-made task,
            # which its restore finishes or removes.
            respawns.remove(self.config.daemon.state, *key)
            assert self.peers is not None
            corr = next(self.corr)
            # The create's answer comes back here and is dropped; failures are logged by the TaskActor.
            self.pending[corr] = (Ask(corr, CreateTask(key[0], key[1], respawn.stdio), self.myAddress), respawn)
            self.send(self.peers.metadata, Ask(corr, GetContainer(*key)))

    def ask_ListTasks(self, msg: ListTasks, ask: Ask, sender: Any) -> TaskList:
        if msg.namespace is not None:
            validate_namespace(msg.namespace)
        infos = [e.info for k, e in sorted(self.tasks.items())
                 if e.info is not None and (msg.namespace is None or k[0] == msg.namespace)]  # fmt: skip
        return TaskList(tuple(infos))

    def ask_DeleteContainer(self, msg: DeleteContainer, ask: Ask, sender: Any) -> None:
        ns, cid = validate_namespace(msg.namespace), validate(msg.id, "container id")
        if (ns, cid) in self.tasks:
            raise FailedPrecondition(f"container {cid} has a task: delete the task first")
        if self.respawning.pop((ns, cid), None) is not None:
            respawns.remove(self.config.daemon.state, ns, cid)
        assert self.peers is not None
        self.send(self.peers.metadata, Ask(ask.corr, msg, ask.reply_to or sender))

    def _current(self, key: tuple[str, str], sender: Any, incarnation: int) -> _Entry | None:
        """The table's entry for ``key`` if the report is from its current TaskActor."""
        entry = self.tasks.get(key)
        if entry is not None and entry.address == sender and entry.incarnation == incarnation:
            return entry
        return None

    def on_TaskReady(self, msg: TaskReady, sender: Any) -> None:
        entry = self._current((msg.info.namespace, msg.info.id), sender, msg.incarnation)
        if entry is not None:
            entry.info = msg.info
            host = self._host_at(sender)
            if host is not None:
                host.pid = msg.info.actor_pid
        self._deliver(msg.reply_to, msg.answer)
        self._run_task_changed((msg.info.namespace, msg.info.id))

    def _deliver(self, reply_to: Any, answer: Any) -> None:
        """A TaskActor's answer, forwarded; one to a run's step (the RuntimeActor asked) is taken here."""
        if reply_to is None or answer is None:
            return
        if reply_to == self.myAddress and isinstance(answer, Answer):
            self.on_Answer(answer, self.myAddress)
        else:
            self.send(reply_to, answer)

    def on_TaskGone(self, msg: TaskGone, sender: Any) -> None:
        entry = self._current((msg.namespace, msg.id), sender, msg.incarnation)
        if entry is not None:
            del self.tasks[(msg.namespace, msg.id)]
            self._release((msg.namespace, msg.id), sender)
            self.log.info("task_gone", namespace=msg.namespace, id=msg.id, reason=msg.reason)
            if msg.respawn is not None:
                self.respawning[(msg.namespace, msg.id)] = msg.respawn
                self.wakeupAfter(msg.respawn.delay, payload=("respawn", msg.namespace, msg.id))
            self._run_task_gone((msg.namespace, msg.id), msg.reason)
        self._deliver(msg.reply_to, msg.answer)
        for reply_to, answer in msg.also:
            self.send(reply_to, answer)

    def on_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if self.exiting:  # the shutdown takes its TaskActors down: none is to be replaced
            return
        host = self._host_at(msg.childAddress)
        if host is not None:
            self._host_died(host)

    def _task_actor_died(self, key: tuple[str, str], entry: _Entry) -> None:
        # Died without a delete: a new TaskActor takes the same bundle over.
        self.log.warning("task_actor_died", namespace=key[0], id=key[1])
        del self.tasks[key]
        self._release(key, entry.address)
        if self.peers is not None:
            self.send(self.peers.gateway, TaskActorLost(*key))
        self._run_actor_lost(key)
        if bundle_path(self.config.daemon.state, *key).exists():
            self._spawn(key[0], key[1], True, entry.runtime_name, entry.rootfs)

    def _sweep(self) -> None:
        """TaskHosts found dead by their pid, in case Thespian's ChildActorExited never came.

        Seen under load: a killed TaskActor process whose death its RuntimeActor was never told of,
        its task left unmanageable until the next restart.  A dead child stays a zombie until reaped, so
        the pid cannot belong to another process meanwhile.
        """
        for host in list(self.hosts):
            if host.pid > 0 and not is_alive_process(host.pid, 0):
                self.log.warning("task_host_found_dead", host_pid=host.pid)
                self._host_died(host)
        self.wakeupAfter(SWEEP_PERIOD, payload="sweep")
