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
import gc
import os
import sys
import time
from collections.abc import Sequence

from actors import _config_file
from actors._cli_args import _pairs, _parser, _resources, _since
from actors._cli_base import Base
from actors.errdefs import EXIT_CODES, ContactorError, InvalidArgument

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from typing import Any

    from actors.config import Config

__all__ = ["main"]

# A command imports what only it needs (netopts, restart, spec, the stdio relay, json, dataclasses) when it
# runs: every command pays for the imports at the top, and most of a command's time is its start-up.


class Commands(Base):
    # containers
    def _spec(self) -> dict[str, Any]:
        a = self.args
        if not a.args:
            raise InvalidArgument("a command to run in the container is required")
        from actors.identifiers import validate
        from actors.spec import default_spec

        resources = _resources(a)
        cid = validate(a.id, "container id")
        # No cgroupsPath: where a task's cgroup goes is the daemon's decision.
        return default_spec(a.args, hostname=cid, env=[f"{k}={v}" for k, v in _pairs(a.env, "env").items()],
                            cwd=a.cwd, terminal=a.tty, resources=resources)  # fmt: skip

    def containers_create(self) -> int:
        record = self.client.create_container(self.args.id, *self._record())
        self.out(record, lambda: None)
        return 0

    def _record(self) -> tuple[dict[str, Any], str, str, dict[str, str]]:
        """The new container's spec, rootfs, runtime and labels, from the command line."""
        a = self.args
        rootfs = os.path.realpath(a.rootfs)
        if not os.path.isdir(os.path.join(rootfs, "bin")):
            raise InvalidArgument(f"rootfs {a.rootfs} has no bin/: build one with scripts/mkrootfs")
        labels = _pairs(a.label, "label")
        if a.restart:
            from actors import restart

            restart.parse(a.restart)
            labels[restart.LABEL] = a.restart
        if a.net is not None or a.ip or a.publish:
            from actors import netopts

            labels.update(netopts.to_labels(a.net, a.ip or "", a.publish))
        runtime = a.runtime or self.settings["runtime"]["name"]
        return self._spec(), rootfs, runtime, labels

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
        info["task"] = tasks[0].as_dict() if tasks else None
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
    def tasks_start(self) -> int:
        a = self.args
        return self._attached(a.id, a.detach, a.interactive, self._is_tty_container(a.id))

    def _is_tty_container(self, cid: str) -> bool:
        spec = self.client.get_container(cid).get("spec") or {}
        return bool((spec.get("process") or {}).get("terminal"))

    def tasks_ls(self) -> int:
        all_nodes = self.args.all_nodes
        # The tasks' maps as the daemon sends them (a Task's fields, in order): Client.list_tasks's Tasks
        # would import dataclasses.
        params: dict[str, Any] = {"all_nodes": True, "node": None} if all_nodes else {}
        tasks: list[dict[str, Any]] = self.client.call("tasks.list", **params)["tasks"]

        def text() -> None:
            node = f"{'NODE':<16} " if all_nodes else ""
            print(f"{node}{'TASK':<24} {'PID':>8} {'STATUS':<8} {'EXIT':>4} {'RESTARTS':>8} {'NET':<6} ADDRESS")
            for t in tasks:
                exit_status = "" if t["status"] != "stopped" else str(t["exit_status"])
                node = f"{t['node']:<16} " if all_nodes else ""
                print(f"{node}{t['id']:<24} {t['pid']:>8} {t['status'].upper():<8} {exit_status:>4} "
                      f"{t['restarts']:>8} {t['network']:<6} {t['address']}")  # fmt: skip

        self.out(tasks, text)
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
        return self._exec_attached(a.id, a.exec_id, a.args, a.interactive or a.tty, a.tty)

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
        if not a.detach and not a.tty:
            return self._run_at_once()
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

    def _run_at_once(self) -> int:
        """``run`` in one request (tasks.run): the daemon makes, starts, waits for and (--rm) removes the
        container; our stdio is relayed through FIFOs meanwhile."""
        from actors._cli_stdio import _Relay

        a = self.args
        spec, rootfs, runtime, labels = self._record()
        relay = _Relay(_config_file.path_text(self.settings["daemon"]["state"]), a.interactive, False)
        try:
            forward = self._forward_signals(a.id)
            relay.start_stdin()
            try:
                paths = relay.paths
                result = self.client.run(a.id, spec, rootfs, runtime, labels, stdin=paths.get("stdin", ""),
                                         stdout=paths["stdout"], stderr=paths["stderr"], rm=a.rm)  # fmt: skip
            except KeyboardInterrupt:
                if a.rm:  # the daemon goes on with the run; what it made is not left behind
                    with contextlib.suppress(ContactorError):
                        self.client.delete_task(a.id, force=True)
                    with contextlib.suppress(ContactorError):
                        self.client.delete_container(a.id)
                raise
            relay.drain()
            forward()
            return int(result["exit_status"])
        finally:
            relay.remove()

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

        cfg = _daemon_config(self.args, self.settings)
        stream = open(cfg.log.file, "a", buffering=1) if cfg.log.file else sys.stderr  # noqa: SIM115
        configure(cfg.log.format, self.args.log_level or cfg.log.level, stream)
        return run(cfg)


# -- argument parsing -----------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The configuration file's checked values: --config's, else the default file's, else the defaults."""
    if args.config:
        return _config_file.read(args.config)
    if os.path.exists(_config_file.DEFAULT_PATH):
        return _config_file.read(_config_file.DEFAULT_PATH)
    return _config_file.DEFAULTS


def _daemon_config(args: argparse.Namespace, settings: dict[str, dict[str, Any]]) -> Config:
    """The daemon's Config: the file's, with --root, --state, --address and --admin-port."""
    import dataclasses
    from pathlib import Path

    from actors import config as configuration

    replace = dataclasses.replace
    cfg = configuration.from_values(settings)
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
    """The command line's entry; ``argv`` (else ``sys.argv``) without the program name."""
    try:
        return _main(argv)
    finally:
        if argv is None:
            # The process ends next. Python's last garbage collection at exit walks every object
            # the command made (argparse's, the modules', a 500-task answer): 5-6 ms of a 45 ms
            # `tasks ls`. Frozen objects are skipped; memory goes back with the process.
            gc.freeze()


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "args", None) and args.args[0] == "--":
        args.args = args.args[1:]
    try:
        commands = Commands(args, _settings(args))
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
