"""The OpenAPI document says which errors each route answers, in the shape it answers them.

FastAPI documents only 200 and its own 422; this server answers validation errors with 400 (as
OpenAI does) and has its own statuses, so routers declare theirs from here and the 422 that no
route answers is taken out of the document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from local_llm.protocol.errors import ErrorResponse


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_AUTH: dict[int | str, dict[str, Any]] = {401: _error("Missing or wrong API key (when LLM_API_KEYS is set).")}
_MODEL: dict[int | str, dict[str, Any]] = {404: _error("No model is served under that name.")}

#: What a model-serving POST route (chat, completions, embeddings, rerank) answers besides 200.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("A field is wrong (invalid_request_error; `param` names it), or the model cannot serve it."),
    **_AUTH,
    **_MODEL,
    413: _error("The body is larger than LLM_MAX_REQUEST_BODY_MB."),
    429: _error("Too many requests or inputs for the model right now (queue_full); see Retry-After."),
    431: _error("The request's headers are too large."),
    503: _error(
        "The model is loading, failed to load or its engine died, or the server is shutting down; "
        "see Retry-After."
    ),
    507: _error("The model does not fit the memory budget (insufficient_memory)."),
}
#: The operator routes.
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    **_MODEL,
    409: _error("The model is pinned, busy or loading (model_busy)."),
    503: _error("The model failed to load, or the server is shutting down."),
    507: _error("The model does not fit the memory budget (insufficient_memory)."),
}
#: Routes that only read.
READ_RESPONSES: dict[int | str, dict[str, Any]] = {**_AUTH, **_MODEL}


def install_openapi(app: FastAPI) -> None:
    """Build the document once, without the 422 FastAPI adds to every route with a body."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
