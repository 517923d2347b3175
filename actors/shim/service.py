"""What the shim does for each call: the container's processes and their runtime calls.

One ``ShimService`` per shim process, for one container.  Calls arrive on
worker threads (the server runs each request in its own thread so that a
``wait`` never blocks a ``kill``); shared tables are guarded by short locks,
and no lock that the reaper needs is ever held across a runtime call or a
FIFO open.  Every runtime call goes through the reaper.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from actors import mount as mnt
from actors.bundle import read_spec, write_atomic
from actors.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from actors.identifiers import validate
from actors.runc import Runtime, runtime_error
from actors.shim.process import Process, State, check_transition
from actors.shim.protocol import socket_name
from actors.shim.reaper import Reaper
from actors.shim.stdio import ProcessIO

__all__ = ["ShimService", "RUNTIME_TIMEOUT"]

RUNTIME_TIMEOUT: Final = 60.0
CONSOLE_TIMEOUT: Final = 10.0
IO_DRAIN_TIMEOUT: Final = 2.0

Publish = Callable[[str, dict[str, Any]], None]


# -- parameter checking: every value from the wire is checked before use ------------------------
def _str(params: dict[str, Any], key: str, default: str = "") -> str:
    value = params.get(key, default)
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be a string")
    return value


def _bool(params: dict[str, Any], key: str, default: bool = False) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{key} must be a boolean")
    return value


def _int(params: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidArgument(f"{key} must be an integer from {lo} to {hi}")
    return value


def _map(params: dict[str, Any], key: str) -> dict[str, Any]:
    value = params.get(key)
    if not isinstance(value, dict):
        raise InvalidArgument(f"{key} must be a map")
    return value


def _exec_id(params: dict[str, Any]) -> str:
    exec_id = _str(params, "exec_id")
    return validate(exec_id, "exec id") if exec_id else ""


class ShimService:
    def __init__(
        self,
        namespace: str,
        cid: str,
        bundle: str,
        runtime: Runtime,
        reaper: Reaper,
        publish: Publish,
        log: Any,
    ) -> None:
        self.namespace = namespace
        self.cid = cid
        self.bundle = bundle
        self.runtime = runtime
        self.reaper = reaper
        self.publish = publish
        self.log = log
        self._lock = threading.Lock()  # guards the tables below; short holds only
        self.init: Process | None = None
        self.execs: dict[str, Process] = {}
        self._by_pid: dict[int, Process] = {}
        self._mounted = False
        self._own_pid_ns = True
        # `runc kill --all` after the init's exit freezes the v1 cgroup while it signals: a delete
        # running meanwhile reads the container as paused and fails. Deletes wait for it.
        self._kill_all: threading.Thread | None = None
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "create": self.create, "start": self.start, "state": self.state, "kill": self.kill,
            "exec": self.exec, "pids": self.pids, "pause": self.pause, "resume": self.resume,
            "delete": self.delete, "wait": self.wait, "close_io": self.close_io,
            "resize_pty": self.resize_pty, "update": self.update, "checkpoint": self.checkpoint,
        }  # fmt: skip

    # -- helpers ----------------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.bundle, name)

    def _run(self, what: str, argv: list[str], not_found: bool = False, **kw: Any) -> bytes:
        """Run the runtime through the reaper; a failure becomes a categorized error with its text."""
        log_path = self.runtime.log
        offset = os.path.getsize(log_path) if log_path and os.path.exists(log_path) else 0
        try:
            result = self.reaper.run(argv, timeout=kw.pop("timeout", RUNTIME_TIMEOUT), **kw)
        except FileNotFoundError:
            raise NotFound(f"runtime binary {argv[0]!r} not found") from None
        except TimeoutError as exc:
            raise Unavailable(f"{what}: {exc}") from None
        if result.status != 0:
            raise runtime_error(what, result.status, result.stderr, log_path, offset, not_found)
        return result.stdout

    def _process(self, exec_id: str) -> Process:
        with self._lock:
            if not exec_id:
                if self.init is None:
                    raise FailedPrecondition("container must be created first")
                return self.init
            proc = self.execs.get(exec_id)
        if proc is None:
            raise NotFound(f"exec process {exec_id!r} does not exist")
        return proc

    def _register_pid(self, proc: Process, pid: int) -> None:
        """Make ``pid`` known to the reaper callback, and take an exit that came first.

        Done under the reaper's lock, so that exec_started is published before the
        process's exit, however fast it exits.
        """
        with self.reaper.lock:
            with self._lock:
                proc.pid = pid
                self._by_pid[pid] = proc
            if not proc.is_init:
                self.publish("exec_started", {"container_id": self.cid, "exec_id": proc.exec_id, "pid": pid})
            claimed = self.reaper.claim(pid)
            if claimed is not None:
                self._exited(proc, *claimed)

    def _read_pid(self, name: str) -> int:
        try:
            with open(self._path(name)) as f:
                return int(f.read().strip())
        except (OSError, ValueError) as exc:
            raise Internal(f"runtime wrote no usable {name}: {exc}") from None

    # -- exits, called by the reaper (with its lock held: never block here) --------------------------
    def on_exit(self, pid: int, status: int, when: float) -> bool:
        with self._lock:
            proc = self._by_pid.get(pid)
        if proc is None:
            return False
        self._exited(proc, status, when)
        return True

    def _exited(self, proc: Process, status: int, when: float) -> None:
        with proc.cond:
            if proc.state in (State.STOPPED, State.DELETED):
                return
        record = {"pid": proc.pid, "exit_status": status, "exited_at": when}
        if proc.is_init:
            # The exit must outlive the shim and any client: it reaches the bundle before anyone is told.
            try:
                write_atomic(self._path("init.exit"), json.dumps(record).encode())
            except OSError as exc:
                self.log.error("init_exit_not_recorded", error=str(exc))
        if proc.is_init and not self._own_pid_ns:
            # Started before waiters learn of the exit, so that their delete finds it to wait for.
            self._kill_all = threading.Thread(target=self._kill_all_after_init_exit, daemon=True)
            self._kill_all.start()
        if not proc.set_exited(status, when):
            return
        self.log.info("process_exited", exec_id=proc.exec_id, **record)
        self.publish("exit", {"container_id": self.cid, "id": proc.exec_id or self.cid, **record})

    def _kill_all_after_init_exit(self) -> None:
        # Without a pid namespace of its own the kernel does not kill the rest of the container.
        with contextlib.suppress(Exception):
            self._run("kill", self.runtime.kill(self.cid, signal.SIGKILL, all_processes=True))

    def notify_oom(self) -> None:
        """Hook for the cgroup monitor: report an OOM kill of this container to subscribers."""
        self.publish("oom", {"container_id": self.cid})

    # -- calls ------------------------------------------------------------------------------------
    def create(self, params: dict[str, Any]) -> dict[str, Any]:
        mounts = mnt.parse_mounts(params.get("rootfs"))
        spec = read_spec(self.bundle)
        raw_process = spec.get("process")
        process: dict[str, Any] = raw_process if isinstance(raw_process, dict) else {}
        terminal = _bool(params, "terminal", bool(process.get("terminal", False)))
        if terminal != bool(process.get("terminal", False)):
            raise InvalidArgument(f"terminal={terminal} but the spec's process.terminal is {not terminal}")
        options = params.get("options") or {}
        if not isinstance(options, dict):
            raise InvalidArgument("options must be a map")
        namespaces = (spec.get("linux") or {}).get("namespaces") or []
        self._own_pid_ns = any(n.get("type") == "pid" and not n.get("path") for n in namespaces)
        proc = Process("", terminal, _str(params, "stdin"), _str(params, "stdout"), _str(params, "stderr"))
        with self._lock:
            if self.init is not None and self.init.state is not State.DELETED:
                raise AlreadyExists(f"container {self.cid} already created")
            # After a delete the same shim may create the container again (a restart policy does).
            self.init = proc
            self._by_pid = {pid: p for pid, p in self._by_pid.items() if not p.is_init}
        _unlink_quietly(self._path("init.exit"))
        try:
            with proc.op_lock, contextlib.ExitStack() as undo:
                if mounts:
                    mnt.mount_all(mounts, self._path("rootfs"))
                    undo.callback(mnt.unmount_all, self._path("rootfs"))
                    self._mounted = True
                    undo.callback(setattr, self, "_mounted", False)
                proc.io = io = ProcessIO(proc.stdin, proc.stdout, proc.stderr, terminal)
                io.open()
                undo.callback(io.close)
                with contextlib.ExitStack() as console, self.reaper.holding():
                    sock_path = None
                    if terminal:
                        listener, sock_path = self._console_listener(console, "init")
                    argv = self.runtime.create(
                        self.cid, self.bundle, self._path("init.pid"), sock_path,
                        no_pivot=bool(options.get("no_pivot")),
                        no_new_keyring=bool(options.get("no_new_keyring")),
                    )  # fmt: skip
                    undo.callback(self._force_delete_quietly)
                    self._run(
                        "OCI runtime create failed", argv,
                        stdin=io.child_stdin, stdout=io.child_stdout, stderr=io.child_stderr,
                    )  # fmt: skip
                    self._register_pid(proc, self._read_pid("init.pid"))
                    if terminal:
                        io.attach_console(listener, CONSOLE_TIMEOUT)
                io.release_child_fds()
                undo.pop_all()
        except BaseException:
            with self._lock:
                self.init = None
                self._by_pid.pop(proc.pid, None)
            raise
        self.log.info("container_created", pid=proc.pid)
        return {"pid": proc.pid}

    def _console_listener(self, stack: contextlib.ExitStack, name: str) -> tuple[socket.socket, str]:
        path = self._path(f"console-{name}.sock")
        _unlink_quietly(path)
        listener = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        short = stack.enter_context(socket_name(path))
        listener.bind(short)
        stack.callback(_unlink_quietly, path)
        listener.listen(1)
        return listener, short

    def _force_delete_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._run("delete", self.runtime.delete(self.cid, force=True))

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        proc = self._process(_exec_id(params))
        with proc.op_lock:
            with proc.cond:
                if proc.state is not State.CREATED:
                    what = "container" if proc.is_init else "exec process"
                    raise FailedPrecondition(f"cannot start a {proc.state.value} {what}")
            if proc.is_init:
                self._run("OCI runtime start failed", self.runtime.start(self.cid))
            else:
                self._start_exec(proc)
            with proc.cond:
                if proc.state is State.CREATED:  # it may already have exited
                    proc.state = State.RUNNING
        self.log.info("process_started", exec_id=proc.exec_id, pid=proc.pid)
        return {"pid": proc.pid}

    def _start_exec(self, proc: Process) -> None:
        init = self._process("")
        with init.cond:
            if init.state is not State.RUNNING:
                raise FailedPrecondition(f"cannot start an exec process in a {init.state.value} container")
        spec_file = self._path(f"exec-{proc.exec_id}.json")
        write_atomic(spec_file, json.dumps(proc.spec).encode())
        proc.io = io = ProcessIO(proc.stdin, proc.stdout, proc.stderr, proc.terminal)
        io.open()
        try:
            with contextlib.ExitStack() as console, self.reaper.holding():
                sock_path = None
                if proc.terminal:
                    listener, sock_path = self._console_listener(console, proc.exec_id)
                pid_file = f"exec-{proc.exec_id}.pid"
                self._run(
                    "OCI runtime exec failed",
                    self.runtime.exec(self.cid, spec_file, self._path(pid_file), sock_path),
                    stdin=io.child_stdin, stdout=io.child_stdout, stderr=io.child_stderr,
                )  # fmt: skip
                self._register_pid(proc, self._read_pid(pid_file))
                if proc.terminal:
                    io.attach_console(listener, CONSOLE_TIMEOUT)
            io.release_child_fds()
        except BaseException:
            io.close()
            raise

    def state(self, params: dict[str, Any]) -> dict[str, Any]:
        proc = self._process(_exec_id(params))
        return {"id": self.cid, "bundle": self.bundle, **proc.describe()}

    def kill(self, params: dict[str, Any]) -> dict[str, Any]:
        proc = self._process(_exec_id(params))
        signo = _int(params, "signal", signal.SIGTERM, 1, 64)
        all_processes = _bool(params, "all")
        if proc.is_init:
            with proc.cond:
                if proc.state in (State.STOPPED, State.DELETED) and not all_processes:
                    raise NotFound("process already finished")
            self._run("kill", self.runtime.kill(self.cid, signo, all_processes), not_found=True)
            return {}
        # The reaper's lock keeps the pid from being reaped (and reused) while we signal it.
        with self.reaper.lock, proc.cond:
            if proc.pid == 0:
                raise FailedPrecondition(f"exec process {proc.exec_id!r} has not been started")
            if proc.state in (State.STOPPED, State.DELETED):
                raise NotFound("process already finished")
            os.kill(proc.pid, signo)
        return {}

    def exec(self, params: dict[str, Any]) -> dict[str, Any]:
        exec_id = _exec_id(params)
        if not exec_id:
            raise InvalidArgument("exec needs an exec_id")
        spec = dict(_map(params, "spec"))
        args = spec.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise InvalidArgument("exec spec needs args: a non-empty list of strings")
        terminal = _bool(params, "terminal")
        spec["terminal"] = terminal
        spec.setdefault("cwd", "/")
        init = self._process("")
        with init.cond:
            if init.state is not State.RUNNING:
                raise FailedPrecondition(f"cannot exec in a {init.state.value} container")
        proc = Process(
            exec_id, terminal, _str(params, "stdin"), _str(params, "stdout"), _str(params, "stderr"), spec
        )
        with self._lock:
            if exec_id in self.execs:
                raise AlreadyExists(f"exec process {exec_id!r} already exists")
            self.execs[exec_id] = proc
        self.publish("exec_added", {"container_id": self.cid, "exec_id": exec_id})
        return {}

    def pids(self, params: dict[str, Any]) -> dict[str, Any]:
        self._process("")
        out = self._run("ps", self.runtime.ps(self.cid))
        try:
            pids = json.loads(out or b"[]")
        except ValueError:
            raise Internal(f"runtime ps printed something that is not JSON: {out[:200]!r}") from None
        with self._lock:
            known = {pid: p.exec_id for pid, p in self._by_pid.items()}
        return {"processes": [{"pid": pid, "exec_id": known.get(pid, "")} for pid in pids or []]}

    def _pause_resume(self, target: State, resume: bool) -> dict[str, Any]:
        proc = self._process("")
        with proc.op_lock:
            with proc.cond:
                src = proc.state
                check_transition(True, src, target, resume)
            self._run(
                "resume" if resume else "pause",
                self.runtime.resume(self.cid) if resume else self.runtime.pause(self.cid),
            )
            if not resume and not _frozen_settled(proc.pid):
                self.log.warning("freezer_still_freezing", pid=proc.pid)
            with proc.cond:
                if proc.state is src:  # unless it exited meanwhile
                    proc.state = target
        return {}

    def pause(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._pause_resume(State.PAUSED, resume=False)

    def resume(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._pause_resume(State.RUNNING, resume=True)

    def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        exec_id = _exec_id(params)
        proc = self._process(exec_id)
        with proc.op_lock:
            with proc.cond:
                if proc.state in (State.RUNNING, State.PAUSED):
                    what = "container" if proc.is_init else "exec process"
                    raise FailedPrecondition(f"cannot delete a {proc.state.value} {what}; kill it first")
                if proc.state is State.DELETED:
                    raise NotFound("process already deleted")
                created = proc.state is State.CREATED
            if proc.is_init:
                self._delete_init(proc, created)
            else:
                self._delete_exec(proc)
            with proc.cond:
                proc.state = State.DELETED
        self.log.info("process_deleted", exec_id=exec_id, exit_status=proc.exit_status)
        return {"pid": proc.pid, "exit_status": proc.exit_status, "exited_at": proc.exited_at}

    def _delete_init(self, proc: Process, created: bool) -> None:
        kill_all = self._kill_all
        if kill_all is not None:
            kill_all.join(RUNTIME_TIMEOUT)
            self._kill_all = None
        if created:
            self._run("delete", self.runtime.delete(self.cid, force=True), not_found=True)
            if proc.pid and not proc.wait(10.0):
                raise Internal("container init did not exit after a forced delete")
        else:
            try:
                self._run("delete", self.runtime.delete(self.cid), not_found=True)
            except NotFound:
                pass
            except FailedPrecondition:
                self._run("delete", self.runtime.delete(self.cid, force=True), not_found=True)
        if proc.pid == 0:  # never ran: nothing will report an exit
            proc.set_exited(0, 0.0)
        with self._lock:
            execs = list(self.execs.values())
            self.execs.clear()
        for p in [proc, *execs]:
            if p.io is not None:
                p.io.wait_copied(IO_DRAIN_TIMEOUT)
                p.io.close()
        if self._mounted:
            mnt.unmount_all(self._path("rootfs"))
            self._mounted = False

    def _delete_exec(self, proc: Process) -> None:
        if proc.io is not None:
            proc.io.wait_copied(IO_DRAIN_TIMEOUT)
            proc.io.close()
        with self._lock:
            self.execs.pop(proc.exec_id, None)
            self._by_pid.pop(proc.pid, None)
        for name in (f"exec-{proc.exec_id}.json", f"exec-{proc.exec_id}.pid"):
            _unlink_quietly(self._path(name))

    def wait(self, params: dict[str, Any]) -> dict[str, Any]:
        proc = self._process(_exec_id(params))
        timeout = params.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise InvalidArgument("timeout must be a non-negative number")
        if not proc.wait(None if timeout is None else float(timeout)):
            raise Unavailable(f"process still running after {timeout}s")
        return {"pid": proc.pid, "exit_status": proc.exit_status, "exited_at": proc.exited_at}

    def close_io(self, params: dict[str, Any]) -> dict[str, Any]:
        proc = self._process(_exec_id(params))
        if proc.io is not None and _bool(params, "stdin", True):
            proc.io.close_stdin()
        return {}

    def resize_pty(self, params: dict[str, Any]) -> dict[str, Any]:
        proc = self._process(_exec_id(params))
        width = _int(params, "width", 0, 1, 65535)
        height = _int(params, "height", 0, 1, 65535)
        with proc.cond:
            if proc.state in (State.STOPPED, State.DELETED):
                raise FailedPrecondition("cannot resize the terminal of a stopped process")
        if proc.io is not None:
            proc.io.resize(width, height)
        return {}

    def update(self, params: dict[str, Any]) -> dict[str, Any]:
        resources = _map(params, "resources")
        proc = self._process("")
        with proc.cond:
            if proc.state in (State.STOPPED, State.DELETED):
                raise FailedPrecondition(f"cannot update a {proc.state.value} container")
        path = self._path(f".resources-{threading.get_ident()}.json")
        write_atomic(path, json.dumps(resources).encode())
        try:
            self._run("update", self.runtime.update(self.cid, path))
        finally:
            _unlink_quietly(path)
        return {}

    def checkpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        image_path = _str(params, "image_path")
        if not os.path.isabs(image_path):
            raise InvalidArgument("image_path must be an absolute path")
        work_path = _str(params, "work_path") or self._path("criu-work")
        leave_running = not _bool(params, "exit")
        proc = self._process("")
        with proc.cond:
            if proc.state not in (State.RUNNING, State.PAUSED):
                raise FailedPrecondition(f"cannot checkpoint a {proc.state.value} container")
        criu = shutil.which("criu")
        if criu is None:
            raise Unavailable("checkpoint unavailable: criu is not installed")
        os.makedirs(image_path, mode=0o700, exist_ok=True)
        os.makedirs(work_path, mode=0o700, exist_ok=True)
        argv = self.runtime.checkpoint(
            self.cid, image_path, work_path, leave_running=leave_running,
            tcp_established=_bool(params, "tcp_established"), ext_unix_sk=_bool(params, "ext_unix_sk"),
            shell_job=proc.terminal, file_locks=_bool(params, "file_locks"),
        )  # fmt: skip
        try:
            self._run("checkpoint", argv)
        except Internal as exc:
            reason = self._criu_unusable(criu)
            if reason:
                raise Unavailable(
                    f"checkpoint unavailable: criu cannot work on this machine: {reason}"
                ) from None
            raise Internal(f"{exc.message} (see {work_path}/dump.log)") from None
        return {}

    def _criu_unusable(self, criu: str) -> str | None:
        """criu's own reason when ``criu check`` fails, else None."""
        result = self.reaper.run([criu, "check"], timeout=RUNTIME_TIMEOUT)
        if result.status == 0:
            return None
        lines = [ln for ln in result.stderr.decode(errors="replace").splitlines() if "Error" in ln]
        return lines[-1].strip() if lines else f"criu check exited with {result.status}"

    # -- whole-shim operations ---------------------------------------------------------------------
    def alive(self) -> bool:
        """Does a container process still need this shim?"""
        with self._lock:
            procs = [p for p in (self.init, *self.execs.values()) if p is not None]
        return any(p.state is not State.DELETED for p in procs)

    def kill_and_delete(self) -> None:
        """Tear the container down (shutdown with force, SIGTERM): SIGKILL all, wait, delete."""
        init = self.init
        if init is None:
            return
        if not os.path.isdir(self.bundle):
            # The runtime's log lived in the bundle: without it the runtime would refuse to run.
            self.runtime = dataclasses.replace(self.runtime, log=None)
        if init.state not in (State.STOPPED, State.DELETED):
            try:
                self._run("kill", self.runtime.kill(self.cid, signal.SIGKILL, all_processes=True))
                if init.state is State.PAUSED:
                    # A frozen process cannot die until it is thawed.
                    self._run("resume", self.runtime.resume(self.cid))
            except Exception as exc:
                self.log.warning("teardown_kill_failed", error=str(exc))
            if not init.wait(10.0):
                self.log.error("teardown_init_did_not_exit", pid=init.pid)
        for exec_id in list(self.execs):
            with contextlib.suppress(Exception):
                self.delete({"exec_id": exec_id})
        if init.state is not State.DELETED:
            try:
                self.delete({})
            except Exception as exc:
                self.log.error("teardown_delete_failed", error=str(exc))


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _frozen_settled(pid: int, timeout: float = 2.0) -> bool:
    """Wait until a v1 freezer that a pause left FREEZING reads FROZEN (crun returns before it does).

    True when it settled, or there is no v1 freezer to wait for.
    """
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return True
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "freezer" not in controllers.split(","):
            continue
        state = os.path.join("/sys/fs/cgroup/freezer", path.lstrip("/"), "freezer.state")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(state) as f:
                    if f.read().strip() != "FREEZING":
                        return True
            except OSError:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
    return True

