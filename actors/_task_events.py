"""A TaskActor's shim events (exits, execs, OOMs) turned into envelopes, each once."""

from __future__ import annotations

from typing import Any

from actors._task_restart import TaskRestarts


class TaskEvents(TaskRestarts):

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
            if is_init:
                self._publish_last((self._exit_envelope(data),))
                self.state["exit_published"] = True
                self._update_info(status="stopped", exit_status=int(data.get("exit_status", -1)),
                                  exited_at=float(data.get("exited_at", 0.0)))  # fmt: skip
                self._consider_restart(int(data.get("exit_status", -1)), float(data.get("exited_at", 0.0)))
            else:
                record = {"container_id": setup.id, "id": data.get("id"), "pid": data.get("pid"),
                          "exit_status": data.get("exit_status"), "exited_at": data.get("exited_at")}  # fmt: skip
                self._publish("/tasks/exit", record, timestamp=data.get("exited_at"),
                              key=self._key("exit", data.get("id"), data.get("pid")))  # fmt: skip
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
