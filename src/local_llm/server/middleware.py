"""ASGI middleware that must act before a body is parsed, and the request id around everything."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from local_llm.errors import RequestHeadersTooLargeError, RequestTooLargeError
from local_llm.logs import REQUEST_ID
from local_llm.server.errors import local_error_response

REQUEST_ID_HEADER = b"x-request-id"
# A client's id is kept when it is visible ASCII of a bounded length: it goes into every log line
# of the request, where a newline or a megabyte would forge or flood lines.
_ACCEPTED_ID = re.compile(rb"[\x21-\x7e]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` where it is acceptable, else a new one (uuid4, hex)."""
    given = dict(scope.get("headers") or ()).get(REQUEST_ID_HEADER)
    if given is not None and _ACCEPTED_ID.fullmatch(given.strip()):
        return given.strip().decode()
    return uuid.uuid4().hex


class RequestId:
    """Give every HTTP request an id: the client's ``X-Request-ID`` (sanitized) or a new one, echoed on
    the response whatever answers it (a route, an error handler, the size limits) and set in
    :data:`~local_llm.logs.REQUEST_ID` for the request's log lines. Pure ASGI, so the context variable
    is set in the request's own task and reaches every task and thread the request starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        echoed = (REQUEST_ID_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers") or () if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, echoed]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def header_bytes(scope: Scope) -> int:
    """Bytes of the request's header names and values, as the server parsed them (no framing)."""
    return sum(len(name) + len(value) for name, value in scope.get("headers") or ())


class HeaderSizeLimit:
    """Refuse requests whose headers together exceed ``max_bytes`` with 431, before any route runs.

    uvicorn's httptools parser (what uvicorn[standard] runs) takes headers of any size, and h11's
    limit answers a plain-text 400 at best; so the limit that clients see, in the API's shape, is
    decided here. What uvicorn must not buffer at all is cut earlier (``server/http.py``).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = header_bytes(scope) if scope["type"] == "http" else 0
        if size > self.max_bytes:
            error = RequestHeadersTooLargeError(
                f"Request headers are {size} bytes, more than the {self.max_bytes / 1024:g} KiB accepted "
                "(LLM_MAX_REQUEST_HEADER_KB)."
            )
            await local_error_response(error, scope.get("path", ""))(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` with 413, by Content-Length up front or while streaming in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"Request body is larger than {self.max_bytes / 2**20:g} MiB (LLM_MAX_REQUEST_BODY_MB)."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await local_error_response(self._error(), scope.get("path", ""))(scope, receive, send)
            return
        # Read the body here (FastAPI would read it whole anyway) so an oversized one ends in 413
        # before any parsing, then replay it to the app.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away before sending its body
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await local_error_response(self._error(), scope.get("path", ""))(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class OllamaBodiesAreJson:
    """Read every body under ``/api/`` as JSON, whatever its ``Content-Type``, as Ollama's server does:
    the examples in Ollama's docs are ``curl http://localhost:11434/api/chat -d '{...}'``, which sends
    ``application/x-www-form-urlencoded``, and would otherwise get a 400 here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith("/api/"):
            headers = [(name, value) for name, value in scope.get("headers") or () if name != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
