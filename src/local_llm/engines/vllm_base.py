"""What every engine on vLLM shares: an ``AsyncLLM`` whose engine-core process holds the model.

A chat model (``engines/chat/vllm_engine.py``) and a pooling model (``engines/pooling_vllm.py``: embedders
and LLM rerankers on vLLM's pooling runner) differ only in the runner they ask for and in what a request
becomes; starting one engine at a time, reading the start's stages from stderr, the memory its processes
hold, seeing the engine process die, sleep mode, and a shutdown that gives the memory back are the same,
so they live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from local_llm.backends import IMPORT_LOCK, import_backend
from local_llm.config import Settings
from local_llm.engines.base import Engine, Progress
from local_llm.engines.stderr_tail import STDERR_TAIL, root_cause
from local_llm.errors import EngineError, EngineFailedError, ModelLoadError
from local_llm.placement import Footprint, Placement, PlacementPlan, probe_devices
from local_llm.placement.probe import our_process_ids, process_gpu_bytes, processes_rss
from local_llm.registry.spec import ModelSpec

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

# GPU memory a sleeping (parked) engine process keeps: its CUDA context and allocator pools.
VLLM_PARKED_GPU_BYTES = 768 * 1024**2
# vLLM engines start one at a time: they share the GPU's free memory (each checks it at start), and a
# failed start's cause is read from the lines written to stderr while it ran.
_STARTING = asyncio.Lock()
# The engine whose vLLM metrics are registered in prometheus_client's global registry (each engine's
# start replaces the previous one's there): the one that takes them out again when it stops.
_METRICS_OWNER: list[VllmEngine] = []
T = TypeVar("T")

# What a vLLM start is doing, told by the lines its processes write (vLLM 0.32's, as seen on a CPU and a
# GPU), in the order they come: a line moves the load on to the stage of the last pattern it holds, never
# back. At the default log level vLLM writes only its progress bars (LLM_LOG_LEVEL=debug shows its INFO
# lines too, and with them the finer stages).
_AFTER_WEIGHTS = "profiling the model and allocating the KV cache"
_START_STAGES: tuple[tuple[str, str], ...] = (
    ("Initializing a V1 LLM engine", "starting vLLM's engine core"),
    ("Starting to load model", "loading the weights"),
    ("Loading safetensors checkpoint shards", "loading the weights"),
    ("Loading weights took", _AFTER_WEIGHTS),
    ("shards: 100% Completed", _AFTER_WEIGHTS),
    ("Warming up model for the compilation", "compiling and warming up the model"),
    ("torch.compile takes", "compiling the model (torch.compile)"),
    ("Capturing CUDA graphs", "capturing CUDA graphs"),
    ("GiB for KV cache", "allocating the KV cache"),
    ("KV cache size", "allocating the KV cache"),
    ("init engine (profile, create kv cache, warmup model) took", "finishing the engine's start"),
)


def start_stage(line: str, reached: int) -> int:
    """The index in ``_START_STAGES`` that ``line`` moves a start on to from ``reached`` (or ``reached``)."""
    matched = [index for index, (text, _) in enumerate(_START_STAGES) if text in line]
    return max([reached, *matched])


class VllmEngine(Engine):
    """A model served by vLLM's engine-core process; subclasses say which runner and build their
    serving on :attr:`engine` once it has started (:meth:`_serve`)."""

    backend = "vllm"
    in_process = False

    def __init__(self, spec: ModelSpec, plan: PlacementPlan, settings: Settings) -> None:
        super().__init__(spec, plan)
        self._settings = settings
        self._engine: AsyncLLM | None = None
        # vLLM's engine-core process(es), whose memory is this model's.
        self._engine_processes: frozenset[int] = frozenset()
        # The file descriptors (process sentinels) the event loop watches for the engine's exit.
        self._watched: list[int] = []
        # Set when the engine's death is seen: what a request that reached vLLM after it waits on.
        self._dead: asyncio.Event = asyncio.Event()
        # Tokens the engine core has read and generated, and requests it finished: its progress.
        self._work_done = 0

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        started = time.perf_counter()
        folder = await self._model_folder()
        if _STARTING.locked():
            self.stage("waiting for another vLLM engine to finish starting")
        async with _STARTING:
            logger.info("starting vLLM for %s (%s)", self.spec.name, self._describe_args(folder))
            self.stage("starting vLLM's engine process")
            children_before = our_process_ids()
            mark = STDERR_TAIL.mark()
            unfollow = STDERR_TAIL.follow(self._stage_follower())
            try:
                self._engine = await asyncio.to_thread(self._create_engine, folder)
            except Exception as exc:
                cause = root_cause(STDERR_TAIL.since(mark)) if STDERR_TAIL.installed else None
                raise ModelLoadError(cause or f"{type(exc).__name__}: {exc}") from exc
            finally:
                unfollow()
                self._engine_processes = frozenset(our_process_ids() - children_before)
        self._serve(folder)
        self._watch_processes()
        logger.info(
            "%s ready on vLLM in %.1fs: %s",
            self.spec.name,
            time.perf_counter() - started,
            self._describe(),
        )

    # --- what a subclass provides ------------------------------------------------------------------
    async def _model_folder(self) -> Path:
        """The folder vLLM loads (a chat model's GGUF file is imported into one first)."""
        return self.spec.path

    def _runner_args(self) -> dict[str, Any]:
        """Engine arguments of this kind of model (the runner, its overrides, its batching)."""
        return {}

    def _serve(self, folder: Path) -> None:
        """Build what answers requests on the started :attr:`engine` (blocking, quick)."""

    def _describe(self) -> str:
        """What the ready line in the log says about the started model."""
        return f"context {self.max_model_len} tokens"

    def _stage_follower(self) -> Callable[[str], None]:
        """What reads the start's stages from stderr's lines (on the tail's thread: matching only)."""
        reached = -1

        def follow(line: str) -> None:
            nonlocal reached
            moved = start_stage(line, reached)
            if moved != reached:
                reached = moved
                self.stage(_START_STAGES[moved][1])

        return follow

    def progress(self) -> Progress | None:
        """Tokens the engine core has read and generated, and requests vLLM has not finished."""
        if self._engine is None:
            return None
        return Progress(self._work_done, self.running_requests)

    def _engine_args(self, folder: Path) -> dict[str, Any]:
        settings, on_gpu = self._settings, self.plan.placement is not Placement.CPU
        args: dict[str, Any] = {
            "model": str(folder),
            "served_model_name": [self.spec.name],
            "dtype": self.plan.facts.dtype,
            "max_model_len": self.plan.facts.context_tokens,
            "enforce_eager": self.plan.facts.enforce_eager,
            "trust_remote_code": self.spec.options.trust_remote_code,
            "tensor_parallel_size": settings.vllm_tensor_parallel_size,
            # On, as in `vllm serve`: vLLM's own Prometheus metrics (served on our /metrics) and the
            # token counts our metrics take from each engine step (_StepTally).
            "disable_log_stats": False,
            **self._runner_args(),
        }
        # The KV cache the plan reserved: exactly that, on either device, so engines sharing a GPU
        # (or RAM) take what the ledger counts and not a fraction of the whole device.
        args["kv_cache_memory_bytes"] = self.plan.estimate.kv_cache_bytes
        if on_gpu:
            # vLLM checks at start that total x utilization is free: ask for what the plan holds.
            total = self._gpu_total_bytes()
            args["gpu_memory_utilization"] = round(min(max(self.plan.gpu_bytes / total, 0.01), 0.95), 4)
            if self.plan.offload_bytes:
                args["cpu_offload_gb"] = round(self.plan.offload_bytes / 1024**3, 3)
            elif settings.enable_parking:
                args["enable_sleep_mode"] = True
        args.update(self.spec.options.engine_options)
        return args

    def _describe_args(self, folder: Path) -> str:
        args = self._engine_args(folder)
        shown = (
            "dtype",
            "max_model_len",
            "enforce_eager",
            "kv_cache_memory_bytes",
            "gpu_memory_utilization",
            "cpu_offload_gb",
            "enable_sleep_mode",
        )
        return ", ".join(f"{key}={args[key]}" for key in shown if key in args)

    @staticmethod
    def _gpu_total_bytes() -> int:
        snapshot = probe_devices().gpu
        if snapshot is None:
            raise EngineError("the plan puts this model on a GPU, but no GPU is visible now")
        return snapshot.total_bytes

    @property
    def process_ids(self) -> frozenset[int]:
        return self._engine_processes

    @staticmethod
    def stray_processes() -> set[int]:
        """vLLM engine-core processes started by this process and still running (vLLM names them
        ``VLLM::EngineCore``; their workers are their own children)."""
        found = set()
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if child.name().startswith("VLLM::"):
                    found.add(child.pid)
        return found

    def footprint(self) -> Footprint:
        """What vLLM's engine processes hold: their RSS, and on a GPU their memory there (NVML)."""
        gpu = process_gpu_bytes(set(self._engine_processes)) if self.plan.on_gpu else None
        ram = processes_rss(set(self._engine_processes))
        self.memory_bytes = gpu if gpu is not None else ram
        return Footprint(gpu_bytes=gpu or 0, ram_bytes=ram)

    def _create_engine(self, folder: Path) -> AsyncLLM:
        with IMPORT_LOCK:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

        engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**self._engine_args(folder)), stat_loggers=[self._step_tally]
        )
        _METRICS_OWNER[:] = [self]
        return engine

    def _step_tally(self, vllm_config: Any, engine_index: int = 0) -> Any:
        """vLLM's stat-logger factory: a logger that hears of every step the engine core hands back
        (on the event loop), and counts its tokens as the engine's progress and for our observer.
        vLLM's own Prometheus logger runs beside it."""
        with IMPORT_LOCK:
            from vllm.v1.metrics.loggers import StatLoggerBase

        engine, observer = self, self.observer

        class StepTally(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                if iteration_stats is None:
                    return
                prompt, generated = iteration_stats.num_prompt_tokens, iteration_stats.num_generation_tokens
                engine._work_done += prompt + generated + len(iteration_stats.finished_requests)
                observer.tokens(prompt, generated)

            def log_engine_initialized(self) -> None:
                pass

        return StepTally(vllm_config, engine_index)

    # --- death: the engine process's exit, seen by the event loop as it happens --------------------
    def _watch_processes(self) -> None:
        """Watch each engine-core process's sentinel (readable once it has exited) on the event loop."""
        loop = asyncio.get_running_loop()
        for process in self._engine_core_processes():
            sentinel = process.sentinel
            loop.add_reader(sentinel, self._process_exited, process)
            self._watched.append(sentinel)

    def _unwatch_processes(self) -> None:
        loop = asyncio.get_running_loop()
        for sentinel in self._watched:
            loop.remove_reader(sentinel)
        self._watched.clear()

    def _process_exited(self, process: Any, looks: int = 0) -> None:
        """The sentinel closes as the process exits, a moment before its exit status can be read."""
        self._unwatch_processes()
        if process.exitcode is None and looks < 10:
            asyncio.get_running_loop().call_later(0.05, self._process_exited, process, looks + 1)
            return
        reason = _exit_reason(process.exitcode)
        self.died(f"vLLM's engine process {process.name} (pid {process.pid}) {reason}")

    def died(self, cause: str) -> None:
        """Also end every request on the engine at once: vLLM's own output handler may already be gone
        (its monitor thread shuts the client down), and its requests would wait forever."""
        first = self.death is None
        super().died(cause)
        self._dead.set()
        if first and self._engine is not None:
            dead_error = import_backend("vllm.v1.engine.exceptions").EngineDeadError
            self._engine.output_processor.propagate_error(dead_error())

    async def _unless_dead(self, step: Awaitable[T]) -> T:
        """``step`` (the call into vLLM, a stream's first event), or EngineFailedError if the engine
        dies first. Why: vLLM ends only the requests it has registered when its engine dies; one that
        was past our check but not yet registered (rendering its prompt) would wait forever."""
        work = asyncio.ensure_future(step)
        death = asyncio.ensure_future(self._dead.wait())
        try:
            await asyncio.wait({work, death}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            death.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
        if work.cancelled():
            raise self._failed()
        return work.result()

    def _dead_cause(self) -> str | None:
        """Why the engine cannot serve: seen by the watch, or by vLLM itself (``errored``)."""
        if self.death is None and self._engine is not None and self._engine.errored:
            self.died(self._exit_of_processes() or "vLLM's engine core stopped answering (EngineDeadError)")
        return self.death

    def _exit_of_processes(self) -> str | None:
        for process in self._engine_core_processes():
            process.join(timeout=0.5)
            if process.exitcode is not None:
                reason = _exit_reason(process.exitcode)
                return f"vLLM's engine process {process.name} (pid {process.pid}) {reason}"
        return None

    def _engine_core_processes(self) -> list[Any]:
        if self._engine is None:
            return []
        manager = getattr(getattr(self._engine.engine_core, "resources", None), "engine_manager", None)
        return list(getattr(manager, "processes", None) or ())

    def _failed(self) -> EngineFailedError:
        return EngineFailedError(
            f"The engine of model '{self.spec.name}' died ({self.death}); the next request loads it again.",
            retry_after_s=1,
        )

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` into vLLM, the engine's death before or during it as EngineFailedError."""
        if self._dead_cause() is not None:
            raise self._failed()
        dead_error = import_backend("vllm.v1.engine.exceptions").EngineDeadError
        try:
            return await self._unless_dead(call())
        except dead_error:
            self._dead_cause()
            raise self._failed() from None

    # --- parking: vLLM sleep mode level 1 (weights to CPU RAM, KV cache dropped) ------------------
    @property
    def parked_footprint(self) -> Footprint | None:
        if self.plan.placement is not Placement.GPU or not self._settings.enable_parking:
            return None
        return Footprint(gpu_bytes=VLLM_PARKED_GPU_BYTES, ram_bytes=self.plan.estimate.weights_bytes)

    async def park(self) -> None:
        await self.engine.sleep(level=1)

    async def wake(self) -> None:
        started = time.perf_counter()
        await self.engine.wake_up()
        woken = time.perf_counter()
        # Level 1 dropped the KV cache's contents; no cached prefix may point into it.
        await self.engine.reset_prefix_cache()
        logger.info(
            "%s: vLLM woke in %.3fs, its prefix cache was reset in %.3fs",
            self.spec.name,
            woken - started,
            time.perf_counter() - woken,
        )

    async def stop(self) -> None:
        self.unwatch()
        self._unwatch_processes()
        engine, self._engine = self._engine, None
        if engine is not None:
            # Ends vLLM's engine-core process: that is what returns the weights' and KV cache's memory.
            await asyncio.to_thread(engine.shutdown)
            _forget_tokenizers()
        if self in _METRICS_OWNER:
            # /metrics would go on showing a gone engine's last figures as if it still ran.
            with IMPORT_LOCK:
                from vllm.v1.metrics.prometheus import unregister_vllm_metrics
            unregister_vllm_metrics()
            _METRICS_OWNER.clear()
        # The engine's front end (its output processor, stat loggers, tokenizer) is held in reference
        # cycles: freed now, not whenever the collector next runs, so the server's RSS comes down with
        # the model (the tests see 60 MiB a swap linger otherwise).
        await asyncio.to_thread(gc.collect)

    # --- properties ----------------------------------------------------------------------------
    @property
    def engine(self) -> AsyncLLM:
        if self._engine is None:
            raise RuntimeError(f"vLLM engine for {self.spec.name} is not started")
        return self._engine

    @property
    def max_model_len(self) -> int:
        return int(self.engine.model_config.max_model_len)

    @property
    def running_requests(self) -> int:
        if self._engine is None:
            return 0
        return int(self._engine.output_processor.get_num_unfinished_requests())


# vLLM's module-level caches that hold a stopped engine's tokenizers (and their pools of copies).
_TOKENIZER_CACHES = (
    ("vllm.tokenizers.registry", "cached_get_tokenizer"),
    ("vllm.tokenizers.registry", "cached_resolve_tokenizer_args"),
    # Keyed by the tokenizer's bound methods, so it keeps the tokenizer alive.
    ("vllm.utils.func_utils", "_supports_kw"),
)


def _forget_tokenizers() -> None:
    """vLLM keeps the tokenizers an engine loaded in module-level ``lru_cache``s (up to 128 entries,
    each with a thread pool of copies) that a new engine never hits: about 45 MB stayed in this process
    for every engine started and stopped (SmolLM2's tokenizer, measured), so a server that swaps models
    grew without end. Live engines hold their own tokenizers; only the caches go."""
    for module, name in _TOKENIZER_CACHES:
        try:
            cache_clear = getattr(import_backend(module), name).cache_clear
        except (ImportError, AttributeError):
            continue  # another vLLM release: nothing of that name to clear
        cache_clear()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        hint = " (the out-of-memory killer, or kill -9)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def vllm_error_types() -> tuple[type[Any], tuple[type[BaseException], ...], type[BaseException]]:
    """vLLM's ErrorResponse, the exceptions it raises for a client's mistakes, and its engine-death
    error, across releases: 0.2x keeps ErrorResponse under entrypoints/openai and makes
    VLLMValidationError a ValueError; 0.3x moved it under entrypoints/serve and added VLLMClientError."""
    exceptions = import_backend("vllm.exceptions")
    dead: type[BaseException] = import_backend("vllm.v1.engine.exceptions").EngineDeadError
    with IMPORT_LOCK:
        try:
            from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        except ImportError:
            from vllm.entrypoints.openai.engine.protocol import ErrorResponse  # type: ignore[no-redef]
    client_error = getattr(exceptions, "VLLMClientError", exceptions.VLLMValidationError)
    return ErrorResponse, (client_error, ValueError, TypeError), dead
