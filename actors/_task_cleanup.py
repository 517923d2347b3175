"""A TaskActor's cleanups: after a delete, after a failed create, after its shim died.

A shim death (its pidfd readable, or its connection gone and the pid gone) is
handled as the seed's ``cleanupAfterDeadShim``: stop the OOM watch, delete the
container with the runtime under the namespace's root, unmount the rootfs,
publish /tasks/exit (the status the shim recorded in the bundle if the
container had exited, else 137), publish /tasks/delete, delete the bundle once
the log holds the delete, tell the RuntimeActor, exit.  Exactly once: our own
delete or shutdown of a shim is not a death, and every envelope carries a key
(see ``Envelope.key``), so what a restored TaskActor publishes again is dropped
by the log if it got there the first time.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from actors import respawns
from actors._task_base import DEAD_SHIM_STATUS, _container_pidfd, live_shim
from actors._task_events import TaskEvents
from actors.bundle import bury_bundle, delete_bundle
from actors.errdefs import ContactorError
from actors.events import envelope
from actors.messages import Answer
from actors.mount import unmount_all
from actors.runc import Runtime


class TaskCleanup(TaskEvents):

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
        never_ran = not pid and not self._announced()

        def tell_exit() -> None:
            # The init is gone: its exit goes out now (after its last OOM), the cleanup follows.
            told.append(True)
            envelopes = []
            if not never_ran:  # the log drops it if this process's exit is there already
                envelopes.append(self._exit_envelope(event))
            # Nothing to put on record first (no fsync on this path): a restore publishes it again.
            self._publish_last(tuple(envelopes))
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

        def rest() -> None:
            respawn = None if never_ran else self._respawn({k: v for k, v in event.items() if k != "id"})
            if respawn is not None:
                try:  # on record before the bundle goes: a daemon restart meanwhile keeps the restart
                    respawns.save(setup.config.daemon.state, setup.namespace, setup.id, respawn)
                except OSError as exc:
                    self.log.error("restart_not_recorded", error=str(exc))
            try:
                delete_bundle(self.bundle)
            except Exception as exc:
                self.log.error("bundle_delete_failed", error=str(exc))
            self._remove_cgroups()
            if never_ran:
                self._leave("shim died before its container existed")
                return
            self._leave("shim died", respawn=respawn)

        if never_ran:
            rest()
            return
        # The bundle goes only once the delete is in the log (see _finish_delete).
        key = self._key("delete")
        self._after_commit(key, rest, event)
        self._publish("/tasks/delete", {**event, "id": ""}, key=key, ack=True)

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

    def _finish_delete(self, result: dict[str, Any], reply_to: Any = None, answer: Answer | None = None) -> None:
        """The container is deleted in the shim: publish, shut the shim down, remove the rest, leave.

        The /tasks/delete goes out first, so that its way to the log overlaps the shim's exit and
        the cgroups' removal; what must wait for it (the bundle) waits in ``rest``.
        """
        assert self.client is not None and self.setup is not None
        event = {"container_id": self.setup.id, "pid": result.get("pid"), "exit_status": result.get("exit_status"),
                 "exited_at": result.get("exited_at"), "id": ""}  # fmt: skip
        key = self._key("delete")

        def rest() -> None:
            self._teardown_network()
            # Renamed out of the way at once, removed once the answer is on its way: the bundle's files
            # cost a delete 1 ms, and a create of the same id may come as soon as the answer is out.
            tomb = bury_bundle(self.bundle)
            self._fail_waiters("the task was deleted")
            self._leave("deleted", reply_to, answer)
            if tomb is not None:
                shutil.rmtree(tomb, ignore_errors=True)

        # The bundle goes only once the delete is in the log: a daemon dying before that leaves the
        # bundle, and the restored task publishes it again (the log drops a second copy).
        self._after_commit(key, rest, result)
        self._publish_last((envelope(self.setup.namespace, "/tasks/delete", event, key=key),), ack=True)
        # The shim exits while the cgroups go; its exit (the pidfd), not its answer, is what counts.
        with contextlib.suppress(ContactorError):
            self.client.request("shutdown")
        self._remove_cgroups()
        if not self._wait_shim_gone(10):
            self.log.error("shim_did_not_exit_after_shutdown", shim_pid=self.shim_pid)
        self._close_fds()
