"""RuntimeActor: one per node; the task table ``(namespace, id) -> TaskActor``.

Create: validate, read the container record from the MetadataActor, write
the bundle, spawn a TaskActor that starts the shim and answers the client
itself once the shim reported the pid.  Calls on a task are forwarded to its
TaskActor with the client's address, so the answer goes straight back.  At
start-up every bundle in the state dir gets a TaskActor in restore mode (a
bundle on disk means a task exists).  A TaskActor that dies without a delete
is replaced by a new one in restore mode: the container does not notice.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thespian.actors import ChildActorExited

from actors import restart
from actors._actor import ContactorActor, error_reply
from actors.bundle import bundle_path, create_bundle, delete_bundle
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
    TaskActorLost,
    TaskGone,
    TaskInfo,
    TaskList,
    TaskReady,
    TaskRequest,
    TaskSetup,
)
from actors.spec import check_spec
from actors.task import TaskActor, live_shim

__all__ = ["RuntimeActor", "restore_plan"]


@dataclass
class _Entry:
    namespace: str
    id: str
    address: Any
    runtime_name: str
    rootfs: str
    info: TaskInfo | None = None


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


class RuntimeActor(ContactorActor):
    role = "runtime"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Any = None
        self.peers: Peers | None = None
        self.tasks: dict[tuple[str, str], _Entry] = {}
        self.pending: dict[int, tuple[Ask, Any]] = {}
        self.corr = itertools.count(1)

    def on_Configure(self, msg: Configure, sender: Any) -> None:
        first = self.config is None
        self.config, self.peers = msg.config, msg.peers
        self.send(sender, Ready(self.role, os.getpid()))
        if first:
            for ns, cid in restore_plan(Path(self.config.daemon.state)):
                runtime_name = self._runtime_of_bundle(ns, cid)
                self._spawn(ns, cid, restore=True, runtime_name=runtime_name, rootfs="")
            self.log.info("restore_started", tasks=len(self.tasks))

    def on_Peers(self, msg: Peers, sender: Any) -> None:
        if self.peers is not None and self.peers.metadata != msg.metadata:
            # The MetadataActor that was to answer these creates died: they fail, and may be retried.
            for ask, _ in self.pending.values():
                self.send(ask.reply_to, Answer(ask.corr, ErrorReply("unavailable", "the metadata actor restarted")))
            self.pending.clear()
        self.peers = msg
        for entry in self.tasks.values():
            self.send(entry.address, msg)

    def _runtime_of_bundle(self, ns: str, cid: str) -> str:
        path = bundle_path(self.config.daemon.state, ns, cid) / "runtime"
        try:
            return path.read_text().strip() or "runc"
        except OSError:
            return "runc"

    def _spawn(self, ns: str, cid: str, restore: bool, runtime_name: str, rootfs: str,
               create: Ask | None = None, policy: str = "") -> None:  # fmt: skip
        assert self.peers is not None
        address = self.createActor(TaskActor)
        self.tasks[(ns, cid)] = _Entry(ns, cid, address, runtime_name, rootfs)
        bundle = str(bundle_path(self.config.daemon.state, ns, cid))
        self.send(
            address,
            TaskSetup(
                ns, cid, bundle, restore, self.config, self.peers, runtime_name, rootfs, create, policy
            ),
        )

    # -- create ------------------------------------------------------------------------------------------
    def ask_CreateTask(self, msg: CreateTask, ask: Ask, sender: Any) -> None:
        ns, cid = validate_namespace(msg.namespace), validate(msg.id, "container id")
        if (ns, cid) in self.tasks:
            raise AlreadyExists(f"task {cid}: already exists")
        assert self.peers is not None
        corr = next(self.corr)
        self.pending[corr] = (Ask(ask.corr, msg, ask.reply_to or sender), sender)
        self.send(self.peers.metadata, Ask(corr, GetContainer(ns, cid)))

    def on_Answer(self, msg: Answer, sender: Any) -> None:
        pending = self.pending.pop(msg.corr, None)
        if pending is None:
            return
        ask, _ = pending
        body = ask.body
        assert isinstance(body, CreateTask)
        if isinstance(msg.body, ErrorReply):
            self.send(ask.reply_to, Answer(ask.corr, msg.body))
            return
        try:
            self._create_from_record(ask, body, msg.body.record)
        except Exception as exc:
            self.send(ask.reply_to, Answer(ask.corr, error_reply(exc)))

    def _create_from_record(self, ask: Ask, body: CreateTask, record: dict[str, Any]) -> None:
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
        policy = str((record.get("labels") or {}).get(restart.LABEL, ""))
        restart.parse(policy)  # a bad policy fails the create, before anything is made
        spec = check_spec(record.get("spec"))
        # Placement is the runtime's: every task's cgroup sits where the monitor and cleanup look.
        cfg = self.config.cgroups
        spec = {
            **spec,
            "linux": {**(spec.get("linux") or {}), "cgroupsPath": placement(cfg.driver, cfg.parent, ns, cid)},
        }
        created = create_bundle(self.config.daemon.state, ns, cid, spec)
        (created / "runtime").write_text(runtime_name)
        self._spawn(ns, cid, False, runtime_name, str(record.get("rootfs") or ""), create=ask, policy=policy)

    # -- everything else --------------------------------------------------------------------------------
    def ask_TaskRequest(self, msg: TaskRequest, ask: Ask, sender: Any) -> None:
        ns, cid = validate_namespace(msg.namespace), validate(msg.id, "container id")
        if msg.op not in TASK_OPS:
            raise InvalidArgument(f"unknown task operation {msg.op!r}")
        entry = self.tasks.get((ns, cid))
        if entry is None:
            raise NotFound(f"task {cid} not found")
        assert self.peers is not None
        target = self.peers.monitor if msg.op == "metrics" else entry.address
        self.send(target, Ask(ask.corr, msg, ask.reply_to or sender))

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
        assert self.peers is not None
        self.send(self.peers.metadata, Ask(ask.corr, msg, ask.reply_to or sender))

    def on_TaskReady(self, msg: TaskReady, sender: Any) -> None:
        entry = self.tasks.get((msg.info.namespace, msg.info.id))
        if entry is not None and entry.address == sender:
            entry.info = msg.info
        if msg.reply_to is not None and msg.answer is not None:
            self.send(msg.reply_to, msg.answer)

    def on_TaskGone(self, msg: TaskGone, sender: Any) -> None:
        entry = self.tasks.get((msg.namespace, msg.id))
        if entry is not None and entry.address == sender:
            del self.tasks[(msg.namespace, msg.id)]
            self.log.info("task_gone", namespace=msg.namespace, id=msg.id, reason=msg.reason)
        if msg.reply_to is not None and msg.answer is not None:
            self.send(msg.reply_to, msg.answer)

    def on_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        for key, entry in list(self.tasks.items()):
            if entry.address == msg.childAddress:
                # Died without a delete: a new TaskActor takes the same bundle over.
                self.log.warning("task_actor_died", namespace=key[0], id=key[1])
                del self.tasks[key]
                if self.peers is not None:
                    self.send(self.peers.gateway, TaskActorLost(*key))
                if bundle_path(self.config.daemon.state, *key).exists():
                    self._spawn(key[0], key[1], True, entry.runtime_name, entry.rootfs)
                return
