"""The command line's arguments: the parser and the parsing of values (signals, pairs, sizes, times)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from actors._config_file import DEFAULT_PATH, path_text
from actors.errdefs import InvalidArgument

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from typing import Any

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


class _Lazy(argparse.ArgumentParser):
    """A command's parser, made when it is first used (to parse, or for its help).

    Each ArgumentParser made costs a command's start-up about 0.2 ms, most of it gettext looking up
    translations of argparse's own words; a command makes its own parser and its group's, not the
    twenty-odd of every command. Until then the parser keeps what it was made with and its
    ``set_defaults``; the first look at anything else makes it, then ``add(parser)`` adds its arguments.
    """

    def __init__(self, *args: Any, add: Callable[[argparse.ArgumentParser], object] | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        kwargs.setdefault("formatter_class", _formatter)
        self.__dict__["_lazy"] = (args, kwargs, add, {})

    def __getattr__(self, name: str) -> Any:
        if "_lazy" not in self.__dict__:
            raise AttributeError(name)
        args, kwargs, add, defaults = self.__dict__.pop("_lazy")
        argparse.ArgumentParser.__init__(self, *args, **kwargs)
        argparse.ArgumentParser.set_defaults(self, **defaults)
        if add is not None:
            add(self)
        return getattr(self, name)

    def set_defaults(self, **kwargs: Any) -> None:
        if "_lazy" in self.__dict__:
            self.__dict__["_lazy"][3].update(kwargs)
        else:
            super().set_defaults(**kwargs)


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's own formatter at the width it would pick, found without ``shutil.get_terminal_size``:
    importing shutil (and with it zlib, bz2 and lzma) cost every command about 2.5 ms."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return argparse.HelpFormatter(prog, width=(columns or 80) - 2)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contactor", description="A container runtime built as an actor system.",
                                formatter_class=_formatter)
    p.add_argument("--config", type=path_text, help=f"configuration file (default {DEFAULT_PATH})")
    p.add_argument("-a", "--address", help="the daemon's socket (default from the config)")
    p.add_argument("-n", "--namespace", default=os.environ.get("CONTACTOR_NAMESPACE", "default"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--node", help="send container and task commands to this node of the cluster")
    sub = p.add_subparsers(dest="group", required=True, parser_class=_Lazy)
    sub.add_parser("daemon", help="run the daemon in the foreground", add=_daemon).set_defaults(func="daemon")
    sub.add_parser("containers", aliases=["c", "container"], help="container records", add=_containers)
    sub.add_parser("tasks", aliases=["t", "task"], help="running containers", add=_tasks)
    sub.add_parser("run", help="create a container and run its task", add=_run).set_defaults(func="run")
    sub.add_parser("nodes", aliases=["node"], help="the cluster's nodes", add=_nodes)
    sub.add_parser("events", help="stream events", add=_events).set_defaults(func="events")
    return p


def _daemon(d: argparse.ArgumentParser) -> None:
    d.add_argument("--root")
    d.add_argument("--state")
    d.add_argument("--address", dest="daemon_address", help="the Gateway socket to listen on")
    d.add_argument("--admin-port", type=int)
    d.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def _node_option(c: argparse.ArgumentParser) -> None:
    c.add_argument("--node", default=argparse.SUPPRESS, help="the cluster node to send this to")


def _create_options(c: argparse.ArgumentParser) -> None:
    _node_option(c)
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


def _with_node(add: Callable[[argparse.ArgumentParser], object]) -> Callable[[argparse.ArgumentParser], object]:
    """A command's arguments, then --node (last: it comes last in the usage line)."""

    def arguments(c: argparse.ArgumentParser) -> None:
        add(c)
        _node_option(c)

    return arguments


def _containers(cont: argparse.ArgumentParser) -> None:
    cs = cont.add_subparsers(dest="cmd", required=True)
    cs.add_parser("create", add=_create_options).set_defaults(func="containers_create")
    cs.add_parser("ls", aliases=["list"], add=_with_node(lambda c: c.add_argument("filters", nargs="*"))
                  ).set_defaults(func="containers_ls")  # fmt: skip
    cs.add_parser("info", add=_with_node(lambda c: c.add_argument("id"))).set_defaults(func="containers_info")
    cs.add_parser("rm", aliases=["delete", "del", "remove"], add=_with_node(lambda c: c.add_argument("ids", nargs="+"))
                  ).set_defaults(func="containers_rm")  # fmt: skip

    def label(c: argparse.ArgumentParser) -> None:
        c.add_argument("id")
        c.add_argument("labels", nargs="+", metavar="K=V")

    cs.add_parser("label", add=_with_node(label)).set_defaults(func="containers_label")


def _tasks(tasks: argparse.ArgumentParser) -> None:
    ts = tasks.add_subparsers(dest="cmd", required=True)

    def start(t: argparse.ArgumentParser) -> None:
        t.add_argument("--detach", "-d", action="store_true")
        t.add_argument("--interactive", "-i", action="store_true", help="relay our stdin")
        t.add_argument("id")

    ts.add_parser("start", add=_with_node(start)).set_defaults(func="tasks_start")
    ls = _with_node(lambda t: t.add_argument("--all-nodes", action="store_true",
                                             help="every node's tasks, with their node"))  # fmt: skip
    ts.add_parser("ls", aliases=["list"], add=ls).set_defaults(func="tasks_ls")
    for name in ("ps", "pause", "resume", "metrics"):
        ts.add_parser(name, add=_with_node(lambda t: t.add_argument("id"))).set_defaults(func=f"tasks_{name}")

    def update(t: argparse.ArgumentParser) -> None:
        t.add_argument("--memory-limit", type=int, metavar="BYTES")
        t.add_argument("--cpus", type=float)
        t.add_argument("--pids-limit", type=int)
        t.add_argument("id")

    ts.add_parser("update", help="change a running task's resource limits", add=_with_node(update)
                  ).set_defaults(func="tasks_update")  # fmt: skip

    def kill(t: argparse.ArgumentParser) -> None:
        t.add_argument("--signal", "-s", type=_signal, default=signal.SIGTERM)
        t.add_argument("--all", "-a", action="store_true")
        t.add_argument("--exec-id", default="")
        t.add_argument("id")

    ts.add_parser("kill", add=_with_node(kill)).set_defaults(func="tasks_kill")

    def wait(t: argparse.ArgumentParser) -> None:
        t.add_argument("--exec-id", default="")
        t.add_argument("id")

    ts.add_parser("wait", add=_with_node(wait)).set_defaults(func="tasks_wait")

    def rm(t: argparse.ArgumentParser) -> None:
        t.add_argument("--force", "-f", action="store_true")
        t.add_argument("--exec-id", default="")
        t.add_argument("ids", nargs="+")

    ts.add_parser("rm", aliases=["delete", "del", "remove"], add=_with_node(rm)).set_defaults(func="tasks_rm")

    def exec_(t: argparse.ArgumentParser) -> None:
        t.add_argument("--exec-id", required=True)
        t.add_argument("--tty", "-t", action="store_true")
        t.add_argument("--interactive", "-i", action="store_true")
        t.add_argument("--detach", "-d", action="store_true")
        t.add_argument("id")
        t.add_argument("args", nargs=argparse.REMAINDER)

    ts.add_parser("exec", add=_with_node(exec_)).set_defaults(func="tasks_exec")


def _run(r: argparse.ArgumentParser) -> None:
    r.add_argument("--rm", action="store_true", help="remove task and container after it exits")
    r.add_argument("--detach", "-d", action="store_true")
    r.add_argument("--interactive", "-i", action="store_true")
    r.add_argument("--constraint", action="append", default=[], metavar="K=V",
                   help="run on a live node whose labels match (node=NAME matches its name), "
                   "or with at least this much free memory or cpus (mem>=2G, cpus>=4)")
    _create_options(r)


def _nodes(nodes: argparse.ArgumentParser) -> None:
    ns_ = nodes.add_subparsers(dest="cmd", required=True)
    ns_.add_parser("ls", aliases=["list"]).set_defaults(func="nodes_ls")


def _events(e: argparse.ArgumentParser) -> None:
    e.add_argument("--since", help="replay logged events after a sequence number, or since a time "
                   "(seconds since the epoch, or ISO 8601 like 2026-11-29T10:00:00)")  # fmt: skip
    e.add_argument("filters", nargs="*")
