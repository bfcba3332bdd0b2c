"""The scheduler's effects carried out with real engines: each one an asyncio task that reports back.

Loading, waking, parking and stopping take seconds to minutes. Each runs as a task of its own, so a
slow vLLM shutdown or a long load never holds up a decision about another model; when it ends it
reports to the scheduler (``brought_up``, ``bring_up_failed``, ``parked``, ``stopped``) with what the
device probe measured. Engines that die report through ``engine_died``. The effects own the engines
and the futures of waiting requests; the scheduler owns every decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import psutil

from local_llm.config import Settings
from local_llm.engines.base import UNOBSERVED, Engine, EngineObserver
from local_llm.engines.reaper import ProcessReaper
from local_llm.errors import LocalLLMError, ModelLoadError
from local_llm.manager.progress import LoadProgress, expected_seconds
from local_llm.manager.scheduler import Ticket
from local_llm.placement import Footprint, PlacementPlan
from local_llm.placement.estimate import mib
from local_llm.placement.probe import our_process_ids, process_gpu_bytes, processes_rss
from local_llm.registry import ModelRegistry, ModelSpec, WeightFormat
from local_llm.registry.classify import UnservableFolder, verify_weights

if TYPE_CHECKING:
    from local_llm.manager.scheduler import Scheduler

logger = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec, PlacementPlan, Settings], Engine]
Clock = Callable[[], float]
# Who hears of a model's engine work (the metrics), by the model's name.
ObserverFor = Callable[[str], EngineObserver]

# An engine's stop that takes longer than this is cut short: its processes are killed, so the memory a
# waiting bring-up needs comes back whatever the engine does.
STOP_TIMEOUT_S = 60.0


class EngineEffects:
    """What the scheduler asks, done with engines. Every method returns at once."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        factory: EngineFactory,
        clock: Clock,
        reaper: ProcessReaper | None = None,
        observer_for: ObserverFor | None = None,
    ) -> None:
        self._registry = registry
        self._observer_for = observer_for
        self._settings = settings
        self._factory = factory
        self._clock = clock
        self._reaper = reaper
        self.scheduler: Scheduler | None = None
        self.engines: dict[str, Engine] = {}
        # The one bring-up or take-down under way per model.
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Waiting requests' futures, by ticket number, and when each began to wait (monotonic).
        self._waiting: dict[int, asyncio.Future[Engine]] = {}
        self._asked: dict[int, tuple[str, float]] = {}
        # The bring-ups under way: their stage and clock.
        self.loading: dict[str, LoadProgress] = {}
        self._in_process_loads = 0
        self._load_epoch = 0
        # Called when the last bring-up or take-down under way has ended (the manager measures then).
        self.on_settled: Callable[[], None] | None = None

    @property
    def _events(self) -> Scheduler:
        assert self.scheduler is not None, "bind a scheduler first"
        return self.scheduler

    # --- waiting requests ----------------------------------------------------------------------------
    def expect(self, ticket: Ticket) -> asyncio.Future[Engine]:
        """The future a request awaits until it is granted or refused."""
        future: asyncio.Future[Engine] = asyncio.get_running_loop().create_future()
        self._waiting[ticket.seq] = future
        self._asked[ticket.seq] = (ticket.model, time.monotonic())
        return future

    def forget(self, ticket: Ticket) -> None:
        self._waiting.pop(ticket.seq, None)
        self._asked.pop(ticket.seq, None)

    def grant(self, ticket: Ticket) -> bool:
        self._asked.pop(ticket.seq, None)
        future = self._waiting.pop(ticket.seq, None)
        if future is None or future.done():
            return False
        future.set_result(self.engines[ticket.model])
        return True

    def refuse(self, ticket: Ticket, error: LocalLLMError) -> None:
        self._asked.pop(ticket.seq, None)
        future = self._waiting.pop(ticket.seq, None)
        if future is not None and not future.done():
            future.set_exception(error)

    def waiting_since(self, name: str) -> float | None:
        """When the longest-waiting request for ``name`` began to wait (monotonic), if one waits."""
        return min((since for model, since in self._asked.values() if model == name), default=None)

    # --- bringing up -----------------------------------------------------------------------------------
    def bring_up(self, name: str, plan: PlacementPlan, *, wake: bool, after: frozenset[str]) -> None:
        waits = [task for other in after if (task := self._tasks.get(other)) is not None]
        self._run(name, self._bring_up(name, plan, wake, waits))

    async def _bring_up(
        self, name: str, plan: PlacementPlan, wake: bool, waits: list[asyncio.Task[None]]
    ) -> None:
        """The bring-up, with its progress shown (card and log) while it lasts."""
        progress = LoadProgress(
            name, wake=wake, expected_s=expected_seconds(self._events.records[name], wake=wake)
        )
        self.loading[name] = progress
        heartbeat = asyncio.get_running_loop().create_task(progress.heartbeat())
        try:
            await self._bring_up_now(name, plan, wake, waits, progress)
        finally:
            heartbeat.cancel()
            if self.loading.get(name) is progress:
                del self.loading[name]

    async def _bring_up_now(
        self,
        name: str,
        plan: PlacementPlan,
        wake: bool,
        waits: list[asyncio.Task[None]],
        progress: LoadProgress,
    ) -> None:
        if waits:
            progress.enter(f"waiting for {len(waits)} model(s) to give their memory back")
            await asyncio.gather(*(asyncio.shield(task) for task in waits), return_exceptions=True)
        spec = self._registry.get(name)
        started = time.perf_counter()
        engine = self.engines.get(name) if wake else None
        in_process = False
        try:
            if wake and engine is not None:
                progress.enter("bringing the weights back from RAM")
                await engine.wake()
                logger.info("woke %s from RAM in %.2fs", name, time.perf_counter() - started)
                before = None
            else:
                logger.info(
                    "loading %s (%s) on %s: %s", name, spec.kind.value, plan.placement.value, plan.reason
                )
                if spec.weight_format is not WeightFormat.GGUF:
                    progress.enter("checking the weights' files")
                    await asyncio.to_thread(_verify_weights, spec)
                engine = self._factory(spec, plan, self._settings)
                engine.observer = self._observer_for(name) if self._observer_for else UNOBSERVED
                engine.report_stages(progress.listener(asyncio.get_running_loop()))
                in_process = engine.in_process
                alone = in_process and self._in_process_loads == 0
                self._in_process_loads += in_process
                self._load_epoch += in_process
                epoch = self._load_epoch
                before = _own_rss() if alone else None
                await engine.start()
                # An engine process (vLLM) page-locks its own buffer as it first sleeps: nothing to do here.
                parks_here = engine.in_process and engine.parked_footprint is not None
                if self._settings.enable_parking and parks_here:
                    progress.enter("pinning the RAM it will be parked in")
                    await _prepare_parking(name, engine)
                if self._load_epoch != epoch:
                    before = None  # another in-process load began meanwhile: the RSS growth is shared
        except Exception as exc:
            cause = exc.message if isinstance(exc, LocalLLMError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, LocalLLMError):
                logger.exception("bringing up %s failed", name)
            if engine is not None:
                await self._stop_engine(name, engine)
            self._events.bring_up_failed(name, self._clock(), cause)
            return
        finally:
            self._in_process_loads -= in_process
            if engine is not None:
                engine.report_stages(None)
        progress.enter("measuring the memory it holds")
        measuring = time.perf_counter()
        measured = await asyncio.to_thread(self._measure, engine, before)
        logger.debug("measured %s in %.3fs: %s", name, time.perf_counter() - measuring, measured.describe())
        if not wake:
            self.engines[name] = engine
            engine.watch(self._death_watch(name, engine))
            if self._reaper is not None and engine.process_ids:
                self._reaper.watch(engine.process_ids)
            logger.info(
                "loaded %s in %.1fs: estimated %s, measured %s",
                name,
                time.perf_counter() - started,
                mib(plan.estimated_bytes),
                measured.describe(),
            )
        self._events.brought_up(
            name,
            self._clock(),
            seconds=time.perf_counter() - started,
            measured=measured,
            parking=engine.parked_footprint,
        )

    def _measure(self, engine: Engine, rss_before: int | None) -> Footprint:
        """What the engine holds: its own reading, and for an in-process engine loaded alone, at least
        what the server's RSS grew by while it loaded (tensors are not all a model costs)."""
        measured = engine.footprint()
        if rss_before is not None:
            grew = max(_own_rss() - rss_before, 0)
            measured = Footprint(measured.gpu_bytes, max(measured.ram_bytes, grew))
        return measured

    def _death_watch(self, name: str, engine: Engine) -> Callable[[str], None]:
        def died(cause: str) -> None:
            if self.engines.get(name) is engine:
                self._events.engine_died(name, self._clock(), cause)

        return died

    # --- taking down --------------------------------------------------------------------------------------
    def park(self, name: str) -> None:
        self._run(name, self._park(name, self.engines[name]))

    async def _park(self, name: str, engine: Engine) -> None:
        started = time.perf_counter()
        try:
            await engine.park()
        except Exception:
            logger.exception("parking %s failed; unloading it instead", name)
            await self._stop_engine(name, engine)
            self._events.stopped(name, self._clock())
            return
        measured = await asyncio.to_thread(engine.footprint)
        seconds = time.perf_counter() - started
        logger.info("parked %s in RAM in %.2fs", name, seconds)
        self._events.parked(name, self._clock(), seconds=seconds, measured=measured)

    def stop(self, name: str) -> None:
        engine = self.engines.pop(name, None)
        self._run(name, self._stop(name, engine))

    async def _stop(self, name: str, engine: Engine | None) -> None:
        if engine is not None:
            await self._stop_engine(name, engine)
        self._events.stopped(name, self._clock())

    async def _stop_engine(self, name: str, engine: Engine) -> None:
        engine.unwatch()
        pids = engine.process_ids
        try:
            await asyncio.wait_for(_stop_quietly(engine), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.error("stopping %s took over %.0fs; killing its processes", name, STOP_TIMEOUT_S)
            _kill(pids)
        if self._reaper is not None and pids:
            self._reaper.forget(pids)
        self.engines.pop(name, None)
        await asyncio.to_thread(_give_freed_memory_back)

    # --- tasks ----------------------------------------------------------------------------------------------
    def _run(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, name=f"model-{name}")
        self._tasks[name] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._tasks.get(name) is finished:
                del self._tasks[name]
            if not finished.cancelled() and finished.exception() is not None:
                logger.error("the task for %s failed", name, exc_info=finished.exception())
            if not self._tasks and self.on_settled is not None and not finished.cancelled():
                self.on_settled()

        task.add_done_callback(done)

    @property
    def busy(self) -> bool:
        """Whether a bring-up or take-down is under way."""
        return bool(self._tasks)

    async def settled(self, name: str) -> None:
        """Wait for the bring-up or take-down of ``name`` under way, if any."""
        task = self._tasks.get(name)
        if task is not None:
            await asyncio.shield(task)

    # --- memory ---------------------------------------------------------------------------------------------
    def overhead_ram(self, in_process_shares: Mapping[str, int]) -> int:
        """The server's own RAM beyond its models': the process tree's RSS less each engine's share,
        its processes' RSS or, in this process, ``in_process_shares`` (blocking). Freed heap is handed
        back first, so that what a finished request's activations left to glibc does not count."""
        _give_freed_memory_back()
        tree = our_process_ids()
        # Only engine processes still in the tree: a worker orphaned by its killed engine core is
        # not, and subtracting it would pass for the server shrinking.
        models = sum(
            processes_rss(set(e.process_ids) & tree) for e in self.engines.values() if not e.in_process
        )
        models += sum(in_process_shares.values())
        return max(processes_rss(tree) - models, 0)

    def overhead_gpu(self, in_process_shares: Mapping[str, int]) -> int | None:
        """The server's own GPU memory beyond what the ledger holds for its in-process models
        (``in_process_shares``): its CUDA context, cuBLAS workspaces, and allocator cache past their
        plans; by NVML (blocking). None while it holds none (no in-process model has used the GPU) or
        where NVML cannot tell. Counting each model at its ledger share, activations it was planned
        with are not counted twice, and the ledger and this overhead add up to what the device holds."""
        held = process_gpu_bytes({os.getpid()})
        if not held:
            return None
        return max(held - sum(in_process_shares.values()), 0)

    async def stop_all(self) -> None:
        """Shutdown: cancel bring-ups, stop every engine (in parallel), end the waits."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        engines, self.engines = self.engines, {}
        await asyncio.gather(*(self._stop_engine(n, e) for n, e in engines.items()), return_exceptions=True)
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()


def _verify_weights(spec: ModelSpec) -> None:
    """The weights' headers and sizes, checked before a load spends seconds (vLLM: about 19
    CPU-seconds) to find them damaged; the cause is the safetensors library's own verdict."""
    try:
        verify_weights(spec.path)
    except UnservableFolder as exc:
        raise ModelLoadError(str(exc)) from exc


async def _prepare_parking(name: str, engine: Engine) -> None:
    """Have the first park cost what later ones do; where that fails (RAM cannot be page-locked now),
    the model still serves, and its first park tries again."""
    started = time.perf_counter()
    try:
        await engine.prepare_parking()
    except (RuntimeError, MemoryError) as exc:
        logger.warning("%s: no RAM pinned to park it in yet (%s); its first park will try again", name, exc)
        return
    logger.debug("%s: pinned the RAM it will be parked in, in %.2fs", name, time.perf_counter() - started)


def _own_rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _kill(pids: frozenset[int]) -> None:
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def _give_freed_memory_back() -> None:
    """A stopped engine's memory in this process (an in-process model's tensors; vLLM's front end) is
    freed, but glibc keeps the pages; hand them to the OS so the RSS the budget is checked against
    comes down (a no-op where the C library has no ``malloc_trim``)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


async def _stop_quietly(engine: Engine) -> None:
    try:
        await engine.stop()
    except Exception:
        logger.exception("stopping the engine for %s failed", engine.spec.name)
