"""The one place that builds OCI runtime (runc or crun) command lines.

Like go-runc for containerd: every argv handed to the runtime comes from
``Runtime``, and every error the runtime prints is turned into a categorized
error here.  Running the commands is not this module's business: the shim
starts them through its reaper (so that no exit status is ever stolen), and
the daemon's dead-shim cleanup uses the same argv builders.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Final

from actors.errdefs import ContactorError, FailedPrecondition, Internal, InvalidArgument, NotFound

__all__ = ["Runtime", "resolve_binary", "runtime_error", "NOT_RUNNING_MARKERS"]

# Messages with which runc and crun say "that process is gone": kill maps them to NotFound.
NOT_RUNNING_MARKERS: Final = (
    "process already finished",
    "container not running",
    "no such process",
    "does not exist",
    "not found",
)


_BAD_PROCESS_MARKERS: Final = ("no such file or directory", "executable file not found", "permission denied")


def resolve_binary(name: str) -> str:
    """Absolute path of the runtime binary, or NotFound with a clear message."""
    if os.sep in name:
        if os.access(name, os.X_OK):
            return name
        raise NotFound(f"runtime binary {name!r} does not exist or is not executable")
    found = shutil.which(name)
    if found is None:
        raise NotFound(f"runtime binary {name!r} not found on PATH")
    return found


@dataclass(frozen=True, slots=True)
class Runtime:
    """Global options of one runtime binary for one namespace's runtime root."""

    binary: str
    root: str
    log: str | None = None
    systemd_cgroup: bool = False
    debug: bool = False

    def _base(self) -> list[str]:
        argv = [self.binary, "--root", self.root]
        if self.log is not None:
            argv += ["--log", self.log, "--log-format", "json"]
        if self.debug:
            argv.append("--debug")
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        return argv

    def create(
        self, cid: str, bundle: str, pid_file: str, console_socket: str | None = None,
        no_pivot: bool = False, no_new_keyring: bool = False,
    ) -> list[str]:  # fmt: skip
        argv = [*self._base(), "create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket is not None:
            argv += ["--console-socket", console_socket]
        if no_pivot:
            argv.append("--no-pivot")
        if no_new_keyring:
            argv.append("--no-new-keyring")
        return [*argv, cid]

    def start(self, cid: str) -> list[str]:
        return [*self._base(), "start", cid]

    def delete(self, cid: str, force: bool = False) -> list[str]:
        return [*self._base(), "delete", *(["--force"] if force else []), cid]

    def kill(self, cid: str, signal: int, all_processes: bool = False) -> list[str]:
        return [*self._base(), "kill", *(["--all"] if all_processes else []), cid, str(signal)]

    def state(self, cid: str) -> list[str]:
        return [*self._base(), "state", cid]

    def ps(self, cid: str) -> list[str]:
        return [*self._base(), "ps", "--format", "json", cid]

    def pause(self, cid: str) -> list[str]:
        return [*self._base(), "pause", cid]

    def resume(self, cid: str) -> list[str]:
        return [*self._base(), "resume", cid]

    def update(self, cid: str, resources_file: str) -> list[str]:
        return [*self._base(), "update", "--resources", resources_file, cid]

    def exec(
        self, cid: str, process_file: str, pid_file: str, console_socket: str | None = None
    ) -> list[str]:
        argv = [*self._base(), "exec", "--process", process_file, "--detach", "--pid-file", pid_file]
        if console_socket is not None:
            argv += ["--console-socket", console_socket]
        return [*argv, cid]

    def checkpoint(
        self, cid: str, image_path: str, work_path: str, leave_running: bool = True,
        tcp_established: bool = False, ext_unix_sk: bool = False, shell_job: bool = False,
        file_locks: bool = False,
    ) -> list[str]:  # fmt: skip
        argv = [*self._base(), "checkpoint", "--image-path", image_path, "--work-path", work_path]
        for flag, on in (
            ("--leave-running", leave_running),
            ("--tcp-established", tcp_established),
            ("--ext-unix-sk", ext_unix_sk),
            ("--shell-job", shell_job),
            ("--file-locks", file_locks),
        ):
            if on:
                argv.append(flag)
        return [*argv, cid]


def last_log_error(log_path: str | None, offset: int = 0) -> str | None:
    """The last ``level=error`` message the runtime wrote to its JSON log after ``offset``."""
    if log_path is None:
        return None
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return None
    message = None
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") == "error" and entry.get("msg"):
            message = str(entry["msg"])
    return message


def runtime_error(
    what: str, status: int, stderr: bytes, log_path: str | None = None, log_offset: int = 0,
    not_running_is_not_found: bool = False,
) -> ContactorError:  # fmt: skip
    """Turn a failed runtime call into a categorized error carrying the runtime's own text."""
    text = last_log_error(log_path, log_offset) or stderr.decode(errors="replace").strip()
    text = " ".join(text.split()) or f"exit status {status}"
    lowered = text.lower()
    if not_running_is_not_found and any(m in lowered for m in NOT_RUNNING_MARKERS):
        return NotFound(f"{what}: {text}")
    if ("exec:" in lowered or "executable file" in lowered) and any(
        m in lowered for m in _BAD_PROCESS_MARKERS
    ):
        return InvalidArgument(f"{what}: {text}")  # the process in the spec cannot be run
    if "not running" in lowered or "is paused" in lowered or "is not paused" in lowered:
        return FailedPrecondition(f"{what}: {text}")
    return Internal(f"{what}: {text}")
