"""Chat on vLLM: an ``AsyncLLM`` per model, answered through vLLM's own OpenAI serving classes.

vLLM's ``OpenAIServingChat`` / ``OpenAIServingCompletion`` render chat templates, turn every
sampling field into ``SamplingParams``, constrain output for ``response_format`` and
``tool_choice`` (xgrammar), parse tool calls with the model family's parser and stream OpenAI
chunks. Reusing them, rather than re-implementing them, keeps every field behaving exactly as in
``vllm serve``; this class adds what a multi-model server needs around them: engine arguments
from Settings and the placement plan, GGUF import, errors in our categories, and shutdown that
ends vLLM's engine process so its memory comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
from pydantic import ValidationError

from local_llm.backends import IMPORT_LOCK, import_backend
from local_llm.config import Settings
from local_llm.engines.base import Progress
from local_llm.engines.chat.base import ChatEngine, ChatResult
from local_llm.engines.chat.parsers import FALLBACK_TOOL_PARSER, reasoning_parser, tool_call_parser
from local_llm.engines.gguf_import import ensure_imported
from local_llm.engines.stderr_tail import STDERR_TAIL, root_cause
from local_llm.errors import (
    EngineError,
    EngineFailedError,
    EngineRequestError,
    InputTooLongError,
    ModelLoadError,
    Subject,
)
from local_llm.placement import Footprint, Placement, PlacementPlan, probe_devices
from local_llm.placement.probe import our_process_ids, process_gpu_bytes, processes_rss
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest
from local_llm.registry.classify import read_chat_template
from local_llm.registry.spec import ModelSpec, WeightFormat

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


# vLLM's "auto" backend failed on the CPU build; xgrammar works on both. Compact JSON: with any
# whitespace allowed, small models often pad JSON with blanks until max_tokens runs out.
STRUCTURED_OUTPUTS_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}
# GPU memory a sleeping (parked) engine process keeps: its CUDA context and allocator pools.
VLLM_PARKED_GPU_BYTES = 768 * 1024**2
# vLLM engines start one at a time: they share the GPU's free memory (each checks it at start), and a
# failed start's cause is read from the lines written to stderr while it ran.
_STARTING = asyncio.Lock()
# The engine whose vLLM metrics are registered in prometheus_client's global registry (each engine's
# start replaces the previous one's there): the one that takes them out again when it stops.
_METRICS_OWNER: list[VllmChatEngine] = []
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


class VllmChatEngine(ChatEngine):
    backend = "vllm"
    in_process = False

    def __init__(self, spec: ModelSpec, plan: PlacementPlan, settings: Settings) -> None:
        super().__init__(spec, plan)
        self._settings = settings
        self._engine: AsyncLLM | None = None
        self._chat: Any = None
        self._completion: Any = None
        self._chat_request_type: Any = None
        self._completion_request_type: Any = None
        self._tool_parser: str | None = None
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
        folder = self.spec.path
        if self.spec.weight_format is WeightFormat.GGUF:
            self.stage("importing the GGUF file")
            folder = await ensure_imported(self.spec.path, self._settings.data_dir)
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
        self.stage("building the chat serving (template, tool and reasoning parsers)")
        self._build_serving(folder)
        self._watch_processes()
        logger.info(
            "chat model %s ready on vLLM in %.1fs: context %d tokens, tool parser %s",
            self.spec.name,
            time.perf_counter() - started,
            self.max_model_len,
            self._tool_parser,
        )

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
            "enforce_eager": settings.vllm_enforce_eager,
            "trust_remote_code": self.spec.options.trust_remote_code,
            "tensor_parallel_size": settings.vllm_tensor_parallel_size,
            "structured_outputs_config": STRUCTURED_OUTPUTS_CONFIG,
            # On, as in `vllm serve`: vLLM's own Prometheus metrics (served on our /metrics) and the
            # token counts our metrics take from each engine step (_StepTally).
            "disable_log_stats": False,
        }
        if settings.vllm_max_num_seqs:
            args["max_num_seqs"] = settings.vllm_max_num_seqs
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

    def _build_serving(self, folder: Path) -> None:
        with IMPORT_LOCK:
            from vllm.entrypoints.openai.chat_completion.protocol import (
                ChatCompletionRequest as VllmChatRequest,
            )
            from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
            from vllm.entrypoints.openai.completion.protocol import (
                CompletionRequest as VllmCompletionRequest,
            )
            from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
            from vllm.entrypoints.openai.models.protocol import BaseModelPath
            from vllm.entrypoints.openai.models.serving import OpenAIServingModels
            from vllm.renderers.online_renderer import OnlineRenderer

        engine = self.engine
        template = read_chat_template(folder)
        model_type = self.plan.facts.model_type or ""
        # vLLM parses tool calls only with a parser enabled, even for "required" and named functions
        # (whose output it constrains to JSON itself); a model whose template shows no tool format
        # gets the generic Hermes parser for those.
        self._tool_parser = tool_call_parser(self.spec, template) or FALLBACK_TOOL_PARSER
        thinking = reasoning_parser(self.spec, template, model_type)
        models = OpenAIServingModels(engine, [BaseModelPath(name=self.spec.name, model_path=str(folder))])
        renderer = OnlineRenderer(
            engine.model_config,
            engine.renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
            enable_auto_tools=True,
            tool_parser=self._tool_parser,
            reasoning_parser=thinking,
        )
        self._chat = OpenAIServingChat(
            engine,
            models,
            "assistant",
            online_renderer=renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
            enable_auto_tools=True,
            tool_parser=self._tool_parser,
            reasoning_parser=thinking or "",
        )
        self._completion = OpenAIServingCompletion(
            engine, models, online_renderer=renderer, request_logger=None
        )
        self._chat_request_type = VllmChatRequest
        self._completion_request_type = VllmCompletionRequest

    # --- parking: vLLM sleep mode level 1 (weights to CPU RAM, KV cache dropped) ------------------
    @property
    def parked_footprint(self) -> Footprint | None:
        if self.plan.placement is not Placement.GPU or not self._settings.enable_parking:
            return None
        return Footprint(gpu_bytes=VLLM_PARKED_GPU_BYTES, ram_bytes=self.plan.estimate.weights_bytes)

    async def park(self) -> None:
        await self.engine.sleep(level=1)

    async def wake(self) -> None:
        await self.engine.wake_up()
        # Level 1 dropped the KV cache's contents; no cached prefix may point into it.
        await self.engine.reset_prefix_cache()

    async def stop(self) -> None:
        self.unwatch()
        self._unwatch_processes()
        engine, self._engine = self._engine, None
        self._chat = self._completion = None
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

    # --- requests ------------------------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        vllm_request = self._to_vllm(self._chat_request_type, request)
        return await self._run(lambda: self._chat.create_chat_completion(vllm_request))

    async def complete(self, request: CompletionRequest) -> ChatResult:
        vllm_request = self._to_vllm(self._completion_request_type, request)
        return await self._run(lambda: self._completion.create_completion(vllm_request))

    def _to_vllm(self, request_type: Any, request: ChatCompletionRequest | CompletionRequest) -> Any:
        """vLLM's request object for ours (already validated; vLLM checks its own extras).

        vLLM's model validators raise its own client errors (VLLMValidationError), which pydantic lets
        through unwrapped: they are the client's mistake as much as a field's type is (a 400, not 500).
        """
        fields = {**request.engine_fields(), "model": self.spec.name}
        _, client_errors, _ = _vllm_error_types()
        try:
            return request_type.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            location = first.get("loc", ())
            option = str(location[0]) if location else None
            message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
            raise EngineRequestError(message, option=option) from None
        except client_errors as exc:
            logger.info("vLLM refused a request for %s: %s", self.spec.name, exc)
            raise _client_error(str(exc), getattr(exc, "parameter", None)) from None

    async def count_prompt_tokens(self, request: ChatCompletionRequest) -> int:
        """Rendered by vLLM's own chat serving (``render_chat_request``: the same template, tools and
        tokenizer as an answer's prompt), as vLLM's Anthropic count_tokens does; nothing is scheduled."""
        vllm_request = self._to_vllm(self._chat_request_type, request)
        _, engine_inputs = await self._call(lambda: self._chat.render_chat_request(vllm_request))
        return sum(len(item["prompt_token_ids"]) for item in engine_inputs if "prompt_token_ids" in item)

    async def _run(self, call: Any) -> ChatResult:
        result = await self._call(call)
        if isinstance(result, AsyncIterator):
            return self._events(result)
        return result.model_dump_json(exclude_none=True).encode()

    async def _call(self, call: Any) -> Any:
        """``call()`` into vLLM's serving code, its refusals and failures as our domain errors."""
        if self._dead_cause() is not None:
            raise self._failed()
        error_response, client_errors, dead_error = _vllm_error_types()
        try:
            result = await self._unless_dead(call())
        except dead_error:
            self._dead_cause()
            raise self._failed() from None
        except client_errors as exc:
            # vLLM's own API server answers these with 400 (bad template input, token ids, lengths, ...).
            logger.info("vLLM refused a request for %s: %s", self.spec.name, exc)
            if isinstance(exc, ValidationError):
                raise _prompt_refused(exc) from None
            raise _client_error(str(exc), getattr(exc, "parameter", None)) from None
        if isinstance(result, error_response):
            error = result.error
            if error.code < 500:
                raise _client_error(error.message, error.param)
            if self._dead_cause() is not None:
                raise self._failed()
            raise EngineError(f"vLLM failed on the request: {error.message}")
        return result

    async def _events(self, events: AsyncIterator[str]) -> AsyncIterator[bytes]:
        """vLLM's SSE strings as bytes, ended by ``data: [DONE]``. vLLM reports a failure mid-stream as
        an error event of its own shape; that becomes a domain error raised here (the serving layer
        writes the event in the API's shape). Closing this closes vLLM's generator, which aborts the
        request."""
        try:
            # The request reaches vLLM's engine on the first step: until then its death may pass it by.
            try:
                event = await self._unless_dead(anext(events))
            except StopAsyncIteration:
                return
            while True:
                if event.startswith('data: {"error"'):
                    raise self._stream_error(event)
                yield event.encode()
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _stream_error(self, event: str) -> Exception:
        if self._dead_cause() is not None:
            return self._failed()
        try:
            error = json.loads(event.removeprefix("data: ")).get("error", {})
        except json.JSONDecodeError:
            error = {}
        message, code = str(error.get("message", event)), error.get("code")
        if isinstance(code, int) and code < 500:
            return _client_error(message, error.get("param"))
        return EngineError(f"vLLM failed on the request: {message}")


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


def _vllm_error_types() -> tuple[type[Any], tuple[type[BaseException], ...], type[BaseException]]:
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


def _prompt_refused(exc: ValidationError) -> EngineRequestError:
    """vLLM validates the messages (or prompt) as it renders them: a part it cannot read (an unknown
    content part type) raises pydantic's error, whose text is a page of every union member tried.
    The client gets its first line, about the prompt."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    message = f"The model cannot read the prompt as sent: {first.get('msg')} at {where or 'its root'}{more}."
    return EngineRequestError(message, subject=Subject.PROMPT)


def _client_error(message: str, option: str | None) -> EngineRequestError:
    if "maximum context length" in message or ("context length" in message and "exceed" in message):
        return InputTooLongError(message, subject=Subject.PROMPT)
    return EngineRequestError(message, option=option)
