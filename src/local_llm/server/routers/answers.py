"""How a service's answer goes on the wire, for every router: a finished body as JSON, a stream as
it comes (server-sent events, or Ollama's NDJSON), never cached by a proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Response
from fastapi.responses import StreamingResponse

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def answer(result: bytes | AsyncIterator[bytes], stream_media_type: str = SSE) -> Response:
    """``result`` as the response: JSON bytes whole, a stream as ``stream_media_type``."""
    if isinstance(result, bytes):
        return Response(result, media_type="application/json")
    return StreamingResponse(result, media_type=stream_media_type, headers={"Cache-Control": "no-cache"})
