"""What every ``contactor`` command shares: its connection to the daemon, its output, and the
attached runs (``run``, ``tasks start``, ``tasks exec`` without ``-d``) that relay the container's
stdio through FIFOs and forward this process's signals to it."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
from collections.abc import Callable

from actors._cli_args import _constraints
from actors._config_file import path_text
from actors.client import Client
from actors.errdefs import ContactorError, InvalidArgument, NotFound

TYPE_CHECKING = False  # typing costs the command line 3 ms to import
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Base"]


class Base:
    def __init__(self, args: argparse.Namespace, settings: dict[str, dict[str, Any]]) -> None:
        """``settings``: the configuration file's checked values (``actors._config_file.read``)."""
        self.args = args
        self.settings = settings
        self.address = str(args.address or path_text(settings["daemon"]["address"]))
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
        """``obj`` as JSON with --json, else what ``text`` prints, written at once.

        A table printed a row at a time would be two writes a row where stdout is unbuffered
        (``python -u``, PYTHONUNBUFFERED): 1000 system calls for 500 tasks.
        """
        if self.args.json:
            import json

            print(json.dumps(obj, default=str))
            return
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            text()
        sys.stdout.write(buffer.getvalue())

    def _attached(self, cid: str, detach: bool, stdin: bool, tty: bool) -> int:
        if detach:
            pid = self._create_task(cid)["pid"]
            self.client.start(cid)
            self.out({"id": cid, "pid": pid}, lambda: print(pid))
            return 0
        from actors._cli_stdio import _raw_terminal, _Relay

        relay = _Relay(path_text(self.settings["daemon"]["state"]), stdin or tty, tty)
        try:
            self._create_task(cid, stdin=relay.paths.get("stdin", ""), stdout=relay.paths["stdout"],
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

    def _create_task(self, cid: str, stdin: str = "", stdout: str = "", stderr: str = "",
                     terminal: bool = False) -> dict[str, Any]:  # fmt: skip
        """``Client.create_task``'s call, answering the task's map: a Task would import dataclasses."""
        result = self.client.call("tasks.create", id=cid, stdin=stdin, stdout=stdout, stderr=stderr,
                                  terminal=terminal)  # fmt: skip
        return dict(result["task"])

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

    def _exec_attached(self, cid: str, exec_id: str, args: list[str], stdin: bool, tty: bool) -> int:
        from actors._cli_stdio import _raw_terminal, _Relay

        relay = _Relay(path_text(self.settings["daemon"]["state"]), stdin, tty)
        try:
            self.client.exec(cid, exec_id, args, stdin=relay.paths.get("stdin", ""),
                             stdout=relay.paths["stdout"], stderr=relay.paths.get("stderr", ""),
                             terminal=tty)  # fmt: skip
            with _raw_terminal(tty):
                self.client.start(cid, exec_id)
                relay.start_stdin()
                status = int(self.client.wait(cid, exec_id=exec_id, timeout=None)["exit_status"])
                relay.drain()
            with contextlib.suppress(NotFound):
                self.client.delete_task(cid, exec_id=exec_id)
            return status
        finally:
            relay.remove()
