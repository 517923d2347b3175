"""Log lines: one JSON shape from both loggers, bound task fields, and a lean import for the shim."""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import logs
from actors.errdefs import InvalidArgument

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """configure() is process-wide; leave structlog as we found it."""
    yield
    import structlog

    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def structlog_logger(stream: io.StringIO, level: str = "info", **fields: object) -> Any:
    logs.configure("json", level, stream)
    return logs.get_logger(**fields)


def json_line_logger(stream: io.StringIO, level: str = "info", **fields: object) -> Any:
    return logs.JsonLineLogger(stream, level, **fields)


LOGGERS = [
    pytest.param(structlog_logger, id="structlog"),
    pytest.param(json_line_logger, id="JsonLineLogger"),
]
MakeLogger = Callable[..., Any]


@pytest.mark.parametrize("make", LOGGERS)
def test_json_line_has_timestamp_level_event_then_bound_task_fields(make: MakeLogger) -> None:
    out = io.StringIO()
    log = make(out).bind(namespace="default", id="redis")

    before = datetime.datetime.now(datetime.UTC)
    log.info("task_started", pid=42, bundle=Path("/run/contactor/default/redis"))
    after = datetime.datetime.now(datetime.UTC)

    [line] = lines(out)
    assert list(line) == ["timestamp", "level", "event", "namespace", "id", "pid", "bundle"]
    assert line["level"] == "info"
    assert line["event"] == "task_started"
    assert line["namespace"] == "default"
    assert line["id"] == "redis"
    assert line["pid"] == 42
    assert line["bundle"] == "/run/contactor/default/redis"
    assert line["timestamp"].endswith("Z")
    stamp = datetime.datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert before <= stamp <= after


def test_both_loggers_write_the_same_line() -> None:
    via_structlog, via_json_line = io.StringIO(), io.StringIO()

    structlog_logger(via_structlog, namespace="ns").bind(id="c1").warning("shim_reaped", status=137)
    json_line_logger(via_json_line, namespace="ns").bind(id="c1").warning("shim_reaped", status=137)

    [a], [b] = lines(via_structlog), lines(via_json_line)
    assert a.pop("timestamp") and b.pop("timestamp")
    assert json.dumps(a) == json.dumps(b)  # same keys, same order, same values


@pytest.mark.parametrize("make", LOGGERS)
def test_fields_given_at_creation_are_on_every_line(make: MakeLogger) -> None:
    out = io.StringIO()
    log = make(out, namespace="default", id="c1")

    log.info("one")
    log.error("two", reason="x")

    assert [(line["event"], line["namespace"], line["id"]) for line in lines(out)] == [
        ("one", "default", "c1"),
        ("two", "default", "c1"),
    ]


@pytest.mark.parametrize("make", LOGGERS)
def test_bind_leaves_the_parent_logger_unchanged(make: MakeLogger) -> None:
    out = io.StringIO()
    parent = make(out, namespace="default")

    parent.bind(id="c1").info("child")
    parent.info("parent")

    child_line, parent_line = lines(out)
    assert child_line["id"] == "c1"
    assert "id" not in parent_line


@pytest.mark.parametrize("make", LOGGERS)
def test_lines_below_the_level_are_dropped(make: MakeLogger) -> None:
    out = io.StringIO()
    log = make(out, "warning")

    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")

    assert [(line["level"], line["event"]) for line in lines(out)] == [("warning", "w"), ("error", "e")]


@pytest.mark.parametrize("make", LOGGERS)
def test_exception_logs_an_error_with_the_traceback(make: MakeLogger) -> None:
    out = io.StringIO()
    log = make(out)

    try:
        raise RuntimeError("runc exploded")
    except RuntimeError:
        log.exception("runtime_failed", namespace="default", id="c1")

    [line] = lines(out)
    assert line["level"] == "error"
    assert line["event"] == "runtime_failed"
    assert line["id"] == "c1"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("RuntimeError: runc exploded")


def test_json_line_logger_survives_a_broken_stream() -> None:
    closed = io.StringIO()
    closed.close()
    log = logs.JsonLineLogger(closed, namespace="default", id="c1")

    log.info("still_alive")
    log.exception("still_alive")

    class Unprintable:
        def __str__(self) -> str:
            raise ValueError("no")

    out = io.StringIO()
    logs.JsonLineLogger(out).info("odd_field", value=Unprintable())
    logs.JsonLineLogger(out).info("after")
    assert [line["event"] for line in lines(out)] == ["after"]


def test_console_format_is_readable_and_plain_when_not_a_tty() -> None:
    out = io.StringIO()
    logs.configure("console", "info", out)

    logs.get_logger(namespace="default", id="c1").info("task_started", pid=42)

    text = out.getvalue()
    assert "task_started" in text
    assert "namespace=default" in text
    assert "id=c1" in text
    assert "pid=42" in text
    assert "\x1b[" not in text


def test_loggers_made_before_configure_follow_it() -> None:
    early = logs.get_logger(component="runtime")
    out = io.StringIO()

    logs.configure("json", "info", out)
    early.info("configured_late")

    [line] = lines(out)
    assert line["event"] == "configured_late"
    assert line["component"] == "runtime"


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "trace")])
def test_configure_rejects_unknown_format_or_level(fmt: str, level: str) -> None:
    with pytest.raises(InvalidArgument):
        logs.configure(fmt, level, io.StringIO())


def test_json_line_logger_rejects_an_unknown_level() -> None:
    with pytest.raises(InvalidArgument):
        logs.JsonLineLogger(io.StringIO(), "verbose")


def test_importing_logs_does_not_load_structlog() -> None:
    # The shim imports actors.logs and must start fast; structlog alone costs tens of milliseconds.
    probe = "import sys, actors.logs; print(sorted(m for m in sys.modules if m.split('.')[0] == 'structlog'))"

    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    )

    assert result.stdout.strip() == "[]", result.stdout
