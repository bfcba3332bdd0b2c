"""ModelManager: the one owner of loaded engines and of the memory ledger.

Contract for in-flight counts (every rule below is relied on by the policy and the tests):

* ``in_flight`` is incremented only by :meth:`ModelManager.lease`, synchronously in the same step
  that sees the slot ``LOADED``, and decremented when the lease's ``async with`` block exits
  (normally, by error, or by cancellation when the client goes away).
* A slot with ``in_flight > 0`` is never chosen for eviction, so an engine is never stopped or
  parked under a request. Admission takes its snapshot and moves every victim out of ``LOADED`` in
  one step with no await between, so no lease can start on an engine that is about to go.
* Bringing a model up (a cold load, or waking a parked one) is single-flight: the first lease
  starts one task; every lease for the same model awaits it (shielded, so a client that gives up
  does not cancel the load for the others). A waiter re-checks the state when the task ends: if
  the model was evicted in between, it starts (or joins) the next task rather than failing.
* Admission is serialised (one lock); it decides with the pure :func:`~local_llm.manager.policy.admit`
  over a snapshot of the ledger, and a model holds its plan's bytes from the moment it is admitted.
  The ledger never exceeds the budget: when nothing idle can make room, the request waits (bounded
  by LLM_MODEL_LOAD_TIMEOUT_S and LLM_MAX_WAITING_REQUESTS) until a lease ends.
* A failed load leaves the slot ``FAILED`` with the reason and releases its reservation; the next
  lease retries.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum

from local_llm.config import Settings
from local_llm.engines.base import Engine
from local_llm.engines.factory import create_engine, estimate_for
from local_llm.errors import (
    InsufficientMemoryError,
    LocalLLMError,
    ModelBusyError,
    ModelLoadError,
    ModelLoadTimeoutError,
    QueueFullError,
)
from local_llm.manager.policy import (
    Budget,
    Holding,
    Need,
    Stage,
    admit,
    expired,
    to_drain,
    used,
    within_budget,
)
from local_llm.placement import (
    DeviceSnapshot,
    ModelNeed,
    PlacementPlan,
    PlacementRules,
    Room,
    plan_placement,
    probe_devices,
)
from local_llm.placement.estimate import mib
from local_llm.registry import ModelKind, ModelRegistry, ModelSpec

logger = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec, PlacementPlan, Settings], Engine]
DeviceProbe = Callable[[], DeviceSnapshot]
NeedEstimator = Callable[[ModelSpec], ModelNeed]

# RAM left to the operating system and this server's own code when LLM_AVAILABLE_RAM_GB is unset.
_RAM_RESERVE_BYTES = 1024**3
# This process's own CUDA context, which in-process (torch) models on a GPU bring and never give back.
_SERVER_CUDA_CONTEXT_BYTES = 512 * 1024**2
# How far a model's measured GPU memory may exceed its plan before the log says the budget is overrun.
_OVERRUN_TOLERANCE_BYTES = 256 * 1024**2
# How often a request waiting for memory looks again when no lease ending woke it.
_ADMISSION_POLL_S = 0.5
# How often idle models are checked against their time to live.
_TTL_CHECK_S = 1.0


class ModelState(str, Enum):
    AVAILABLE = "available"
    LOADING = "loading"
    LOADED = "loaded"
    PARKED = "parked"
    FAILED = "failed"


@dataclass
class _Slot:
    spec: ModelSpec
    pinned: bool
    state: ModelState = ModelState.AVAILABLE
    engine: Engine | None = None
    plan: PlacementPlan | None = None
    # True from admission until unload: the slot holds ``plan``'s bytes in the ledger.
    admitted: bool = False
    in_flight: int = 0
    last_used: float = 0.0
    task: asyncio.Task[None] | None = None
    error: str | None = None
    load_seconds: float | None = None
    wake_seconds: float | None = None
    park_seconds: float | None = None
    # A request's ``keep_alive`` (seconds; inf: forever), which wins over the configured TTL.
    keep_alive_s: float | None = None
    need: ModelNeed | None = None
    # Models waiting for this one's memory: while any does, new requests for it wait (it drains).
    drained_for: set[str] = field(default_factory=set)
    # Requests waiting in _wait_until_up, and leases granted to them when a bring-up ended.
    waiting: int = 0
    granted: int = 0


@dataclass(frozen=True)
class ModelStatus:
    """A read-only view of one model, for /v1/models, the admin API and the CLI."""

    spec: ModelSpec
    state: ModelState
    plan: PlacementPlan | None
    backend: str | None
    in_flight: int
    last_used: float | None
    error: str | None
    measured_bytes: int | None
    load_seconds: float | None
    wake_seconds: float | None
    park_seconds: float | None
    max_model_len: int | None
    running_requests: int | None
    pinned: bool
    idle_ttl_s: float | None


@dataclass(frozen=True)
class LedgerView:
    """The budget and what each model holds of it: /admin/memory, and the tests' invariant."""

    budget: Budget
    holdings: tuple[Holding, ...]
    device: DeviceSnapshot

    @property
    def used_gpu_bytes(self) -> int:
        return used(self.holdings)[0]

    @property
    def used_ram_bytes(self) -> int:
        return used(self.holdings)[1]


class ModelManager:
    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        *,
        engine_factory: EngineFactory = create_engine,
        device_probe: DeviceProbe = probe_devices,
        need_estimator: NeedEstimator | None = None,
    ) -> None:
        self.registry = registry
        self._settings = settings
        self._engine_factory = engine_factory
        self._probe = device_probe
        self._estimator = need_estimator or (lambda spec: estimate_for(spec, settings))
        pinned = {registry.get(name).name for name in settings.pinned_models}
        self._slots = {
            spec.name: _Slot(spec, pinned=spec.options.pinned or spec.name in pinned)
            for spec in registry.models
        }
        self.budget = self._measure_budget()
        # Serialises admission decisions and the evictions they order.
        self._admission = asyncio.Lock()
        # Set whenever memory may have come free (a lease ended, a model went); waiters look again.
        self._changed = asyncio.Event()
        self._waiting = 0
        self._background: set[asyncio.Task[None]] = set()
        self.loads_started = 0
        self.wakes = 0

    def _measure_budget(self) -> Budget:
        """The budget, fixed at start: the operator's caps, else what the machine has free now."""
        snapshot = self._probe()
        ram = self._settings.ram_budget_bytes or max(snapshot.ram_available_bytes - _RAM_RESERVE_BYTES, 0)
        gpu: int | None = None
        if snapshot.gpu is not None:
            free = snapshot.gpu.free_bytes
            cap = self._settings.gpu_budget_bytes
            gpu = min(cap, free) if cap is not None else int(free * 0.95)
            if any(spec.kind is not ModelKind.CHAT for spec in self.registry.models):
                gpu = max(gpu - _SERVER_CUDA_CONTEXT_BYTES, 0)
        budget = Budget(ram_bytes=ram, gpu_bytes=gpu, max_models=self._settings.model_cache_size)
        logger.info(
            "memory budget: RAM %s%s%s",
            mib(ram),
            f", GPU {mib(gpu)} on {snapshot.gpu.name} ({snapshot.gpu.source})"
            if snapshot.gpu and gpu
            else ", no GPU",
            f", at most {budget.max_models} models loaded" if budget.max_models else "",
        )
        return budget

    # --- requests ------------------------------------------------------------------------------
    @asynccontextmanager
    async def lease(self, name: str, *, keep_alive_s: float | None = None) -> AsyncIterator[Engine]:
        """Hold the engine for ``name`` for the duration of a request, bringing it up first if needed.

        ``keep_alive_s`` (a request's ``keep_alive``): how long the model stays loaded once idle;
        negative means forever, 0 unloads it as soon as it is idle.
        """
        slot = self._slots[self.registry.get(name).name]
        engine = await self._acquire(slot)
        if keep_alive_s is not None:
            slot.keep_alive_s = math.inf if keep_alive_s < 0 else keep_alive_s
        try:
            yield engine
        finally:
            slot.in_flight -= 1
            slot.last_used = time.time()
            self._changed.set()

    async def _acquire(self, slot: _Slot) -> Engine:
        if slot.state is ModelState.LOADED and slot.engine is not None and not slot.drained_for:
            return self._take(slot, slot.engine)
        if self._waiting >= self._settings.max_waiting_requests:
            raise QueueFullError(
                f"{self._waiting} requests are already waiting for models to load "
                "(LLM_MAX_WAITING_REQUESTS); try again shortly.",
                retry_after_s=5.0,
            )
        self._waiting += 1
        try:
            return await self._wait_until_up(slot)
        finally:
            self._waiting -= 1

    async def _wait_until_up(self, slot: _Slot) -> Engine:
        """Wait for the model, bringing it up if no one is; bounded by LLM_MODEL_LOAD_TIMEOUT_S.

        When a bring-up ends, it grants a lease to every request waiting for it (``granted``, counted
        in ``in_flight`` at once), so a model another model is waiting for cannot be drained and
        evicted before the requests it was loaded for have run (which would thrash, serving none).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.model_load_timeout_s
        slot.waiting += 1
        try:
            while True:
                if slot.granted and slot.engine is not None:
                    slot.granted -= 1
                    slot.last_used = time.time()
                    return slot.engine
                if slot.state is ModelState.LOADED and slot.engine is not None:
                    if not slot.drained_for:
                        return self._take(slot, slot.engine)
                    # Making way for another model: wait until that one is in (and this one out).
                    if loop.time() > deadline:
                        raise ModelLoadTimeoutError(
                            f"Model '{slot.spec.name}' is making way for another model; try again shortly.",
                            retry_after_s=5.0,
                        )
                    self._changed.clear()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), _ADMISSION_POLL_S)
                    continue
                if slot.task is None:
                    slot.task = loop.create_task(self._bring_up(slot), name=f"bring-up-{slot.spec.name}")
                    slot.task.add_done_callback(_consume_exception)
                try:
                    await asyncio.wait_for(asyncio.shield(slot.task), max(deadline - loop.time(), 0.0))
                except TimeoutError as exc:
                    if slot.granted:
                        continue
                    raise ModelLoadTimeoutError(
                        f"Model '{slot.spec.name}' is still loading (or waiting for memory to load in) after "
                        f"{self._settings.model_load_timeout_s:g}s (LLM_MODEL_LOAD_TIMEOUT_S); "
                        "try again shortly.",
                        retry_after_s=5.0,
                    ) from exc
        finally:
            slot.waiting -= 1
            # Grants left to requests that gave up (timeout, disconnect) are handed back.
            if slot.granted > slot.waiting:
                excess = slot.granted - slot.waiting
                slot.granted -= excess
                slot.in_flight -= excess
                self._changed.set()

    @staticmethod
    def _take(slot: _Slot, engine: Engine) -> Engine:
        slot.in_flight += 1
        slot.last_used = time.time()
        return engine

    # --- bringing a model up: admission, then a cold load or a wake -----------------------------
    async def _bring_up(self, slot: _Slot) -> None:
        started = time.perf_counter()
        try:
            waking = await self._admit(slot)
            if waking:
                await self._wake(slot, started)
            else:
                await self._load(slot, started)
            slot.granted = slot.waiting
            slot.in_flight += slot.granted
        except Exception as exc:
            self._release_reservation(slot)
            if slot.engine is not None:  # a parked engine that failed to wake
                await _stop_quietly(slot.engine)
            if isinstance(exc, LocalLLMError):
                self._fail(slot, exc.message)
                raise
            self._fail(slot, f"{type(exc).__name__}: {exc}")
            logger.exception("bringing up %s failed", slot.spec.name)
            raise ModelLoadError(
                f"Model '{slot.spec.name}' failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            slot.task = None
            self._changed.set()

    async def _admit(self, slot: _Slot) -> bool:
        """Wait until the model fits, making room as the policy says; True when it wakes from parked."""
        try:
            return await self._admit_draining(slot)
        finally:
            for other in self._slots.values():
                if slot.spec.name in other.drained_for:
                    other.drained_for.discard(slot.spec.name)
                    self._changed.set()

    async def _admit_draining(self, slot: _Slot) -> bool:
        logged_wait = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.model_load_timeout_s
        while True:
            if logged_wait and loop.time() > deadline:
                raise ModelLoadTimeoutError(
                    f"Model '{slot.spec.name}' waited {self._settings.model_load_timeout_s:g}s for memory "
                    "that requests in flight still hold; try again shortly.",
                    retry_after_s=5.0,
                )
            async with self._admission:
                waking = slot.state is ModelState.PARKED and slot.engine is not None and slot.plan is not None
                plan = slot.plan if waking and slot.plan is not None else self._plan(slot)
                holdings = self._holdings(exclude=slot.spec.name)
                decision = admit(
                    holdings,
                    self.budget,
                    Need(slot.spec.name, plan.gpu_bytes, plan.ram_bytes),
                    may_evict=self._settings.auto_unload_models,
                    may_park=self._settings.enable_parking,
                )
                if decision.fits:
                    await self._make_room(decision.park, decision.unload, slot.spec.name)
                    slot.plan, slot.admitted = plan, True
                    if not waking:
                        slot.state, slot.error = ModelState.LOADING, None
                    self._check_ledger()
                    return waking
                if not self._settings.auto_unload_models or not self._can_ever_fit(plan):
                    raise InsufficientMemoryError(
                        f"Model '{slot.spec.name}' cannot be loaded now: {decision.short}."
                    )
                if not waking:
                    slot.state = ModelState.LOADING
                need = Need(slot.spec.name, plan.gpu_bytes, plan.ram_bytes)
                for name in to_drain(holdings, self.budget, need, may_park=self._settings.enable_parking):
                    self._slots[name].drained_for.add(slot.spec.name)
            if not logged_wait:
                logger.info("%s waits for memory: %s", slot.spec.name, decision.short)
                logged_wait = True
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), _ADMISSION_POLL_S)

    def _plan(self, slot: _Slot) -> PlacementPlan:
        """Where the model goes, against the room it could have with every unpinned model gone."""
        need = self.estimate(slot.spec.name)
        pinned = [h for h in self._holdings(exclude=slot.spec.name) if h.pinned]
        pinned_gpu, pinned_ram = used(pinned)
        room = Room(
            ram_bytes=self.budget.ram_bytes - pinned_ram,
            gpu_bytes=self.budget.gpu_bytes - pinned_gpu if self.budget.gpu_bytes is not None else None,
        )
        threshold = self._settings.gpu_memory_offload_threshold_gb
        rules = PlacementRules(
            enable_offload=self._settings.enable_gpu_memory_offload,
            offload_threshold_bytes=int(threshold * 1024**3) if threshold is not None else None,
            placement=slot.spec.options.placement,
        )
        return plan_placement(need, room, rules)

    def _can_ever_fit(self, plan: PlacementPlan) -> bool:
        """Whether waiting can help: the plan fits the budget less what pinned models hold."""
        pinned_gpu, pinned_ram = used(h for h in self._holdings() if h.pinned)
        gpu_ok = self.budget.gpu_bytes is None or plan.gpu_bytes <= self.budget.gpu_bytes - pinned_gpu
        return gpu_ok and plan.ram_bytes <= self.budget.ram_bytes - pinned_ram

    async def _make_room(self, park: tuple[str, ...], unload: tuple[str, ...], for_name: str) -> None:
        victims = [(self._slots[name], "park") for name in park] + [
            (self._slots[n], "unload") for n in unload
        ]
        # Out of LOADED first, all in one step: no lease may start on an engine about to go.
        engines = {}
        for victim, action in victims:
            engines[victim.spec.name] = victim.engine
            victim.state = ModelState.PARKED if action == "park" else ModelState.AVAILABLE
        for victim, action in victims:
            why = f"least recently used idle model, making room for {for_name}"
            if action == "park":
                await self._park(victim, why)
            else:
                await self._unload(victim, why, engines[victim.spec.name])

    async def _load(self, slot: _Slot, started: float) -> None:
        plan = slot.plan
        assert plan is not None
        self.loads_started += 1
        logger.info(
            "loading %s (%s) on %s: %s",
            slot.spec.name,
            slot.spec.kind.value,
            plan.placement.value,
            plan.reason,
        )
        engine = self._engine_factory(slot.spec, plan, self._settings)
        try:
            await engine.start()
        except BaseException:
            await _stop_quietly(engine)
            raise
        slot.engine, slot.state = engine, ModelState.LOADED
        slot.load_seconds = time.perf_counter() - started
        slot.last_used = time.time()
        measured = engine.memory_bytes
        if plan.on_gpu and measured is not None and measured > plan.gpu_bytes + _OVERRUN_TOLERANCE_BYTES:
            # Seen with vLLM 0.26, whose cpu_offload_gb kept every weight on the GPU (docs/benchmarks.md).
            logger.warning(
                "%s holds %s on the GPU, more than the %s its plan reserved: the budget is overrun "
                "until it is unloaded (models.yaml `engine: transformers` offloads through accelerate)",
                slot.spec.name,
                mib(measured),
                mib(plan.gpu_bytes),
            )
        logger.info(
            "loaded %s in %.1fs: estimated %s, measured %s",
            slot.spec.name,
            slot.load_seconds,
            mib(plan.estimated_bytes),
            mib(measured) if measured is not None else "n/a",
        )

    async def _wake(self, slot: _Slot, started: float) -> None:
        engine = slot.engine
        assert engine is not None
        slot.state = ModelState.LOADING
        await engine.wake()
        self.wakes += 1
        slot.state = ModelState.LOADED
        slot.wake_seconds = time.perf_counter() - started
        slot.last_used = time.time()
        logger.info("woke %s from RAM in %.2fs", slot.spec.name, slot.wake_seconds)

    def _fail(self, slot: _Slot, reason: str) -> None:
        slot.state, slot.error, slot.engine = ModelState.FAILED, reason, None

    def _release_reservation(self, slot: _Slot) -> None:
        slot.admitted = False

    # --- taking a model down -------------------------------------------------------------------
    async def _park(self, slot: _Slot, why: str) -> None:
        engine = slot.engine
        assert engine is not None
        started = time.perf_counter()
        slot.state = ModelState.PARKED
        try:
            await engine.park()
        except Exception:
            logger.exception("parking %s failed; unloading it instead", slot.spec.name)
            await self._unload(slot, "parking failed", engine)
            return
        slot.park_seconds = time.perf_counter() - started
        logger.info(
            "parked %s in RAM in %.2fs (idle %.0fs): %s",
            slot.spec.name,
            slot.park_seconds,
            time.time() - slot.last_used,
            why,
        )
        self._changed.set()

    async def _unload(self, slot: _Slot, why: str, engine: Engine | None = None) -> None:
        engine = engine or slot.engine
        slot.state, slot.engine, slot.admitted = ModelState.AVAILABLE, None, False
        if engine is None:
            return
        logger.info("unloading %s (idle %.0fs): %s", slot.spec.name, time.time() - slot.last_used, why)
        await _stop_quietly(engine)
        self._changed.set()

    # --- operators: load, unload, pin ----------------------------------------------------------
    async def load(self, name: str) -> ModelStatus:
        """Load (or wake) ``name`` now, as a request would, without holding it."""
        async with self.lease(name):
            pass
        return self.status(name)

    async def unload(self, name: str) -> bool:
        """Unload ``name`` (loaded or parked) if no request holds it; True when it was unloaded."""
        slot = self._slots[self.registry.get(name).name]
        async with self._admission:
            if slot.pinned:
                raise ModelBusyError(f"Model '{slot.spec.name}' is pinned; unpin it first.")
            if slot.in_flight:
                raise ModelBusyError(
                    f"Model '{slot.spec.name}' has {slot.in_flight} requests in flight; "
                    "try again when they end."
                )
            if slot.state not in (ModelState.LOADED, ModelState.PARKED):
                return False
            await self._unload(slot, "requested")
            return True

    def pin(self, name: str, pinned: bool) -> ModelStatus:
        """Pin (never evicted) or unpin a model; pinning does not load it (``load`` does)."""
        slot = self._slots[self.registry.get(name).name]
        slot.pinned = pinned
        logger.info("%s %s", "pinned" if pinned else "unpinned", slot.spec.name)
        self._changed.set()
        return self.status(name)

    # --- background: pinned models at start, idle time to live ---------------------------------
    async def start(self) -> None:
        """Load pinned models and watch idle models' time to live (the server's lifespan calls this)."""
        self._spawn(self._expire_idle_models())
        for slot in self._slots.values():
            if slot.pinned:
                self._spawn(self._preload(slot.spec.name))

    async def _preload(self, name: str) -> None:
        try:
            await self.load(name)
        except LocalLLMError as exc:
            logger.error("pinned model %s did not load: %s", name, exc.message)

    def _ttl(self, slot: _Slot) -> float | None:
        if slot.keep_alive_s is not None:
            return None if math.isinf(slot.keep_alive_s) else slot.keep_alive_s
        if slot.spec.options.idle_ttl_s is not None:
            return slot.spec.options.idle_ttl_s
        return self._settings.model_idle_ttl_s

    async def _expire_idle_models(self) -> None:
        while True:
            await asyncio.sleep(_TTL_CHECK_S)
            ttl = {name: self._ttl(slot) for name, slot in self._slots.items()}
            if all(value is None for value in ttl.values()):
                continue
            for name in expired(self._holdings(), ttl, time.time()).unload:
                async with self._admission:
                    slot = self._slots[name]
                    # Re-checked under the lock: a request may have started meanwhile.
                    if slot.in_flight or slot.state not in (ModelState.LOADED, ModelState.PARKED):
                        continue
                    if time.time() - slot.last_used < (ttl[name] or 0):
                        continue
                    await self._unload(slot, f"idle longer than its time to live of {ttl[name]:g}s")

    async def shutdown(self) -> None:
        """Stop every engine; used when the server exits."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for slot in self._slots.values():
            if slot.task is not None:
                slot.task.cancel()
                await asyncio.gather(slot.task, return_exceptions=True)
            if slot.engine is not None:
                engine, slot.engine, slot.state = slot.engine, None, ModelState.AVAILABLE
                await _stop_quietly(engine)

    # --- the ledger ----------------------------------------------------------------------------
    def _holdings(self, exclude: str | None = None) -> list[Holding]:
        holdings = []
        for name, slot in self._slots.items():
            if name == exclude or slot.plan is None:
                continue
            holding = _holding(slot)
            if holding is not None:
                holdings.append(holding)
        return holdings

    def _check_ledger(self) -> None:
        if not within_budget(self._holdings(), self.budget):
            gpu, ram = used(self._holdings())
            logger.error("ledger over budget: GPU %s, RAM %s of %s", mib(gpu), mib(ram), self.budget)

    def ledger(self) -> LedgerView:
        return LedgerView(self.budget, tuple(self._holdings()), self._probe())

    # --- views ---------------------------------------------------------------------------------
    def status(self, name: str) -> ModelStatus:
        slot = self._slots[self.registry.get(name).name]
        engine = slot.engine
        live = engine is not None and slot.state is ModelState.LOADED
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
            wake_seconds=slot.wake_seconds,
            park_seconds=slot.park_seconds,
            max_model_len=engine.max_model_len if live and engine else None,
            running_requests=engine.running_requests if live and engine else None,
            pinned=slot.pinned,
            idle_ttl_s=self._ttl(slot),
        )

    def statuses(self) -> list[ModelStatus]:
        return [self.status(name) for name in self._slots]

    def estimate(self, name: str) -> ModelNeed:
        """The model's need on each device (computed once per model; shown before it ever loads)."""
        slot = self._slots[self.registry.get(name).name]
        if slot.need is None:
            slot.need = self._estimator(slot.spec)
        return slot.need

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _holding(slot: _Slot) -> Holding | None:
    """The slot's entry in the ledger, or None when it holds nothing."""
    plan, engine = slot.plan, slot.engine
    assert plan is not None
    if slot.state is ModelState.PARKED and engine is not None:
        return Holding(
            slot.spec.name,
            Stage.PARKED,
            engine.parked_gpu_bytes,
            plan.estimate.weights_bytes,
            in_flight=slot.in_flight,
            last_used=slot.last_used,
            pinned=slot.pinned,
        )
    if not slot.admitted:
        return None
    stage = Stage.LOADED if slot.state is ModelState.LOADED else Stage.LOADING
    parkable = engine is not None and engine.can_park
    return Holding(
        slot.spec.name,
        stage,
        plan.gpu_bytes,
        plan.ram_bytes,
        parked_gpu_bytes=engine.parked_gpu_bytes if parkable and engine else None,
        parked_ram_bytes=plan.estimate.weights_bytes if parkable else None,
        in_flight=slot.in_flight,
        last_used=slot.last_used,
        pinned=slot.pinned,
    )


def _consume_exception(task: asyncio.Task[None]) -> None:
    """A load that failed after every waiter gave up must not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()


async def _stop_quietly(engine: Engine) -> None:
    try:
        await engine.stop()
    except Exception:
        logger.exception("stopping the engine for %s failed", engine.spec.name)
