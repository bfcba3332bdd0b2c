"""ASGI middleware that must act before a body is parsed."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from local_llm.errors import RequestTooLargeError
from local_llm.server.errors import local_error_response


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
            await local_error_response(self._error())(scope, receive, send)
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
                await local_error_response(self._error())(scope, receive, send)
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
