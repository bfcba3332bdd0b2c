"""What a model will need once loaded, before it is: weights, KV cache, activations, runtime.

The weights come from the checkpoint's headers (:mod:`local_llm.placement.checkpoint`) at the dtype
the engine will run them in; a chat model adds the KV cache it is configured with; an encoder adds
the activations of its largest forward pass; every engine adds the runtime it brings (vLLM's engine
process and CUDA context, the interpreter's buffers). The constants below were calibrated against
what loading really took (``measured_bytes`` in /v1/models; docs/benchmarks.md has the runs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from local_llm.config import Settings
from local_llm.placement.checkpoint import CheckpointSummary, read_checkpoint, runtime_weight_bytes
from local_llm.registry.classify import UnservableFolder
from local_llm.registry.pooling import PoolingRunner, pooling_context, vllm_pooling
from local_llm.registry.spec import ModelKind, ModelSpec, WeightFormat

logger = logging.getLogger(__name__)

MIB = 1024**2
GIB = 1024**3

# Runtime an engine brings beside its weights and caches.
# vLLM on a GPU: its engine process's CUDA context and cuBLAS workspaces, and what grows with the model:
# CUDA graphs, compiled kernels' buffers, the activations its warm-up passes leave in the allocator.
# Calibrated on an H200 (vLLM 0.26, compiled): a Qwen2.5-7B-AWQ (5.38 GiB of weights) held 2.4 GiB
# beside weights and KV cache (graphs 0.3-0.5 GiB; 2.2-2.35 GiB stayed in use asleep, whatever
# max_num_seqs), a Qwen3-0.6B-bodied pooling engine (0.83 GiB) 1.1 GiB, tiny models about 1 GiB.
_VLLM_GPU_BASE_RUNTIME_BYTES = 1024 * MIB
_VLLM_GPU_RUNTIME_PER_WEIGHT_BYTE = 0.25
# ... of which CUDA graphs (compiled mode): vLLM logged 0.31-0.51 GiB of graphs for the 7B-AWQ above.
# Eager mode (LLM_VLLM_ENFORCE_EAGER, or a plan that turns graphs off to fit a small card) has none.
_VLLM_GPU_GRAPHS_PER_WEIGHT_BYTE = 0.08
# vLLM on a CPU: the engine-core process (interpreter, torch and vLLM with their libraries, activation
# buffers): its RSS was 1.5 GiB for a 256 MiB KV cache and a tiny model (tests/test_swaps.py).
_VLLM_CPU_RUNTIME_BYTES = 1280 * MIB
# ... and compiled (not eager), inductor's graphs and buffers on top: SmolLM2's engine RSS was 3.0 GiB
# where the eager one's was 2.4 GiB (fresh clone, 2026-11-25).
_VLLM_CPU_COMPILED_EXTRA_BYTES = 640 * MIB
# In-process torch engines: interpreter-side buffers, tokenizer; on a GPU, allocator slack.
_IN_PROCESS_RUNTIME_BYTES = 128 * MIB
# Activation bytes per token and hidden unit during an encoder forward (fp32, attention + MLP buffers).
_ACTIVATION_FACTOR = 4 * 8
# The least KV cache a pooling model on vLLM is given (a few blocks of every layer).
_MIN_POOLING_KV_BYTES = 32 * MIB
# Without a readable attention shape, a chat model's KV cache is planned at this size.
_FALLBACK_KV_BYTES = 1 * GIB

_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """A model's memory need on one device, by part (bytes)."""

    weights_bytes: int
    kv_cache_bytes: int = 0
    activation_bytes: int = 0
    runtime_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.runtime_bytes

    def describe(self) -> str:
        """``weights 942 MiB + KV cache 256 MiB + runtime 768 MiB``: what the log and errors show."""
        parts = [
            ("weights", self.weights_bytes),
            ("KV cache", self.kv_cache_bytes),
            ("activations", self.activation_bytes),
            ("runtime", self.runtime_bytes),
        ]
        return " + ".join(f"{label} {mib(value)}" for label, value in parts if value)


def mib(value: int) -> str:
    return f"{value / MIB:,.0f} MiB"


@dataclass(frozen=True)
class ServingFacts:
    """What an engine is started with, decided once from the checkpoint and the settings; the estimate
    is made for exactly these, and the plan hands them to the engine."""

    # The context the model is served with (prompt plus completion); None: the engine's own reading.
    context_tokens: int | None = None
    # The dtype the engine runs the weights in: "auto" (the engine's choice) or a dtype name.
    dtype: str = "auto"
    # vLLM without CUDA graphs / torch.compile: LLM_VLLM_ENFORCE_EAGER, or a plan that needed their
    # memory to keep the model whole on a small GPU (``ContextFit.graphs_bytes``).
    enforce_eager: bool = False
    # config.json's model_type (a GGUF's architecture).
    model_type: str | None = None


@dataclass(frozen=True)
class ContextFit:
    """How far a vLLM chat model's context may shrink to fit a GPU whole: its KV cache is sized by
    the context, so a card too small for the full context still takes every weight at a shorter one
    (what a user of an 8 GB card sets by hand with vLLM's ``--max-model-len``), which beats streaming
    weights over PCIe for every token. Only offered while the operator has set neither the context
    (LLM_VLLM_MAX_MODEL_LEN) nor the KV cache (LLM_VLLM_KV_CACHE_GB)."""

    # KV cache bytes one token of context costs: per-token bytes x the sequences the cache holds.
    kv_bytes_per_context_token: int
    full_tokens: int
    # LLM_VLLM_MIN_MODEL_LEN (never more than the full context): shorter than this, offload instead.
    min_tokens: int
    # What CUDA graphs take of the GPU runtime (0 when the engine already runs eager): a model that
    # does not fit whole even at the least context may still fit without them. Eager decoding costs a
    # little per token (kernel launches); offloaded weights cross PCIe every token and cannot sleep.
    graphs_bytes: int = 0


@dataclass(frozen=True)
class ModelNeed:
    """A model's need on each device, and whether it can be split between them: the planner's input."""

    name: str
    on_gpu: MemoryEstimate
    on_cpu: MemoryEstimate
    # Whether the engine can keep part of the weights in CPU RAM while computing on the GPU.
    can_offload: bool
    # What the checkpoint is (quantization, how it was read), for the reason the plan logs.
    checkpoint: str
    # What the engine is started with on each device.
    facts_on_gpu: ServingFacts = field(default_factory=ServingFacts)
    facts_on_cpu: ServingFacts = field(default_factory=ServingFacts)
    # On a GPU, how the context may shrink to fit (None: it may not).
    context_fit: ContextFit | None = None


def estimate_need(
    spec: ModelSpec, settings: Settings, engine: str, *, cpu_engine: str | None = None
) -> ModelNeed:
    """The model's need on the GPU and on the CPU for the engine that will serve it there.

    ``engine`` names it (``vllm``, ``transformers``, ``in-process``), on the CPU too unless
    ``cpu_engine`` names another: a pooling model runs on vLLM on a GPU and in this process on a CPU.
    """
    try:
        checkpoint = read_checkpoint(spec)
    except (UnservableFolder, OSError, ValueError) as exc:
        logger.warning(
            "%s: weights not readable from headers (%s); planning with the file size", spec.name, exc
        )
        checkpoint = _from_file_size(spec)
    described = checkpoint.source + (f", {checkpoint.quantization}" if checkpoint.quantization else "")
    if spec.kind is ModelKind.CHAT:
        gpu_facts, cpu_facts = (
            chat_serving_facts(spec, checkpoint, settings, engine, on_gpu=on_gpu) for on_gpu in (True, False)
        )
        return ModelNeed(
            spec.name,
            on_gpu=_chat_estimate(spec, checkpoint, settings, engine, on_gpu=True),
            on_cpu=_chat_estimate(spec, checkpoint, settings, engine, on_gpu=False),
            can_offload=True,
            checkpoint=described,
            facts_on_gpu=gpu_facts,
            facts_on_cpu=cpu_facts,
            context_fit=_context_fit(spec, checkpoint, settings, engine) if engine == "vllm" else None,
        )
    on_device = {
        on_gpu: _pooling_estimate(spec, checkpoint, settings, on_gpu=on_gpu)
        if (engine if on_gpu else cpu_engine or engine) == "vllm"
        else (_encoder_estimate(checkpoint, settings), ServingFacts(model_type=checkpoint.model_type))
        for on_gpu in (True, False)
    }
    # sentence-transformers places a whole model on one device; only the transformers LLM reranker
    # loads through a device map that can split it (vLLM's pooling runner is not asked to).
    can_offload = engine != "vllm" and spec.rerank is not None and spec.rerank.scorer.value == "llm-yes-no"
    return ModelNeed(
        spec.name,
        on_gpu=on_device[True][0],
        on_cpu=on_device[False][0],
        can_offload=can_offload,
        checkpoint=described,
        facts_on_gpu=on_device[True][1],
        facts_on_cpu=on_device[False][1],
    )


def _pooling_estimate(
    spec: ModelSpec, checkpoint: CheckpointSummary, settings: Settings, *, on_gpu: bool
) -> tuple[MemoryEstimate, ServingFacts]:
    """An embedder or reranker on vLLM's pooling runner: a chat engine's runtime, a KV cache of one
    pass (:func:`pooling_pass_tokens`: its passes are of prompts only, so nothing more stays cached)."""
    runner = vllm_pooling(spec)
    own_limit = runner if isinstance(runner, PoolingRunner) else PoolingRunner("embed")
    context = pooling_context(own_limit, checkpoint.max_position_embeddings, settings.vllm_max_model_len)
    dtype, dtype_bytes = served_dtype(spec, checkpoint, settings, "vllm", on_gpu=on_gpu)
    per_token = checkpoint.kv_elements_per_token
    pass_tokens = pooling_pass_tokens(context, settings)
    kv = per_token * dtype_bytes * pass_tokens if per_token is not None else _FALLBACK_KV_BYTES
    # vLLM counts whole blocks and pads small heads: a tiny model's exact figure is too few for it.
    kv = max(kv, _MIN_POOLING_KV_BYTES)
    weights = runtime_weight_bytes(checkpoint, dtype_bytes)
    runtime = (
        vllm_gpu_runtime(weights, compiled=not settings.vllm_enforce_eager)
        if on_gpu
        else _VLLM_CPU_RUNTIME_BYTES
    )
    if not on_gpu and not settings.vllm_enforce_eager:
        runtime += _VLLM_CPU_COMPILED_EXTRA_BYTES
    estimate = MemoryEstimate(weights_bytes=weights, kv_cache_bytes=kv, runtime_bytes=runtime)
    facts = ServingFacts(
        context_tokens=context,
        dtype=dtype,
        model_type=checkpoint.model_type,
        enforce_eager=settings.vllm_enforce_eager,
    )
    return estimate, facts


def pooling_pass_tokens(context: int | None, settings: Settings) -> int:
    """Tokens one pass of vLLM's pooling runner takes (its max_num_batched_tokens, which its KV cache
    must hold): LLM_EMBEDDING_BATCH_TOKENS, as the in-process engines' passes, and never less than one
    input of the served context, which vLLM refuses."""
    return max(context or 0, settings.embedding_batch_tokens)


def chat_serving_facts(
    spec: ModelSpec, checkpoint: CheckpointSummary, settings: Settings, engine: str, *, on_gpu: bool
) -> ServingFacts:
    """The context, dtype and family a chat engine is started with (and estimated for)."""
    dtype, _ = served_dtype(spec, checkpoint, settings, engine, on_gpu=on_gpu)
    return ServingFacts(
        context_tokens=context_length(checkpoint, settings),
        dtype=dtype,
        model_type=checkpoint.model_type,
        enforce_eager=settings.vllm_enforce_eager,
    )


def vllm_gpu_runtime(weights_bytes: int, *, compiled: bool) -> int:
    """vLLM's GPU memory beside weights and KV cache: a base, and a share of the weights for what
    grows with the model (see ``_VLLM_GPU_RUNTIME_PER_WEIGHT_BYTE``), less the graphs' when eager."""
    with_graphs = _VLLM_GPU_BASE_RUNTIME_BYTES + int(weights_bytes * _VLLM_GPU_RUNTIME_PER_WEIGHT_BYTE)
    return with_graphs - (0 if compiled else vllm_gpu_graphs(weights_bytes))


def vllm_gpu_graphs(weights_bytes: int) -> int:
    """The part of :func:`vllm_gpu_runtime` that CUDA graphs take (what running eager saves)."""
    return int(weights_bytes * _VLLM_GPU_GRAPHS_PER_WEIGHT_BYTE)


def _context_fit(
    spec: ModelSpec, checkpoint: CheckpointSummary, settings: Settings, engine: str
) -> ContextFit | None:
    if settings.vllm_max_model_len is not None or settings.vllm_kv_cache_gb is not None:
        return None
    full = context_length(checkpoint, settings)
    per_token = checkpoint.kv_elements_per_token
    if full is None or per_token is None:
        return None
    _, dtype_bytes = served_dtype(spec, checkpoint, settings, engine, on_gpu=True)
    compiled = not settings.vllm_enforce_eager
    weights = runtime_weight_bytes(checkpoint, dtype_bytes)
    return ContextFit(
        kv_bytes_per_context_token=per_token * dtype_bytes * settings.vllm_kv_cache_sequences,
        full_tokens=full,
        min_tokens=min(settings.vllm_min_model_len, full),
        graphs_bytes=vllm_gpu_graphs(weights) if compiled else 0,
    )


def _chat_estimate(
    spec: ModelSpec, checkpoint: CheckpointSummary, settings: Settings, engine: str, *, on_gpu: bool
) -> MemoryEstimate:
    _, dtype_bytes = served_dtype(spec, checkpoint, settings, engine, on_gpu=on_gpu)
    weights = runtime_weight_bytes(checkpoint, dtype_bytes)
    kv = kv_cache_bytes(checkpoint, settings, dtype_bytes)
    if engine == "vllm":
        runtime = (
            vllm_gpu_runtime(weights, compiled=not settings.vllm_enforce_eager)
            if on_gpu
            else _VLLM_CPU_RUNTIME_BYTES
        )
        if not on_gpu and not settings.vllm_enforce_eager:
            runtime += _VLLM_CPU_COMPILED_EXTRA_BYTES
    else:
        # The transformers engine runs one generation at a time: one full-context sequence of cache.
        kv = kv // max(settings.vllm_kv_cache_sequences, 1) if settings.vllm_kv_cache_gb is None else kv
        runtime = _IN_PROCESS_RUNTIME_BYTES
    return MemoryEstimate(weights_bytes=weights, kv_cache_bytes=kv, runtime_bytes=runtime)


def served_dtype(
    spec: ModelSpec, checkpoint: CheckpointSummary, settings: Settings, engine: str, *, on_gpu: bool
) -> tuple[str, int]:
    """The dtype a chat engine runs the weights in (what it is told) and its bytes per float weight
    (what the estimate counts): the one place this is decided.

    LLM_VLLM_DTYPE names it for vLLM. Its ``auto`` runs a float32 checkpoint in 16 bits on a GPU, which
    halves the memory; on a CPU that saves nothing that matters and the rounding can change a small
    model's answers (the imported SmolLM2 said "L'Étoile" instead of "Paris" in bfloat16), so there the
    checkpoint's own dtype is kept. The transformers engine loads the checkpoint's own everywhere.
    GGUF files are imported as float32.
    """
    stored = 4 if spec.weight_format is WeightFormat.GGUF else _stored_float_bytes(checkpoint)
    if engine != "vllm":
        return "auto", stored
    setting = settings.vllm_dtype
    if setting in _DTYPE_BYTES:
        return setting, _DTYPE_BYTES[setting]
    if on_gpu:
        return "auto", min(stored, 2)
    return ("float32" if stored == 4 else "auto"), stored


def _stored_float_bytes(checkpoint: CheckpointSummary) -> int:
    if checkpoint.float_elements <= 0:
        return 2
    return max(1, round(checkpoint.float_bytes / checkpoint.float_elements))


def kv_cache_bytes(checkpoint: CheckpointSummary, settings: Settings, dtype_bytes: int | None) -> int:
    """LLM_VLLM_KV_CACHE_GB, else room for LLM_VLLM_KV_CACHE_SEQUENCES sequences of the full context."""
    if settings.vllm_kv_cache_gb is not None:
        return int(settings.vllm_kv_cache_gb * GIB)
    per_token = checkpoint.kv_elements_per_token
    context = context_length(checkpoint, settings)
    if per_token is None or context is None:
        return _FALLBACK_KV_BYTES
    return per_token * (dtype_bytes or 2) * context * settings.vllm_kv_cache_sequences


def context_length(checkpoint: CheckpointSummary, settings: Settings) -> int | None:
    """The context a chat model is served with: its own, capped by LLM_VLLM_MAX_MODEL_LEN."""
    own, cap = checkpoint.max_position_embeddings, settings.vllm_max_model_len
    if own is None:
        return cap
    return min(own, cap) if cap is not None else own


def _encoder_estimate(checkpoint: CheckpointSummary, settings: Settings) -> MemoryEstimate:
    hidden = checkpoint.hidden_size or 1024
    return MemoryEstimate(
        weights_bytes=runtime_weight_bytes(checkpoint, None),
        activation_bytes=settings.embedding_batch_tokens * hidden * _ACTIVATION_FACTOR,
        runtime_bytes=_IN_PROCESS_RUNTIME_BYTES,
    )


def _from_file_size(spec: ModelSpec) -> CheckpointSummary:
    return CheckpointSummary(
        float_elements=spec.size_bytes // 4,
        float_bytes=spec.size_bytes,
        fixed_bytes=0,
        quantization=spec.quantization,
        kv_elements_per_token=None,
        hidden_size=None,
        max_position_embeddings=None,
        source="file size",
    )
