"""A TaskActor's restore: taking a shim over after a daemon restart, whatever the daemon was doing."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from actors._task_base import live_shim
from actors._task_cleanup import TaskCleanup
from actors.errdefs import ContactorError, FailedPrecondition, NotFound
from actors.messages import (
    TaskReady,
)


class TaskRestore(TaskCleanup):

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
        announced = self._announced()
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
                # Alive but not answering (stopped, or busy): never kill a container for that. The task
                # stays listed as restoring and is tried again until its shim answers or dies.
                self.wakeupAfter(1.0, payload="restore")
                return
            self._cleanup_after_dead_shim()
            return
        self._restored(st, announced)

    def _restored(self, st: dict[str, Any], announced: bool) -> None:
        """Take over a shim found alive, whatever the daemon was doing with it when it died."""
        setup = self.setup
        assert setup is not None and self.client is not None
        if st["status"] == "deleted":
            # The daemon died in the middle of a delete: finish it (its exit again, if it was lost).
            self.closing = True
            if int(st["pid"]) > 0:
                self._publish_last((self._exit_envelope(st),), again=True)
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
            self.state.pop("reserved", None)
            self._save_state()
        # Its create and start (and below its exit) may have been on their way to the log when the
        # daemon died (a client can have had its answer by then): published again, the log keeps
        # each once, and none that it may have pruned already (see EventLog.append).
        created = self.state.get("create") or {}
        io = {k: created.get(k, "") for k in ("stdin", "stdout", "stderr")}
        io["terminal"] = bool(created.get("terminal"))
        self._publish("/tasks/create", {"container_id": setup.id, "bundle": str(self.bundle), "rootfs": [],
                                        "io": io, "checkpoint": "", "pid": self.info.pid},
                      timestamp=float(self.state.get("created_at") or 0) or None, key=self._key("create"),
                      again=announced)  # fmt: skip
        started_at = float(self.state.get("started_at") or 0)
        if started_at and self.info.pid > 0:
            self._publish("/tasks/start", {"container_id": setup.id, "pid": self.info.pid}, timestamp=started_at,
                          key=self._key("start", self.info.pid), again=True)  # fmt: skip
        if st["status"] in ("running", "paused", "created"):
            self._watch_oom()
        elif st["status"] == "stopped":
            self._publish_last((self._exit_envelope(st),), again=True)
        self.send(self.runtime_parent, TaskReady(self.info, incarnation=self._incarnation))
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
