"""ModelManager: the one owner of loaded engines.

Contract for in-flight counts (every rule below is relied on by the policy and the tests):

* ``in_flight`` is incremented only by :meth:`ModelManager.lease`, synchronously in the same step
  that sees the slot ``LOADED``, and decremented when the lease's ``async with`` block exits
  (normally, by error, or by cancellation when the client goes away).
* A slot with ``in_flight > 0`` is never chosen for eviction, so an engine is never stopped under
  a request. Eviction first moves the slot out of ``LOADED`` and only then awaits ``engine.stop()``,
  so no new lease can start on an engine that is stopping.
* Loading is single-flight: the first lease starts one load task; every lease for the same model
  awaits that task (shielded, so a client that gives up does not cancel the load for the others).
* A waiter that wakes after a finished load re-checks the state: if the model was evicted in
  between, it starts (or joins) the next load rather than failing.
* A failed load leaves the slot ``FAILED`` with the reason; the next lease retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum

from local_llm.config import Settings
from local_llm.engines.base import Engine
from local_llm.engines.factory import create_engine
from local_llm.errors import LocalLLMError, ModelLoadError, ModelLoadTimeoutError
from local_llm.manager.policy import ResidentModel, evictions_to_admit, evictions_to_trim
from local_llm.placement import DeviceBudget, PlacementPlan, estimate_bytes, plan_placement, probe_devices
from local_llm.registry import ModelRegistry, ModelSpec

logger = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec, PlacementPlan, Settings], Engine]
BudgetProbe = Callable[[], DeviceBudget]


class ModelState(str, Enum):
    AVAILABLE = "available"
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass
class _Slot:
    spec: ModelSpec
    state: ModelState = ModelState.AVAILABLE
    engine: Engine | None = None
    plan: PlacementPlan | None = None
    in_flight: int = 0
    last_used: float = 0.0
    load_task: asyncio.Task[None] | None = None
    error: str | None = None
    load_seconds: float | None = None


@dataclass(frozen=True)
class ModelStatus:
    """A read-only view of one model, for /v1/models and the CLI."""

    spec: ModelSpec
    state: ModelState
    plan: PlacementPlan | None
    backend: str | None
    in_flight: int
    last_used: float | None
    error: str | None
    measured_bytes: int | None
    load_seconds: float | None
    max_model_len: int | None
    running_requests: int | None


class ModelManager:
    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        *,
        engine_factory: EngineFactory = create_engine,
        budget_probe: BudgetProbe | None = None,
    ) -> None:
        self.registry = registry
        self._settings = settings
        self._engine_factory = engine_factory
        gpu_cap = (
            int(settings.available_gpu_memory_gb * 1024**3) if settings.available_gpu_memory_gb else None
        )
        self._budget_probe = budget_probe or (lambda: probe_devices(gpu_cap))
        self._slots = {spec.name: _Slot(spec) for spec in registry.models}
        # Serialises admission decisions and the evictions they order.
        self._admission = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.loads_started = 0

    @property
    def _capacity(self) -> int | None:
        return self._settings.model_cache_size if self._settings.auto_unload_models else None

    # --- requests ------------------------------------------------------------------------------
    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Engine]:
        """Hold the engine for ``name`` for the duration of a request, loading it first if needed."""
        slot = self._slots[self.registry.get(name).name]
        engine = await self._acquire(slot)
        try:
            yield engine
        finally:
            slot.in_flight -= 1
            slot.last_used = time.monotonic()
            if self._over_capacity():
                self._spawn(self._trim())

    async def _acquire(self, slot: _Slot) -> Engine:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.model_load_timeout_s
        while True:
            if slot.state is ModelState.LOADED and slot.engine is not None:
                slot.in_flight += 1
                slot.last_used = time.monotonic()
                return slot.engine
            if slot.load_task is None:
                slot.state, slot.error = ModelState.LOADING, None
                slot.load_task = loop.create_task(self._load(slot), name=f"load-{slot.spec.name}")
                slot.load_task.add_done_callback(_consume_exception)
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(asyncio.shield(slot.load_task), max(remaining, 0.0))
            except TimeoutError as exc:
                raise ModelLoadTimeoutError(
                    f"Model '{slot.spec.name}' is still loading after "
                    f"{self._settings.model_load_timeout_s:g}s (LLM_MODEL_LOAD_TIMEOUT_S); "
                    "try again shortly.",
                    retry_after_s=5.0,
                ) from exc

    # --- loading and unloading -----------------------------------------------------------------
    async def _load(self, slot: _Slot) -> None:
        spec = slot.spec
        self.loads_started += 1
        started = time.perf_counter()
        engine: Engine | None = None
        try:
            async with self._admission:
                eviction = evictions_to_admit(self._resident(exclude=spec.name), self._capacity)
                for victim in eviction.evict:
                    await self._unload(
                        self._slots[victim],
                        f"least recently used idle model, making room for {spec.name} "
                        f"(LLM_MODEL_CACHE_SIZE={self._capacity})",
                    )
                if eviction.short_by:
                    logger.warning(
                        "loading %s over LLM_MODEL_CACHE_SIZE=%s: every loaded model has requests in flight",
                        spec.name,
                        self._capacity,
                    )
                budget = await asyncio.to_thread(self._budget_probe)
                plan = plan_placement(
                    spec, estimate_bytes(spec, self._settings.embedding_batch_tokens), budget
                )
            logger.info(
                "loading %s (%s) on %s: %s", spec.name, spec.kind.value, plan.placement.value, plan.reason
            )
            engine = self._engine_factory(spec, plan, self._settings)
            await engine.start()
        except Exception as exc:
            if engine is not None:
                await _stop_quietly(engine)
            if isinstance(exc, LocalLLMError):
                self._fail(slot, exc.message)
                raise
            self._fail(slot, f"{type(exc).__name__}: {exc}")
            logger.exception("loading %s failed", spec.name)
            raise ModelLoadError(f"Model '{spec.name}' failed to load: {type(exc).__name__}: {exc}") from exc
        finally:
            slot.load_task = None
        slot.engine, slot.plan, slot.state = engine, plan, ModelState.LOADED
        slot.load_seconds = time.perf_counter() - started
        slot.last_used = time.monotonic()
        logger.info("loaded %s in %.1fs", spec.name, slot.load_seconds)

    def _fail(self, slot: _Slot, reason: str) -> None:
        slot.state, slot.error, slot.engine = ModelState.FAILED, reason, None

    async def _unload(self, slot: _Slot, why: str) -> None:
        engine = slot.engine
        if engine is None or slot.in_flight:
            return
        slot.state, slot.engine = ModelState.AVAILABLE, None
        idle = time.monotonic() - slot.last_used
        logger.info("unloading %s (idle %.0fs): %s", slot.spec.name, idle, why)
        await _stop_quietly(engine)

    async def unload(self, name: str) -> bool:
        """Unload ``name`` if it is loaded and idle; True when it was unloaded."""
        slot = self._slots[self.registry.get(name).name]
        async with self._admission:
            if slot.state is not ModelState.LOADED or slot.in_flight:
                return False
            await self._unload(slot, "requested")
            return True

    async def _trim(self) -> None:
        async with self._admission:
            for victim in evictions_to_trim(self._resident(), self._capacity).evict:
                await self._unload(self._slots[victim], f"over LLM_MODEL_CACHE_SIZE={self._capacity}")

    async def shutdown(self) -> None:
        """Stop every engine; used when the server exits."""
        for task in list(self._background):
            task.cancel()
        for slot in self._slots.values():
            if slot.load_task is not None:
                slot.load_task.cancel()
                await asyncio.gather(slot.load_task, return_exceptions=True)
            if slot.engine is not None:
                engine, slot.engine, slot.state = slot.engine, None, ModelState.AVAILABLE
                await _stop_quietly(engine)

    # --- views ---------------------------------------------------------------------------------
    def _resident(self, exclude: str | None = None) -> list[ResidentModel]:
        return [
            ResidentModel(
                name=name,
                in_flight=slot.in_flight,
                last_used=slot.last_used,
                loading=slot.state is ModelState.LOADING,
            )
            for name, slot in self._slots.items()
            if name != exclude and (slot.engine is not None or slot.state is ModelState.LOADING)
        ]

    def _over_capacity(self) -> bool:
        capacity = self._capacity
        return capacity is not None and sum(s.engine is not None for s in self._slots.values()) > capacity

    def status(self, name: str) -> ModelStatus:
        slot = self._slots[self.registry.get(name).name]
        engine = slot.engine
        return ModelStatus(
            spec=slot.spec,
            state=slot.state,
            plan=slot.plan,
            backend=engine.backend if engine else None,
            in_flight=slot.in_flight,
            last_used=slot.last_used or None,
            error=slot.error,
            measured_bytes=engine.memory_bytes if engine else None,
            load_seconds=slot.load_seconds,
            max_model_len=engine.max_model_len if engine else None,
            running_requests=engine.running_requests if engine else None,
        )

    def statuses(self) -> list[ModelStatus]:
        return [self.status(name) for name in self._slots]

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _consume_exception(task: asyncio.Task[None]) -> None:
    """A load that failed after every waiter gave up must not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()


async def _stop_quietly(engine: Engine) -> None:
    try:
        await engine.stop()
    except Exception:
        logger.exception("stopping the engine for %s failed", engine.spec.name)
