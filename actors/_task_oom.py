"""A TaskActor's OOM kills: its own cgroup watched while the task runs, drained before its exit.

The task's cgroup is watched here, where its exit is published: a container the OOM
killer takes dies at once, and its exit can come from the shim before the OOM is read,
so the watch is drained before the exit goes out (no OOM is lost and none comes after
its exit).  The watch's fd is watched with the shim's (``TaskBase._oom_fds``).
"""

from __future__ import annotations

from actors._task_base import TaskBase, _host
from actors.cgroups import OomWatch
from actors.errdefs import ContactorError
from actors.messages import Envelope


class TaskOom(TaskBase):

    def _watch_oom(self) -> None:
        """Watch the running task's cgroup for OOM kills (again after a restore or a restart: idempotent)."""
        if self.oom is not None:
            return
        try:
            self.oom = OomWatch.open(_host(), self._cgroups_path())
        except ContactorError as exc:
            # No memory controller, or the task is already gone: its exit still comes, without OOMs.
            self.log.warning("oom_watch_unavailable", error=exc.message)
            return
        self.watched = [*self.watched, self.oom.fd]

    def _drain_oom(self) -> None:
        """Publish a /tasks/oom for each OOM kill since the last read; close the watch once its cgroup is gone."""
        watch, setup = self.oom, self.setup
        if watch is None or setup is None:
            return
        try:
            count = watch.read()
        except ContactorError:
            count = 0
        for _ in range(count):
            self.log.warning("oom")
            self._publish("/tasks/oom", {"container_id": setup.id})
        if watch.gone:
            self._close_oom()

    def _publish_last(self, envelopes: tuple[Envelope, ...] = (), ack: bool = False, again: bool = False) -> None:
        """Publish the task's exit (or delete) after its last OOM, and stop watching for OOMs."""
        self._drain_oom()
        self._close_oom()
        for env in envelopes:
            self._send_envelope(env, ack, again)
