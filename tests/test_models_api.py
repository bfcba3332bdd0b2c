"""/v1/models, /health and API keys over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from conftest import assert_error, start_server, stop_server

pytestmark = pytest.mark.server


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
        # Whatever earlier tests did to it, what a card says of a model agrees with its state.
        card = raw[name]
        if card["state"] == "loaded":
            assert card["backend"] is not None
            assert card["placement"] is not None
        elif card["state"] == "failed":
            assert card["error"]
        else:
            assert card["state"] == "available", card
            assert card["backend"] is None
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


def test_health_is_open_and_tells_which_models_failed(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["models"] == 15
    assert set(body["failed"]) <= {"corrupt-embed"}  # the one model whose weights do not load
    assert body["status"] == ("degraded" if body["failed"] else "ok")


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
    missing = httpx.get(url + "/v1/models")
    assert_error(missing, 401, code="invalid_api_key")
    assert missing.headers["www-authenticate"] == 'Bearer realm="local-llm"'  # RFC 6750
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
    """What the server process really listens on (the harness passes no --host), not what it logs."""
    import psutil

    listening = {
        c.laddr.ip
        for c in psutil.Process(keyed_server.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {"127.0.0.1"}


def test_cards_show_the_estimate_by_part(http: httpx.Client) -> None:
    card = http.get("/v1/models/all-MiniLM-L6-v2").json()
    parts = card["estimate"]
    assert parts["weights"] > 80_000_000
    assert parts["activations"] > 0
    assert parts["runtime"] > 0
    assert (
        parts["total"]
        == card["estimated_bytes"]
        == sum(parts[k] for k in ("weights", "kv_cache", "activations", "runtime"))
    )
    chat = http.get("/v1/models/tiny-chat").json()["estimate"]
    assert chat["kv_cache"] == int(0.25 * 2**30)  # LLM_VLLM_KV_CACHE_GB in the test server's arguments


def local_llm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local_llm", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_operators_load_pin_and_unload_over_http_and_the_cli(server, http: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    name = "Qwen3-Embedding-tiny"
    http.post(f"/admin/models/{name}/unload")  # an earlier test on this server may have loaded it
    before = http.get("/admin/events").json()["last_seq"]
    loaded = http.post(f"/admin/models/{name}/load").json()
    assert loaded["state"] == "loaded"
    assert loaded["placement"] == "cpu"
    assert loaded["last_used"] <= time.time()

    pinned = http.post(f"/admin/models/{name}/pin").json()
    assert pinned["pinned"] is True
    assert_error(http.post(f"/admin/models/{name}/unload"), 409, code="model_busy")

    cli = local_llm("unpin", name, "--url", server.base_url)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["pinned"] is False
    cli = local_llm("unload", name, "--url", server.base_url)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["unloaded"] is True
    assert http.get(f"/v1/models/{name}").json()["state"] == "available"
    again = http.post(f"/admin/models/{name}/unload").json()
    assert again["unloaded"] is False

    # The journal tells the same story, as data, with reasons and seconds.
    journal = http.get("/admin/events", params={"after": before}).json()
    mine = [e for e in journal["events"] if e["model"] == name]
    assert [e["event"] for e in mine] == ["loading", "loaded", "pinned", "unpinned", "unloading", "unloaded"]
    assert mine[0]["placement"] == "cpu"
    assert mine[0]["reason"]
    assert mine[1]["seconds"] > 0
    assert mine[4]["cause"] == "operator"
    assert mine[4]["reason"] == "an operator asked"
    assert mine[5]["seconds"] >= 0
    assert journal["last_seq"] == journal["events"][-1]["seq"]
    assert http.get("/admin/events", params={"after": journal["last_seq"]}).json()["events"] == []
    assert_error(http.get("/admin/events", params={"after": -1}), 400, param="after")

    memory = json.loads(local_llm("memory", "--url", server.base_url).stdout)
    assert memory["ram"]["budget_bytes"] > 0
    assert memory["ram"]["reserved_bytes"] == sum(h["ram_bytes"] for h in memory["holdings"])
    assert name not in {h["model"] for h in memory["holdings"]}

    assert_error(http.post("/admin/models/no-such-model/load"), 404, code="model_not_found")
    missing = local_llm("load", "no-such-model", "--url", server.base_url)
    assert missing.returncode == 1
    assert "404" in missing.stderr


def test_admin_routes_need_the_key(keyed_server) -> None:  # type: ignore[no-untyped-def]
    url = keyed_server.base_url
    assert_error(httpx.get(url + "/admin/memory"), 401, code="invalid_api_key")
    assert_error(httpx.post(url + "/admin/models/x/load"), 401, code="invalid_api_key")
    denied = local_llm("memory", "--url", url)
    assert denied.returncode == 1
    assert "401" in denied.stderr
    allowed = local_llm("memory", "--url", url, "--api-key", "key-one")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["holdings"] == []
