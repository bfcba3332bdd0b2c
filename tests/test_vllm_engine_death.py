"""A request that reaches vLLM after its engine's death was seen ends at once.

vLLM ends only the requests it has registered when its engine core dies (``propagate_error``); a
request that had passed the engine's own check but was still rendering its prompt registered after,
and waited forever (the soak saw two chat streams hang for minutes after a SIGKILL). The engine races
each call into vLLM, and a stream's first step, with its death. The real kill is in test_faults.py;
here the race itself, on an engine that was never started (nothing of vLLM is imported).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from local_llm.config import Settings
from local_llm.engines.chat.vllm_engine import VllmChatEngine
from local_llm.errors import EngineFailedError
from local_llm.placement import MemoryEstimate, Placement, PlacementPlan
from local_llm.registry import ModelRegistry

pytestmark = pytest.mark.unit


def unstarted_engine(zoo: Path) -> VllmChatEngine:
    spec = ModelRegistry.discover(zoo, include_bundled=False).get("tiny-chat")
    plan = PlacementPlan(
        Placement.CPU, "cpu", MemoryEstimate(spec.size_bytes), gpu_bytes=0, ram_bytes=0, reason="test"
    )
    return VllmChatEngine(spec, plan, Settings())


def test_a_call_into_vllm_that_never_answers_ends_when_the_engine_dies(zoo: Path) -> None:
    async def scenario() -> None:
        engine = unstarted_engine(zoo)
        never = asyncio.Event()
        cancelled = asyncio.Event()

        async def registered_too_late() -> str:
            try:
                await never.wait()
            finally:
                cancelled.set()
            return "unreachable"

        waiting = asyncio.ensure_future(engine._unless_dead(registered_too_late()))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        engine.died("vLLM's engine process EngineCore (pid 1) was killed by SIGKILL")
        with pytest.raises(EngineFailedError, match="SIGKILL"):
            await asyncio.wait_for(waiting, 2)
        assert cancelled.is_set()  # the call into vLLM was cancelled, not left behind

    asyncio.run(scenario())


def test_a_call_that_answers_is_returned_and_a_dead_engine_refuses_at_once(zoo: Path) -> None:
    async def scenario() -> None:
        engine = unstarted_engine(zoo)

        async def answer() -> str:
            await asyncio.sleep(0)
            return "tokens"

        assert await engine._unless_dead(answer()) == "tokens"
        engine.died("gone")
        with pytest.raises(EngineFailedError):
            await asyncio.wait_for(engine._unless_dead(asyncio.Event().wait()), 2)

    asyncio.run(scenario())
