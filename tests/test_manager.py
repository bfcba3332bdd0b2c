"""The manager with real engines on tiny models: single-flight loading, LRU eviction, failures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from local_llm.config import Settings
from local_llm.engines.base import Engine
from local_llm.engines.factory import create_engine
from local_llm.errors import InsufficientMemoryError, ModelBusyError, ModelLoadError, ModelLoadTimeoutError
from local_llm.manager import ModelManager, ModelState
from local_llm.placement import PlacementPlan
from local_llm.registry import ModelRegistry, ModelSpec

pytestmark = pytest.mark.unit


class CountingFactory:
    """The real engine factory, counting how many engines it builds per model."""

    def __init__(self) -> None:
        self.built: dict[str, int] = {}

    def __call__(self, spec: ModelSpec, plan: PlacementPlan, settings: Settings) -> Engine:
        self.built[spec.name] = self.built.get(spec.name, 0) + 1
        return create_engine(spec, plan, settings)


@pytest.fixture(scope="module")
def registry(zoo: Path) -> ModelRegistry:
    return ModelRegistry.discover(zoo, include_bundled=False)


def manager_for(registry: ModelRegistry, **settings: object) -> tuple[ModelManager, CountingFactory]:
    factory = CountingFactory()
    return ModelManager(registry, Settings(**settings), engine_factory=factory), factory  # type: ignore[arg-type]


def test_fifty_concurrent_first_requests_load_once(registry: ModelRegistry) -> None:
    async def scenario() -> None:
        manager, factory = manager_for(registry)

        async def request() -> Engine:
            async with manager.lease("tiny-embed") as engine:
                await asyncio.sleep(0)
                return engine

        engines = await asyncio.gather(*(request() for _ in range(50)))
        assert factory.built == {"tiny-embed": 1}
        assert manager.scheduler.records["tiny-embed"].loads == 1
        assert len({id(e) for e in engines}) == 1
        status = manager.status("tiny-embed")
        assert status.state is ModelState.LOADED
        assert status.in_flight == 0
        await manager.shutdown()

    asyncio.run(scenario())


def test_least_recently_used_idle_model_is_evicted(registry: ModelRegistry) -> None:
    async def use(manager: ModelManager, name: str) -> None:
        async with manager.lease(name):
            pass

    async def scenario() -> None:
        manager, factory = manager_for(registry, model_cache_size=2)
        for name in ("tiny-embed", "tiny-hub-embed", "nested-renamed"):
            await use(manager, name)
        states = {s.spec.name: s.state for s in manager.statuses()}
        assert states["tiny-embed"] is ModelState.AVAILABLE  # oldest went
        assert states["tiny-hub-embed"] is ModelState.LOADED
        assert states["nested-renamed"] is ModelState.LOADED
        await use(manager, "tiny-hub-embed")  # now nested-renamed is the least recently used
        await use(manager, "tiny-embed")
        states = {s.spec.name: s.state for s in manager.statuses()}
        assert states["nested-renamed"] is ModelState.AVAILABLE
        assert states["tiny-hub-embed"] is ModelState.LOADED
        assert factory.built == {"tiny-embed": 2, "tiny-hub-embed": 1, "nested-renamed": 1}
        await manager.shutdown()

    asyncio.run(scenario())


def test_a_model_in_use_is_never_evicted(registry: ModelRegistry) -> None:
    """Room for one: a request for a second model waits until the first is idle, then is served."""

    async def scenario() -> None:
        manager, _ = manager_for(registry, model_cache_size=1)
        async with manager.lease("tiny-embed") as held:
            second = asyncio.create_task(_embed_once(manager, "tiny-hub-embed"))
            await asyncio.sleep(0.5)
            assert not second.done()
            assert manager.status("tiny-embed").state is ModelState.LOADED
            vectors = await held.embed([[101, 2145, 102]])  # type: ignore[attr-defined]
            assert vectors.shape == (1, 32)
        assert (await second).shape == (1, 32)
        assert manager.status("tiny-embed").state is ModelState.AVAILABLE
        loaded = [s for s in manager.statuses() if s.state is ModelState.LOADED]
        assert [s.spec.name for s in loaded] == ["tiny-hub-embed"]
        await manager.shutdown()

    asyncio.run(scenario())


async def _embed_once(manager: ModelManager, name: str):  # type: ignore[no-untyped-def]
    async with manager.lease(name) as engine:
        return await engine.embed([[101, 2145, 102]])  # type: ignore[attr-defined]


def test_auto_unload_off_keeps_everything_and_refuses_what_does_not_fit(registry: ModelRegistry) -> None:
    async def scenario() -> None:
        manager, _ = manager_for(registry, model_cache_size=1, auto_unload_models=False)
        async with manager.lease("tiny-embed"):
            pass
        with pytest.raises(InsufficientMemoryError, match="LLM_AUTO_UNLOAD_MODELS is off"):
            async with manager.lease("tiny-hub-embed"):
                pass
        assert manager.status("tiny-embed").state is ModelState.LOADED
        await manager.shutdown()

    asyncio.run(scenario())


def test_failed_load_is_reported_with_its_cause_and_retried_after_a_backoff(registry: ModelRegistry) -> None:
    async def scenario() -> None:
        manager, factory = manager_for(registry, load_retry_backoff_s=0.3)
        with pytest.raises(ModelLoadError, match=r"corrupt-embed.*mismatched"):
            async with manager.lease("corrupt-embed"):
                pass
        status = manager.status("corrupt-embed")
        assert status.state is ModelState.FAILED
        assert status.error
        assert "RuntimeError" in status.error
        # At once again: refused without a second load, saying when the next try is.
        with pytest.raises(ModelLoadError, match="next try is allowed in 1s") as caught:
            async with manager.lease("corrupt-embed"):
                pass
        assert caught.value.retry_after_s
        assert factory.built["corrupt-embed"] == 1
        await asyncio.sleep(0.35)
        with pytest.raises(ModelLoadError):
            async with manager.lease("corrupt-embed"):
                pass
        assert factory.built["corrupt-embed"] == 2
        # Other models are unaffected.
        async with manager.lease("tiny-embed"):
            pass
        await manager.shutdown()

    asyncio.run(scenario())


def test_waiting_for_a_load_is_bounded_and_the_load_goes_on(registry: ModelRegistry) -> None:
    async def scenario() -> None:
        manager, factory = manager_for(registry, model_load_timeout_s=0.001)
        with pytest.raises(ModelLoadTimeoutError) as caught:
            async with manager.lease("tiny-embed"):
                pass
        assert caught.value.retry_after_s
        assert manager.status("tiny-embed").state is ModelState.LOADING
        for _ in range(200):
            if manager.status("tiny-embed").state is ModelState.LOADED:
                break
            await asyncio.sleep(0.05)
        assert manager.status("tiny-embed").state is ModelState.LOADED
        assert factory.built == {"tiny-embed": 1}
        await manager.shutdown()

    asyncio.run(scenario())


def test_explicit_unload_frees_an_idle_model(registry: ModelRegistry) -> None:
    async def scenario() -> None:
        manager, _ = manager_for(registry)
        async with manager.lease("tiny-embed"):
            with pytest.raises(ModelBusyError):  # busy: refused
                await manager.unload("tiny-embed")
        assert await manager.unload("tiny-embed")
        assert not await manager.unload("tiny-embed")  # nothing left to unload
        assert manager.status("tiny-embed").state is ModelState.AVAILABLE
        await manager.shutdown()

    asyncio.run(scenario())
