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

from local_llm.protocol.anthropic import AnthropicErrorResponse, MessageResponse
from local_llm.protocol.errors import ErrorResponse
from local_llm.protocol.health import HealthReport, ReadinessReport
from local_llm.protocol.ollama import OllamaError
from local_llm.server.errors import ANTHROPIC_SHAPE, OLLAMA_SHAPE, ErrorShape, shape_for

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
#: ``GET /admin/events``: the journal, from a sequence number on.
EVENTS_RESPONSES: Responses = {
    400: _error("`after` or `limit` is out of range (invalid_request_error; `param` names it)."),
    **_AUTH,
}
#: ``GET /metrics``: Prometheus' text exposition format.
METRICS_RESPONSES: Responses = {
    **_AUTH,
    200: {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}
#: ``GET /health``: its own report, also while shutting down.
HEALTH_RESPONSES: Responses = {503: {"model": HealthReport, "description": "The server is shutting down."}}
#: ``GET /health/ready``: its own report, also when not ready.
READY_RESPONSES: Responses = {
    503: {
        "model": ReadinessReport,
        "description": "Starting, a model stalled, or shutting down (why in `reason`).",
    }
}
#: ``GET /``: the status page for a browser (``Accept: text/html``), else Ollama's greeting.
STATUS_PAGE_RESPONSES: Responses = {
    200: {
        "description": "With `Accept: text/html`, the status page (it reads /v1/models, /admin/memory "
        "and /admin/events with the API key); otherwise `Ollama is running`, as Ollama answers its "
        "clients' probe.",
        "content": {
            "text/html": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}
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
# Server-sent events with an ``event:`` line (Responses, Anthropic): one such event, as OpenAPI 3.1's
# ``schema`` describes one.
_NAMED_EVENTS = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "description": "The event's type."},
                "data": {"type": "string", "description": "The event as JSON, its `type` repeated."},
            },
        }
    }
}
#: A Responses answer: a ``response`` object, or its stream of named events.
RESPONSES_STREAM_RESPONSE: Responses = {
    200: {
        "description": "The answer: an OpenAI `response` object, or with `stream: true` server-sent "
        "events from `response.created` to `response.completed` (or `response.incomplete`, or "
        "`response.failed` if the answer fails after it began).",
        "content": _NAMED_EVENTS,
    }
}
#: Routes that read or delete one stored response.
STORED_RESPONSE_RESPONSES: Responses = {
    **_AUTH,
    404: _error("No stored response has that id (not_found)."),
}


# --- Ollama's routes (/api/...): the same statuses, each error as `{"error": "..."}` ----------------
def _ollama(responses: Responses) -> Responses:
    return {
        status: {"model": OllamaError, "description": entry["description"]}
        for status, entry in responses.items()
    }


_OLLAMA_UNLOAD: Responses = {
    409: {
        "model": OllamaError,
        "description": "An empty request with keep_alive 0 asks for an unload, refused while requests "
        "hold the model or it is pinned (model_busy).",
    }
}
#: /api/chat, /api/generate: as the chat routes, and 409 for an unload that cannot be done now.
OLLAMA_GENERATION_RESPONSES: Responses = {**_ollama(ERROR_RESPONSES), **_OLLAMA_UNLOAD}
#: /api/embed, /api/embeddings.
OLLAMA_EMBED_RESPONSES: Responses = _ollama(ERROR_RESPONSES)
#: /api/show.
OLLAMA_READ_RESPONSES: Responses = {
    400: {"model": OllamaError, "description": "No model named, or a field of the wrong type."},
    **_ollama(READ_RESPONSES),
}
#: /api/tags, /api/ps, /api/version.
OLLAMA_LIST_RESPONSES: Responses = _ollama(LIST_RESPONSES)
#: /api/pull, /api/push, /api/create, /api/delete, /api/copy: never done here.
OLLAMA_REFUSED_RESPONSES: Responses = {
    400: {"model": OllamaError, "description": "A field of the wrong type."},
    **_ollama(_AUTH),
    403: {
        "model": OllamaError,
        "description": "Models come from the models folder (LLM_MODELS_DIR): this "
        "server never pulls, pushes, creates, copies or deletes one (not_supported).",
    },
}


def ollama_stream_response(model: type) -> Responses:
    """A chat or generate answer: one object (`stream: false`), or NDJSON, one such object a line, the
    last `done: true` with the counts; a failure after the stream began ends it with an error line."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        200: {
            "model": model,
            "description": "The answer as one object with `stream: false`; by default NDJSON, one object "
            'a line, the last with `done: true`, counts and durations (or `{"error": ...}`).',
            "content": {"application/x-ndjson": {"schema": ref}},
        }
    }


# --- Anthropic's Messages routes: the same statuses, in Anthropic's error shape --------------------------
def _anthropic_error(description: str) -> dict[str, Any]:
    return {"model": AnthropicErrorResponse, "description": description}


#: What /v1/messages and /v1/messages/count_tokens answer besides 200.
ANTHROPIC_ERROR_RESPONSES: Responses = {
    400: _anthropic_error("A field is wrong, or the model cannot serve it (invalid_request_error)."),
    401: _anthropic_error("Missing or wrong API key, when LLM_API_KEYS is set (authentication_error)."),
    404: _anthropic_error("No model is served under that name (not_found_error)."),
    429: _anthropic_error("Too many requests for the model right now (rate_limit_error); see Retry-After."),
    503: _anthropic_error(
        "The model is loading or failed to load, its engine died, or the server is shutting down "
        "(overloaded_error); see Retry-After."
    ),
    507: _anthropic_error("The model does not fit the memory budget (overloaded_error)."),
}
#: A message, or with `stream: true` Anthropic's named server-sent events.
ANTHROPIC_STREAM_RESPONSE: Responses = {
    200: {
        "model": MessageResponse,
        "description": "The answer: a `message` object, or with `stream: true` server-sent events "
        "`message_start`, `content_block_start` / `content_block_delta` / `content_block_stop` per block, "
        "`message_delta`, `message_stop` (`ping` may come between; a failure after the start ends with "
        "an `error` event).",
        "content": _NAMED_EVENTS,
    }
}

# Answered by the middleware (server/middleware.py) before any route, on every route, in the shape of
# the route's API family (server/errors.py's shape_for).
_ERROR_SCHEMAS: dict[ErrorShape, str] = {
    ANTHROPIC_SHAPE: AnthropicErrorResponse.__name__,
    OLLAMA_SHAPE: OllamaError.__name__,
}


def _error_ref(path: str) -> dict[str, Any]:
    name = _ERROR_SCHEMAS.get(shape_for(path), ErrorResponse.__name__)
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _add_edge_responses(path: str, method: str, responses: dict[str, Any]) -> None:
    responses.setdefault(
        "431",
        {
            "description": "The request's headers are larger than LLM_MAX_REQUEST_HEADER_KB "
            "(request_header_fields_too_large).",
            "content": _error_ref(path),
        },
    )
    if method in ("post", "delete"):
        responses.setdefault(
            "413",
            {
                "description": "The body is larger than LLM_MAX_REQUEST_BODY_MB (request_too_large).",
                "content": _error_ref(path),
            },
        )


def install_openapi(app: FastAPI) -> None:
    """Build the document once: without the 422 FastAPI adds to every route with a body, and with the
    middleware's answers on every route."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for route, path in schema.get("paths", {}).items():
                for method, operation in path.items():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    _add_edge_responses(route, method, responses)
                    operation["responses"] = dict(sorted(responses.items()))
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
