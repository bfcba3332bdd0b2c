"""Swapping models under concurrent load over real HTTP: every request is answered, and correctly."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import RunningServer, start_server, stop_server
from local_llm.placement.probe import process_tree_rss

pytestmark = pytest.mark.server

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
    before = process_tree_rss(one_model_server.process.pid)

    chat = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(api + "/chat/completions", json=chat, timeout=300).is_success
    loaded = process_tree_rss(one_model_server.process.pid)
    assert loaded - before > 200 * 2**20, "a vLLM engine should hold hundreds of MiB"

    # Room for one model: asking for an embedder evicts the idle chat model.
    assert httpx.post(api + "/embeddings", json={"model": "tiny-embed", "input": "x"}, timeout=120).is_success
    assert wait_for(
        lambda: process_tree_rss(one_model_server.process.pid) - before < 0.15 * (loaded - before)
    )


def steady_tree_rss(pid: int, seconds: float = 2.0) -> int:
    """The process tree's RSS once it has settled: the least of readings over ``seconds``."""
    readings = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readings.append(process_tree_rss(pid))
        time.sleep(0.2)
    return min(readings)


def calibrated_budget_gb(zoo: Path, log: Path) -> float:
    """A RAM budget for the whole server with room for the chat model alone: what the server itself
    holds once every model has run in it and gone (its libraries imported, vLLM's front end started:
    the tree's RSS with nothing loaded, measured from outside), plus the chat model as measured, plus
    three quarters of the smallest ledger estimate of the other models: the chat model and any one of
    them do not both fit, and the chat model alone has room for the server's own footprint to vary
    (it moves by tens of MiB between readings: vLLM's front end, a batch's activations)."""
    probe = start_server(zoo, log, "--no-bundled-models")
    try:
        base = probe.base_url
        for path, body in MIXED.values():
            assert httpx.post(probe.api + path, json=body, timeout=300).is_success
        chat = httpx.get(base + "/v1/models/tiny-chat").json()["measured_bytes"]
        others = min(httpx.get(f"{base}/v1/models/{m}").json()["estimated_bytes"] for m in MODELS_SWAPPED)
        for model in ("tiny-chat", *MODELS_SWAPPED):
            assert httpx.post(f"{base}/admin/models/{model}/unload", timeout=120).is_success
        overhead = steady_tree_rss(probe.process.pid)
    finally:
        stop_server(probe)
    return (overhead + chat + 0.75 * others) / 2**30


MODELS_SWAPPED = ("tiny-embed", "st-cross-encoder")


@pytest.fixture(scope="module")
def tight_server(zoo: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A RAM budget the chat model fits alone: every switch between chat and the others is a swap."""
    folder = tmp_path_factory.mktemp("tight")
    budget_gb = calibrated_budget_gb(zoo, folder / "probe.log")
    running = start_server(
        zoo, folder / "server.log", "--no-bundled-models", "--available-ram-gb", f"{budget_gb:.3f}"
    )
    running.budget_bytes = int(budget_gb * 2**30)  # type: ignore[attr-defined]
    yield running
    stop_server(running)


HI = [{"role": "user", "content": "hi"}]
MIXED = {
    "chat": ("/chat/completions", {"model": "tiny-chat", "messages": HI, "max_tokens": 3}),
    "embedding": ("/embeddings", {"model": "tiny-embed", "input": ["数据库索引", "an index"]}),
    "reranker": ("/rerank", {"model": "st-cross-encoder", "query": "index", "documents": ["b-tree", "天气"]}),
}  # fmt: skip


def test_a_minute_of_mixed_requests_keeps_the_process_tree_within_its_ram_budget(
    tight_server: RunningServer,
) -> None:
    """Chat, embedding and reranker requests at once for 60 s, under LLM_AVAILABLE_RAM_GB set for one
    model at a time: all answered, the whole process tree (the server, its engines' processes) within
    the budget + 10% as measured from outside, and the ledger within what models may hold, but for
    short stretches: a measurement that finds the server's own footprint grown (vLLM's front end, a
    batch's activations) can put models in use over it, and they go once idle (they drain if others
    wait), so no stretch may outlast a request and a swap."""
    api = tight_server.api
    tree_budget = tight_server.budget_bytes  # type: ignore[attr-defined]

    async def scenario() -> tuple[dict[str, int], list[str], int, int, float, dict[str, Any]]:
        done = {kind: 0 for kind in MIXED}
        failures: list[str] = []
        ledger_peak = tree_peak = 0
        over_since: float | None = None
        longest_over_s = 0.0
        memory: dict[str, Any] = {}
        deadline = time.monotonic() + 60

        async def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            async with httpx.AsyncClient(base_url=api, timeout=300) as http:
                while time.monotonic() < deadline:
                    kind = list(MIXED)[rng.integers(len(MIXED))]
                    path, body = MIXED[kind]
                    response = await http.post(path, json=body)
                    if response.status_code != 200:
                        failures.append(f"{kind}: {response.status_code} {response.text[:200]}")
                    else:
                        done[kind] += 1

        async def watch() -> None:
            nonlocal ledger_peak, tree_peak, over_since, longest_over_s, memory
            async with httpx.AsyncClient(base_url=tight_server.base_url, timeout=30) as http:
                while time.monotonic() < deadline + 5:
                    memory = (await http.get("/admin/memory")).json()
                    now = time.monotonic()
                    if memory["ram"]["reserved_bytes"] > memory["ram"]["budget_bytes"]:
                        over_since = now if over_since is None else over_since
                        longest_over_s = max(longest_over_s, now - over_since)
                    else:
                        over_since = None
                    ledger_peak = max(ledger_peak, memory["ram"]["reserved_bytes"])
                    tree_peak = max(tree_peak, process_tree_rss(tight_server.process.pid))
                    await asyncio.sleep(0.1)

        await asyncio.gather(watch(), *(client(seed) for seed in range(6)))
        return done, failures, ledger_peak, tree_peak, longest_over_s, memory

    done, failures, ledger_peak, tree_peak, longest_over_s, memory = asyncio.run(scenario())
    assert failures == []
    assert all(count > 0 for count in done.values()), done
    assert ledger_peak > 0
    assert memory["ram"]["reserved_bytes"] <= memory["ram"]["budget_bytes"], memory  # once the load ended
    assert longest_over_s <= 20, f"the ledger stayed over the budget for {longest_over_s:.1f}s"
    assert tree_peak <= 1.1 * tree_budget, (
        f"{tree_peak / 2**20:.0f} MiB over {tree_budget / 2**20:.0f} MiB + 10%"
    )
    log = tight_server.log()
    # The effects' line of each load decided (not "unloading", nor a load's progress lines), with or
    # without the id of the request that caused it.
    loads = len(re.findall(r"effects: (?:\[req=\w+\] )?loading \S+ \(", log))
    decisions = "\n".join(line for line in log.splitlines() if "loading " in line or "waits" in line)
    assert loads > 3, f"the budget should have made models swap out and back in:\n{decisions}"
