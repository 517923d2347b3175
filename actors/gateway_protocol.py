"""The Gateway's wire protocol: what a client may ask, as msgpack maps, and what it gets back.

Framing is ``actors.wire``'s (4-byte length + msgpack map).  A request is
``{"id": int, "method": str, "params": map}``; the reply is
``{"id": int, "result": map}`` or ``{"id": int, "error": {"category", "message"}}``.
``events.subscribe`` answers ``{"subscribed": true}`` and then streams
``{"id": int, "event": envelope}`` frames on the same connection until it closes.

``to_message`` turns a request into the actor message (and says which actor
takes it); ``to_result`` turns the actor's reply into the result map.  Both the
Gateway and the Python client import this module.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Final

from actors import netopts
from actors.errdefs import InvalidArgument
from actors.events import envelope
from actors.messages import (
    TASK_OPS,
    ContainerList,
    ContainerReply,
    CreateContainer,
    CreateTask,
    DeleteContainer,
    GetContainer,
    Health,
    HealthReply,
    ListAllTasks,
    ListContainers,
    ListNodes,
    ListTasks,
    NodeList,
    Ok,
    OnNode,
    Placed,
    PlaceTask,
    Publish,
    Published,
    RunTask,
    Stdio,
    TaskInfo,
    TaskList,
    TaskReply,
    TaskRequest,
    UpdateContainer,
)
from actors.spec import check_spec

__all__ = ["VERSION", "METHODS", "to_message", "to_result", "SUBSCRIBE", "HEALTH"]

VERSION: Final = 1
SUBSCRIBE: Final = "events.subscribe"
PUBLISH: Final = "events.publish"
HEALTH: Final = "health"
NODE_METHODS: Final = frozenset({"nodes.list", "nodes.place"})
METHODS: Final = frozenset(
    {"containers.create", "containers.get", "containers.list", "containers.update", "containers.delete",
     "tasks.create", "tasks.run", "tasks.list", SUBSCRIBE, PUBLISH, HEALTH} | {f"tasks.{op}" for op in TASK_OPS}
    | NODE_METHODS
)  # fmt: skip


def _str(params: dict[str, Any], key: str, default: str | None = None) -> str:
    value = params.get(key, default)
    if not isinstance(value, str):
        raise InvalidArgument(f"{key} must be a string")
    return value


def _strings(params: dict[str, Any], key: str) -> tuple[str, ...]:
    value = params.get(key, [])
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{key} must be a list of strings")
    return tuple(value)


def _labels(params: dict[str, Any]) -> dict[str, str] | None:
    value = params.get("labels")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgument("labels must be a map of strings")
    return dict(value)


def _record(ns: str, params: dict[str, Any]) -> dict[str, Any]:
    """A container record from containers.create's (or tasks.run's) params, its spec and labels checked."""
    record = {
        "namespace": ns, "id": _str(params, "id", ""), "labels": _labels(params) or {},
        "image": _str(params, "image", ""), "runtime_name": _str(params, "runtime", "runc"),
        "runtime_options": {}, "spec": params.get("spec"), "rootfs": _str(params, "rootfs", ""),
        "snapshot_key": "", "extensions": {},
    }  # fmt: skip
    check_spec(record["spec"])
    netopts.check_labels(_labels(params) or {})  # a bad --net, --ip or -p fails here, not at task create
    return record


def _stdio(params: dict[str, Any]) -> Stdio:
    terminal = params.get("terminal", False)
    if not isinstance(terminal, bool):
        raise InvalidArgument("terminal must be a boolean")
    return Stdio(_str(params, "stdin", ""), _str(params, "stdout", ""), _str(params, "stderr", ""), terminal)


def to_message(method: str, params: dict[str, Any]) -> tuple[str, Any]:
    """(target actor role, message) for a request; InvalidArgument for anything malformed.

    ``node`` (a node's name) sends the request to that node of the cluster, through the NodeActor.
    """
    if method == "nodes.list":
        return "cluster", ListNodes()
    if method == "nodes.place":
        return "cluster", PlaceTask(_labels({"labels": params.get("constraints", {})}) or {})
    if method == "tasks.list" and params.get("all_nodes") is True:
        return "cluster", ListAllTasks(_str(params, "namespace", "") or None)
    role, message = _to_message(method, params)
    node = params.get("node")
    if node is None or node == "":
        return role, message
    if not isinstance(node, str) or role not in ("runtime", "metadata"):
        raise InvalidArgument(f"{method} cannot be sent to another node" if isinstance(node, str)
                              else "node must be a string")  # fmt: skip
    return "cluster", OnNode(node, role, message)


def _to_message(method: str, params: dict[str, Any]) -> tuple[str, Any]:
    if method not in METHODS:
        raise InvalidArgument(f"unknown method {method!r}")
    if method == SUBSCRIBE:
        raise InvalidArgument("events.subscribe is handled by the Gateway itself")
    ns = _str(params, "namespace", "")
    if method == "containers.create":
        return "metadata", CreateContainer(_record(ns, params))
    if method == "tasks.run":
        rm = params.get("rm", True)
        if not isinstance(rm, bool):
            raise InvalidArgument("rm must be a boolean")
        return "runtime", RunTask(_record(ns, params), _stdio(params), rm)
    if method == "containers.get":
        return "metadata", GetContainer(ns, _str(params, "id", ""))
    if method == "containers.list":
        return "metadata", ListContainers(ns, _strings(params, "filters"))
    if method == "containers.update":
        labels = _labels(params)
        netopts.check_labels(labels or {})
        return "metadata", UpdateContainer(ns, _str(params, "id", ""), labels=labels,
                                           fieldpaths=_strings(params, "fieldpaths"))  # fmt: skip
    if method == "containers.delete":
        return "runtime", DeleteContainer(ns, _str(params, "id", ""))
    if method == "tasks.create":
        return "runtime", CreateTask(ns, _str(params, "id", ""), _stdio(params))
    if method == "tasks.list":
        return "runtime", ListTasks(ns or None)
    if method == PUBLISH:
        event = params.get("event", {})
        if not isinstance(event, dict):
            raise InvalidArgument("event must be a map")
        return "exchange", Publish(envelope(ns, _str(params, "topic", ""), event))
    if method == HEALTH:
        return "supervisor", Health()
    op = method.split(".", 1)[1]
    rest = {k: v for k, v in params.items() if k not in ("namespace", "id", "node")}
    return "runtime", TaskRequest(ns, _str(params, "id", ""), op, rest)


def to_result(reply: Any) -> dict[str, Any]:
    """The result map for an actor's reply."""
    if isinstance(reply, ContainerReply):
        return {"container": reply.record}
    if isinstance(reply, ContainerList):
        return {"containers": list(reply.records)}
    if isinstance(reply, TaskInfo):
        return {"task": reply.as_dict()}
    if isinstance(reply, TaskList):
        return {"tasks": [t.as_dict() for t in reply.tasks]}
    if isinstance(reply, TaskReply):
        return dict(reply.result)
    if isinstance(reply, HealthReply):
        return {"ready": list(reply.ready), "pids": dict(reply.pids)}
    if isinstance(reply, Ok):
        return {}
    if isinstance(reply, Published):
        return {"seq": reply.seq}
    if isinstance(reply, NodeList):
        return {"nodes": [{**asdict(r.info), "runtimes": list(r.info.runtimes), "state": r.state,
                           "tasks": len(r.tasks), "last_seen": r.last_seen} for r in reply.rows]}  # fmt: skip
    if isinstance(reply, Placed):
        return {"node": reply.node}
    return {"value": repr(reply)}
