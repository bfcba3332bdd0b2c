"""ModelManager: what the rest of the server uses of the manager (leases, operators' actions, views).

It wires the one owner of model state (:class:`~local_llm.manager.scheduler.Scheduler`) to the
effects that carry its decisions out with real engines
(:class:`~local_llm.manager.effects.EngineEffects`), and turns a request's wait into a lease:

* :meth:`ModelManager.lease` hands the scheduler a ticket and awaits its grant; the lease is counted
  in flight from the grant until its ``async with`` block exits (normally, by error, or because the
  client went away). A request that gives up while waiting withdraws its ticket; one granted as it
  gave up releases the lease at once. Either way the count is right, because a grant to a caller that
  is gone does not happen.
* Everything the scheduler decides is decided on the event loop's thread, in the scheduler's
  synchronous methods: admin actions and /v1/models read snapshots of its plain data.
* A background tick (every second) expires idle models and, every few seconds and whenever engines
  settle, measures the server's own footprint, which counts against the RAM budget.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from local_llm.config import Settings
from local_llm.engines.base import Engine
from local_llm.engines.factory import create_engine, estimate_for, stray_engine_processes
from local_llm.engines.reaper import ProcessReaper
from local_llm.errors import LocalLLMError, ModelLoadTimeoutError
from local_llm.manager.effects import EngineEffects, EngineFactory, ObserverFor
from local_llm.manager.journal import Journal
from local_llm.manager.policy import Budget, Holding, used
from local_llm.manager.progress import Loading, Stall, StallWatch, expected_seconds
from local_llm.manager.scheduler import (
    ModelEntry,
    ModelRecord,
    ModelState,
    Phase,
    Rules,
    Scheduler,
    Ticket,
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

DeviceProbe = Callable[[], DeviceSnapshot]
NeedEstimator = Callable[[ModelSpec], ModelNeed]

# RAM left to the operating system when LLM_AVAILABLE_RAM_GB is unset.
_RAM_RESERVE_BYTES = 1024**3
# This process's own CUDA context, which in-process (torch) models on a GPU bring and never give back:
# reserved before the first of them loads, then replaced by what is measured (806 MiB on an H200 with
# torch 2.11, CUDA kernels of two pooling models loaded and both parked).
_SERVER_CUDA_CONTEXT_BYTES = 768 * 1024**2
# How often idle models are checked against their time to live.
_TICK_S = 1.0
# How often, at most, the server's own footprint is measured, besides once engines settle; and over how
# long a window its least reading is what counts.
_OVERHEAD_PROBE_S = 5.0
_OVERHEAD_WINDOW_S = 30.0


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
    retry_at: float | None
    measured_bytes: int | None
    load_seconds: float | None
    wake_seconds: float | None
    park_seconds: float | None
    max_model_len: int | None
    running_requests: int | None
    pinned: bool
    idle_ttl_s: float | None
    # While the model loads (or waits to): the stage, and the time so far and last time.
    loading: Loading | None


@dataclass(frozen=True)
class Readiness:
    """Whether the server is ready for traffic (``/health/ready``): its start-up work done, and no
    loaded engine stalled (work pending, no progress for LLM_READY_STALL_S); else what it waits for."""

    status: Literal["ready", "starting", "stalled"]
    reason: str | None
    stalled: tuple[Stall, ...] = ()


@dataclass(frozen=True)
class LedgerView:
    """The budget and what each model holds of it: /admin/memory, and the tests' invariant."""

    budget: Budget
    holdings: tuple[Holding, ...]
    device: DeviceSnapshot
    server_overhead_bytes: int

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
        reaper: ProcessReaper | None = None,
        libraries_pending: bool = False,
        observer_for: ObserverFor | None = None,
    ) -> None:
        """``libraries_pending``: the engine libraries are still to be imported (the app imports them
        in the background at start); no model is brought up until ``libraries_imported`` has measured
        the server's own footprint with them in. ``observer_for(model)``: who hears of each engine's
        work (the metrics)."""
        self.registry = registry
        self._settings = settings
        self._probe = device_probe
        self._estimator: NeedEstimator = need_estimator or (lambda spec: estimate_for(spec, settings))
        self._needs: dict[str, ModelNeed] = {}
        self._reaper = reaper
        snapshot = self._probe()
        budget = self._budget(snapshot)
        self.effects = EngineEffects(registry, settings, engine_factory, time.time, reaper, observer_for)
        pinned = {registry.get(name).name for name in settings.pinned_models}
        self.scheduler = Scheduler(
            [
                ModelEntry(spec.name, spec.options.pinned or spec.name in pinned, spec.options.idle_ttl_s)
                for spec in registry.models
            ],
            budget,
            self._plan,
            self.effects,
            Rules(
                may_evict=settings.auto_unload_models,
                may_park=settings.enable_parking,
                idle_ttl_s=settings.model_idle_ttl_s,
                retry_backoff_s=settings.load_retry_backoff_s,
            ),
            overhead_measured=not libraries_pending,
        )
        self.effects.scheduler = self.scheduler
        self.scheduler.overhead_ram_bytes = snapshot.ram_used_by_us_bytes
        if snapshot.gpu is not None and any(spec.kind is not ModelKind.CHAT for spec in self.registry.models):
            self.scheduler.overhead_gpu_bytes = _SERVER_CUDA_CONTEXT_BYTES
        self.effects.on_settled = self._settled
        self._tickets = itertools.count()
        self._background: set[asyncio.Task[None]] = set()
        self._last_overhead_probe = 0.0
        self._libraries_imported = not libraries_pending
        # (when, RAM, GPU: None while the server holds none) of the last half minute.
        self._overhead_readings: deque[tuple[float, int, int | None]] = deque()
        # What the server's start-up work is doing (the app's prepare), None once it is done; and the
        # pinned models whose first load has not ended yet.
        self._start_up: str | None = "importing the engine libraries" if libraries_pending else None
        self._first_loads: set[str] = set()
        self._stalls = StallWatch(settings.ready_stall_s)

    def _budget(self, snapshot: DeviceSnapshot) -> Budget:
        """The budget, fixed at start: the operator's caps, else what the machine has free now. The RAM
        budget is the whole server's (its own footprint counts against it, as measured)."""
        ram = self._settings.ram_budget_bytes or max(
            snapshot.ram_available_bytes + snapshot.ram_used_by_us_bytes - _RAM_RESERVE_BYTES, 0
        )
        gpu: int | None = None
        if snapshot.gpu is not None:
            free = snapshot.gpu.free_bytes
            cap = self._settings.gpu_budget_bytes
            gpu = min(cap, free) if cap is not None else int(free * 0.95)
        budget = Budget(ram_bytes=ram, gpu_bytes=gpu, max_models=self._settings.model_cache_size)
        logger.info(
            "memory budget: RAM %s (the server's own footprint included)%s%s",
            mib(ram),
            f", GPU {mib(gpu)} on {snapshot.gpu.name} ({snapshot.gpu.source})"
            if snapshot.gpu and gpu
            else ", no GPU",
            f", at most {budget.max_models} models loaded" if budget.max_models else "",
        )
        return budget

    @property
    def journal(self) -> Journal:
        """What happened to each model, when and why (the scheduler writes it)."""
        return self.scheduler.journal

    @property
    def budget(self) -> Budget:
        """What models may hold now (the RAM budget less the server's own measured footprint)."""
        return self.scheduler.budget

    # --- requests --------------------------------------------------------------------------------
    @asynccontextmanager
    async def lease(self, name: str, *, keep_alive_s: float | None = None) -> AsyncIterator[Engine]:
        """Hold the engine for ``name`` for the duration of a request, bringing it up first if needed.

        ``keep_alive_s`` (a request's ``keep_alive``): how long the model stays loaded once idle;
        negative means forever, 0 unloads it as soon as it is idle.
        """
        spec = self.registry.get(name)
        ticket = Ticket(spec.name, next(self._tickets), keep_alive_s)
        future = self.effects.expect(ticket)
        self.scheduler.request(ticket, time.time())
        engine = await self._granted(ticket, future)
        try:
            yield engine
        finally:
            self.scheduler.lease_ended(spec.name, time.time())

    async def _granted(self, ticket: Ticket, future: asyncio.Future[Engine]) -> Engine:
        timeout = self._settings.model_load_timeout_s
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout)
        except asyncio.CancelledError:
            # The client went away while waiting: withdraw, or, if the grant came first, end the lease.
            if future.done() and not future.cancelled() and future.exception() is None:
                self.scheduler.lease_ended(ticket.model, time.time())
            else:
                future.cancel()
                self.effects.forget(ticket)
                self.scheduler.withdraw(ticket, time.time())
            raise
        if not done:
            future.cancel()
            self.effects.forget(ticket)
            why = self.scheduler.withdraw(ticket, time.time())
            raise ModelLoadTimeoutError(
                f"Model '{ticket.model}' {why} after {timeout:g}s (LLM_MODEL_LOAD_TIMEOUT_S); "
                "try again shortly.",
                retry_after_s=5.0,
            )
        return future.result()

    def ready(self, name: str) -> bool:
        """Whether a request for ``name`` would be served at once (no load, no wait)."""
        return self.scheduler.ready(self.registry.get(name).name)

    def waiting(self) -> int:
        """Requests waiting for their model to come up, all models together."""
        return self.scheduler.waiting()

    # --- operators: load, unload, pin -------------------------------------------------------------
    async def load(self, name: str) -> ModelStatus:
        """Load (or wake) ``name`` now, as a request would, without holding it; a failed model's
        backoff does not apply to an operator."""
        self.scheduler.retry_now(self.registry.get(name).name)
        async with self.lease(name):
            pass
        return self.status(name)

    async def unload(self, name: str) -> bool:
        """Unload ``name`` (loaded or parked) if no request holds it; True once it is unloaded."""
        spec = self.registry.get(name)
        if not self.scheduler.unload(spec.name, time.time()):
            return False
        await self.effects.settled(spec.name)
        return True

    def pin(self, name: str, pinned: bool) -> ModelStatus:
        """Pin (never evicted) or unpin a model; pinning does not load it (``load`` does)."""
        self.scheduler.pin(self.registry.get(name).name, pinned, time.time())
        return self.status(name)

    # --- background ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the process reaper, the tick, and the pinned models' loads (the lifespan calls this)."""
        if self._reaper is not None:
            self._reaper.start()
        self._spawn(self._tick())
        for record in self.scheduler.records.values():
            if record.pinned:
                self._first_loads.add(record.name)
                self._spawn(self._preload(record.name))

    async def _preload(self, name: str) -> None:
        try:
            await self.load(name)
        except LocalLLMError as exc:
            logger.error("pinned model %s did not load: %s", name, exc.message)
        finally:
            self._first_loads.discard(name)

    def starting(self, step: str | None) -> None:
        """The server's start-up work is at ``step`` (None: done); /health/ready says so until done."""
        self._start_up = step

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            try:
                now = time.time()
                self.scheduler.tick(now)
                self.stalls()
                if now - self._last_overhead_probe >= _OVERHEAD_PROBE_S:
                    await self.measure_overhead()
            except Exception:  # a failed probe must not end the time to live of every model
                logger.exception("the manager's tick failed; it goes on")

    async def measure_overhead(self) -> None:
        """Measure the server's own RAM beyond its models' (and its GPU memory beyond what the ledger
        holds for its in-process models: the CUDA context) and let the budget follow it.

        Each engine's share is what it holds: its own processes' RSS (vLLM), or for an in-process
        model what it was measured to hold when it loaded (the RSS it added), not its ledger estimate:
        an estimate above the real cost would pass for the server's footprint shrinking, and the least
        reading would then hold room that is not there for half a minute after the model went. Taken
        only while no engine loads or stops (each share is then known), and reported as the least
        reading of the last half minute, so that transient allocations of requests in flight do not
        pass for the server's own.
        """
        if self.effects.busy or not self._libraries_imported:
            return
        self._last_overhead_probe = now = time.time()
        held = {
            name: self._in_process_share(name)
            for name, engine in self.effects.engines.items()
            if engine.in_process
        }
        reading = await asyncio.to_thread(self.effects.overhead_ram, held)
        gpu_held = {
            name: self.scheduler.records[name].held().gpu_bytes
            for name, engine in self.effects.engines.items()
            if engine.in_process
        }
        gpu_reading = await asyncio.to_thread(self.effects.overhead_gpu, gpu_held)
        if self.effects.busy:
            return
        self._overhead_readings.append((now, reading, gpu_reading))
        while self._overhead_readings[0][0] < now - _OVERHEAD_WINDOW_S:
            self._overhead_readings.popleft()
        gpu_readings = [r for _, _, r in self._overhead_readings if r is not None]
        self.scheduler.measured_overhead(
            min(r for _, r, _ in self._overhead_readings),
            now,
            gpu_bytes=min(gpu_readings) if gpu_readings else None,
        )

    async def libraries_imported(self) -> None:
        """The engine libraries are in (or failed to import): the server's own footprint is measured
        from now on, and the first measurement lets bring-ups start."""
        self._libraries_imported = True
        await self.measure_overhead()

    def _in_process_share(self, name: str) -> int:
        record = self.scheduler.records[name]
        return record.measured.ram_bytes if record.measured is not None else record.held().ram_bytes

    def _settled(self) -> None:
        """Every bring-up and take-down has ended: measure again (after every load, wake, park and
        unload, as the budget's truth is what is measured)."""
        self._spawn(self.measure_overhead())

    async def shutdown(self) -> None:
        """Stop every engine; used when the server exits."""
        self.scheduler.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.effects.stop_all()
        if self._reaper is not None:
            # An engine process a cancelled load had begun goes with the server too.
            self._reaper.watch(stray_engine_processes())
            self._reaper.stop()

    # --- readiness ----------------------------------------------------------------------------------
    def stalls(self) -> list[Stall]:
        """Loaded engines with work pending and no progress for LLM_READY_STALL_S (looked at every
        tick, so the time counts whether or not anyone asks)."""
        readings = {
            name: engine.progress()
            for name, engine in self.effects.engines.items()
            if self.scheduler.records[name].state is ModelState.LOADED
        }
        return self._stalls.look(readings, time.monotonic())

    def readiness(self) -> Readiness:
        """What /health/ready answers (shutting down aside, which the serving layer knows)."""
        stalls = tuple(self.stalls())
        if self._start_up is not None:
            return Readiness("starting", f"start-up: {self._start_up}", stalls)
        if self._first_loads:
            waiting = ", ".join(self._describe_load(name) for name in sorted(self._first_loads))
            return Readiness("starting", f"loading pinned models: {waiting}", stalls)
        if stalls:
            return Readiness("stalled", "; ".join(stall.reason for stall in stalls), stalls)
        return Readiness("ready", None)

    def _describe_load(self, name: str) -> str:
        loading = self._loading(self.scheduler.records[name])
        if loading is None:
            return name
        return f"{name} ({loading.stage}, {loading.elapsed_s:.0f} s)"

    def _loading(self, record: ModelRecord) -> Loading | None:
        """The model's load under way, or its wait to begin one; None unless it is loading."""
        if record.state is not ModelState.LOADING:
            return None
        under_way = self.effects.loading.get(record.name)
        if under_way is not None:
            return under_way.view()
        since = self.effects.waiting_since(record.name)
        stage = (
            "waiting for memory"
            if self.scheduler.overhead_measured
            else "waiting for the engine libraries to be imported"
        )
        elapsed = time.monotonic() - since if since is not None else 0.0
        return Loading(stage, elapsed, expected_seconds(record, wake=record.phase is Phase.PARKED))

    # --- views ----------------------------------------------------------------------------------------
    def ledger(self) -> LedgerView:
        return LedgerView(
            self.budget,
            tuple(self.scheduler.holdings()),
            self._probe(),
            self.scheduler.overhead_ram_bytes,
        )

    def status(self, name: str) -> ModelStatus:
        spec = self.registry.get(name)
        record = self.scheduler.records[spec.name]
        engine = self.effects.engines.get(spec.name)
        live = engine is not None and record.state is ModelState.LOADED
        failure = record.failure
        return ModelStatus(
            spec=spec,
            state=record.state,
            plan=record.plan,
            backend=engine.backend if engine else None,
            in_flight=record.in_flight,
            last_used=record.last_used or None,
            error=failure.cause if failure else None,
            retry_at=failure.retry_at if failure and failure.retry_at > time.time() else None,
            measured_bytes=_measured_bytes(record),
            load_seconds=record.load_seconds,
            wake_seconds=record.wake_seconds,
            park_seconds=record.park_seconds,
            max_model_len=engine.max_model_len if live and engine else None,
            running_requests=engine.running_requests if live and engine else None,
            pinned=record.pinned,
            idle_ttl_s=self.scheduler.ttl(record),
            loading=self._loading(record),
        )

    def statuses(self) -> list[ModelStatus]:
        return [self.status(spec.name) for spec in self.registry.models]

    def estimate(self, name: str) -> ModelNeed:
        """The model's need on each device (computed once per model; shown before it ever loads)."""
        spec = self.registry.get(name)
        need = self._needs.get(spec.name)
        if need is None:
            need = self._needs[spec.name] = self._estimator(spec)
        return need

    # --- the planner the scheduler asks ----------------------------------------------------------------
    def _plan(self, name: str, room: Room) -> PlacementPlan:
        spec = self.registry.get(name)
        threshold = self._settings.gpu_memory_offload_threshold_gb
        rules = PlacementRules(
            enable_offload=self._settings.enable_gpu_memory_offload,
            offload_threshold_bytes=int(threshold * 1024**3) if threshold is not None else None,
            placement=spec.options.placement,
        )
        return plan_placement(self.estimate(name), room, rules)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _measured_bytes(record: ModelRecord) -> int | None:
    """What the card shows as measured: the device the model computes on (the GPU where it has one)."""
    measured = record.measured
    if measured is None or record.plan is None:
        return None
    return measured.gpu_bytes if record.plan.on_gpu else measured.ram_bytes


__all__ = ["LedgerView", "ModelManager", "ModelStatus", "Readiness"]
