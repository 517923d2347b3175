"""The RuntimeActor's runs: a container record and its task made, started, waited for and (with
``rm``) deleted again, for one request (``tasks.run``, ``Client.run``, ``contactor run --rm``).

A client doing the same in five calls pays five round trips through the Gateway,
the RuntimeActor and the task's TaskHost; here the RuntimeActor takes the steps
itself, each as the Ask the separate call would have made, with itself as the
asker:

1. ``CreateContainer`` to the MetadataActor (a record that exists already fails
   the run before anything is made, as ``containers.create`` would);
2. the task made from the record, its TaskActor told (``TaskSetup.run``) to start
   it right after the create, in the same turn: no start request;
3. the exit, seen in the RuntimeActor's own table (the TaskActor reports it as
   soon as its shim does): no wait request;
4. with ``rm``: the task's delete, then the record's (``DeleteContainer``), and
   the client answered with the exit.

A step that fails answers the client with its error, after deleting what the
run made before it (with ``rm``, or when the task could not be made at all).
A run with ``rm`` refuses a restart policy (the two contradict each other).
If the daemon, or the task's TaskActor, dies during a run, the client is told
"unavailable"; a task made with ``rm`` keeps that in its task.json
(``TaskInfo.rm``), so once it has exited the RuntimeActor deletes it and its
record all the same, with nobody to answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actors import restart
from actors._actor import error_reply
from actors.errdefs import AlreadyExists, InvalidArgument
from actors.identifiers import validate, validate_namespace
from actors.messages import (
    Answer,
    Ask,
    ContainerReply,
    CreateContainer,
    CreateTask,
    DeleteContainer,
    ErrorReply,
    RunTask,
    TaskInfo,
    TaskReply,
    TaskRequest,
)

__all__ = ["RuntimeRuns"]


@dataclass(eq=False)
class _Run:
    ask: Ask | None  # the client's, its reply_to set (None: the rest of a run whose client is gone)
    key: tuple[str, str]
    rm: bool
    stage: str = "record"  # the step in flight: record, create, exit, delete, forget
    exit: dict[str, Any] = field(default_factory=dict)
    error: ErrorReply | None = None


class RuntimeRuns:
    """Mixed into the RuntimeActor: ``ask_RunTask`` and the steps after it."""

    if TYPE_CHECKING:  # the RuntimeActor's own (see actors/runtime.py)
        tasks: dict[tuple[str, str], Any]
        respawning: dict[tuple[str, str], Any]
        peers: Any
        corr: Any
        log: Any
        myAddress: Any

        def send(self, target: Any, message: Any) -> None: ...

        def _create_from_record(self, ask: Ask, body: CreateTask, record: dict[str, Any], respawn: Any = None,
                                run: bool = False, rm: bool = False) -> None: ...  # fmt: skip

    def _runs_init(self) -> None:
        self.runs: dict[int, _Run] = {}  # by the corr of the step in flight
        self.awaiting_exit: dict[tuple[str, str], _Run] = {}  # started, until the table shows the exit

    def ask_RunTask(self, msg: RunTask, ask: Ask, sender: Any) -> None:
        record = msg.record
        ns = validate_namespace(str(record.get("namespace", "")))
        cid = validate(str(record.get("id", "")), "container id")
        if (ns, cid) in self.tasks or (ns, cid) in self.respawning:
            raise AlreadyExists(f"task {cid}: already exists")
        labels = record.get("labels") or {}
        if msg.rm and restart.parse(str(labels.get(restart.LABEL, ""))).kind != "no":
            raise InvalidArgument("a run that removes its container (rm) cannot have a restart policy")
        run = _Run(Ask(ask.corr, msg, ask.reply_to or sender), (ns, cid), msg.rm)
        self._run_step(run, "record", self.peers.metadata, CreateContainer(record))

    # -- the steps -----------------------------------------------------------------------------------------
    def _run_step(self, run: _Run, stage: str, target: Any, message: Any) -> None:
        corr = next(self.corr)
        run.stage = stage
        self.runs[corr] = run
        self.send(target, Ask(corr, message, self.myAddress))

    def _run_answered(self, corr: int, body: Any) -> bool:
        """An answer to one of the runs' steps (True), or not a run's (False)."""
        run = self.runs.pop(corr, None)
        if run is None:
            return False
        if run.stage == "record":
            self._run_recorded(run, body)
        elif run.stage == "create":
            self._run_created(run, body)
        elif run.stage == "delete":
            if isinstance(body, ErrorReply):
                self._run_done(run, body)
            else:
                self._run_forget(run)
        elif run.stage == "forget":
            self._run_done(run, body if isinstance(body, ErrorReply) and run.error is None else None)
        return True

    def _run_recorded(self, run: _Run, body: Any) -> None:
        if not isinstance(body, ContainerReply):
            self._run_done(run, body if isinstance(body, ErrorReply) else ErrorReply("internal", repr(body)))
            return
        assert run.ask is not None
        msg = run.ask.body
        assert isinstance(msg, RunTask)
        corr = next(self.corr)
        run.stage = "create"
        self.runs[corr] = run
        create = CreateTask(*run.key, msg.stdio)
        try:
            self._create_from_record(Ask(corr, create, self.myAddress), create, body.record, run=True, rm=run.rm)
        except Exception as exc:
            # Nothing of the task was made: the record goes again, whatever rm says.
            self.runs.pop(corr, None)
            run.error = error_reply(exc)
            self._run_forget(run)

    def _run_created(self, run: _Run, body: Any) -> None:
        if not isinstance(body, TaskInfo):
            # The TaskActor undid the create (its TaskGone follows): so does the run, record and all.
            run.error = body if isinstance(body, ErrorReply) else ErrorReply("internal", repr(body))
            self._run_forget(run)
            return
        run.stage = "exit"
        self.awaiting_exit[run.key] = run
        self._run_task_changed(run.key)  # it may have exited before the create's answer came

    def _run_task_changed(self, key: tuple[str, str]) -> None:
        """The table's entry for ``key`` changed: a run waiting for its exit goes on once it shows one."""
        run = self.awaiting_exit.get(key)
        entry = self.tasks.get(key)
        info = entry.info if entry is not None else None
        if entry is None or info is None or info.status != "stopped":
            return
        if run is None:
            if not info.rm or any(r.key == key for r in self.runs.values()):
                return
            # A run with rm whose client is gone (a daemon or TaskActor died meanwhile): finished anyway.
            run = _Run(None, key, True, stage="exit")
            self.log.info("run_finished_without_its_client", namespace=key[0], id=key[1])
        else:
            del self.awaiting_exit[key]
        run.exit = {"pid": info.pid, "exit_status": info.exit_status, "exited_at": info.exited_at}
        if not run.rm:
            self._run_done(run, None)
            return
        self._run_step(run, "delete", entry.address, TaskRequest(*key, "delete", {}))

    def _run_task_gone(self, key: tuple[str, str], reason: str) -> None:
        """The task left the table without the run's delete (its shim died): the run ends there."""
        run = self.awaiting_exit.pop(key, None)
        if run is None:
            return
        run.error = ErrorReply("unavailable", f"task {key[1]} is gone before its exit was seen: {reason}")
        if run.rm:
            self._run_forget(run)
        else:
            self._run_done(run, None)

    def _run_actor_lost(self, key: tuple[str, str]) -> None:
        """The task's TaskActor died during a step it was to answer: the client is told, the task stays."""
        for corr, run in list(self.runs.items()):
            if run.key == key and run.stage in ("create", "delete"):
                del self.runs[corr]
                self._run_done(run, ErrorReply("unavailable", f"the TaskActor of {key[1]} died during the run"))

    def _runs_lost_metadata(self) -> None:
        """The MetadataActor died: the runs waiting for it are told (what they made stays)."""
        for corr, run in list(self.runs.items()):
            if run.stage in ("record", "forget"):
                del self.runs[corr]
                self._run_done(run, ErrorReply("unavailable", "the metadata actor restarted"))

    def _run_forget(self, run: _Run) -> None:
        self._run_step(run, "forget", self.peers.metadata, DeleteContainer(*run.key))

    def _run_done(self, run: _Run, error: ErrorReply | None) -> None:
        error = error or run.error
        if error is None:
            self.log.info("run_done", namespace=run.key[0], id=run.key[1], exit_status=run.exit.get("exit_status"),
                          removed=run.rm)  # fmt: skip
        else:
            self.log.info("run_failed", namespace=run.key[0], id=run.key[1], category=error.category,
                          error=error.message)  # fmt: skip
        if run.ask is not None:
            self.send(run.ask.reply_to, Answer(run.ask.corr, error if error is not None else TaskReply(dict(run.exit))))

