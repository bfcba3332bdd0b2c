"""The HTTP edge in this process: validation, routing and admission, on fake engines over ASGI.

Every case here is decided before an engine computes anything (bad types, missing fields, ranges,
empty inputs, unknown models, models of the wrong kind, too many inputs, bodies and headers too
large, wrong methods), or is about back-pressure, where fake engines that block stand in for busy
ones. Cases that need a real engine (context lengths, vocabularies, parity) stay in the server tests;
test_embeddings_api.py replays the cases here over real HTTP, to show the server keeps serving.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import assert_error
from fake_engines import MINILM, FakeEngines, serving, until
from local_llm.server.errors import ANTHROPIC_SHAPE, OLLAMA_SHAPE, OPENAI_SHAPE, shape_for

pytestmark = pytest.mark.unit


def request(data_dir: Path, method: str, route: str, **options: Any) -> httpx.Response:
    """One request to a fresh app on fake engines (a few milliseconds)."""

    async def send() -> httpx.Response:
        async with serving(data_dir) as (client, _):
            return await client.request(method, route, **options)

    return asyncio.run(send())


def post(data_dir: Path, route: str, body: Any) -> httpx.Response:
    return request(data_dir, "POST", route, json=body)


# --- embeddings --------------------------------------------------------------------------------------
EMBEDDING_CASES: list[tuple[str, Any, int, str | None, str | None]] = [
    ("missing input", {"model": MINILM}, 400, "input", None),
    ("missing model", {"input": "x"}, 400, "model", None),
    ("input of the wrong type", {"model": MINILM, "input": 123}, 400, "input", None),
    ("mixed strings and ids", {"model": MINILM, "input": [1, "a"]}, 400, "input", None),
    ("nested wrong type", {"model": MINILM, "input": [[1, "a"]]}, 400, "input", None),
    (
        "unknown encoding_format",
        {"model": MINILM, "input": "x", "encoding_format": "hex"},
        400,
        "encoding_format",
        None,
    ),
    ("empty list", {"model": MINILM, "input": []}, 400, "input", None),
    ("empty string", {"model": MINILM, "input": ""}, 400, "input", None),
    ("empty string in list", {"model": MINILM, "input": ["a", ""]}, 400, "input", None),
    ("empty token list", {"model": MINILM, "input": [[1, 2], []]}, 400, "input", None),
    ("dimensions zero", {"model": "tiny-embed", "input": "x", "dimensions": 0}, 400, "dimensions", None),
    (
        "dimensions on a non-Matryoshka model",
        {"model": MINILM, "input": "x", "dimensions": 64},
        400,
        "dimensions",
        None,
    ),
    ("too many inputs", {"model": MINILM, "input": ["x"] * 65}, 400, "input", None),
    ("unknown model", {"model": "gpt-4", "input": "x"}, 404, "model", "model_not_found"),
    ("path as a model name", {"model": "../../etc/passwd", "input": "x"}, 404, "model", "model_not_found"),
    (
        "absolute path as a model name",
        {"model": "/etc/passwd", "input": "x"},
        404,
        "model",
        "model_not_found",
    ),
    (
        "folder path as a model name",
        {"model": "org/../tiny-embed", "input": "x"},
        404,
        "model",
        "model_not_found",
    ),
    ("chat model", {"model": "tiny-chat", "input": "x"}, 400, "model", "model_type_mismatch"),
    ("reranker model", {"model": "tiny-cross-encoder", "input": "x"}, 400, "model", "model_type_mismatch"),
    ("LLM reranker", {"model": "Qwen3-Reranker-tiny", "input": "x"}, 400, "model", "model_type_mismatch"),
    ("CrossEncoder", {"model": "st-cross-encoder", "input": "x"}, 400, "model", "model_type_mismatch"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "param", "code"), EMBEDDING_CASES, ids=[c[0] for c in EMBEDDING_CASES]
)
def test_bad_embedding_requests_get_openai_errors(
    tmp_path: Path, case: str, body: Any, status: int, param: str | None, code: str | None
) -> None:
    assert_error(post(tmp_path, "/v1/embeddings", body), status, param, code)


def test_a_good_embedding_request_passes_the_edge(tmp_path: Path) -> None:
    """The cases above fail for their fault alone: the same request without it is served."""
    response = post(tmp_path, "/v1/embeddings", {"model": "tiny-embed", "input": ["a", "b"], "dimensions": 8})
    assert response.status_code == 200, response.text
    assert [len(item["embedding"]) for item in response.json()["data"]] == [8, 8]


def test_unknown_model_message_lists_served_models(tmp_path: Path) -> None:
    error = assert_error(post(tmp_path, "/v1/embeddings", {"model": "nope", "input": "x"}), 404)
    assert MINILM in error["message"]
    assert "tiny-embed" in error["message"]


@pytest.mark.parametrize(
    "raw", [b"{not json", b'["a", "list"]', b'"a string"', b""], ids=["broken", "array", "string", "empty"]
)
def test_bodies_that_are_not_json_objects_get_400(tmp_path: Path, raw: bytes) -> None:
    response = request(
        tmp_path, "POST", "/v1/embeddings", content=raw, headers={"content-type": "application/json"}
    )
    assert_error(response, 400)


def test_body_over_the_size_cap_gets_413(tmp_path: Path) -> None:
    huge = {"model": MINILM, "input": ["x" * 1000] * 1200}  # about 1.2 MiB, cap is 1 MiB
    assert_error(post(tmp_path, "/v1/embeddings", huge), 413, code="request_too_large")


def test_empty_body_and_missing_content_type_say_what_to_do(tmp_path: Path) -> None:
    empty = assert_error(request(tmp_path, "POST", "/v1/embeddings"), 400)
    assert "empty" in empty["message"]
    form = request(
        tmp_path,
        "POST",
        "/v1/embeddings",
        content=b'{"model": "all-MiniLM-L6-v2", "input": "a"}',
        headers={"content-type": "application/x-www-form-urlencoded"},  # what `curl -d` sends
    )
    assert "Content-Type: application/json" in assert_error(form, 400)["message"]


# --- routes and methods ------------------------------------------------------------------------------
def test_unknown_route_names_itself(tmp_path: Path) -> None:
    error = assert_error(post(tmp_path, "/v1/audio/speech", {}), 404, code="not_found")
    assert "POST /v1/audio/speech" in error["message"]


@pytest.mark.parametrize(
    ("method", "route", "allowed"),
    [
        ("GET", "/v1/embeddings", {"POST"}),
        ("GET", "/v1/chat/completions", {"POST"}),
        ("PUT", "/rerank", {"POST"}),
        ("POST", "/v1/models", {"GET"}),
        ("DELETE", "/v1/models/tiny-embed", {"GET"}),
        ("POST", "/health", {"GET"}),
        ("GET", "/admin/models/tiny-embed/load", {"POST"}),
    ],
)
def test_wrong_method_is_405_with_allow_naming_the_methods(
    tmp_path: Path, method: str, route: str, allowed: set[str]
) -> None:
    response = request(tmp_path, method, route)
    error = assert_error(response, 405)
    assert f"{method} {route}" in error["message"]
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


# --- headers -----------------------------------------------------------------------------------------
def test_headers_over_the_limit_get_431_and_the_app_keeps_serving(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, max_request_header_kb=8) as (client, _):
            big = await client.get("/v1/models", headers={"x-big": "a" * 8200})
            error = assert_error(big, 431, code="request_header_fields_too_large")
            assert "LLM_MAX_REQUEST_HEADER_KB" in error["message"]
            # Within the limit (names and values are what counts), and afterwards: served.
            assert (await client.get("/v1/models", headers={"x-big": "a" * 7000})).status_code == 200
            body = {"model": MINILM, "input": "x"}
            refused = await client.post("/v1/embeddings", json=body, headers={"x-big": "a" * 9000})
            assert_error(refused, 431)
            assert (await client.post("/v1/embeddings", json=body)).status_code == 200

    asyncio.run(scenario())


# --- chat and completions ----------------------------------------------------------------------------
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CHAT_CASES: list[tuple[dict[str, Any], str]] = [
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages"),
    # OpenAI allows only text parts in system, developer and tool messages.
    (
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages",
    ),
    ({"messages": [{"role": "developer", "content": [{"type": "", "text": "x"}]}]}, "messages"),
    ({"messages": [{"role": "tool", "tool_call_id": "1", "content": [{"type": "text"}]}]}, "messages"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 129}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
    ),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"tools": []}, "tools"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}},
        "response_format",
    ),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"1": 101}}, "logit_bias"),
    ({"model": 7}, "model"),
]


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-chat", "messages": HELLO, **fields}


@pytest.mark.parametrize(("fields", "param"), CHAT_CASES)
def test_bad_chat_fields_are_400_naming_the_field(tmp_path: Path, fields: dict[str, Any], param: str) -> None:
    assert_error(post(tmp_path, "/v1/chat/completions", chat_body(**fields)), 400, param=param)


def test_good_chat_requests_pass_the_edge(tmp_path: Path) -> None:
    """The same fields, right: served (by the fake engine), streamed or not."""

    async def scenario() -> None:
        async with serving(tmp_path) as (client, _):
            fields = {"temperature": 2, "top_p": 1, "n": 128, "logprobs": True, "top_logprobs": 20}
            tools = {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            }
            for body in (chat_body(**fields), chat_body(**tools), chat_body(stream=True, stream_options={})):
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, (body, response.text)
            streamed = await client.post("/v1/chat/completions", json=chat_body(stream=True))
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert streamed.text.endswith("data: [DONE]\n\n")

    asyncio.run(scenario())


def test_models_of_the_wrong_kind_on_chat_and_completions(tmp_path: Path) -> None:
    error = assert_error(
        post(tmp_path, "/v1/chat/completions", chat_body(model="tiny-embed")),
        400,
        param="model",
        code="model_type_mismatch",
    )
    assert "embedding model" in error["message"]
    completion = post(tmp_path, "/v1/completions", {"model": "tiny-embed", "prompt": "hi"})
    assert_error(completion, 400, param="model", code="model_type_mismatch")
    assert_error(
        post(tmp_path, "/v1/chat/completions", chat_body(model="tiny-cross-encoder")),
        400,
        code="model_type_mismatch",
    )


def test_model_without_chat_template_refuses_chat_but_completes(tmp_path: Path) -> None:
    error = assert_error(
        post(tmp_path, "/v1/chat/completions", chat_body(model="tiny-base")), 400, param="model"
    )
    assert "chat template" in error["message"]
    assert post(tmp_path, "/v1/completions", {"model": "tiny-base", "prompt": "Hello"}).status_code == 200


def test_unknown_chat_model_is_404(tmp_path: Path) -> None:
    assert_error(
        post(tmp_path, "/v1/chat/completions", chat_body(model="../../etc/passwd")),
        404,
        code="model_not_found",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny-chat"}, "prompt"),
        ({"model": "tiny-chat", "prompt": []}, "prompt"),
        ({"model": "tiny-chat", "prompt": [[]]}, "prompt"),
        ({"model": "tiny-chat", "prompt": ""}, "prompt"),
        ({"model": "tiny-chat", "prompt": ["a", ""]}, "prompt"),
        ({"model": "tiny-chat", "prompt": [1, "a"]}, "prompt"),
        ({"prompt": "x"}, "model"),
        ({"model": "tiny-chat", "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": "tiny-chat", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_bad_completion_requests_are_400(tmp_path: Path, body: dict[str, Any], param: str) -> None:
    assert_error(post(tmp_path, "/v1/completions", body), 400, param=param)


# --- rerank ------------------------------------------------------------------------------------------
QUERY = "What is the capital of France?"
BODY = {"model": "tiny-cross-encoder", "query": QUERY, "documents": ["a", "b"]}
RERANK_CASES: list[tuple[str, str, Any, int, str | None, str | None]] = [
    ("empty query", "/v1/rerank", {**BODY, "query": ""}, 400, "query", None),
    ("missing query", "/v1/rerank", {"model": "tiny-cross-encoder", "documents": ["a"]}, 400, "query", None),
    ("query not a string", "/v1/rerank", {**BODY, "query": 5}, 400, "query", None),
    ("empty documents", "/v1/rerank", {**BODY, "documents": []}, 400, "documents", None),
    (
        "missing documents",
        "/v2/rerank",
        {"model": "tiny-cross-encoder", "query": "q"},
        400,
        "documents",
        None,
    ),
    ("documents of the wrong type", "/v1/rerank", {**BODY, "documents": [1, 2]}, 400, "documents", None),
    ("documents not a list", "/v1/rerank", {**BODY, "documents": "a"}, 400, "documents", None),
    (
        "document object without text",
        "/v1/rerank",
        {**BODY, "documents": [{"title": "a"}]},
        400,
        "documents",
        None,
    ),
    ("top_n zero", "/v1/rerank", {**BODY, "top_n": 0}, 400, "top_n", None),
    ("top_k negative", "/v1/rerank", {**BODY, "top_k": -1}, 400, "top_k", None),
    ("top_n not an integer", "/v1/rerank", {**BODY, "top_n": "3"}, 400, "top_n", None),
    (
        "max_tokens_per_doc zero",
        "/v2/rerank",
        {**BODY, "max_tokens_per_doc": 0},
        400,
        "max_tokens_per_doc",
        None,
    ),
    (
        "return_documents not a bool",
        "/v1/rerank",
        {**BODY, "return_documents": "yes"},
        400,
        "return_documents",
        None,
    ),
    ("empty instruction", "/v1/rerank", {**BODY, "instruction": ""}, 400, "instruction", None),
    ("too many documents", "/v1/rerank", {**BODY, "documents": ["x"] * 65}, 400, "documents", None),
    ("chat model", "/v1/rerank", {**BODY, "model": "tiny-chat"}, 400, "model", "model_type_mismatch"),
    ("unknown model", "/v1/rerank", {**BODY, "model": "rerank-v3.5"}, 404, "model", "model_not_found"),
    ("path as a model", "/v1/rerank", {**BODY, "model": "../tiny-chat"}, 404, "model", "model_not_found"),
    ("no model and several rerankers", "/v1/rerank", {"query": "q", "documents": ["a"]}, 400, "model", None),
    (
        "TEI: empty query",
        "/rerank",
        {"model": "tiny-cross-encoder", "query": "", "texts": ["a"]},
        400,
        "query",
        None,
    ),
    (
        "TEI: empty texts",
        "/rerank",
        {"model": "tiny-cross-encoder", "query": "q", "texts": []},
        400,
        "texts",
        None,
    ),
    (
        "TEI: texts of the wrong type",
        "/rerank",
        {"model": "tiny-cross-encoder", "query": "q", "texts": [1]},
        400,
        "texts",
        None,
    ),
    (
        "TEI: too many texts",
        "/rerank",
        {"model": "tiny-cross-encoder", "query": "q", "texts": ["x"] * 65},
        400,
        "texts",
        None,
    ),
    (
        "TEI: raw_scores not a bool",
        "/rerank",
        {"query": "q", "texts": ["a"], "raw_scores": 2},
        400,
        "raw_scores",
        None,
    ),
    (
        "Cohere shape on /rerank: empty documents",
        "/rerank",
        {**BODY, "documents": []},
        400,
        "documents",
        None,
    ),
    ("a list body on /rerank", "/rerank", ["a"], 400, None, None),
]


@pytest.mark.parametrize(
    ("case", "route", "body", "status", "param", "code"), RERANK_CASES, ids=[c[0] for c in RERANK_CASES]
)
def test_bad_rerank_requests_get_openai_errors(
    tmp_path: Path, case: str, route: str, body: Any, status: int, param: str | None, code: str | None
) -> None:
    assert_error(post(tmp_path, route, body), status, param, code)


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_a_good_rerank_request_passes_the_edge(tmp_path: Path, route: str) -> None:
    response = post(tmp_path, route, {**BODY, "documents": ["a much longer one", "b"], "top_n": 1})
    assert response.status_code == 200, response.text
    assert [r["index"] for r in response.json()["results"]] == [1]


# --- keep_alive --------------------------------------------------------------------------------------
KEEP_ALIVE_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", chat_body()),
    ("/v1/completions", {"model": "tiny-chat", "prompt": "x"}),
    ("/v1/embeddings", {"model": "tiny-embed", "input": "x"}),
    ("/v1/rerank", BODY),
    ("/rerank", {"model": "tiny-cross-encoder", "query": "q", "texts": ["a"]}),
]


@pytest.mark.parametrize(("route", "body"), KEEP_ALIVE_ROUTES, ids=[r for r, _ in KEEP_ALIVE_ROUTES])
@pytest.mark.parametrize("value", [False, True, "soon", "5 m", "", "1e3", {"s": 5}, [5]])
def test_keep_alive_that_is_neither_seconds_nor_a_duration_is_400(
    tmp_path: Path, route: str, body: dict[str, Any], value: Any
) -> None:
    error = assert_error(post(tmp_path, route, {**body, "keep_alive": value}), 400, param="keep_alive")
    assert "keep_alive" in error["message"]


@pytest.mark.parametrize(
    ("value", "ttl"),
    [
        (90, 90),
        (2.5, 2.5),
        ("5m", 300),
        ("1h30m", 5400),
        ("300ms", 0.3),
        ("10s", 10),
        ("0", 0),
        (0, 0),
        ("-1", None),  # kept loaded: no time to live
        (-1, None),
    ],
)
def test_keep_alive_in_seconds_or_as_a_duration_sets_the_models_time_to_live(
    tmp_path: Path, value: Any, ttl: float | None
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, model_idle_ttl_s=7) as (client, _):
            for route, body in KEEP_ALIVE_ROUTES[2:4]:
                response = await client.post(route, json={**body, "keep_alive": value})
                assert response.status_code == 200, response.text
                card = (await client.get(f"/v1/models/{body['model']}")).json()
                assert card["idle_ttl_s"] == (pytest.approx(ttl) if ttl is not None else None)

    asyncio.run(scenario())


# --- back-pressure (server/serving/base.py: Admission) -------------------------------------------
def test_a_model_at_its_request_limit_answers_429_queue_full_then_serves_again(tmp_path: Path) -> None:
    engines = FakeEngines()

    async def scenario() -> None:
        async with serving(tmp_path, engines, max_requests_per_model=1) as (client, _):
            engines.requests.close()
            first = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            await until(lambda: engines.requests.waiting == 1)
            second = await client.post("/v1/chat/completions", json=chat_body())
            error = assert_error(second, 429, code="queue_full")
            assert "LLM_MAX_REQUESTS_PER_MODEL" in error["message"]
            assert int(second.headers["retry-after"]) >= 1
            # The limit is per model: another model's request is admitted (and waits at the gate).
            other = asyncio.create_task(client.post("/v1/embeddings", json={"model": MINILM, "input": "x"}))
            await until(lambda: engines.requests.waiting == 2)
            engines.requests.open()
            assert [(await first).status_code, (await other).status_code] == [200, 200]
            assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 200

    asyncio.run(scenario())


def test_requests_waiting_for_loads_beyond_the_limit_get_503_queue_full(tmp_path: Path) -> None:
    engines = FakeEngines()

    async def scenario() -> None:
        async with serving(tmp_path, engines, max_waiting_requests=2) as (client, app):
            engines.loads.close()
            body = {"model": "tiny-embed", "input": "x"}
            waiting = [asyncio.create_task(client.post("/v1/embeddings", json=body)) for _ in range(2)]
            await until(lambda: app.state.manager.waiting() == 2)
            refused = await client.post("/v1/embeddings", json=body)
            error = assert_error(refused, 503, code="queue_full")
            assert "LLM_MAX_WAITING_REQUESTS" in error["message"]
            assert int(refused.headers["retry-after"]) >= 1
            engines.loads.open()
            assert [r.status_code for r in await asyncio.gather(*waiting)] == [200, 200]
            # Loaded now: nobody waits, and the next request is served.
            assert (await client.post("/v1/embeddings", json=body)).status_code == 200
            assert engines.built == ["tiny-embed"]

    asyncio.run(scenario())


# --- the OpenAPI document: the statuses each route really answers ---------------------------------
def test_the_document_lists_the_statuses_each_route_answers() -> None:
    from fake_engines import openapi_document

    paths = openapi_document()["paths"]
    statuses = {
        (method.upper(), path): set(operation["responses"])
        for path, operations in paths.items()
        for method, operation in operations.items()
    }
    serving = {"200", "400", "401", "404", "413", "429", "431", "503", "507"}
    assert statuses == {
        ("POST", "/v1/chat/completions"): serving,
        ("POST", "/v1/completions"): serving,
        ("POST", "/v1/embeddings"): serving,
        ("POST", "/v1/rerank"): serving,
        ("POST", "/v2/rerank"): serving,
        ("POST", "/rerank"): serving,
        ("POST", "/v1/messages"): serving,
        ("POST", "/v1/messages/count_tokens"): serving,
        ("GET", "/v1/models"): {"200", "401", "431"},
        ("GET", "/v1/models/{model_id}"): {"200", "401", "404", "431"},
        ("POST", "/admin/models/{model_id}/load"): {"200", "401", "404", "413", "431", "503", "507"},
        ("POST", "/admin/models/{model_id}/unload"): {"200", "401", "404", "409", "413", "431"},
        ("POST", "/admin/models/{model_id}/pin"): {"200", "401", "404", "413", "431"},
        ("POST", "/admin/models/{model_id}/unpin"): {"200", "401", "404", "413", "431"},
        ("GET", "/admin/memory"): {"200", "401", "431"},
        ("GET", "/admin/events"): {"200", "400", "401", "431"},
        ("GET", "/health"): {"200", "431", "503"},
        ("GET", "/health/ready"): {"200", "431", "503"},
        ("GET", "/metrics"): {"200", "401", "431"},
        ("GET", "/"): {"200", "431"},
        ("HEAD", "/"): {"200", "431"},
        ("POST", "/v1/responses"): serving,
        ("GET", "/v1/responses/{response_id}"): {"200", "401", "404", "431"},
        ("DELETE", "/v1/responses/{response_id}"): {"200", "401", "404", "413", "431"},
        ("GET", "/api/version"): {"200", "401", "431"},
        ("GET", "/api/tags"): {"200", "401", "431"},
        ("GET", "/api/ps"): {"200", "401", "431"},
        ("POST", "/api/show"): {"200", "400", "401", "404", "413", "431"},
        ("POST", "/api/chat"): serving | {"409"},
        ("POST", "/api/generate"): serving | {"409"},
        ("POST", "/api/embed"): serving,
        ("POST", "/api/embeddings"): serving,
        **{
            (method, f"/api/{operation}"): {"200", "400", "401", "403", "413", "431"}
            for method, operation in (
                ("POST", "pull"),
                ("POST", "push"),
                ("POST", "create"),
                ("POST", "copy"),
                ("DELETE", "delete"),
            )
        },
    }


def test_every_schema_has_its_own_name() -> None:
    """Two API families' models of one name (a ``Message``, a ``Tool``) would be named by their module
    paths in the document (``local_llm__protocol__ollama__Message``): each model's name is unique."""
    from fake_engines import openapi_document

    names = openapi_document()["components"]["schemas"]
    assert [name for name in names if "__" in name] == []


def test_the_document_gives_each_answer_its_shape() -> None:
    from fake_engines import openapi_document

    document = openapi_document()
    paths = document["paths"]
    chat = paths["/v1/chat/completions"]["post"]["responses"]
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    for path, report in (("/health", "/HealthReport"), ("/health/ready", "/ReadinessReport")):
        health = paths[path]["get"]["responses"]
        for status in ("200", "503"):
            assert health[status]["content"]["application/json"]["schema"]["$ref"].endswith(report)
    # Each API family's errors in its own shape (server/errors.py's shape_for).
    shapes = {
        OPENAI_SHAPE: "/ErrorResponse",
        OLLAMA_SHAPE: "/OllamaError",
        ANTHROPIC_SHAPE: "/AnthropicErrorResponse",
    }
    errors = [
        (path, answer["content"]["application/json"]["schema"]["$ref"])
        for path, operations in paths.items()
        for operation in operations.values()
        for status, answer in operation["responses"].items()
        # The health routes answer 503 with their own report, not an error.
        if status >= "400" and not (path.startswith("/health") and status == "503")
    ]
    assert errors
    wrong = [(path, ref) for path, ref in errors if not ref.endswith(shapes[shape_for(path)])]
    assert not wrong
    keep_alive = document["components"]["schemas"]["EmbeddingRequest"]["properties"]["keep_alive"]
    assert {branch.get("type") for branch in keep_alive["anyOf"]} == {"number", "string", "null"}
