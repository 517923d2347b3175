"""TaskActor: one per container; owns that container's shim.

It runs on a thread of its own in a TaskHost process (``actors/task_host.py``),
one message at a time, like any actor.

It starts the shim (or, on restore, reconnects to it), forwards task calls to
it, turns shim events into envelopes on the Exchange, and watches two fds with
ThespianWatch: an eventfd the shim connection's reader pokes on every event,
and the shim's pidfd (which works for a process that is not our child, so it
works after a daemon restart too). What it does is in layers, one module each
(see ``actors/_task_base.py``); this module holds the actor, its set-up and its
requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Final

from actors._actor import error_reply
from actors._task_base import DEAD_SHIM_STATUS, STATE_FILE_SIZE, live_shim
from actors._task_restore import TaskRestore
from actors.bundle import write_atomic
from actors.errdefs import ContactorError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from actors.messages import (
    Answer,
    Ask,
    CreateTask,
    ErrorReply,
    TaskReady,
    TaskReply,
    TaskRequest,
    TaskSetup,
)
from actors.shim.client import DEFAULT_SHIM, start_shim

__all__ = ["TaskActor", "DEAD_SHIM_STATUS", "live_shim"]

FORWARDED: Final = frozenset({"exec", "pids", "state", "close_io", "resize_pty", "update"})


def shim_command(name: str) -> list[str]:
    """The configured shim program, on PATH or beside this interpreter; else ``python -m actors.shim``."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    return [found] if found else list(DEFAULT_SHIM)


class TaskActor(TaskRestore):
    role = "task"

    # -- set-up -----------------------------------------------------------------------------------------
    def on_TaskSetup(self, msg: TaskSetup, sender: Any) -> None:
        self.setup, self.peers = msg, msg.peers
        self.log = self.log.bind(namespace=msg.namespace, id=msg.id)
        self.runtime_parent = sender
        if msg.restore:
            self._restore()
        else:
            assert msg.create is not None
            self._create(msg.create, msg.create.reply_to)

    def _create(self, ask: Ask, reply_to: Any) -> None:
        setup = self.setup
        assert setup is not None and isinstance(ask.body, CreateTask)
        cfg = setup.config
        stdio = ask.body.stdio
        try:
            # task.json exists before anything can be published, so that what is published can
            # always be put on record (a full state fs refuses the create here, not later). No
            # fsync on the create path: lost in a power cut, it means "not announced", which is true.
            write_atomic(self.bundle / "task.json",
                         json.dumps({"reserved": True, "created_at": self.state["created_at"]}).encode()
                         .ljust(STATE_FILE_SIZE), sync=False)  # fmt: skip
            self._setup_network()
            factory = Path(cfg.daemon.state) / "shim-factory.sock"
            handle = start_shim(
                setup.namespace, setup.id, str(self.bundle), self._runtime_root(),
                runtime=self._runtime_binary(), shim=shim_command(cfg.runtime.shim), debug=cfg.runtime.shim_debug,
                factory=str(factory) if factory.exists() else None, systemd_cgroup=cfg.cgroups.driver == "systemd",
            )  # fmt: skip
            self.shim_pid = handle.pid
            # The create goes right behind the subscribe: the shim answers a subscribe before it
            # reads the next request, so no event of the create can come before it.
            subscribed = self._connect(since=0, wait=False)
            assert self.client is not None
            params: dict[str, Any] = {"stdin": stdio.stdin, "stdout": stdio.stdout, "stderr": stdio.stderr,
                                      "terminal": stdio.terminal}  # fmt: skip
            if setup.rootfs:
                params["rootfs"] = [{"type": "bind", "source": setup.rootfs, "options": ["rbind"]}]
            # What a restart needs to create the container again, kept with the task.
            self.state.update(create=params, policy=setup.restart_policy, restarts=setup.restarts)
            if setup.rm:
                self.state["rm"] = True
            pid = int(self.client.call("create", **params)["pid"])
            subscribed.result()
            if setup.start or setup.run:  # made again by its restart policy after its shim died, or a run
                self.client.call("start")
                self.state["started_at"] = time.time()
        except Exception as exc:
            self.log.warning("task_create_failed", error=str(exc))
            self._abandon_create()
            self.send(reply_to, Answer(ask.corr, error_reply(exc)))
            return
        self._save_state()
        self.info = self._make_info(pid, "running" if setup.start or setup.run else "created")
        io = {
            "stdin": stdio.stdin,
            "stdout": stdio.stdout,
            "stderr": stdio.stderr,
            "terminal": stdio.terminal,
        }
        # The event is on its way before the answer; should the daemon die before it reaches the log,
        # the restored task publishes it again (see TaskRestore._restored).
        self._publish("/tasks/create", {"container_id": setup.id, "bundle": str(self.bundle), "rootfs": [],
                                        "io": io, "checkpoint": "", "pid": pid}, key=self._key("create"))  # fmt: skip
        self._watch_oom()
        self.send(self.runtime_parent, TaskReady(self.info, reply_to, Answer(ask.corr, self.info), self._incarnation))
        self.log.info("task_created", pid=pid, shim_pid=self.shim_pid)
        if setup.start:
            self._publish("/tasks/start", {"container_id": setup.id, "pid": pid}, key=self._key("start", pid))
            self._publish("/tasks/restart", {"container_id": setup.id, "pid": pid, "restarts": setup.restarts},
                          key=self._key("restart", pid))  # fmt: skip
            self.log.info("task_restarted", pid=pid, restarts=setup.restarts, after="shim died")
        elif setup.run:
            self._publish("/tasks/start", {"container_id": setup.id, "pid": pid}, key=self._key("start", pid))

    # -- events from the shim, and its death --------------------------------------------------------------
    def on_WatchMessage(self, msg: Any, sender: Any) -> None:
        if self.oom is not None and self.oom.fd in msg.ready:
            self._drain_oom()
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

    def on_WakeupMessage(self, msg: Any, sender: Any) -> None:
        if msg.payload == "restore" and not self.gone:
            self._restore()
        elif msg.payload == "await_create" and not self.gone and not self.closing:
            self._await_create()
        elif msg.payload == "commit_wait":
            self._commit_timed_out()
        elif msg.payload == "restart" and not self.gone and not self.closing:
            self._restart()

    # -- requests -------------------------------------------------------------------------------------------
    def ask_TaskRequest(self, msg: TaskRequest, ask: Ask, sender: Any) -> Any:
        if self.commit_wait is not None and not self.gone:
            return self._while_finishing(msg, ask, sender)
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
                self._publish("/tasks/start", {"container_id": msg.id, "pid": result.get("pid")},
                              key=self._key("start", result.get("pid")))  # fmt: skip
                self._update_info(ask.reply_to or sender, Answer(ask.corr, TaskReply(result)), status="running")
                return None
            return TaskReply(result)
        if op == "kill":
            if not exec_id:
                # An explicit kill by a client is never undone by a restart policy.
                self.state["stopped_by_client"] = True
                self._save_state()
            return TaskReply(self.client.call("kill", **params))
        if op in ("pause", "resume"):
            result = self.client.call(op)
            self._publish(f"/tasks/{op}d", {"container_id": msg.id})
            self._update_info(ask.reply_to or sender, Answer(ask.corr, TaskReply(result)),
                              status="paused" if op == "pause" else "running")  # fmt: skip
            return None
        if op == "checkpoint":
            result = self.client.call("checkpoint", **params)
            self._publish(
                "/tasks/checkpointed", {"container_id": msg.id, "checkpoint": params.get("image_path", "")}
            )
            return TaskReply(result)
        raise InvalidArgument(f"unknown task operation {op!r}")

    def _while_finishing(self, msg: TaskRequest, ask: Ask, sender: Any) -> TaskReply | None:
        """A task whose shim is gone (deleted, or dead) and whose removal waits for its delete event."""
        exec_id = str(msg.params.get("exec_id", ""))
        if exec_id:
            raise NotFound(f"exec process {exec_id!r} does not exist")
        if msg.op == "state":
            return TaskReply({**self.final_exit, "status": "stopped"})
        if msg.op == "wait":
            return TaskReply(dict(self.final_exit))
        if msg.op == "delete":
            self.parked.append((ask, sender))  # answered as the task goes
            return None
        raise FailedPrecondition(f"task {msg.id} has stopped and is being removed")

    def _delete(self, params: dict[str, Any], exec_id: str, ask: Ask, sender: Any) -> TaskReply | None:
        assert self.client is not None and self.setup is not None
        if exec_id:
            return TaskReply(self.client.call("delete", exec_id=exec_id))
        force = bool(params.get("force", False))
        info = self.info
        if info is not None and info.status == "stopped":
            # The shim reported the exit (its event made the status): what "state" would say.
            st = {"status": "stopped", "pid": info.pid, "exit_status": info.exit_status, "exited_at": info.exited_at}
        else:
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

    def on_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        # Stopping the daemon never touches shims or containers: only let go of the connection.
        self._fail_waiters("the daemon is stopping")
        for ask, parked_by in self.parked:
            self.answer(ask, parked_by, ErrorReply("unavailable", "the daemon is stopping"))
        self.parked = []
        self._close_fds()
