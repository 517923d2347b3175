"""``contactor``: the ctr-like command line.

Every command but ``daemon`` talks to the daemon's Gateway socket through
``actors.client``; nothing here joins the actor system.  Failures are one line
on stderr and an exit code per errdefs category (``errdefs.EXIT_CODES``);
attached ``tasks start``, ``run`` and ``tasks wait`` exit with the container's
status.  Attached stdio goes through FIFOs this command makes in a private
directory under the state dir and relays to its own stdin/stdout/stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from actors import config as configuration
from actors import netopts, restart
from actors.client import Client, Task
from actors.errdefs import EXIT_CODES, ContactorError, InvalidArgument, NotFound
from actors.identifiers import validate
from actors.spec import default_spec

__all__ = ["main"]

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
def _private_dir(base: Path, prefix: str) -> Path:
    """A new directory of ours under ``base`` (tempfile.mkdtemp's job, without tempfile's import)."""
    while True:
        path = base / f"{prefix}{os.urandom(6).hex()}"
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return path


class _Relay:
    """FIFOs for a task's stdio in a private directory, copied to and from our own fds."""

    def __init__(self, state: Path, stdin: bool, terminal: bool) -> None:
        base = state / "fifo"
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir = _private_dir(base, "io-")
        self.terminal = terminal
        self.paths = {"stdout": str(self.dir / "stdout")}
        if not terminal:
            self.paths["stderr"] = str(self.dir / "stderr")
        if stdin:
            self.paths["stdin"] = str(self.dir / "stdin")
        for path in self.paths.values():
            os.mkfifo(path, 0o600)
        self.threads = [self._copy_out("stdout", 1)]
        if "stderr" in self.paths:
            self.threads.append(self._copy_out("stderr", 2))

    def _copy_out(self, name: str, out: int) -> threading.Thread:
        def run() -> None:
            fd = os.open(self.paths[name], os.O_RDONLY | os.O_CLOEXEC)  # a reader at once
            try:
                while data := os.read(fd, 65536):
                    with contextlib.suppress(OSError):
                        os.write(out, data)
            finally:
                os.close(fd)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def start_stdin(self) -> None:
        if "stdin" not in self.paths:
            return

        def run() -> None:
            fd = os.open(self.paths["stdin"], os.O_WRONLY | os.O_CLOEXEC)
            try:
                while data := os.read(0, 65536):
                    os.write(fd, data)
            except OSError:
                pass
            finally:
                os.close(fd)

        threading.Thread(target=run, daemon=True).start()

    def drain(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def remove(self) -> None:
        for path in self.paths.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Any:
    if not enabled or not os.isatty(0):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


# -- commands ---------------------------------------------------------------------------------------------
class Commands:
    def __init__(self, args: argparse.Namespace, cfg: configuration.Config) -> None:
        self.args = args
        self.cfg = cfg
        self.address = str(args.address or cfg.daemon.address)
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.address, namespace=self.args.namespace, node=self._node())
        return self._client

    def _node(self) -> str | None:
        """--node, or the node --constraint places the task on."""
        node = getattr(self.args, "node", None)
        constraints = _constraints(getattr(self.args, "constraint", []) or [])
        if constraints:
            if node:
                raise InvalidArgument("give --node or --constraint, not both")
            node = Client(self.address, namespace=self.args.namespace).place(constraints)
            self.args.node = node
        return node or None

    def out(self, obj: Any, text: Callable[[], None]) -> None:
        if self.args.json:
            import json

            print(json.dumps(obj, default=str))
        else:
            text()

    # containers
    def _spec(self) -> dict[str, Any]:
        a = self.args
        if not a.args:
            raise InvalidArgument("a command to run in the container is required")
        resources = _resources(a)
        cid = validate(a.id, "container id")
        # No cgroupsPath: where a task's cgroup goes is the daemon's decision.
        return default_spec(a.args, hostname=cid, env=[f"{k}={v}" for k, v in _pairs(a.env, "env").items()],
                            cwd=a.cwd, terminal=a.tty, resources=resources)  # fmt: skip

    def containers_create(self) -> int:
        a = self.args
        rootfs = Path(a.rootfs).resolve()
        if not (rootfs / "bin").is_dir():
            raise InvalidArgument(f"rootfs {a.rootfs} has no bin/: build one with scripts/mkrootfs")
        labels = _pairs(a.label, "label")
        if a.restart:
            restart.parse(a.restart)
            labels[restart.LABEL] = a.restart
        labels.update(netopts.to_labels(a.net, a.ip or "", a.publish))
        record = self.client.create_container(a.id, self._spec(), str(rootfs), a.runtime or self.cfg.runtime.name,
                                              labels)  # fmt: skip
        self.out(record, lambda: None)
        return 0

    def containers_ls(self) -> int:
        records = self.client.list_containers(self.args.filters)

        def text() -> None:
            print(f"{'CONTAINER':<24} {'RUNTIME':<8} {'ROOTFS':<40} LABELS")
            for r in records:
                labels = ",".join(f"{k}={v}" for k, v in sorted(r.get("labels", {}).items()))
                print(f"{r['id']:<24} {r.get('runtime_name', ''):<8} {r.get('rootfs', ''):<40} {labels}")

        self.out(records, text)
        return 0

    def containers_info(self) -> int:
        """The record, and its task (with the task's network and address) when it has one."""
        info = self.client.get_container(self.args.id)
        tasks = [t for t in self.client.list_tasks() if t.id == self.args.id]
        info["task"] = _task_dict(tasks[0]) if tasks else None
        import json

        print(json.dumps(info, indent=2, default=str))
        return 0

    def containers_rm(self) -> int:
        for cid in self.args.ids:
            self.client.delete_container(cid)
        return 0

    def containers_label(self) -> int:
        self.out(self.client.label_container(self.args.id, _pairs(self.args.labels, "label")), lambda: None)
        return 0

    # tasks
    def _attached(self, cid: str, detach: bool, stdin: bool, tty: bool) -> int:
        if detach:
            task = self.client.create_task(cid)
            self.client.start(cid)
            self.out({"id": cid, "pid": task.pid}, lambda: print(task.pid))
            return 0
        relay = _Relay(Path(self.cfg.daemon.state), stdin or tty, tty)
        try:
            self.client.create_task(cid, stdin=relay.paths.get("stdin", ""), stdout=relay.paths["stdout"],
                                    stderr=relay.paths.get("stderr", ""), terminal=tty)  # fmt: skip
            forward = self._forward_signals(cid)
            with _raw_terminal(tty):
                if tty and os.isatty(0):
                    self._resize(cid)
                    signal.signal(signal.SIGWINCH, lambda s, f: self._resize(cid))
                self.client.start(cid)
                relay.start_stdin()
                status = int(self.client.wait(cid, timeout=None)["exit_status"])
                relay.drain()
            forward()
            return status
        finally:
            relay.remove()

    def _resize(self, cid: str) -> None:
        with contextlib.suppress(OSError, ContactorError):
            size = os.get_terminal_size(0)
            self.client.resize_pty(cid, size.columns, size.lines)

    def _forward_signals(self, cid: str) -> Callable[[], None]:
        def forward(signum: int, frame: Any) -> None:
            with contextlib.suppress(ContactorError):
                self.client.kill(cid, signum, all=True)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def tasks_start(self) -> int:
        a = self.args
        return self._attached(a.id, a.detach, a.interactive, self._is_tty_container(a.id))

    def _is_tty_container(self, cid: str) -> bool:
        spec = self.client.get_container(cid).get("spec") or {}
        return bool((spec.get("process") or {}).get("terminal"))

    def tasks_ls(self) -> int:
        all_nodes = self.args.all_nodes
        tasks = self.client.list_tasks(all_nodes=all_nodes)

        def text() -> None:
            node = f"{'NODE':<16} " if all_nodes else ""
            print(f"{node}{'TASK':<24} {'PID':>8} {'STATUS':<8} {'EXIT':>4} {'RESTARTS':>8} {'NET':<6} ADDRESS")
            for t in tasks:
                exit_status = "" if t.status != "stopped" else str(t.exit_status)
                node = f"{t.node:<16} " if all_nodes else ""
                print(f"{node}{t.id:<24} {t.pid:>8} {t.status.upper():<8} {exit_status:>4} {t.restarts:>8} "
                      f"{t.network:<6} {t.address}")  # fmt: skip

        self.out([_task_dict(t) for t in tasks], text)
        return 0

    def tasks_ps(self) -> int:
        procs = self.client.pids(self.args.id)

        def text() -> None:
            print(f"{'PID':>8} INFO")
            for p in procs:
                print(f"{p['pid']:>8} {p.get('exec_id') or '-'}")

        self.out(procs, text)
        return 0

    def tasks_kill(self) -> int:
        self.client.kill(self.args.id, self.args.signal, all=self.args.all, exec_id=self.args.exec_id)
        return 0

    def tasks_pause(self) -> int:
        self.client.pause(self.args.id)
        return 0

    def tasks_resume(self) -> int:
        self.client.resume(self.args.id)
        return 0

    def tasks_wait(self) -> int:
        result = self.client.wait(self.args.id, exec_id=self.args.exec_id, timeout=None)
        self.out(result, lambda: None)
        return int(result["exit_status"])

    def tasks_rm(self) -> int:
        for cid in self.args.ids:
            result = self.client.delete_task(cid, force=self.args.force, exec_id=self.args.exec_id)
            self.out(result, lambda: None)
        return 0

    def tasks_exec(self) -> int:
        a = self.args
        if not a.args:
            raise InvalidArgument("a command to run is required")
        if a.detach:
            self.client.exec(a.id, a.exec_id, a.args, terminal=a.tty)
            print(self.client.start(a.id, a.exec_id))
            return 0
        relay = _Relay(Path(self.cfg.daemon.state), a.interactive or a.tty, a.tty)
        try:
            self.client.exec(a.id, a.exec_id, a.args, stdin=relay.paths.get("stdin", ""),
                             stdout=relay.paths["stdout"], stderr=relay.paths.get("stderr", ""),
                             terminal=a.tty)  # fmt: skip
            with _raw_terminal(a.tty):
                self.client.start(a.id, a.exec_id)
                relay.start_stdin()
                status = int(self.client.wait(a.id, exec_id=a.exec_id, timeout=None)["exit_status"])
                relay.drain()
            with contextlib.suppress(NotFound):
                self.client.delete_task(a.id, exec_id=a.exec_id)
            return status
        finally:
            relay.remove()

    def tasks_metrics(self) -> int:
        metrics = self.client.call("tasks.metrics", id=self.args.id)

        def text() -> None:
            print(f"{'GROUP':<8} {'FIELD':<20} VALUE")
            for group, fields in metrics.items():
                for name, value in fields.items():
                    print(f"{group:<8} {name:<20} {value}")

        self.out(metrics, text)
        return 0

    def tasks_update(self) -> int:
        a = self.args
        resources = _resources(a)
        if not resources:
            raise InvalidArgument("nothing to update: give --memory-limit, --cpus or --pids-limit")
        self.client.update(a.id, resources)
        return 0

    def run(self) -> int:
        a = self.args
        self.containers_create()
        try:
            status = self._attached(a.id, a.detach, a.interactive, a.tty)
        except BaseException:
            if a.rm:
                with contextlib.suppress(ContactorError):
                    self.client.delete_task(a.id, force=True)
                with contextlib.suppress(ContactorError):
                    self.client.delete_container(a.id)
            raise
        if a.rm and not a.detach:
            self.client.delete_task(a.id)
            self.client.delete_container(a.id)
        return status

    def nodes_ls(self) -> int:
        nodes = self.client.list_nodes()

        def text() -> None:
            print(f"{'NODE':<16} {'ADDRESS':<22} {'STATE':<9} {'TASKS':>5} {'FREE MEM':>9} {'LAST SEEN':<20} "
                  "LABELS")  # fmt: skip
            for n in nodes:
                seen = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(n["last_seen"])) if n["last_seen"] else "-"
                labels = ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items()))
                free = f"{n.get('free_memory', 0) / (1 << 30):.1f}G" if n.get("free_memory") else "-"
                print(f"{n['name']:<16} {n['address']:<22} {n['state'].upper():<9} {n['tasks']:>5} {free:>9} "
                      f"{seen:<20} {labels}")  # fmt: skip

        self.out(nodes, text)
        return 0

    def events(self) -> int:
        import json

        since_seq, since_time = _since(self.args.since)
        try:
            def lost(first: int, last: int) -> None:
                print(f"contactor: events {first} to {last} were dropped from the log before they were read",
                      file=sys.stderr, flush=True)  # fmt: skip

            for env in self.client.events(self.args.filters, since=since_seq, since_time=since_time,
                                          on_lost=lost):  # fmt: skip
                if self.args.json:
                    print(json.dumps(env), flush=True)
                else:
                    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(env["timestamp"]))
                    node = f"{env['node']} " if env.get("node") else ""
                    print(f"{ts} {env['seq']} {node}{env['namespace']} {env['topic']} {json.dumps(env['event'])}",
                          flush=True)  # fmt: skip
        except KeyboardInterrupt:
            return 0
        return 0

    def daemon(self) -> int:
        from actors.daemon import run
        from actors.logs import configure

        cfg = self.cfg
        stream = open(cfg.log.file, "a", buffering=1) if cfg.log.file else sys.stderr  # noqa: SIM115
        configure(cfg.log.format, self.args.log_level or cfg.log.level, stream)
        return run(cfg)


def _task_dict(t: Task) -> dict[str, Any]:
    return dataclasses.asdict(t)


# -- argument parsing -----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contactor", description="A container runtime built as an actor system.")
    p.add_argument("--config", type=Path, help=f"configuration file (default {configuration.DEFAULT_PATH})")
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
        c.add_argument("--net", choices=netopts.MODES, help="the container's network (default from the config)")
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


def _config(args: argparse.Namespace) -> configuration.Config:
    replace = dataclasses.replace
    path = args.config or (configuration.DEFAULT_PATH if configuration.DEFAULT_PATH.exists() else None)
    cfg = configuration.load(path)
    daemon = cfg.daemon
    if getattr(args, "root", None):
        daemon = replace(daemon, root=Path(args.root))
    if getattr(args, "state", None):
        daemon = replace(daemon, state=Path(args.state))
    address = getattr(args, "daemon_address", None) or args.address
    if address:
        daemon = replace(daemon, address=Path(address))
    if getattr(args, "admin_port", None):
        daemon = replace(daemon, admin_port=args.admin_port)
    return replace(cfg, daemon=daemon)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "args", None) and args.args[0] == "--":
        args.args = args.args[1:]
    try:
        commands = Commands(args, _config(args))
        return int(getattr(commands, args.func)())
    except ContactorError as exc:
        print(f"contactor: {exc.category.replace('_', ' ')}: {exc.message}", file=sys.stderr)
        return EXIT_CODES[exc.category]
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
