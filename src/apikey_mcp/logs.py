"""Logging to stderr (stdout belongs to the protocol on stdio), as text or JSON lines with the request's fields.

`--log-format json` makes every stderr line one JSON object: time (ISO 8601 UTC), level, logger, message,
and `principal`, `task_id`, `reservation_id`, `tool` where they apply. Those come from context variables set
where they become known (the request's principal and tool, a paid call's reservation and task), so they need
no threading through arguments: a task watcher started in a call inherits them. The formatter sits on the
root handler, so every record is JSON, the SDK's and uvicorn's included.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

FIELDS = ("principal", "task_id", "reservation_id", "tool")
_fields: dict[str, ContextVar[str | None]] = {name: ContextVar(f"apikey_log_{name}", default=None) for name in FIELDS}


def note(**fields: str | None) -> None:
    """Set fields for the lines that follow in this context (a request, or a task started from it)."""
    for name, value in fields.items():
        _fields[name].set(value)


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Set fields for the lines logged inside the block."""
    tokens = [(_fields[name], _fields[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the context's fields (or the record's own, given as `extra`)."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, object] = {
            "time": at.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in _fields.items():
            value = getattr(record, name, None) or var.get()
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def json_line(message: str, level: str = "ERROR", logger: str = "apikey_mcp") -> str:
    """A line in the JSON format for what is printed before logging is set up (configuration errors)."""
    record = logging.LogRecord(logger, logging.getLevelName(level), "", 0, message, None, None)
    return JsonFormatter().format(record)


def configure(level: str, fmt: str = "text") -> None:
    """Our logs, and the SDK's, go to stderr only: as text lines, or as JSON objects."""
    handler = logging.StreamHandler(sys.stderr)
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if fmt == "json" else text)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("apikey_mcp").setLevel(level)
