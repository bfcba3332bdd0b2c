"""/v1/models, /health and API keys over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from conftest import assert_error, start_server, stop_server


def test_models_list_every_discovered_model_with_type_and_state(openai_client, http: httpx.Client) -> None:
    http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "load me"})
    listed = {m.id: m for m in openai_client.models.list().data}
    expected_types = {
        "all-MiniLM-L6-v2": "embedding",
        "tiny-embed": "embedding",
        "tiny-hub-embed": "embedding",
        "nested-renamed": "embedding",
        "Qwen3-Embedding-tiny": "embedding",
        "tiny-chat": "chat",
        "tiny-base": "chat",
        "tiny-chat-hf": "chat",
        "SmolLM2-135M-Instruct": "chat",
        "tiny-cross-encoder": "reranker",
        "st-cross-encoder": "reranker",
        "Qwen3-Reranker-tiny": "reranker",
        "as-reranker-by-yaml": "reranker",
        "corrupt-embed": "embedding",
        "never-loaded-embed": "embedding",
    }
    assert set(listed) == set(expected_types)
    raw = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    for name, kind in expected_types.items():
        assert raw[name]["type"] == kind
        assert raw[name]["object"] == "model"
        assert raw[name]["state"] in {"available", "loading", "loaded", "failed"}
    minilm = raw["all-MiniLM-L6-v2"]
    assert minilm["state"] == "loaded"
    assert minilm["placement"] == "cpu"
    assert minilm["backend"] == "sentence-transformers"
    assert minilm["measured_bytes"] > 80_000_000
    assert minilm["estimated_bytes"] >= minilm["measured_bytes"]
    # Before any load: the estimate is there, the placement not yet.
    never_loaded = raw["never-loaded-embed"]
    assert never_loaded["state"] == "available"
    assert never_loaded["estimated_bytes"] > 0
    assert never_loaded["placement"] is None
    assert raw["tiny-chat"]["estimated_bytes"] > raw["tiny-chat"]["size_bytes"]
    # created is the folder's time, stable across restarts.
    assert raw["tiny-chat"]["created"] < time.time()
    assert raw["tiny-embed"]["aliases"] == ["tiny-embed-alias"]


def test_model_by_id_and_by_alias_with_a_slash(http: httpx.Client) -> None:
    assert http.get("/v1/models/tiny-chat").json()["type"] == "chat"
    by_alias = http.get("/v1/models/sentence-transformers/all-MiniLM-L6-v2").json()
    assert by_alias["id"] == "all-MiniLM-L6-v2"
    assert_error(http.get("/v1/models/not-a-model"), 404, code="model_not_found")
    assert_error(http.get("/v1/models/..%2F..%2Fetc%2Fpasswd"), 404)


def test_health_is_open(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["status"] == "ok"
    assert body["models"] == 15


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    empty = tmp_path_factory.mktemp("no-models")
    running = start_server(
        empty, empty / "server.log", "--no-bundled-models", env={"LLM_API_KEYS": "key-one, key-two"}
    )
    yield running
    stop_server(running)


def test_api_keys_guard_v1_routes(keyed_server) -> None:  # type: ignore[no-untyped-def]
    url = keyed_server.base_url
    assert_error(httpx.get(url + "/v1/models"), 401, code="invalid_api_key")
    assert_error(
        httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401, code="invalid_api_key"
    )
    assert_error(httpx.post(url + "/v1/embeddings", json={"model": "x", "input": "y"}), 401)
    for key in ("key-one", "key-two"):
        response = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        assert response.json()["data"] == []
    assert httpx.get(url + "/health").status_code == 200


def test_openai_sdk_with_a_key(keyed_server) -> None:  # type: ignore[no-untyped-def]
    import openai

    good = openai.OpenAI(base_url=keyed_server.api, api_key="key-two", max_retries=0)
    assert good.models.list().data == []
    bad = openai.OpenAI(base_url=keyed_server.api, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_server_binds_loopback_by_default(keyed_server) -> None:  # type: ignore[no-untyped-def]
    assert keyed_server.base_url.startswith("http://127.0.0.1:")
    assert "listening on http://127.0.0.1:" in Path(keyed_server.log_path).read_text()
