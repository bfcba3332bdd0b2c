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
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from local_llm.config import Settings
from local_llm.engines.base import IMPORT_LOCK
from local_llm.engines.chat.base import ChatEngine, ChatResult
from local_llm.engines.chat.parsers import FALLBACK_TOOL_PARSER, reasoning_parser, tool_call_parser
from local_llm.engines.gguf_import import ensure_imported
from local_llm.errors import ContextLengthExceededError, EngineError, InvalidRequestError
from local_llm.placement import Placement, PlacementPlan, probe_devices
from local_llm.placement.probe import our_process_ids, process_gpu_bytes, processes_rss
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest
from local_llm.registry.classify import read_chat_template, read_json
from local_llm.registry.spec import ModelSpec, WeightFormat

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


# vLLM's "auto" backend failed on the CPU build; xgrammar works on both. Compact JSON: with any
# whitespace allowed, small models often pad JSON with blanks until max_tokens runs out.
STRUCTURED_OUTPUTS_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}
# GPU memory a sleeping (parked) engine process keeps: its CUDA context and allocator pools.
VLLM_PARKED_GPU_BYTES = 768 * 1024**2


class VllmChatEngine(ChatEngine):
    backend = "vllm"

    def __init__(self, spec: ModelSpec, plan: PlacementPlan, settings: Settings) -> None:
        super().__init__(spec, plan)
        self._settings = settings
        self._engine: AsyncLLM | None = None
        self._chat: Any = None
        self._completion: Any = None
        self._chat_request_type: Any = None
        self._completion_request_type: Any = None
        self._tool_parser: str | None = None
        # vLLM's engine-core process(es), whose memory is this model's (measured after loading).
        self._engine_processes: set[int] = set()

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        started = time.perf_counter()
        folder = self.spec.path
        if self.spec.weight_format is WeightFormat.GGUF:
            folder = await ensure_imported(self.spec.path, self._settings.data_dir)
        logger.info("starting vLLM for %s (%s)", self.spec.name, self._describe_args(folder))
        children_before = our_process_ids()
        self._engine = await asyncio.to_thread(self._create_engine, folder)
        self._engine_processes = our_process_ids() - children_before
        self._build_serving(folder)
        self.memory_bytes = await asyncio.to_thread(self._measure)
        logger.info(
            "chat model %s ready on vLLM in %.1fs: context %d tokens, tool parser %s",
            self.spec.name,
            time.perf_counter() - started,
            self.max_model_len,
            self._tool_parser,
        )

    def _engine_args(self, folder: Path) -> dict[str, Any]:
        settings, on_gpu = self._settings, self.plan.placement is not Placement.CPU
        args: dict[str, Any] = {
            "model": str(folder),
            "served_model_name": [self.spec.name],
            "dtype": self._dtype(folder),
            "max_model_len": self._max_model_len(folder),
            "enforce_eager": settings.vllm_enforce_eager,
            "trust_remote_code": self.spec.options.trust_remote_code,
            "tensor_parallel_size": settings.vllm_tensor_parallel_size,
            "structured_outputs_config": STRUCTURED_OUTPUTS_CONFIG,
            "disable_log_stats": True,
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

    def _measure(self) -> int | None:
        """What vLLM's engine process really holds: GPU memory (NVML) on a GPU, else its RSS."""
        if self.plan.on_gpu:
            gpu = process_gpu_bytes(self._engine_processes)
            if gpu is not None:
                return gpu
        return processes_rss(self._engine_processes) or None

    def _create_engine(self, folder: Path) -> AsyncLLM:
        with IMPORT_LOCK:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**self._engine_args(folder)))

    def _build_serving(self, folder: Path) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionRequest as VllmChatRequest,
        )
        from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest as VllmCompletionRequest
        from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
        from vllm.entrypoints.openai.models.protocol import BaseModelPath
        from vllm.entrypoints.openai.models.serving import OpenAIServingModels
        from vllm.renderers.online_renderer import OnlineRenderer

        engine = self.engine
        template = read_chat_template(folder)
        model_type = str(read_json(folder / "config.json").get("model_type", ""))
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
    def can_park(self) -> bool:
        return self.plan.placement is Placement.GPU and self._settings.enable_parking

    @property
    def parked_gpu_bytes(self) -> int:
        return VLLM_PARKED_GPU_BYTES

    async def park(self) -> None:
        await self.engine.sleep(level=1)

    async def wake(self) -> None:
        await self.engine.wake_up()
        # Level 1 dropped the KV cache's contents; no cached prefix may point into it.
        await self.engine.reset_prefix_cache()

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        self._chat = self._completion = None
        if engine is not None:
            # Ends vLLM's engine-core process: that is what returns the weights' and KV cache's memory.
            await asyncio.to_thread(engine.shutdown)

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

    def _max_model_len(self, folder: Path) -> int | None:
        """LLM_VLLM_MAX_MODEL_LEN, but never more than the model's own (vLLM refuses that)."""
        cap = self._settings.vllm_max_model_len
        if cap is None:
            return None
        config = read_json(folder / "config.json")
        own = config.get("max_position_embeddings") or config.get("text_config", {}).get(
            "max_position_embeddings"
        )
        return min(cap, int(own)) if isinstance(own, int) else cap

    def _dtype(self, folder: Path) -> str:
        """LLM_VLLM_DTYPE; for ``auto`` on a CPU, the dtype the checkpoint was saved in.

        vLLM's ``auto`` runs float32 checkpoints in bfloat16, which halves a GPU's memory need; on a
        CPU nothing is saved that matters, and the rounding can change a small model's answers (the
        imported SmolLM2 says "L'Étoile" instead of "Paris" in bfloat16).
        """
        if self._settings.vllm_dtype != "auto" or self.plan.placement is not Placement.CPU:
            return self._settings.vllm_dtype
        config = read_json(folder / "config.json")
        saved = config.get("dtype") or config.get("torch_dtype")
        return "float32" if saved == "float32" else "auto"

    # --- requests ------------------------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        vllm_request = self._to_vllm(self._chat_request_type, request)
        return await self._run(self._chat.create_chat_completion(vllm_request))

    async def complete(self, request: CompletionRequest) -> ChatResult:
        vllm_request = self._to_vllm(self._completion_request_type, request)
        return await self._run(self._completion.create_completion(vllm_request))

    def _to_vllm(self, request_type: Any, request: ChatCompletionRequest | CompletionRequest) -> Any:
        """vLLM's request object for ours (already validated; vLLM checks its own extras)."""
        fields = {**request.engine_fields(), "model": self.spec.name}
        try:
            return request_type.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            location = first.get("loc", ())
            param = str(location[0]) if location else None
            message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
            raise InvalidRequestError(message, param=param) from None

    async def _run(self, call: Any) -> ChatResult:
        error_response, client_errors = _vllm_error_types()
        try:
            result = await call
        except client_errors as exc:
            # vLLM's own API server answers these with 400 (bad template input, token ids, lengths, ...).
            logger.info("vLLM refused a request for %s: %s", self.spec.name, exc)
            raise _client_error(str(exc), getattr(exc, "parameter", None)) from None
        if isinstance(result, error_response):
            error = result.error
            if error.code < 500:
                raise _client_error(error.message, error.param)
            raise EngineError(f"vLLM failed on the request: {error.message}")
        if isinstance(result, AsyncIterator):
            return _encoded(result)
        return result.model_dump_json(exclude_none=True).encode()


def _vllm_error_types() -> tuple[type[Any], tuple[type[BaseException], ...]]:
    """vLLM's ErrorResponse and the exceptions it raises for a client's mistakes, across releases:
    0.2x keeps ErrorResponse under entrypoints/openai and makes VLLMValidationError a ValueError;
    0.3x moved it under entrypoints/serve and added VLLMClientError."""
    import vllm.exceptions

    try:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    except ImportError:
        from vllm.entrypoints.openai.engine.protocol import ErrorResponse  # type: ignore[no-redef]
    client_error = getattr(vllm.exceptions, "VLLMClientError", vllm.exceptions.VLLMValidationError)
    return ErrorResponse, (client_error, ValueError, TypeError)


def _client_error(message: str, param: str | None) -> InvalidRequestError:
    if "maximum context length" in message or ("context length" in message and "exceed" in message):
        return ContextLengthExceededError(message, param=param or "messages")
    return InvalidRequestError(message, param=param)


async def _encoded(events: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """vLLM's SSE strings as bytes; closing this closes vLLM's generator, which aborts the request."""
    try:
        async for event in events:
            yield event.encode()
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
