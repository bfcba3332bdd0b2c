"""Each API family's error body, chosen by the route's path (server/errors.py)."""

from __future__ import annotations

import pytest

from local_llm.errors import ModelNotFoundError, QueueFullError
from local_llm.server.errors import (
    ANTHROPIC_SHAPE,
    OLLAMA_SHAPE,
    OPENAI_SHAPE,
    Failure,
    local_error_response,
    shape_for,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/chat/completions", OPENAI_SHAPE),
        ("/v1/responses", OPENAI_SHAPE),
        ("/v1/messages", ANTHROPIC_SHAPE),
        ("/v1/messages/count_tokens", ANTHROPIC_SHAPE),
        ("/v1/messagesx", OPENAI_SHAPE),
        ("/api/chat", OLLAMA_SHAPE),
        ("/api", OLLAMA_SHAPE),
        ("/apix", OPENAI_SHAPE),
        ("", OPENAI_SHAPE),
    ],
)
def test_the_shape_follows_the_routes_family(path: str, shape: object) -> None:
    assert shape_for(path) is shape


def test_each_shape_renders_one_failure_as_its_clients_read_it() -> None:
    failure = Failure.of(ModelNotFoundError("ghost", ["a"]))
    assert failure.status == 404
    openai = OPENAI_SHAPE.body(failure)["error"]
    assert set(openai) == {"message", "type", "param", "code"}
    assert openai["code"] == "model_not_found"
    assert ANTHROPIC_SHAPE.body(failure) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": failure.message},
    }
    assert OLLAMA_SHAPE.body(failure) == {"error": failure.message}


def test_statuses_and_headers_do_not_depend_on_the_shape() -> None:
    error = QueueFullError("busy", retry_after_s=2)
    for path in ("/v1/embeddings", "/v1/messages", "/api/embed"):
        response = local_error_response(error, path)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2"
    assert b'"rate_limit_error"' in local_error_response(error, "/v1/messages").body
