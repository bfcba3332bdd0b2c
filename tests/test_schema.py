"""A schemathesis run over every route of /openapi.json, against a real server on the zoo's tiny models.

After vLLM's tests/entrypoints/openai/test_openai_schema.py: requests generated from the document
(valid ones, and ones that break it) must get answers the document allows. Checked on each:

* no server error but the documented ones: 503 and 507 only, and 503 only with a documented code;
* every error body is its API family's error object: OpenAI's, ``{"error": {"message", "type", "param",
  "code"}}``, or under ``/api/`` Ollama's ``{"error": "..."}`` (``GET /health`` answers its own report,
  documented as such, also with 503);
* the status, its content type, headers and body conform to the document (schemathesis' own checks),
  and a method a route does not take gets 405 with ``Allow``.

Bounded: the coverage phase's deterministic cases and a few random ones per operation, derandomized,
no shrinking, no example database, so a run is reproducible and takes about a minute and a half.
Valid bodies are pointed at the tiny models and their sizes capped (:func:`bounded`); invalid ones
are sent as generated, and most of their model names are unknown (404) or never read (400 first).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import GenerationMode
from schemathesis.config import (
    ChecksConfig,
    CoveragePhaseConfig,
    GenerationConfig,
    NotAServerErrorConfig,
    PhasesConfig,
    PositiveDataAcceptanceConfig,
    ProjectConfig,
    ProjectsConfig,
    SchemathesisConfig,
)

from conftest import RunningServer, start_server, stop_server
from fake_engines import openapi_document
from local_llm.server.errors import ANTHROPIC_SHAPE, OLLAMA_SHAPE, shape_for

pytestmark = pytest.mark.server

# The model each route's valid requests go to: the zoo's tiniest of the right kind.
MODELS = {
    "/v1/chat/completions": "tiny-chat",
    "/v1/completions": "tiny-chat",
    "/v1/responses": "tiny-chat",
    "/v1/embeddings": "tiny-embed",
    "/v1/rerank": "tiny-cross-encoder",
    "/v2/rerank": "tiny-cross-encoder",
    "/rerank": "tiny-cross-encoder",
    "/api/chat": "tiny-chat",
    "/api/generate": "tiny-chat",
    "/api/embed": "tiny-embed",
    "/api/embeddings": "tiny-embed",
    "/api/show": "tiny-chat",
    "/v1/messages": "tiny-chat",
    "/v1/messages/count_tokens": "tiny-chat",
}
# Generation is bounded so a valid request cannot ask for minutes of work from the tiny chat model.
MAX_TOKENS = 8
MAX_CHOICES = 2
# The codes a 503 may carry (server/openapi.py's ERROR_RESPONSES, LOAD_RESPONSES); 507 has one.
UNAVAILABLE_CODES = {
    "model_loading",
    "model_load_failed",
    "engine_failed",
    "engine_error",
    "engine_unavailable",
    "queue_full",
    "shutting_down",
}
# Random cases per operation, after the coverage phase's (boundary values, each field broken in turn,
# every method a route does not take): about 2,000 requests in all.
EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def schema_server(zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of its own: generated requests change models' state (keep_alive, loads)."""
    log = tmp_path_factory.mktemp("schema-server") / "server.log"
    running = start_server(
        zoo, log, "--no-bundled-models", "--max-inputs-per-request", "64", "--max-request-body-mb", "1"
    )
    yield running
    stop_server(running)


# The pytest plugin makes one test per operation at collection, before any server runs: the document
# is the app's own, built in this process; test_the_served_document_is_the_one_tested checks the
# server serves that one.
DOCUMENT = openapi_document()
CONFIG = SchemathesisConfig(
    projects=ProjectsConfig(
        default=ProjectConfig(
            # NUL bytes in strings say nothing about this server (vLLM's run leaves them out too).
            generation=GenerationConfig(
                allow_x00=False, modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
            ),
            checks=ChecksConfig(
                # 503 / 507 are documented answers; which 503s, documented_server_errors says.
                not_a_server_error=NotAServerErrorConfig(expected_statuses=["2xx", "3xx", "4xx", 503, 507]),
                # A body the schema allows may still be refused for what a schema cannot say (top_logprobs
                # without logprobs, tool_choice naming no tool, too many inputs): 400 is right there.
                positive_data_acceptance=PositiveDataAcceptanceConfig(enabled=False),
            ),
            # The coverage phase stays on: its cases are deterministic, and they include every other method
            # on every route (405 with `Allow`, schemathesis' unsupported_method check).
            phases=PhasesConfig(coverage=CoveragePhaseConfig(enabled=True)),
        )
    )
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def test_the_served_document_is_the_one_tested(schema_server: RunningServer) -> None:
    served = httpx.get(schema_server.base_url + "/openapi.json", timeout=30).json()
    assert served == DOCUMENT


def bounded(case: schemathesis.Case) -> None:
    """Point a valid request at the route's tiny model and cap the work it asks for; leave an
    invalid one as generated (changing it could make it valid)."""
    model = MODELS.get(case.operation.path)
    if model is None or case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    if not isinstance(case.body, dict):
        return
    body: dict[str, Any] = case.body
    body["model"] = model
    # keep_alive has its own tests (test_validation.py); here a 0 would unload the chat model after each
    # request, and every next one would wait 15 s for vLLM to start again.
    body.pop("keep_alive", None)
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        body[field] = min(body.get(field) or MAX_TOKENS, MAX_TOKENS)
    if case.operation.path.startswith("/api/"):  # Ollama's cap: options.num_predict
        options = body["options"] if isinstance(body.get("options"), dict) else {}
        body["options"] = {**options, "num_predict": MAX_TOKENS}
    if isinstance(body.get("n"), int):
        body["n"] = min(body["n"], MAX_CHOICES)


def documented_server_errors(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """A 5xx is 503 with one of the documented codes, or 507 insufficient_memory."""
    if response.status_code < 500:
        return True
    assert response.status_code in (503, 507), f"{response.status_code}: {response.content[:300]!r}"
    if case.operation.path.startswith("/health") or shape_for(case.operation.path) is OLLAMA_SHAPE:
        return True  # Ollama's errors carry no code
    if shape_for(case.operation.path) is ANTHROPIC_SHAPE:  # no code there: 503 and 507 are "overloaded"
        assert response.json()["error"]["type"] == "overloaded_error", response.text
        return True
    code = response.json()["error"]["code"]
    allowed = UNAVAILABLE_CODES if response.status_code == 503 else {"insufficient_memory"}
    assert code in allowed, f"{response.status_code} with the undocumented code {code!r}"
    return True


def family_shaped_errors(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """Every error is JSON in its API family's shape (the health report is /health's own)."""
    if response.status_code < 400 or case.operation.path.startswith("/health"):
        return True
    content_type = ",".join(response.headers.get("content-type", []))
    assert content_type.startswith("application/json"), f"{response.status_code} as {content_type!r}"
    if shape_for(case.operation.path) is OLLAMA_SHAPE:
        body = response.json()
        assert set(body) == {"error"}, body
        assert isinstance(body["error"], str)
        assert body["error"]
        return True
    if shape_for(case.operation.path) is ANTHROPIC_SHAPE:
        body = response.json()
        assert body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert isinstance(body["error"]["message"], str)
        assert body["error"]["message"]
        return True
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    return True


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.data_too_large, HealthCheck.too_slow],
)
def test_every_route_answers_as_documented(case: schemathesis.Case, schema_server: RunningServer) -> None:
    bounded(case)
    case.call_and_validate(
        base_url=schema_server.base_url,
        timeout=120,
        additional_checks=[documented_server_errors, family_shaped_errors],
    )
