"""Logging, configured in one place.

The daemon, its actors and the CLI log through structlog: ``configure()`` once
at start (from ``Config.log``), then ``get_logger(**fields)`` wherever a logger
is needed.  Events are short snake_case names with fields, never sentences with
values pasted in: ``log.info("shim_reaped", pid=pid, status=status)``.

Every line that concerns a task carries ``namespace`` and ``id``: whoever
starts working on a task binds them once (``log = log.bind(namespace=ns,
id=id)``) and logs through that logger from then on.

In the "json" format each line is one JSON object whose first keys are
``timestamp`` (ISO-8601, UTC), ``level`` and ``event``, followed by the bound
and call fields (and ``exception``, a formatted traceback, when there is one).

The shim must start fast, so this module does not import structlog until
``configure()`` or ``get_logger()`` is called, and the shim logs through
:class:`JsonLineLogger`, a small stdlib-only logger that writes exactly the
same lines.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final, TextIO, cast

from actors.errdefs import InvalidArgument

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["FORMATS", "LEVELS", "JsonLineLogger", "configure", "get_logger"]

# The stdlib logging numbers, which structlog's filtering loggers use too.
LEVELS: Final[Mapping[str, int]] = {"debug": 10, "info": 20, "warning": 30, "error": 40}
FORMATS: Final = ("json", "console")
_HEAD: Final = ("timestamp", "level", "event")


def _timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_line(timestamp: str, level: str, event: object, fields: Mapping[str, object]) -> str:
    """One log line: the head keys first, then the fields in the order they were given."""
    record: dict[str, object] = {"timestamp": timestamp, "level": level, "event": event}
    record.update((k, v) for k, v in fields.items() if k not in _HEAD)
    return json.dumps(record, default=str, ensure_ascii=False)


def _check(fmt: str, level: str) -> None:
    if fmt not in FORMATS:
        raise InvalidArgument(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if level not in LEVELS:
        raise InvalidArgument(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")


def _add_timestamp(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    event_dict["timestamp"] = _timestamp()
    return event_dict


def _render_json(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    fields = dict(event_dict)
    return _json_line(fields.pop("timestamp"), fields.pop("level"), fields.pop("event", ""), fields)


def configure(fmt: str = "console", level: str = "info", stream: TextIO | None = None) -> None:
    """Send every structlog logger's lines at ``level`` and above to ``stream`` (stderr by default).

    ``fmt`` is "json" (one JSON object per line) or "console" (readable, in
    colour only on a terminal).  May be called again, e.g. by tests; loggers
    made before pick up the new configuration.
    """
    _check(fmt, level)
    import structlog

    out = stream if stream is not None else sys.stderr
    processors: list[Any] = [structlog.processors.add_log_level, _add_timestamp]
    if fmt == "json":
        processors += [structlog.processors.format_exc_info, _render_json]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=_isatty(out)))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(**fields: object) -> FilteringBoundLogger:
    """A structlog logger with ``fields`` bound; it follows later ``configure()`` calls."""
    import structlog

    return cast("FilteringBoundLogger", structlog.get_logger(**fields))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


class JsonLineLogger:
    """The shim's logger: the "json" format's lines, from the stdlib alone.

    Logging never raises: a line that cannot be written (closed stream, full
    disk, a field whose ``str()`` fails) is dropped, because a shim must not
    die of its own logging.
    """

    __slots__ = ("_fields", "_min", "_stream")

    def __init__(self, stream: TextIO, level: str = "info", **fields: object) -> None:
        _check("json", level)
        self._stream = stream
        self._min = LEVELS[level]
        self._fields: dict[str, object] = fields

    def bind(self, **fields: object) -> JsonLineLogger:
        """A new logger writing to the same stream with ``fields`` added to this one's."""
        child = JsonLineLogger.__new__(JsonLineLogger)
        child._stream = self._stream
        child._min = self._min
        child._fields = {**self._fields, **fields}
        return child

    def debug(self, event: str, **fields: object) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._log("error", event, fields)

    def exception(self, event: str, **fields: object) -> None:
        """Log at error level with the exception being handled as ``exception``."""
        try:
            if sys.exc_info()[0] is not None:
                import traceback  # only when needed: the shim's start-up stays lean

                fields["exception"] = traceback.format_exc().rstrip("\n")
        except Exception:
            pass
        self._log("error", event, fields)

    def _log(self, level: str, event: str, fields: dict[str, object]) -> None:
        if LEVELS[level] < self._min:
            return
        try:
            line = _json_line(_timestamp(), level, event, {**self._fields, **fields})
            self._stream.write(line + "\n")
            self._stream.flush()
        except Exception:
            pass
