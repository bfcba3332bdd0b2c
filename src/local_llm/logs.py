"""The server's log: one format for every line (text or JSON), each line tagged with its request's id.

The request id is set by the outermost middleware (``server/middleware.py``'s :class:`RequestId`) in
a context variable; asyncio copies context variables into the tasks a request starts and into the
threads ``asyncio.to_thread`` runs for it, so every line written on the request's behalf carries its
id, wherever it was written. A filter on the root handler adds it to each record; lines written
outside any request (loads, ticks, start-up) have none.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Literal

LogFormat = Literal["text", "json"]

#: The id of the request being served in this context (None outside a request).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s:%(request_tag)s %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (or None) and ``request_tag`` (`` [req=ID]``, or "") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        record.request_id = request_id
        record.request_tag = f" [req={request_id}]" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: time (UTC, ISO 8601), level, logger, message,
    request_id when there is one, and the traceback as text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """The root logger's one handler (stderr), in ``log_format``; loggers that propagate (ours,
    uvicorn's, those of libraries without a handler of their own) all write through it."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT, datefmt="%H:%M:%S"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
