"""Swapping models under concurrent load over real HTTP: every request is answered, and correctly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import RunningServer, start_server, stop_server

MODELS = ("tiny-embed", "tiny-hub-embed", "nested-renamed")


@pytest.fixture(scope="module")
def one_model_server(zoo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    log = tmp_path_factory.mktemp("swaps") / "server.log"
    running = start_server(zoo, log, "--no-bundled-models", "--model-cache-size", "1")
    yield running
    stop_server(running)


def test_concurrent_requests_across_models_with_room_for_one(one_model_server: RunningServer) -> None:
    texts = [f"request number {i} about topic {i % 7}" for i in range(60)]

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=one_model_server.base_url, timeout=120) as client:
            jobs = [
                client.post("/v1/embeddings", json={"model": MODELS[i % 3], "input": [text]})
                for i, text in enumerate(texts)
            ]
            return list(await asyncio.gather(*jobs))

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * len(texts)
    # The three folders hold the same weights, so the same text must give the same vector from each.
    again = httpx.post(
        one_model_server.api + "/embeddings", json={"model": "tiny-embed", "input": texts}, timeout=120
    ).json()
    for i, response in enumerate(responses):
        got = np.asarray(response.json()["data"][0]["embedding"])
        np.testing.assert_allclose(got, np.asarray(again["data"][i]["embedding"]), atol=1e-5)
    states = {m["id"]: m["state"] for m in httpx.get(one_model_server.api + "/models").json()["data"]}
    assert sum(state == "loaded" for state in states.values()) == 1
    assert "unloading" in one_model_server.log()


def tree_rss(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def wait_for(condition, timeout_s: float = 60) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_evicting_a_chat_model_gives_its_memory_back(one_model_server: RunningServer) -> None:
    """vLLM's engine runs in a child process; unloading ends it, so the tree's RSS comes back."""
    api = one_model_server.api
    assert httpx.post(
        api + "/embeddings", json={"model": "tiny-embed", "input": "warm"}, timeout=120
    ).is_success
    assert wait_for(lambda: "engine libraries ready" in one_model_server.log())
    before = tree_rss(one_model_server.process.pid)

    chat = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(api + "/chat/completions", json=chat, timeout=300).is_success
    loaded = tree_rss(one_model_server.process.pid)
    assert loaded - before > 200 * 2**20, "a vLLM engine should hold hundreds of MiB"

    # Room for one model: asking for an embedder evicts the idle chat model.
    assert httpx.post(api + "/embeddings", json={"model": "tiny-embed", "input": "x"}, timeout=120).is_success
    assert wait_for(lambda: tree_rss(one_model_server.process.pid) - before < 0.15 * (loaded - before))
