"""Every failure leaves as OpenAI-shaped JSON; this module owns the category -> status table."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from local_llm.errors import ErrorCategory, LocalLLMError
from local_llm.protocol.errors import ErrorDetail, ErrorResponse
from local_llm.protocol.rerank import SHAPE_TAGS

logger = logging.getLogger(__name__)

STATUS_BY_CATEGORY: dict[ErrorCategory, int] = {
    ErrorCategory.INVALID_REQUEST: 400,
    ErrorCategory.AUTHENTICATION: 401,
    ErrorCategory.NOT_FOUND: 404,
    ErrorCategory.TOO_LARGE: 413,
    ErrorCategory.HEADERS_TOO_LARGE: 431,
    ErrorCategory.OVERLOADED: 429,
    ErrorCategory.UNAVAILABLE: 503,
    ErrorCategory.INSUFFICIENT_MEMORY: 507,
    ErrorCategory.CONFLICT: 409,
    ErrorCategory.INTERNAL: 500,
}


def error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=error_type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _error_body(exc: LocalLLMError) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorDetail(message=exc.message, type=exc.error_type, param=exc.param, code=exc.code)
    )


def local_error_response(exc: LocalLLMError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))} if exc.retry_after_s else None
    if exc.category is ErrorCategory.AUTHENTICATION:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="local-llm"'}
    status = STATUS_BY_CATEGORY[exc.category]
    return JSONResponse(_error_body(exc).model_dump(), status_code=status, headers=headers)


def openai_stream_error(exc: LocalLLMError) -> bytes:
    """The server-sent event an OpenAI stream ends with when it fails after it began (before
    ``data: [DONE]``): the same error object a failed request gets, as the OpenAI SDK reads it."""
    return b"data: " + _error_body(exc).model_dump_json().encode() + b"\n\n"


def _param_from_location(location: tuple[Any, ...]) -> str | None:
    """The top-level field: ('body', 'input', 'list[str]', 0) -> 'input'; ('body',) -> None."""
    return str(location[1]) if len(location) > 1 and location[0] == "body" else None


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LocalLLMError)
    async def _local(_: Request, exc: LocalLLMError) -> JSONResponse:
        return local_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc, request.headers.get("content-type", ""))
        return error_response(
            400, message, "invalid_request_error", param=param, code="invalid_request_error"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        route = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            message, code = f"This server has no route {route}.", "not_found"
        elif exc.status_code == 405:
            message, code = f"{route} is not allowed; see /docs for the routes and their methods.", None
        else:
            message, code = str(exc.detail), None
        # Starlette's 405 carries ``Allow`` (the route's methods), as RFC 9110 requires; keep it.
        return error_response(
            exc.status_code, message, "invalid_request_error", code=code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, f"Internal error: {type(exc).__name__}.", "server_error", code="internal_error"
        )
