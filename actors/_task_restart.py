"""A TaskActor's restart policies: on an init's exit in the same shim, and after its shim died."""

from __future__ import annotations

import time
from typing import Any

from actors import restart
from actors._task_oom import TaskOom
from actors.errdefs import ContactorError
from actors.messages import (
    Respawn,
    Stdio,
    TaskReady,
)


class TaskRestarts(TaskOom):

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
        self._watch_oom()
        self.info = self._make_info(pid, "running")
        self.send(self.runtime_parent, TaskReady(self.info, incarnation=self._incarnation))
        self._publish("/tasks/restart", {"container_id": setup.id, "pid": pid, "restarts": restarts},
                      key=self._key("restart", pid))  # fmt: skip
        self.log.info("task_restarted", pid=pid, restarts=restarts)
