"""The command line's arguments: the parser and the parsing of values (signals, pairs, sizes, times)."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Sequence
from typing import Any

from actors._config_file import DEFAULT_PATH, path_text
from actors.errdefs import InvalidArgument

# netopts.MODES (tests/test_cli.py checks that they agree): netopts itself would import dataclasses.
NET_MODES = ("none", "host", "bridge")

SIGNALS = {s.name: int(s) for s in signal.Signals}


def _signal(value: str) -> int:
    if value.isdigit():
        return int(value)
    name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
    if name not in SIGNALS:
        raise argparse.ArgumentTypeError(f"unknown signal {value!r}")
    return SIGNALS[name]


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{what} {item!r} must be KEY=VALUE")
        out[key] = value
    return out


def _constraints(values: Sequence[str]) -> dict[str, str]:
    """``--constraint``: ``K=V`` (a label, or ``node=NAME``) or ``K>=N`` (``mem>=2G``, ``cpus>=4``)."""
    out = {}
    for item in values:
        key, sep, value = item.partition(">=")
        if sep and key and "=" not in key:
            out[key] = f">={value}"
        else:
            out.update(_pairs([item], "constraint"))
    return out


def _since(value: str | None) -> tuple[int | None, float | None]:
    """``--since``: an integer is a sequence number; a float or an ISO 8601 time is a time."""
    if value is None:
        return None, None
    if value.isdigit():
        return int(value), None
    try:
        return None, float(value)
    except ValueError:
        pass
    import datetime

    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"--since {value!r} is neither a sequence number nor a time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return None, when.timestamp()


def _resources(a: argparse.Namespace) -> dict[str, Any]:
    """OCI linux.resources from --memory-limit, --cpus and --pids-limit."""
    resources: dict[str, Any] = {}
    if a.memory_limit is not None:
        resources["memory"] = {"limit": a.memory_limit}
    if a.cpus is not None:
        resources["cpu"] = {"period": 100000, "quota": int(a.cpus * 100000)}
    if a.pids_limit is not None:
        resources["pids"] = {"limit": a.pids_limit}
    return resources


# -- stdio relay ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contactor", description="A container runtime built as an actor system.")
    p.add_argument("--config", type=path_text, help=f"configuration file (default {DEFAULT_PATH})")
    p.add_argument("-a", "--address", help="the daemon's socket (default from the config)")
    p.add_argument("-n", "--namespace", default=os.environ.get("CONTACTOR_NAMESPACE", "default"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--node", help="send container and task commands to this node of the cluster")
    sub = p.add_subparsers(dest="group", required=True)

    d = sub.add_parser("daemon", help="run the daemon in the foreground")
    d.add_argument("--root")
    d.add_argument("--state")
    d.add_argument("--address", dest="daemon_address", help="the Gateway socket to listen on")
    d.add_argument("--admin-port", type=int)
    d.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    d.set_defaults(func="daemon")

    def node_option(c: argparse.ArgumentParser) -> None:
        c.add_argument("--node", default=argparse.SUPPRESS, help="the cluster node to send this to")

    def create_options(c: argparse.ArgumentParser) -> None:
        node_option(c)
        c.add_argument("--rootfs", required=True, help="root filesystem directory")
        c.add_argument("--runtime", choices=("runc", "crun"))
        c.add_argument("--label", action="append", default=[], metavar="K=V")
        c.add_argument("--env", "-e", action="append", default=[], metavar="K=V")
        c.add_argument("--cwd", default="/")
        c.add_argument("--tty", "-t", action="store_true")
        c.add_argument("--memory-limit", type=int, metavar="BYTES")
        c.add_argument("--cpus", type=float)
        c.add_argument("--pids-limit", type=int)
        c.add_argument("--restart", metavar="POLICY", help="no, on-failure[:N], always or unless-stopped")
        c.add_argument("--net", choices=NET_MODES, help="the container's network (default from the config)")
        c.add_argument("--ip", help="a specific address on the bridge (--net bridge)")
        c.add_argument("--publish", "-p", action="append", default=[], metavar="HOST:CTR[/tcp|udp]",
                       help="publish a container port on the host's addresses (--net bridge)")
        c.add_argument("id")
        c.add_argument("args", nargs=argparse.REMAINDER)

    cont = sub.add_parser("containers", aliases=["c", "container"], help="container records")
    cs = cont.add_subparsers(dest="cmd", required=True)
    c = cs.add_parser("create")
    create_options(c)
    c.set_defaults(func="containers_create")
    c = cs.add_parser("ls", aliases=["list"])
    c.add_argument("filters", nargs="*")
    c.set_defaults(func="containers_ls")
    c = cs.add_parser("info")
    c.add_argument("id")
    c.set_defaults(func="containers_info")
    c = cs.add_parser("rm", aliases=["delete", "del", "remove"])
    c.add_argument("ids", nargs="+")
    c.set_defaults(func="containers_rm")
    c = cs.add_parser("label")
    c.add_argument("id")
    c.add_argument("labels", nargs="+", metavar="K=V")
    c.set_defaults(func="containers_label")

    tasks = sub.add_parser("tasks", aliases=["t", "task"], help="running containers")
    ts = tasks.add_subparsers(dest="cmd", required=True)
    t = ts.add_parser("start")
    t.add_argument("--detach", "-d", action="store_true")
    t.add_argument("--interactive", "-i", action="store_true", help="relay our stdin")
    t.add_argument("id")
    t.set_defaults(func="tasks_start")
    t = ts.add_parser("ls", aliases=["list"])
    t.add_argument("--all-nodes", action="store_true", help="every node's tasks, with their node")
    t.set_defaults(func="tasks_ls")
    for name in ("ps", "pause", "resume", "metrics"):
        t = ts.add_parser(name)
        t.add_argument("id")
        t.set_defaults(func=f"tasks_{name}")
    t = ts.add_parser("update", help="change a running task's resource limits")
    t.add_argument("--memory-limit", type=int, metavar="BYTES")
    t.add_argument("--cpus", type=float)
    t.add_argument("--pids-limit", type=int)
    t.add_argument("id")
    t.set_defaults(func="tasks_update")
    t = ts.add_parser("kill")
    t.add_argument("--signal", "-s", type=_signal, default=signal.SIGTERM)
    t.add_argument("--all", "-a", action="store_true")
    t.add_argument("--exec-id", default="")
    t.add_argument("id")
    t.set_defaults(func="tasks_kill")
    t = ts.add_parser("wait")
    t.add_argument("--exec-id", default="")
    t.add_argument("id")
    t.set_defaults(func="tasks_wait")
    t = ts.add_parser("rm", aliases=["delete", "del", "remove"])
    t.add_argument("--force", "-f", action="store_true")
    t.add_argument("--exec-id", default="")
    t.add_argument("ids", nargs="+")
    t.set_defaults(func="tasks_rm")
    t = ts.add_parser("exec")
    t.add_argument("--exec-id", required=True)
    t.add_argument("--tty", "-t", action="store_true")
    t.add_argument("--interactive", "-i", action="store_true")
    t.add_argument("--detach", "-d", action="store_true")
    t.add_argument("id")
    t.add_argument("args", nargs=argparse.REMAINDER)
    t.set_defaults(func="tasks_exec")

    for group, skip in ((ts, ()), (cs, ("create",))):
        for name, parser in {id(v): (k, v) for k, v in group.choices.items()}.values():
            if name not in skip:
                node_option(parser)

    r = sub.add_parser("run", help="create a container and run its task")
    r.add_argument("--rm", action="store_true", help="remove task and container after it exits")
    r.add_argument("--detach", "-d", action="store_true")
    r.add_argument("--interactive", "-i", action="store_true")
    r.add_argument("--constraint", action="append", default=[], metavar="K=V",
                   help="run on a live node whose labels match (node=NAME matches its name), "
                   "or with at least this much free memory or cpus (mem>=2G, cpus>=4)")
    create_options(r)
    r.set_defaults(func="run")

    nodes = sub.add_parser("nodes", aliases=["node"], help="the cluster's nodes")
    ns_ = nodes.add_subparsers(dest="cmd", required=True)
    n = ns_.add_parser("ls", aliases=["list"])
    n.set_defaults(func="nodes_ls")

    e = sub.add_parser("events", help="stream events")
    e.add_argument("--since", help="replay logged events after a sequence number, or since a time "
                   "(seconds since the epoch, or ISO 8601 like 2026-11-29T10:00:00)")  # fmt: skip
    e.add_argument("filters", nargs="*")
    e.set_defaults(func="events")
    return p
