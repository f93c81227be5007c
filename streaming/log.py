"""Log context: every log line about a stream names the stream and the instance.

A stream's task binds its id once (``bind_stream``); asyncio copies context variables into every
task, so whatever runs inside it (the service loop, the model backend, the HTTP client) logs with
that id without passing it around. Code outside the task passes ``extra={"stream_id": ...}``.
``ContextFilter`` is installed on the handlers in ``settings.LOGGING`` and fills in both fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
from typing import Any

_stream_id: contextvars.ContextVar[str] = contextvars.ContextVar("stream_id", default="-")


def bind_stream(message_id: str) -> None:
    """Called at the start of a stream's task: its log lines carry ``message_id`` from now on."""
    _stream_id.set(message_id)


def current_stream() -> str:
    return _stream_id.get()


class ContextFilter(logging.Filter):
    """Adds ``stream_id`` and ``instance_id`` to every record (an explicit ``extra`` wins)."""

    def __init__(self, instance_id: str = "-", name: str = "") -> None:
        super().__init__(name)
        self.instance_id = instance_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "stream_id", None):
            record.stream_id = _stream_id.get()
        if not getattr(record, "instance_id", None):
            record.instance_id = self.instance_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``LOG_FORMAT=json``), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "instance_id": getattr(record, "instance_id", "-"),
            "stream_id": getattr(record, "stream_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)
