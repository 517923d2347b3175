"""Every message that crosses an actor boundary, in one place.

Messages are frozen, slotted dataclasses of plain values (they are pickled by
Thespian and, at the Gateway, built from msgpack maps).  Requests are wrapped
in ``Ask`` (a correlation id and the address to answer); the answer is an
``Answer`` carrying either the request's one reply type or an ``ErrorReply``
with an errdefs category.  Exceptions never cross an actor boundary.

Grouped by the actor that receives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.netopts import NetOptions
from actors.taskinfo import TaskInfo as TaskInfo  # re-exported: messages name every message type

# -- envelopes --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ask:
    """A request with its correlation id; ``reply_to`` is kept when an actor forwards it."""

    corr: int
    body: Any
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class Answer:
    corr: int
    body: Any


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages from one actor to another, sent as one: the receiver handles them in order, each
    as if it had come alone (``ContactorActor.on_Batch``). A TaskHost sends what its TaskActors
    sent to the same actor meanwhile this way: one Thespian message and one ACK for all of them."""

    messages: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    category: str
    message: str


@dataclass(frozen=True, slots=True)
class Ok:
    pass


# -- Supervisor -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Boot:
    """From the daemon: build the actor tree with this configuration (a Config)."""

    config: Any


@dataclass(frozen=True, slots=True)
class Booted:
    admin_pid: int
    pgid: int
    supervisor_pid: int = 0


@dataclass(frozen=True, slots=True)
class Drain:
    """From the daemon, before it shuts the actor system down: stop the runtime (its TaskActors
    finish what they are doing and publish it) while the Exchange still takes events."""


@dataclass(frozen=True, slots=True)
class Drained:
    pass


@dataclass(frozen=True, slots=True)
class Peers:
    """From the Supervisor to every child: the current addresses of the others."""

    runtime: Any
    metadata: Any
    exchange: Any
    monitor: Any
    gateway: Any
    cluster: Any = None


@dataclass(frozen=True, slots=True)
class Configure:
    config: Any
    peers: Peers


@dataclass(frozen=True, slots=True)
class Ready:
    """A child tells the Supervisor it is serving (the Gateway: its socket listens)."""

    role: str
    pid: int = 0


@dataclass(frozen=True, slots=True)
class Health:
    pass


@dataclass(frozen=True, slots=True)
class HealthReply:
    ready: tuple[str, ...]
    pids: dict[str, int]


# -- Exchange -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    timestamp: float
    namespace: str
    topic: str
    event: dict[str, Any]
    seq: int = 0  # given by the Exchange when it logs the envelope
    node: str = ""  # the node it happened on (stamped by that node's Exchange when clustered)
    origin_seq: int = 0  # its number in that node's log, when it was imported from another node
    # What makes it one event and not another (e.g. one process's exit): the log takes an
    # envelope whose key it already holds as a duplicate and drops it, so a publisher that
    # cannot know whether it got through (it died meanwhile) may simply publish it again.
    key: str = ""

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "seq": self.seq,
            "timestamp": self.timestamp,
            "namespace": self.namespace,
            "topic": self.topic,
            "event": self.event,
        }
        if self.node:
            wire["node"] = self.node
            wire["origin_seq"] = self.origin_seq or self.seq
        return wire


@dataclass(frozen=True, slots=True)
class Publish:
    envelope: Envelope
    # Told Committed once the envelope is in the log (or found there already, see Envelope.key).
    ack_to: Any = None
    # Published again by a restored task because it may have been lost in a crash: logged only if
    # the log has not got its key and would still hold it (see EventLog.append).
    again: bool = False


@dataclass(frozen=True, slots=True)
class Committed:
    key: str
    seq: int


@dataclass(frozen=True, slots=True)
class Published:
    seq: int


@dataclass(frozen=True, slots=True)
class Follow:
    """Tell ``follower`` (or the sender) each time the log grows; it reads the log itself.

    Thespian does not keep the order of messages between two actors under load
    (several transmits are in flight at once), so envelopes are not sent as
    messages: a follower reads them from the log, in sequence order, at its own pace.
    A follower that follows only at times (the Gateway, while it has subscribers)
    numbers its Follow and Unfollow: the Exchange acts on the newest it has seen,
    so a pair that arrives out of order leaves it in the state the follower wants.
    """

    follower: Any = None
    gen: int = 0


@dataclass(frozen=True, slots=True)
class Unfollow:
    follower: Any
    gen: int | None = None  # None: the follower is dead (unconditional)


@dataclass(frozen=True, slots=True)
class ImportEvents:
    """NodeActor -> Exchange: log these envelopes of ``node`` (each with its ``origin_seq``), in order.

    The Exchange skips any whose origin_seq it already logged, so a batch pulled twice is logged once.
    """

    node: str
    envelopes: tuple[Envelope, ...]


@dataclass(frozen=True, slots=True)
class Imported:
    """The highest origin_seq of ``node`` now in the log (the puller's cursor)."""

    node: str
    cursor: int


@dataclass(frozen=True, slots=True)
class Appended:
    """The log holds envelopes up to ``seq`` (committed)."""

    seq: int


# -- MetadataActor ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateContainer:
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GetContainer:
    namespace: str
    id: str


@dataclass(frozen=True, slots=True)
class ListContainers:
    namespace: str
    filters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UpdateContainer:
    namespace: str
    id: str
    labels: dict[str, str] | None = None
    image: str | None = None
    fieldpaths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteContainer:
    namespace: str
    id: str


@dataclass(frozen=True, slots=True)
class ContainerReply:
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ContainerList:
    records: tuple[dict[str, Any], ...]


# -- RuntimeActor (and forwarded to TaskActors) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stdio:
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class CreateTask:
    namespace: str
    id: str
    stdio: Stdio = field(default_factory=Stdio)


@dataclass(frozen=True, slots=True)
class RunTask:
    """Create the container record and its task, start it, wait for its exit; with ``rm`` delete both
    again.  Answered with the exit (TaskReply of pid, exit_status, exited_at); see actors/_runtime_run.py."""

    record: dict[str, Any]
    stdio: Stdio = field(default_factory=Stdio)
    rm: bool = True


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """Any call on an existing task; ``op`` is one of TASK_OPS, ``params`` its arguments."""

    namespace: str
    id: str
    op: str
    params: dict[str, Any] = field(default_factory=dict)


TASK_OPS = frozenset(
    {
        "start", "kill", "exec", "pids", "pause", "resume", "state", "wait", "close_io",
        "resize_pty", "update", "checkpoint", "delete", "metrics",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ListTasks:
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class TaskList:
    tasks: tuple[TaskInfo, ...]


@dataclass(frozen=True, slots=True)
class TaskReply:
    """The result of a TaskRequest: the shim's reply, as a map."""

    result: dict[str, Any]


# -- inside the runtime: RuntimeActor <-> TaskActor ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskSetup:
    """RuntimeActor -> new TaskActor: own this bundle; ``restore`` = reconnect to a running shim."""

    namespace: str
    id: str
    bundle: str
    restore: bool
    config: Any
    peers: Peers
    runtime_name: str = "runc"
    rootfs: str = ""
    create: Ask | None = None
    restart_policy: str = ""
    network: NetOptions | None = None
    # A task made again by its restart policy after its shim died: started right after the create.
    restarts: int = 0
    start: bool = False
    # Started right after the create, as the first step of a run (RunTask); ``rm``: the run removes
    # the task and its record once it exited (kept in task.json, so a restored task is removed too).
    run: bool = False
    rm: bool = False
    # Which TaskActor of this task this is (the RuntimeActor's count): what it reports carries
    # the number, so a late word of one it replaced is not taken for the new one's.
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class TaskReady:
    """TaskActor -> RuntimeActor: the task's facts once its shim reported them."""

    info: TaskInfo
    # The create's answer, forwarded by the RuntimeActor after it recorded the task (see TaskGone).
    reply_to: Any = None
    answer: Any = None
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class Respawn:
    """A task whose shim died, to be made again by its restart policy after ``delay`` seconds."""

    delay: float
    restarts: int
    stdio: Stdio
    exit: dict[str, Any]  # the dead task's pid, exit_status, exited_at (what a delete meanwhile answers)


@dataclass(frozen=True, slots=True)
class TaskGone:
    """TaskActor -> RuntimeActor: the task was deleted (or cleaned up after a dead shim); drop it."""

    namespace: str
    id: str
    reason: str
    # The delete's answer: the RuntimeActor forwards it once the task is out of its table,
    # so a client that lists tasks after its delete returned never sees the task again.
    reply_to: Any = None
    answer: Any = None
    respawn: Respawn | None = None
    # Other answers to forward the same way: deletes that came while the task was being removed.
    also: tuple[tuple[Any, Any], ...] = ()
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class TaskActorLost:
    """RuntimeActor -> Gateway: a task's TaskActor died; requests it held will never be answered."""

    namespace: str
    id: str


# -- NodeActor (cluster) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node offers: advertised to the convention and sent with every heartbeat."""

    name: str
    address: str
    labels: dict[str, str]
    cpus: int
    memory: int
    runtimes: tuple[str, ...]
    leader: bool = False
    free_memory: int = 0  # available bytes when the heartbeat was sent


@dataclass(frozen=True, slots=True)
class Introduce:
    """A leader's NodeActor, through a NodeAgent and that node's Supervisor: "I keep the node table"."""

    registrar: Any
    leader: str
    address: str  # the leader's advertise address (its rank is its place in [cluster] leaders)


@dataclass(frozen=True, slots=True)
class NodeBeat:
    """NodeActor -> every leader's NodeActor, every ``cluster.reregister`` seconds."""

    info: NodeInfo
    peers: Peers
    tasks: tuple[TaskInfo, ...]


@dataclass(frozen=True, slots=True)
class NodeRow:
    info: NodeInfo
    state: str  # up or lost
    last_seen: float
    tasks: tuple[TaskInfo, ...] = ()  # as last reported (a lost node's are listed with status unknown)


@dataclass(frozen=True, slots=True)
class Roster:
    """A leader's answer to a heartbeat: the node table, and where each live node's actors are."""

    leader: str
    rows: tuple[NodeRow, ...]
    peers: dict[str, Peers]


@dataclass(frozen=True, slots=True)
class PullEvents:
    """NodeActor -> another node's NodeActor: your own events after ``since`` (at most ``limit``)."""

    node: str  # the puller's name (for logs)
    since: int
    limit: int


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The answer to PullEvents: envelopes that happened on ``node``, in its log's order; ``head`` is its last."""

    node: str
    envelopes: tuple[Envelope, ...]
    head: int


@dataclass(frozen=True, slots=True)
class ListNodes:
    pass


@dataclass(frozen=True, slots=True)
class NodeList:
    rows: tuple[NodeRow, ...]


@dataclass(frozen=True, slots=True)
class OnNode:
    """Gateway -> NodeActor: take ``message`` to the actor ``role`` of node ``node``."""

    node: str
    role: str
    message: Any


@dataclass(frozen=True, slots=True)
class ListAllTasks:
    """Every live node's tasks, each with its node."""

    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class PlaceTask:
    """The name of a live node whose labels match ``constraints`` (the most free of tasks first)."""

    constraints: dict[str, str]


@dataclass(frozen=True, slots=True)
class Placed:
    node: str
