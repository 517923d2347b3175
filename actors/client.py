"""The Python client: every operation of the daemon, through its Gateway socket.

``Client(address)`` connects to the Gateway (never joining the actor system)
and offers typed calls; failures raise the errdefs exception of their
category, and a daemon that is not running is ``Unavailable`` with a clear
message.  ``events(filters)`` is an iterator over envelopes.  Thread-safe:
replies are matched by request id.
"""

from __future__ import annotations

import _socket  # socket's own import turns its constants into enums: 2 ms of every command line
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from actors import wire
from actors.errdefs import FailedPrecondition, Unavailable, from_category

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from typing import Any, Final

    # A task as the daemon describes it: the RuntimeActor's own TaskInfo.
    from actors.taskinfo import TaskInfo as Task

__all__ = ["Client", "Task", "EventsLost", "DEFAULT_ADDRESS", "CALL_TIMEOUT"]

DEFAULT_ADDRESS: Final = "/run/contactor/contactor.sock"
CALL_TIMEOUT: Final = 120.0


def __getattr__(name: str) -> Any:
    """``Task`` (TaskInfo), imported when first used: a dataclass, whose import the command line can skip."""
    if name == "Task":
        from actors.taskinfo import TaskInfo

        return TaskInfo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Frames an event stream holds in memory before its connection stops being read (the daemon then waits).
_STREAM_QUEUE: Final = 256


class EventsLost(FailedPrecondition):
    """A subscriber read so slowly that the log dropped events ``first``..``last`` before it got them."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__(f"events {first} to {last} were dropped from the log before this subscriber read "
                         f"them; resume with since={last}")  # fmt: skip
        self.first, self.last = first, last


class _Conn:
    """One Gateway connection with a reader thread; replies by id, streams by id."""

    def __init__(self, address: str, timeout: float) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            with wire.socket_name(address) as name:
                self.sock.connect(name)
        except FileNotFoundError:
            self.sock.close()
            raise Unavailable(f"the contactor daemon is not running (no socket at {address})") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise Unavailable(f"the contactor daemon is not running (nothing listens on {address})") from None
        except OSError as exc:
            self.sock.close()
            raise Unavailable(
                f"cannot reach the contactor daemon at {address}: {exc.strerror or exc}"
            ) from None
        self.sock.settimeout(None)
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.queues: dict[int, queue.Queue[dict[str, Any] | None]] = {}
        self.closed = False
        self.shut = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            while (frame := wire.recv_frame(self.sock)) is not None:
                with self.lock:
                    q = self.queues.get(frame.get("id", -1))
                while q is not None:
                    try:  # a bounded stream's queue blocks us: the daemon then holds back (backpressure)
                        q.put(frame, timeout=0.2)
                        break
                    except queue.Full:
                        if self.shut:
                            return
        except (OSError, wire.ProtocolError):
            pass
        finally:
            with self.lock:
                self.closed = True
                queues = list(self.queues.values())
            for q in queues:
                with contextlib.suppress(queue.Full):
                    q.put_nowait(None)  # a full queue's reader sees ``closed`` once it drains it

    def open(
        self, method: str, params: dict[str, Any], maxsize: int = 0
    ) -> tuple[int, queue.Queue[dict[str, Any] | None]]:
        req_id = next(self.ids)
        q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize)
        with self.lock:
            if self.closed:
                raise Unavailable("the connection to the contactor daemon is closed")
            self.queues[req_id] = q
        try:
            with self.send_lock:
                wire.send_frame(self.sock, {"id": req_id, "method": method, "params": params})
        except OSError as exc:
            raise Unavailable(f"lost the contactor daemon: {exc}") from None
        return req_id, q

    def forget(self, req_id: int) -> None:
        with self.lock:
            self.queues.pop(req_id, None)

    def next(self, q: queue.Queue[dict[str, Any] | None], timeout: float | None) -> dict[str, Any] | None:
        """The next frame of a stream, None when the connection closed; queue.Empty after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return q.get(timeout=0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                if self.closed and q.empty():
                    return None
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def close(self) -> None:
        self.shut = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(_socket.SHUT_RDWR)
        self.sock.close()


def _with_net(labels: dict[str, str] | None, net: str | None, ip: str, ports: Sequence[str]) -> dict[str, str]:
    """``labels`` with the network labels of ``net``, ``ip`` and ``ports`` (see Client.create_container)."""
    labels = dict(labels or {})
    if net is not None or ip or ports:
        from actors import netopts

        labels.update(netopts.to_labels(net, ip, ports))
    return labels


def _unwrap(frame: dict[str, Any] | None, method: str) -> dict[str, Any]:
    if frame is None:
        raise Unavailable(f"the contactor daemon closed the connection during {method}")
    if "error" in frame:
        err = frame["error"]
        raise from_category(str(err.get("category")), str(err.get("message")))
    result = frame.get("result")
    return result if isinstance(result, dict) else {}


class Client:
    def __init__(
        self, address: str = DEFAULT_ADDRESS, namespace: str = "default", timeout: float = 10.0,
        node: str | None = None,
    ) -> None:  # fmt: skip
        """``node``: send container and task calls to that node of the cluster (None: this daemon's)."""
        self.address = address
        self.namespace = namespace
        self.node = node
        self._conn = _Conn(address, timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def call(self, method: str, timeout: float | None = CALL_TIMEOUT, **params: Any) -> dict[str, Any]:
        """A raw call: ``method`` of the Gateway protocol with ``params``; namespace filled in."""
        params.setdefault("namespace", self.namespace)
        if self.node and method.split(".")[0] in ("containers", "tasks"):
            params.setdefault("node", self.node)
        req_id, q = self._conn.open(method, params)
        try:
            frame = q.get(timeout=timeout)
        except queue.Empty:
            raise Unavailable(f"the contactor daemon did not answer {method} within {timeout}s") from None
        finally:
            self._conn.forget(req_id)
        return _unwrap(frame, method)

    # -- health -----------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.call("health")

    # -- containers -------------------------------------------------------------------------------------
    def create_container(
        self, id: str, spec: dict[str, Any], rootfs: str = "", runtime: str = "runc",
        labels: dict[str, str] | None = None, image: str = "", net: str | None = None, ip: str = "",
        ports: Sequence[str] = (),
    ) -> dict[str, Any]:  # fmt: skip
        """A container record.  ``net`` (none, host or bridge; None: the daemon's default), ``ip`` (an
        address on the bridge) and ``ports`` (``HOST:CTR[/tcp|udp]``) become its network labels."""
        result = self.call("containers.create", id=id, spec=spec, rootfs=rootfs, runtime=runtime,
                           labels=_with_net(labels, net, ip, ports), image=image)  # fmt: skip
        return dict(result["container"])

    def run(
        self, id: str, spec: dict[str, Any], rootfs: str = "", runtime: str = "runc",
        labels: dict[str, str] | None = None, stdin: str = "", stdout: str = "", stderr: str = "",
        terminal: bool = False, rm: bool = True, image: str = "", net: str | None = None, ip: str = "",
        ports: Sequence[str] = (), timeout: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """The container record and its task made, started, and waited for, in one request; with ``rm``
        both are deleted again before the answer.  Returns the exit: pid, exit_status, exited_at.

        The same as create_container, create_task, start, wait (and delete_task, delete_container)
        without a round trip for each.  A failure answers with its error after undoing what the run
        made; if the daemon dies during a run, what it made stays (see actors/_runtime_run.py).
        """
        return self.call("tasks.run", timeout=timeout, id=id, spec=spec, rootfs=rootfs, runtime=runtime,
                         labels=_with_net(labels, net, ip, ports), image=image, stdin=stdin, stdout=stdout,
                         stderr=stderr, terminal=terminal, rm=rm)  # fmt: skip

    def get_container(self, id: str) -> dict[str, Any]:
        return dict(self.call("containers.get", id=id)["container"])

    def list_containers(self, filters: Sequence[str] = ()) -> list[dict[str, Any]]:
        return list(self.call("containers.list", filters=list(filters))["containers"])

    def label_container(self, id: str, labels: dict[str, str]) -> dict[str, Any]:
        paths = [f"labels.{k}" for k in labels]
        return dict(self.call("containers.update", id=id, labels=labels, fieldpaths=paths)["container"])

    def delete_container(self, id: str) -> None:
        self.call("containers.delete", id=id)

    # -- tasks --------------------------------------------------------------------------------------------
    def create_task(self, id: str, stdin: str = "", stdout: str = "", stderr: str = "",
                    terminal: bool = False) -> Task:  # fmt: skip
        from actors.taskinfo import TaskInfo

        result = self.call(
            "tasks.create", id=id, stdin=stdin, stdout=stdout, stderr=stderr, terminal=terminal
        )
        return TaskInfo(**result["task"])

    def list_tasks(self, all_nodes: bool = False) -> list[Task]:
        """This node's tasks (or ``node``'s); ``all_nodes``: every node's, each with its ``node``, and the
        last known tasks of a lost node with status ``unknown``."""
        from actors.taskinfo import TaskInfo

        if all_nodes:
            return [TaskInfo(**t) for t in self.call("tasks.list", all_nodes=True, node=None)["tasks"]]
        return [TaskInfo(**t) for t in self.call("tasks.list")["tasks"]]

    # -- nodes --------------------------------------------------------------------------------------------
    def list_nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes: name, address, state (up or lost), tasks, last_seen, labels, cpus, memory."""
        return list(self.call("nodes.list")["nodes"])

    def place(self, constraints: dict[str, str]) -> str:
        """The name of a live node whose labels match ``constraints`` (``node=NAME`` matches its name)."""
        return str(self.call("nodes.place", constraints=constraints)["node"])

    def start(self, id: str, exec_id: str = "") -> int:
        return int(self.call("tasks.start", id=id, exec_id=exec_id)["pid"])

    def kill(self, id: str, signal: int = 15, all: bool = False, exec_id: str = "") -> None:
        self.call("tasks.kill", id=id, signal=signal, all=all, exec_id=exec_id)

    def wait(self, id: str, exec_id: str = "", timeout: float | None = None) -> dict[str, Any]:
        return self.call("tasks.wait", timeout=timeout, id=id, exec_id=exec_id)

    def state(self, id: str, exec_id: str = "") -> dict[str, Any]:
        return self.call("tasks.state", id=id, exec_id=exec_id)

    def delete_task(self, id: str, force: bool = False, exec_id: str = "") -> dict[str, Any]:
        params: dict[str, Any] = {"id": id, "exec_id": exec_id}
        if force:
            params["force"] = True
        return self.call("tasks.delete", **params)

    def exec(self, id: str, exec_id: str, args: Sequence[str], stdin: str = "", stdout: str = "",
             stderr: str = "", terminal: bool = False, env: Sequence[str] = (), cwd: str = "/") -> None:  # fmt: skip
        spec = {"args": list(args), "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", *env], "cwd": cwd,
                "user": {"uid": 0, "gid": 0}}  # fmt: skip
        self.call("tasks.exec", id=id, exec_id=exec_id, spec=spec, stdin=stdin, stdout=stdout, stderr=stderr,
                  terminal=terminal)  # fmt: skip

    def pids(self, id: str) -> list[dict[str, Any]]:
        return list(self.call("tasks.pids", id=id)["processes"])

    def pause(self, id: str) -> None:
        self.call("tasks.pause", id=id)

    def resume(self, id: str) -> None:
        self.call("tasks.resume", id=id)

    def close_io(self, id: str, exec_id: str = "") -> None:
        self.call("tasks.close_io", id=id, exec_id=exec_id)

    def resize_pty(self, id: str, width: int, height: int, exec_id: str = "") -> None:
        self.call("tasks.resize_pty", id=id, exec_id=exec_id, width=width, height=height)

    def update(self, id: str, resources: dict[str, Any]) -> None:
        self.call("tasks.update", id=id, resources=resources)

    # -- events -------------------------------------------------------------------------------------------
    def publish(self, topic: str, event: dict[str, Any]) -> int:
        """Publish an event of your own in this client's namespace; returns its sequence number."""
        return int(self.call("events.publish", topic=topic, event=event)["seq"])

    def events(
        self, filters: Sequence[str] = (), timeout: float | None = None, since: int | None = None,
        since_time: float | None = None, resume_for: float = 60.0,
        on_lost: Callable[[int, int], None] | None = None,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """Envelopes matching any of ``filters``, each once and in order of ``seq``.

        With ``since`` (a sequence number: every envelope carries its ``seq``) or
        ``since_time`` (seconds since the epoch) the logged envelopes after it come
        first, then live ones, with no gap and no duplicate between them.  The
        iterator resumes by itself when the connection drops (a daemon restart): it
        subscribes again since the last envelope it yielded, for up to ``resume_for``
        seconds.  A subscriber that reads slower than events come is never dropped;
        it reads the log at its own pace.  Only when the log no longer holds events it
        has not read yet (it keeps the newest ``events.max_entries``) is it told:
        ``on_lost(first, last)`` is called with the lost sequence numbers and the
        iterator goes on after them, or without ``on_lost`` it raises ``EventsLost``
        (resume with ``since=exc.last``).  ``timeout`` bounds the wait for each next
        event (Unavailable after it).
        """
        last: int | None = since
        first_time = since_time if since is None else None
        deadline: float | None = None
        while True:
            params: dict[str, Any] = {"filters": list(filters), "namespace": ""}
            if last is not None:
                params["since"] = last
            elif first_time is not None:
                params["since_time"] = first_time
            try:
                conn = _Conn(self.address, 10.0)  # its own connection: closing it ends the subscription
                try:
                    _, q = conn.open("events.subscribe", params, maxsize=_STREAM_QUEUE)
                except Unavailable:
                    # A daemon going away can still take the connection: the same as not reaching it.
                    conn.close()
                    raise
            except Unavailable:
                if deadline is None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            deadline = None
            try:
                while True:
                    try:
                        frame = conn.next(q, timeout)
                    except queue.Empty:
                        raise Unavailable(f"no event within {timeout}s") from None
                    if frame is None:
                        break  # resume since the last envelope we yielded
                    if "lost" in frame:
                        first, end = int(frame["lost"]["from"]), int(frame["lost"]["to"])
                        if on_lost is None:
                            raise EventsLost(first, end)
                        on_lost(first, end)
                        last = max(last or 0, end)
                        continue
                    if "event" in frame:
                        env = dict(frame["event"])
                        seq = int(env.get("seq", 0))
                        if last is not None and seq <= last:
                            continue
                        last = seq
                        yield env
                    else:
                        result = _unwrap(frame, "events.subscribe")  # the subscription's answer, or its error
                        if last is None and first_time is None:
                            last = int(result.get("seq", 0))
            finally:
                conn.close()
            first_time = None
            deadline = time.monotonic() + resume_for
