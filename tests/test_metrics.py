"""``GET /metrics``, scraped from real servers and read with prometheus_client's own parser: the values
move after real requests (chat on vLLM, embeddings, rerank, errors) and after a forced swap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import RunningServer, assert_error, start_server, stop_server

pytestmark = pytest.mark.server

CHAT = "tiny-chat"
EMBED = "tiny-embed"
RERANK = "tiny-cross-encoder"


class Scrape:
    """One scrape, parsed: the value of a sample by name and labels (0 where the series is absent)."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = [sample for family in self.families.values() for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        return float(sum(found))


def scrape(base_url: str, **headers: str) -> Scrape:
    response = httpx.get(base_url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return Scrape(response.text)


def test_request_engine_and_state_metrics_move_after_real_requests(server: RunningServer) -> None:
    url = server.base_url
    httpx.post(f"{url}/admin/models/{CHAT}/load", timeout=300).raise_for_status()
    before = scrape(url)

    embedded = httpx.post(f"{url}/v1/embeddings", json={"model": EMBED, "input": ["one", "two words"]})
    assert embedded.status_code == 200
    ranked = httpx.post(
        f"{url}/v1/rerank", json={"model": RERANK, "query": "q", "documents": ["a", "b", "c"]}, timeout=60
    )
    assert ranked.status_code == 200
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    answered = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=120).json()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**chat, "stream": True}, timeout=120) as s:
        assert s.status_code == 200
        list(s.iter_lines())
    assert_error(httpx.post(f"{url}/v1/embeddings", json={"model": "no-such-model", "input": "x"}), 404)
    after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # Requests by route template, model and status; durations; time to first token for the stream only.
    chat_route = {"route": "/v1/chat/completions", "model": CHAT}
    assert moved("local_llm_requests_total", **chat_route, status="200") == 2
    assert moved("local_llm_requests_total", route="/v1/embeddings", model=EMBED, status="200") == 1
    assert moved("local_llm_requests_total", route="/v1/rerank", model=RERANK, status="200") == 1
    assert moved("local_llm_requests_total", route="/v1/embeddings", status="404") == 1
    assert moved("local_llm_request_duration_seconds_count", **chat_route) == 2
    assert moved("local_llm_time_to_first_token_seconds_count", **chat_route) == 1
    assert moved("local_llm_queue_wait_seconds_count", model=CHAT) == 2
    # Tokens: vLLM's own step counts for chat, the real (unpadded) tokens of pooling passes.
    usage = answered["usage"]
    assert moved("local_llm_generation_tokens_total", model=CHAT) >= usage["completion_tokens"] + 1
    assert moved("local_llm_prompt_tokens_total", model=CHAT) >= usage["prompt_tokens"]
    assert moved("local_llm_prompt_tokens_total", model=EMBED) == embedded.json()["usage"]["prompt_tokens"]
    # Batches: inputs and padded tokens per pass, and the three stages.
    assert moved("local_llm_batch_inputs_sum", model=EMBED) == 2
    assert moved("local_llm_batch_inputs_sum", model=RERANK) == 3
    assert moved("local_llm_batch_padded_tokens_sum", model=EMBED) >= moved(
        "local_llm_prompt_tokens_total", model=EMBED
    )
    for stage in ("tokenize", "queue", "forward"):
        assert moved("local_llm_stage_duration_seconds_count", model=EMBED, stage=stage) >= 1, stage
    # State, read at scrape time: one state per model, memory per device and per model.
    assert after.value("local_llm_model_state", model=CHAT, state="loaded") == 1
    assert after.value("local_llm_model_state", model=CHAT) == 1
    assert after.value("local_llm_model_state", model="never-loaded-embed", state="available") == 1
    assert after.value("local_llm_memory_budget_bytes", device="ram") > 0
    assert after.value("local_llm_model_reserved_bytes", model=EMBED, device="ram") > 0
    assert after.value("local_llm_model_measured_bytes", model=CHAT, device="ram") > 0
    assert after.value("local_llm_model_estimated_bytes", model="never-loaded-embed") > 0
    assert after.value("local_llm_requests_in_flight", model=CHAT) == 0
    # vLLM's own engine metrics, with the model's name as their label.
    assert after.value("vllm:request_success_total", model_name=CHAT) >= 2
    assert moved("vllm:generation_tokens_total", model_name=CHAT) == moved(
        "local_llm_generation_tokens_total", model=CHAT
    )
    assert after.families["vllm:engine_sleep_state"].samples


def test_a_forced_swap_counts_the_eviction_with_its_cause_and_durations(tmp_path: Path, zoo: Path) -> None:
    server = start_server(zoo, tmp_path / "server.log", "--no-bundled-models", "--model-cache-size", "1")
    try:
        url = server.base_url
        for model in ("tiny-embed", "tiny-hub-embed"):
            response = httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": "x"}, timeout=120)
            assert response.status_code == 200
        metrics = scrape(url)
        events = "local_llm_model_lifecycle_events_total"
        assert metrics.value(events, model="tiny-embed", event="loaded") == 1
        assert metrics.value(events, model="tiny-embed", event="unloading", cause="evicted") == 1
        assert metrics.value(events, model="tiny-embed", event="unloaded", cause="evicted") == 1
        assert metrics.value(events, model="tiny-hub-embed", event="loaded") == 1
        transitions = "local_llm_model_transition_duration_seconds_count"
        assert metrics.value(transitions, model="tiny-embed", transition="load") == 1
        assert metrics.value(transitions, model="tiny-embed", transition="unload") == 1
        assert metrics.value("local_llm_model_state", model="tiny-embed", state="available") == 1
        assert metrics.value("local_llm_model_state", model="tiny-hub-embed", state="loaded") == 1
        # The second model waited for the first to go: its wait is in the queue histogram.
        assert metrics.value("local_llm_queue_wait_seconds_count", model="tiny-hub-embed") == 1
        # An operator's unload is told apart from an eviction.
        httpx.post(f"{url}/admin/models/tiny-hub-embed/unload", timeout=60).raise_for_status()
        metrics = scrape(url)
        assert metrics.value(events, model="tiny-hub-embed", event="unloaded", cause="operator") == 1
        assert metrics.value("local_llm_model_reserved_bytes", model="tiny-hub-embed") == 0
    finally:
        stop_server(server)


def _an_address_of_this_machine_that_is_not_loopback() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family.name == "AF_INET" and not address.address.startswith("127."):
                return str(address.address)
    return None


@pytest.fixture(scope="module")
def keyed_open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    empty = tmp_path_factory.mktemp("no-models")
    running = start_server(
        empty,
        empty / "server.log",
        "--no-bundled-models",
        "--host",
        "0.0.0.0",
        "--metrics-open-to-localhost",
        env={"LLM_API_KEYS": "key-one"},
    )
    yield running
    stop_server(running)


def test_metrics_need_the_key_unless_open_to_a_scraper_on_this_machine(
    keyed_open_server: RunningServer, tmp_path: Path
) -> None:
    url = keyed_open_server.base_url
    assert scrape(url).families["local_llm_build_info"].samples  # from 127.0.0.1: no key needed
    assert_error(httpx.get(url + "/v1/models"), 401, code="invalid_api_key")  # the rest still needs one
    address = _an_address_of_this_machine_that_is_not_loopback()
    if address is None:
        pytest.skip("this machine has no address but loopback to come from")
    remote = url.replace("127.0.0.1", address)
    assert_error(httpx.get(remote + "/metrics"), 401, code="invalid_api_key")
    assert scrape(remote, authorization="Bearer key-one").families["local_llm_build_info"].samples

    closed = start_server(tmp_path, tmp_path / "server.log", "--no-bundled-models", env={"LLM_API_KEYS": "k"})
    try:
        assert_error(httpx.get(closed.base_url + "/metrics"), 401, code="invalid_api_key")
        assert scrape(closed.base_url, authorization="Bearer k").families["local_llm_build_info"].samples
    finally:
        stop_server(closed)
