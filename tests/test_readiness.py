"""Readiness and load progress, in process on fake engines held at gates (milliseconds, no sleeps to
guess by: each case waits for the state it needs). The real engine core stopped with SIGSTOP, and the
real vLLM load's stages, are in test_operator.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from fake_engines import FakeEngines, serving, until
from local_llm.engines.base import Progress
from local_llm.manager.progress import LoadProgress, StallWatch

pytestmark = pytest.mark.unit

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


# --- the stall watch, pure --------------------------------------------------------------------------
def test_work_without_progress_stalls_and_progress_or_no_work_ends_it() -> None:
    watch = StallWatch(stall_s=10)
    assert watch.look({"m": Progress(done=5, pending=2)}, now=100) == []
    assert watch.look({"m": Progress(done=5, pending=2)}, now=109) == []
    (stall,) = watch.look({"m": Progress(done=5, pending=2)}, now=110)
    assert stall.model == "m"
    assert stall.reason == "model m has 2 requests running or queued and has made no progress for 10 s"
    assert watch.look({"m": Progress(done=6, pending=2)}, now=111) == []  # a token came
    assert watch.look({"m": Progress(done=6, pending=2)}, now=120) == []
    assert len(watch.look({"m": Progress(done=6, pending=1)}, now=121)) == 1
    assert watch.look({"m": Progress(done=6, pending=0)}, now=200) == []  # idle is not stalled
    assert watch.look({"m": Progress(done=6, pending=1)}, now=201) == []  # the clock starts again
    assert watch.look({"m": None}, now=500) == []  # an engine that cannot tell never stalls


def test_a_load_logs_each_stage_once_and_a_heartbeat_while_it_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    progress = LoadProgress("big", wake=False, expected_s=41.0, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="local_llm.manager.progress"):
        progress.enter("loading the weights")
        progress.enter("loading the weights")
        now[0] = 9.0
        progress.beat()
        now[0] = 20.0
        progress.beat()
        progress.enter("allocating the KV cache")
    assert [r.getMessage() for r in caplog.records] == [
        "loading big: loading the weights, 0 s so far, last time 41 s",
        "loading big: loading the weights, 20 s so far, last time 41 s",
        "loading big: allocating the KV cache, 20 s so far, last time 41 s",
    ]
    view = progress.view()
    assert (view.stage, view.elapsed_s, view.expected_s) == ("allocating the KV cache", 20.0, 41.0)


# --- the app ------------------------------------------------------------------------------------------
def test_ready_after_start_up_and_stalled_while_an_engine_holds_work_without_progress(tmp_path: Path) -> None:
    async def scenario() -> None:
        engines = FakeEngines()
        async with serving(tmp_path, engines, ready_stall_s=0.2) as (client, _):
            await until_ready(client)
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
            engines.requests.close()
            held = asyncio.ensure_future(client.post("/v1/chat/completions", json=CHAT))
            await until(lambda: engines.requests.waiting == 1)
            stalled = await until_status(client, "stalled")
            assert stalled.status_code == 503
            body = stalled.json()
            assert "model tiny-chat has 1 requests running or queued" in body["reason"]
            assert list(body["stalled"]) == ["tiny-chat"]
            assert (await client.get("/health")).status_code == 200  # liveness is not readiness
            engines.requests.open()
            assert (await held).status_code == 200
            assert (await client.get("/health/ready")).status_code == 200

    asyncio.run(scenario())


def test_not_ready_until_a_pinned_model_has_loaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        engines = FakeEngines()
        engines.loads.close()
        async with serving(tmp_path, engines, pinned_models=["tiny-chat"]) as (client, app):
            await until(lambda: engines.loads.waiting == 1)
            # The engine tells its stage through the event loop (it may be on another thread): the
            # next turn of the loop has it.
            await until(lambda: "passing the loads gate" in (app.state.manager.readiness().reason or ""))
            response = await client.get("/health/ready")
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "starting"
            assert body["reason"].startswith("loading pinned models: tiny-chat (passing the loads gate, ")
            assert (await client.get("/health")).status_code == 200
            engines.loads.open()
            await until_ready(client)

    asyncio.run(scenario())


def test_the_card_shows_a_load_under_way_and_the_last_load_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        engines = FakeEngines()
        async with serving(tmp_path, engines) as (client, _):
            await until_ready(client)
            assert (await card(client))["loading"] is None
            engines.loads.close()
            first = asyncio.ensure_future(client.post("/admin/models/tiny-embed/load"))
            await until(lambda: engines.loads.waiting == 1)
            loading = (await card(client))["loading"]
            assert loading["stage"] == "passing the loads gate"
            assert loading["elapsed_s"] >= 0
            assert loading["expected_s"] is None  # never loaded before
            engines.loads.open()
            loaded = (await first).json()
            assert loaded["loading"] is None
            assert (await client.post("/admin/models/tiny-embed/unload")).json()["unloaded"]
            engines.loads.close()
            again = asyncio.ensure_future(client.post("/admin/models/tiny-embed/load"))
            await until(lambda: engines.loads.waiting == 1)
            assert (await card(client))["loading"]["expected_s"] == loaded["load_seconds"]
            engines.loads.open()
            await again

    asyncio.run(scenario())


def test_shutting_down_is_not_ready(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as (client, app):
            await until_ready(client)
            app.state.admission.closing = True
            response = await client.get("/health/ready")
            assert response.status_code == 503
            assert response.json()["status"] == "shutting_down"
            app.state.admission.closing = False

    asyncio.run(scenario())


async def card(client: httpx.AsyncClient, name: str = "tiny-embed") -> dict:
    response = await client.get(f"/v1/models/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def until_status(client: httpx.AsyncClient, status: str, timeout_s: float = 5.0) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        response = await client.get("/health/ready")
        if response.json()["status"] == status:
            return response
        assert asyncio.get_running_loop().time() < deadline, response.text
        await asyncio.sleep(0.02)


async def until_ready(client: httpx.AsyncClient) -> None:
    assert (await until_status(client, "ready")).status_code == 200


# --- what a vLLM start's lines say, and the CLI's bar, pure -----------------------------------------------
VLLM_START = [  # vLLM 0.32 on a 2-core CPU, LLM_LOG_LEVEL=debug (the progress bars come at any level)
    "(EngineCore pid=31130) INFO 12-01 18:10:32 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with",
    "(Worker pid=31268) INFO 12-01 18:10:47 [cpu_model_runner.py:68] Starting to load model /root/x...",
    "Loading safetensors checkpoint shards:   0% Completed | 0/1 [00:00<?, ?it/s]",
    "Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00,  1.27it/s]",
    "(Worker pid=31268) INFO 12-01 18:10:48 [default_loader.py:501] Loading weights took 0.81 seconds",
    "(Worker pid=31268) INFO 12-01 18:10:50 [cpu_model_runner.py:87] Warming up model for the compilation...",
    "(Worker pid=31268) INFO 12-01 18:11:20 [cpu_worker.py:260] Explicitly set (0.7/21.09) GiB for KV cache",
    "Loading safetensors checkpoint shards:   0% Completed | 0/1",  # another engine's: never back
    "(EngineCore pid=31130) INFO 12-01 18:11:21 [core.py:402] init engine (profile, create kv cache, warmup "
    "model) took 31.38 s",
]


def test_a_vllm_start_moves_through_its_stages_by_its_lines_and_never_back() -> None:
    from local_llm.engines.vllm_base import _START_STAGES, start_stage

    reached, seen = -1, []
    for line in ["Triton not installed", *VLLM_START]:
        moved = start_stage(line, reached)
        reached = moved
        if moved >= 0 and (not seen or seen[-1] != _START_STAGES[moved][1]):
            seen.append(_START_STAGES[moved][1])
    assert seen == [
        "starting vLLM's engine core",
        "loading the weights",
        "profiling the model and allocating the KV cache",
        "compiling and warming up the model",
        "allocating the KV cache",
        "finishing the engine's start",
    ]


def test_the_bar_fills_by_the_last_load_time_else_spins() -> None:
    from local_llm.cli import _bar

    assert (
        _bar("loading the weights", 10, 40.0, 1)
        == "[######..................]   10 s / 40 s  loading the weights"
    )
    assert _bar("slow", 90, 40.0, 1).startswith("[########################]   90 s / 40 s")
    assert _bar("first load", 3, None, 1) == "[/]    3 s  first load"
