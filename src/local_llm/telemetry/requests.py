"""Per-request metrics at the edge: one pure ASGI middleware times every request and counts it.

The serving path fills the request's :class:`RequestRecord` (its model, its wait for the engine)
through :func:`current_request`: a context variable set here, which the route's tasks inherit (vLLM's
``with_cancellation`` runs handlers in a task of their own; the record is the same object there). The
route is the template the router matched (``/v1/models/{model_id}``), never the raw path, so a
client cannot grow the label set.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from local_llm.telemetry.metrics import Metrics, RequestRecord

_CURRENT: ContextVar[RequestRecord | None] = ContextVar("local_llm_request", default=None)
# Answers whose first body bytes are a first token (or event): their time to first byte is observed.
_STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")
# A route no router matched (404s, 405s): one label for all of them.
UNMATCHED = "unmatched"


def current_request() -> RequestRecord:
    """The record of the request being served (a throwaway one outside a request: tests, the CLI)."""
    record = _CURRENT.get()
    return record if record is not None else RequestRecord()


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = RequestRecord()
        token = _CURRENT.set(record)
        status = 500
        streaming = False
        first_byte: float | None = None

        async def sending(message: Message) -> None:
            nonlocal status, streaming, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = dict(message.get("headers") or ()).get(b"content-type", b"")
                streaming = content_type.startswith(_STREAM_TYPES)
            elif streaming and first_byte is None and message.get("body"):
                first_byte = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _CURRENT.reset(token)
            route = scope.get("route")
            self.metrics.request_ended(
                getattr(route, "path", UNMATCHED),
                record,
                status,
                time.perf_counter() - started,
                first_byte,
            )
