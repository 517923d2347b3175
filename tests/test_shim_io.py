"""Standard I/O of containers and exec'd processes: files, FIFOs, stdin with close_io, a TTY."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from conftest import Shims, Task

from actors.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


class FifoReader:
    """Reads a FIFO to EOF in a thread (opened before the task, as a client must)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.data = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # A blocking open counts as a reader at once and returns when the shim opens for writing.
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while chunk := os.read(fd, 65536):
                self.data += chunk
        finally:
            os.close(fd)

    def until(self, needle: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            if time.monotonic() > deadline:
                pytest.fail(f"{needle!r} not seen in output {self.data!r}")
            time.sleep(0.02)
        return self.data

    def eof(self, timeout: float = 10) -> bytes:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "no EOF on the output fifo"
        return self.data


def test_stdout_and_stderr_go_to_separate_files(shims: Shims, runtime_name: str) -> None:
    task = shims.new(["/bin/sh", "-c", "echo to-out; echo to-err >&2; exit 2"], runtime=runtime_name)
    out, err = task.path("out.log"), task.path("err.log")
    task.run(stdout=out, stderr=err)
    assert task.client.call("wait", timeout=30)["exit_status"] == 2
    assert Path(out).read_text() == "to-out\n"
    assert Path(err).read_text() == "to-err\n"
    task.client.call("delete")


def test_stdout_fifo_gets_output_and_eof(shims: Shims) -> None:
    task = shims.new(["/bin/sh", "-c", "for i in 1 2 3; do echo line$i; done"])
    reader = FifoReader(task.fifo("stdout"))
    task.run(stdout=task.path("stdout"), stderr=task.path("stdout"))
    assert task.client.call("wait", timeout=30)["exit_status"] == 0
    assert reader.eof() == b"line1\nline2\nline3\n"
    task.client.call("delete")


def test_stdin_fifo_is_copied_and_close_io_gives_eof(shims: Shims) -> None:
    task = shims.new(["/bin/cat"])
    stdin = task.fifo("stdin")
    reader = FifoReader(task.fifo("stdout"))
    task.run(stdin=stdin, stdout=task.path("stdout"))
    writer = os.open(stdin, os.O_WRONLY)
    try:
        os.write(writer, b"hello through stdin\n")
        reader.until(b"hello through stdin\n")
        # The client still holds its end open: only close_io can end the container's input.
        task.client.call("close_io")
        assert task.client.call("wait", timeout=30)["exit_status"] == 0
    finally:
        os.close(writer)
    assert reader.eof() == b"hello through stdin\n"
    task.client.call("delete")


def test_stdin_eof_from_the_client_ends_input(shims: Shims) -> None:
    task = shims.new(["/bin/sh", "-c", "wc -c"])
    stdin = task.fifo("stdin")
    out = task.path("out.log")
    task.run(stdin=stdin, stdout=out)
    with open(stdin, "wb") as f:
        f.write(b"x" * 100000)
    assert task.client.call("wait", timeout=30)["exit_status"] == 0
    assert Path(out).read_text().strip() == "100000"
    task.client.call("delete")


def test_output_fifo_without_reader_fails_create_cleanly(
    shims: Shims, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = shims.new(["/bin/true"])
    fifo = task.fifo("noreader")
    # The shim waits a bounded time for a reader; this test does not want to wait long for it.
    with pytest.raises(FailedPrecondition, match="no reader"):
        task.create(stdout=fifo)
    assert not os.path.ismount(task.path("rootfs"))
    # The failed create left nothing: a second create works.
    task.create(stdout=task.path("out.log"))
    task.client.call("delete")


def test_relative_stdio_path_is_invalid(shims: Shims) -> None:
    task = shims.new(["/bin/true"])
    with pytest.raises(InvalidArgument):
        task.create(stdout="relative/out.log")
    assert not os.path.ismount(task.path("rootfs"))


def test_exec_has_its_own_exit_code_stdio_and_events(shims: Shims, runtime_name: str) -> None:
    task = shims.new(["/bin/sleep", "1000"], runtime=runtime_name)
    task.run()
    task.client.subscribe()
    out, err = task.path("exec-out.log"), task.path("exec-err.log")
    script = "echo exec-out; echo exec-err >&2; echo $HOSTNAME; exit 7"
    task.client.call("exec", exec_id="e1", spec={"args": ["/bin/sh", "-c", script], "env": ["HOSTNAME=h1"]},
                     stdout=out, stderr=err)  # fmt: skip
    assert task.client.next_event(10, "exec_added")["data"] == {"container_id": task.id, "exec_id": "e1"}
    with pytest.raises(AlreadyExists):
        task.client.call("exec", exec_id="e1", spec={"args": ["/bin/true"]})
    assert task.client.call("state", exec_id="e1")["status"] == "created"
    pid = task.client.call("start", exec_id="e1")["pid"]
    started = task.client.next_event(10, "exec_started")["data"]
    assert started == {"container_id": task.id, "exec_id": "e1", "pid": pid}
    waited = task.client.call("wait", exec_id="e1", timeout=30)
    assert waited["exit_status"] == 7 and waited["pid"] == pid
    exit_event = task.client.next_event(10, "exit")["data"]
    assert (exit_event["id"], exit_event["pid"], exit_event["exit_status"]) == ("e1", pid, 7)
    assert Path(out).read_text() == "exec-out\nh1\n"
    assert Path(err).read_text() == "exec-err\n"
    assert task.client.call("state")["status"] == "running", "the container is not affected"
    task.client.call("delete", exec_id="e1")
    with pytest.raises(NotFound):
        task.client.call("state", exec_id="e1")
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    task.client.call("delete")


def test_exec_term_gives_143(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    task.run()
    task.client.call("exec", exec_id="s", spec={"args": ["/bin/sleep", "1000"]})
    task.client.call("start", exec_id="s")
    with pytest.raises(FailedPrecondition):
        task.client.call("delete", exec_id="s")
    task.client.call("kill", exec_id="s", signal=15)
    assert task.client.call("wait", exec_id="s", timeout=30)["exit_status"] == 143
    with pytest.raises(NotFound):
        task.client.call("kill", exec_id="s", signal=9)
    task.client.call("delete", exec_id="s")
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    task.client.call("delete")


def test_exec_of_a_missing_binary_fails_with_the_runtime_error(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    task.run()
    task.client.call("exec", exec_id="bad", spec={"args": ["/no/such/binary"]})
    with pytest.raises(InvalidArgument, match="no such file or directory"):
        task.client.call("start", exec_id="bad")
    assert task.client.call("state")["status"] == "running"
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    task.client.call("delete")


def _tty_task(shims: Shims, runtime: str = "runc") -> tuple[Task, str, FifoReader]:
    task = shims.new(["/bin/sh"], terminal=True, runtime=runtime)
    stdin = task.fifo("tty-in")
    reader = FifoReader(task.fifo("tty-out"))
    return task, stdin, reader


def test_tty_session_with_resize(shims: Shims, runtime_name: str) -> None:
    task, stdin, reader = _tty_task(shims, runtime_name)
    task.create(terminal=True, stdin=stdin, stdout=task.path("tty-out"))
    writer = os.open(stdin, os.O_WRONLY)
    try:
        task.client.call("start")
        task.client.call("resize_pty", width=123, height=45)
        os.write(writer, b"tty; stty size; echo done-$((40+2))\n")
        out = reader.until(b"done-42")
        assert b"/dev/pts/" in out
        assert b"45 123" in out
        os.write(writer, b"exit 5\n")
        assert task.client.call("wait", timeout=30)["exit_status"] == 5
    finally:
        os.close(writer)
    task.client.call("delete")


def test_tty_exec(shims: Shims) -> None:
    task = shims.new(["/bin/sleep", "1000"])
    task.run()
    reader = FifoReader(task.fifo("exec-tty-out"))
    task.client.call("exec", exec_id="t", terminal=True, stdout=task.path("exec-tty-out"),
                     spec={"args": ["/bin/sh", "-c", "tty; exit 4"]})  # fmt: skip
    task.client.call("start", exec_id="t")
    assert task.client.call("wait", exec_id="t", timeout=30)["exit_status"] == 4
    assert b"/dev/pts/" in reader.until(b"/dev/pts/")
    task.client.call("delete", exec_id="t")
    task.client.call("kill", signal=9)
    task.client.call("wait", timeout=30)
    task.client.call("delete")


def test_terminal_mismatch_with_spec_is_invalid(shims: Shims) -> None:
    task = shims.new(["/bin/sh"])
    with pytest.raises(InvalidArgument, match="terminal"):
        task.create(terminal=True)
