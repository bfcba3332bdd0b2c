"""The OpenAPI document says which statuses each route answers, in the shape it answers them.

FastAPI documents only 200 and its own 422; this server answers validation errors with 400 (as
OpenAI does) and has its own statuses, so routers declare theirs from here, the 422 that no route
answers is taken out of the document, and what the middleware answers on every route (431 for
oversized headers; 413 for oversized bodies) is added to every operation it applies to. A test
(tests/test_schema.py) holds the server to this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from local_llm.protocol.errors import ErrorResponse
from local_llm.protocol.health import HealthReport

Responses = dict[int | str, dict[str, Any]]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_AUTH: Responses = {401: _error("Missing or wrong API key (when LLM_API_KEYS is set).")}
_MODEL: Responses = {404: _error("No model is served under that name (model_not_found).")}

#: What a model-serving POST route (chat, completions, embeddings, rerank) answers besides 200.
ERROR_RESPONSES: Responses = {
    400: _error("A field is wrong (invalid_request_error; `param` names it), or the model cannot serve it."),
    **_AUTH,
    **_MODEL,
    429: _error("Too many requests or inputs for the model right now (queue_full); see Retry-After."),
    503: _error(
        "The model is loading (model_loading), failed to load (model_load_failed), its engine died or "
        "failed (engine_failed, engine_error, engine_unavailable), too many requests wait for models to "
        "load (queue_full), or the server is shutting down (shutting_down); see Retry-After."
    ),
    507: _error("The model does not fit the memory budget (insufficient_memory)."),
}
#: An operator's load.
LOAD_RESPONSES: Responses = {
    **_AUTH,
    **_MODEL,
    503: _error(
        "The model failed to load (model_load_failed), its load timed out (model_loading), no engine "
        "here can serve it (engine_unavailable), or the server is shutting down (shutting_down)."
    ),
    507: _error("The model does not fit the memory budget (insufficient_memory)."),
}
#: An operator's unload.
UNLOAD_RESPONSES: Responses = {
    **_AUTH,
    **_MODEL,
    409: _error("The model is pinned, has requests in flight, or is loading (model_busy)."),
}
#: Routes that read one model.
READ_RESPONSES: Responses = {**_AUTH, **_MODEL}
#: Routes that read the whole server.
LIST_RESPONSES: Responses = {**_AUTH}
#: ``GET /health``: its own report, also while shutting down.
HEALTH_RESPONSES: Responses = {503: {"model": HealthReport, "description": "The server is shutting down."}}
#: A streamed chat or completion answer: server-sent events, ended by ``data: [DONE]``.
STREAM_RESPONSE: Responses = {
    200: {
        "description": "The answer: an OpenAI `chat.completion` / `text_completion` object, or with "
        "`stream: true` server-sent events ending with `data: [DONE]`.",
        # Each event (Open API 3.1 has ``schema`` describe one): a chunk as JSON, or ``[DONE]`` at the end.
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "string",
                            "description": "A `chat.completion.chunk` / `text_completion` object as JSON, an "
                            "error object if the answer fails after it began, or `[DONE]`.",
                        }
                    },
                }
            }
        },
    }
}
#: A Responses answer: a ``response`` object, or its stream of named events.
RESPONSES_STREAM_RESPONSE: Responses = {
    200: {
        "description": "The answer: an OpenAI `response` object, or with `stream: true` server-sent "
        "events from `response.created` to `response.completed` (or `response.incomplete`, or "
        "`response.failed` if the answer fails after it began).",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"type": "string", "description": "The event type: `response.created`, ..."},
                        "data": {"type": "string", "description": "The event as JSON."},
                    },
                }
            }
        },
    }
}
#: Routes that read or delete one stored response.
STORED_RESPONSE_RESPONSES: Responses = {
    **_AUTH,
    404: _error("No stored response has that id (not_found)."),
}

# Answered by the middleware (server/middleware.py) before any route, on every route.
_ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_HEADERS_TOO_LARGE = {
    "description": "The request's headers are larger than LLM_MAX_REQUEST_HEADER_KB "
    "(request_header_fields_too_large).",
    "content": _ERROR_REF,
}
_BODY_TOO_LARGE = {
    "description": "The body is larger than LLM_MAX_REQUEST_BODY_MB (request_too_large).",
    "content": _ERROR_REF,
}


def _add_edge_responses(method: str, responses: dict[str, Any]) -> None:
    responses.setdefault("431", _HEADERS_TOO_LARGE)
    if method == "post":
        responses.setdefault("413", _BODY_TOO_LARGE)


def install_openapi(app: FastAPI) -> None:
    """Build the document once: without the 422 FastAPI adds to every route with a body, and with the
    middleware's answers on every route."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for method, operation in path.items():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    _add_edge_responses(method, responses)
                    operation["responses"] = dict(sorted(responses.items()))
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
