"""Every failure leaves in its API's own error shape; this module owns the category -> status table.

Three API families share the server, each with its clients' error shape (:class:`ErrorShape`), chosen
by the route's path (:func:`shape_for`): OpenAI's ``{"error": {"message", "type", "param", "code"}}``
everywhere by default, Anthropic's ``{"type": "error", "error": {"type", "message"}}`` under
``/v1/messages``, Ollama's ``{"error": "..."}`` under ``/api/``. The status is the same in all three;
only the body differs. Validation errors, unknown routes, authentication and the middleware's limits
go through the same choice, so a client never meets a shape its SDK cannot read.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from local_llm.errors import ErrorCategory, LocalLLMError
from local_llm.protocol.errors import ErrorDetail, ErrorResponse
from local_llm.protocol.rerank import SHAPE_TAGS

logger = logging.getLogger(__name__)

STATUS_BY_CATEGORY: dict[ErrorCategory, int] = {
    ErrorCategory.INVALID_REQUEST: 400,
    ErrorCategory.AUTHENTICATION: 401,
    ErrorCategory.FORBIDDEN: 403,
    ErrorCategory.NOT_FOUND: 404,
    ErrorCategory.TOO_LARGE: 413,
    ErrorCategory.HEADERS_TOO_LARGE: 431,
    ErrorCategory.OVERLOADED: 429,
    ErrorCategory.UNAVAILABLE: 503,
    ErrorCategory.INSUFFICIENT_MEMORY: 507,
    ErrorCategory.CONFLICT: 409,
    ErrorCategory.INTERNAL: 500,
}


@dataclass(frozen=True)
class Failure:
    """One failure, whatever its API: what every error shape is rendered from."""

    status: int
    message: str
    # OpenAI's ``type`` (invalid_request_error, server_error, ...); the other shapes derive theirs.
    error_type: str
    param: str | None = None
    code: str | None = None

    @classmethod
    def of(cls, exc: LocalLLMError) -> Failure:
        return cls(STATUS_BY_CATEGORY[exc.category], exc.message, exc.error_type, exc.param, exc.code)


class ErrorShape:
    """OpenAI's error body (the default): ``{"error": {"message", "type", "param", "code"}}``."""

    def body(self, failure: Failure) -> dict[str, Any]:
        detail = ErrorDetail(
            message=failure.message, type=failure.error_type, param=failure.param, code=failure.code
        )
        return ErrorResponse(error=detail).model_dump()


# Anthropic's error types by status (docs.anthropic.com/en/api/errors); 503 and 507 are "overloaded".
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    507: "overloaded_error",
}


class AnthropicErrorShape(ErrorShape):
    """``{"type": "error", "error": {"type": "invalid_request_error", "message": ...}}``."""

    def body(self, failure: Failure) -> dict[str, Any]:
        kind = _ANTHROPIC_TYPES.get(failure.status)
        if kind is None:
            kind = "invalid_request_error" if failure.status < 500 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": failure.message}}


class OllamaErrorShape(ErrorShape):
    """``{"error": "..."}``, as Ollama answers every failure."""

    def body(self, failure: Failure) -> dict[str, Any]:
        return {"error": failure.message}


OPENAI_SHAPE = ErrorShape()
ANTHROPIC_SHAPE = AnthropicErrorShape()
OLLAMA_SHAPE = OllamaErrorShape()
# Path prefixes of the routes that answer in a shape other than OpenAI's.
_SHAPES_BY_PREFIX: tuple[tuple[str, ErrorShape], ...] = (
    ("/v1/messages", ANTHROPIC_SHAPE),
    ("/api/", OLLAMA_SHAPE),
)


def shape_for(path: str) -> ErrorShape:
    """The error shape of the API family ``path`` belongs to."""
    for prefix, shape in _SHAPES_BY_PREFIX:
        if path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/"):
            return shape
    return OPENAI_SHAPE


def error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    failure = Failure(status, message, error_type, param, code)
    return JSONResponse(shape_for(path).body(failure), status_code=status, headers=headers)


def local_error_response(exc: LocalLLMError, path: str = "") -> JSONResponse:
    """``exc`` as the route at ``path`` answers it (OpenAI's shape when no path is known)."""
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))} if exc.retry_after_s else None
    if exc.category is ErrorCategory.AUTHENTICATION:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="local-llm"'}
    failure = Failure.of(exc)
    return JSONResponse(shape_for(path).body(failure), status_code=failure.status, headers=headers)


def openai_stream_error(exc: LocalLLMError) -> bytes:
    """The server-sent event an OpenAI stream ends with when it fails after it began (before
    ``data: [DONE]``): the same error object a failed request gets, as the OpenAI SDK reads it."""
    return b"data: " + json.dumps(OPENAI_SHAPE.body(Failure.of(exc))).encode() + b"\n\n"


def _param_from_location(location: tuple[Any, ...]) -> str | None:
    """The top-level field or query parameter: ('body', 'input', 'list[str]', 0) -> 'input';
    ('query', 'after') -> 'after'; ('body',) -> None."""
    return str(location[1]) if len(location) > 1 and location[0] in ("body", "query") else None


def _validation_message(exc: RequestValidationError, content_type: str) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"The body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}.", None
    # A body that may take several shapes (``/rerank``) has the shape's tag in the location: no field.
    location = tuple(part for part in first.get("loc", ()) if part not in SHAPE_TAGS)
    param = _param_from_location(location)
    if location == ("body",):
        if first.get("type") == "missing":
            return "The request body is empty; send a JSON object.", None
        if "json" not in content_type:
            return "The body must be a JSON object sent with `Content-Type: application/json`.", None
        return f"The body must be a JSON object: {first.get('msg')}.", None
    if first.get("type") == "missing":
        return f"Missing required field '{param}'.", param
    detail = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"Invalid value for '{param}': {detail}." if param else f"{detail}."), param


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path, for a 405's ``Allow`` (RFC 9110). Starlette's own
    lists only the first route whose path matches, so a path served by two routes (``GET`` and
    ``DELETE /v1/responses/{id}``) would name one."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)  # PARTIAL: the path matches, the method does not
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LocalLLMError)
    async def _local(request: Request, exc: LocalLLMError) -> JSONResponse:
        return local_error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc, request.headers.get("content-type", ""))
        return error_response(
            400,
            message,
            "invalid_request_error",
            param=param,
            code="invalid_request_error",
            path=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        route = f"{request.method} {request.url.path}"
        headers = exc.headers
        if exc.status_code == 404:
            message, code = f"This server has no route {route}.", "not_found"
        elif exc.status_code == 405:
            message, code = f"{route} is not allowed; see /docs for the routes and their methods.", None
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        else:
            message, code = str(exc.detail), None
        return error_response(
            exc.status_code,
            message,
            "invalid_request_error",
            code=code,
            headers=headers,
            path=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            f"Internal error: {type(exc).__name__}.",
            "server_error",
            code="internal_error",
            path=request.url.path,
        )
