"""Where a model runs: a pure decision over its need and the room the budget can give it.

``room`` is what the model could have once every evictable model made way (the budget less what
pinned models hold), so a model is placed the same way whether or not others are loaded now; the
manager's admission then evicts or waits until that room is free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from local_llm.errors import InsufficientMemoryError
from local_llm.placement.estimate import MemoryEstimate, ModelNeed, ServingFacts, mib
from local_llm.registry.spec import PlacementName

# A context cut to fit the GPU is a multiple of this (vLLM's KV blocks are 16 tokens).
_CONTEXT_STEP_TOKENS = 256
# ... and leaves this share of the room unplanned: a model sized to fill the room exactly goes over it
# by the estimate's error, and a model measured over the whole room can never be woken (on an H200 a
# Qwen2.5-7B-AWQ cut to fill 9,728 MiB measured 9,836: 1.3% over).
_CONTEXT_FIT_HEADROOM = 0.05


class Placement(str, Enum):
    GPU = "gpu"
    GPU_OFFLOAD = "gpu+offload"
    CPU = "cpu"


@dataclass(frozen=True)
class Room:
    """Bytes a model may take on each device; ``gpu_bytes`` None without a GPU."""

    ram_bytes: int
    gpu_bytes: int | None = None


@dataclass(frozen=True)
class PlacementRules:
    """The operator's say: LLM_ENABLE_GPU_MEMORY_OFFLOAD, LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB, models.yaml."""

    enable_offload: bool = True
    offload_threshold_bytes: int | None = None
    placement: PlacementName | None = None


@dataclass(frozen=True)
class PlacementPlan:
    placement: Placement
    # The torch device string the engine computes on.
    device: str
    # The need on that device, by part.
    estimate: MemoryEstimate
    # What the ledger reserves: on the GPU, and in RAM (a CPU model's whole need; offloaded weights).
    gpu_bytes: int
    ram_bytes: int
    reason: str
    # Weight bytes kept in CPU RAM and streamed to the GPU (vLLM cpu_offload_gb).
    offload_bytes: int = 0
    # What the engine is started with there (context, dtype, family): what the estimate was made for.
    facts: ServingFacts = field(default_factory=ServingFacts)

    @property
    def estimated_bytes(self) -> int:
        return self.estimate.total_bytes

    @property
    def on_gpu(self) -> bool:
        return self.placement is not Placement.CPU


def plan_placement(need: ModelNeed, room: Room, rules: PlacementRules) -> PlacementPlan:
    """GPU when it fits; GPU with the excess weights offloaded when only the weights do not; else CPU.

    Raises :class:`InsufficientMemoryError` naming need and budget when nothing fits.
    """
    if room.gpu_bytes is None or rules.placement == "cpu":
        why = "placement: cpu in models.yaml" if rules.placement == "cpu" else "no GPU"
        return _on_cpu(need, room, why)
    gpu = need.on_gpu
    gpu_room = room.gpu_bytes
    threshold = rules.offload_threshold_bytes
    over_threshold = threshold is not None and gpu.weights_bytes > threshold
    fits = gpu.total_bytes <= gpu_room
    if rules.placement == "gpu" or (rules.placement is None and not over_threshold):
        if fits:
            return _on_gpu(need, f"fits the GPU budget of {mib(gpu_room)}")
        shorter = _with_shorter_context(need, gpu_room) or _with_shorter_context(need, gpu_room, eager=True)
        if shorter is not None:
            return shorter
        if rules.placement == "gpu":
            raise _refusal(need, room, "placement: gpu in models.yaml, and the GPU budget is too small")
    if rules.placement == "gpu+offload" and fits and not over_threshold:
        return _on_gpu(need, "placement: gpu+offload in models.yaml, but it fits the GPU budget whole")
    offload_allowed = rules.enable_offload or rules.placement == "gpu+offload"
    if need.can_offload and offload_allowed:
        # Weights over PCIe cost every token; a full context costs only long prompts: offload at the
        # least context allowed when the full one does not fit.
        # At a cut context the model is sized to the room as a cut context is: inside its headroom (at
        # the least context it may fit the whole room, yet not with the estimate's error).
        gpu, facts = _at_least_context(need) if not fits else (gpu, need.facts_on_gpu)
        cut = facts is not need.facts_on_gpu
        target = int(gpu_room * (1 - _CONTEXT_FIT_HEADROOM)) if cut else gpu_room
        above_threshold = gpu.weights_bytes - threshold if threshold is not None and over_threshold else 0
        excess = max(gpu.total_bytes - target, above_threshold, 0)
        if 0 < excess < gpu.weights_bytes and excess <= room.ram_bytes:
            why = (
                f"its weights exceed LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB ({mib(threshold or 0)})"
                if over_threshold and gpu.total_bytes <= gpu_room
                else f"exceeds the GPU budget of {mib(gpu_room)}"
            )
            return PlacementPlan(
                Placement.GPU_OFFLOAD,
                "cuda",
                gpu,
                gpu_bytes=gpu.total_bytes - excess,
                ram_bytes=excess,
                offload_bytes=excess,
                reason=f"needs {gpu.describe()} = {mib(gpu.total_bytes)}"
                + (f" at {facts.context_tokens:,} tokens of context" if cut else "")
                + f"; {why}, so {mib(excess)} of weights stay in CPU RAM",
                facts=facts,
            )
    if rules.placement == "gpu+offload":
        raise _refusal(need, room, "placement: gpu+offload in models.yaml, and it cannot be split to fit")
    if not need.can_offload:
        why = (
            f"{mib(gpu.total_bytes)} exceeds the GPU budget of {mib(gpu_room)} and this engine cannot offload"
        )
    elif not offload_allowed:
        why = f"{mib(gpu.total_bytes)} exceeds the GPU budget of {mib(gpu_room)} (offload disabled)"
    else:
        why = f"even offloaded it does not fit the GPU budget of {mib(gpu_room)}"
    return _on_cpu(need, room, why)


def _with_shorter_context(need: ModelNeed, gpu_room: int, *, eager: bool = False) -> PlacementPlan | None:
    """The whole model on the GPU at the longest context (a multiple of 256 tokens) whose KV cache
    fits beside its weights and runtime in 95% of the room, if that is at least the least allowed.

    ``eager``: without CUDA graphs (their share of the runtime freed), the last rung before weights
    are offloaded: decoding launches each kernel itself, a little slower per token, where offloaded
    weights would cross PCIe for every token and keep the model from sleeping.
    """
    fit = need.context_fit
    if fit is None or (eager and not fit.graphs_bytes):
        return None
    gpu = need.on_gpu
    if eager:
        gpu = replace(gpu, runtime_bytes=gpu.runtime_bytes - fit.graphs_bytes)
    spare = int(gpu_room * (1 - _CONTEXT_FIT_HEADROOM)) - (gpu.total_bytes - gpu.kv_cache_bytes)
    tokens = max(spare, 0) // fit.kv_bytes_per_context_token // _CONTEXT_STEP_TOKENS * _CONTEXT_STEP_TOKENS
    tokens = min(tokens, fit.full_tokens) if eager else tokens
    if tokens < fit.min_tokens or (tokens >= fit.full_tokens and not eager):
        return None
    estimate = replace(gpu, kv_cache_bytes=tokens * fit.kv_bytes_per_context_token)
    cut = (
        f" with its context cut from {fit.full_tokens:,} to {tokens:,} tokens"
        if tokens < fit.full_tokens
        else ""
    )
    graphs = f" and CUDA graphs off (eager: they would take {mib(fit.graphs_bytes)} more)" if eager else ""
    reason = (
        f"needs {estimate.describe()} = {mib(estimate.total_bytes)}{cut}{graphs}; the full context "
        f"would need {mib(need.on_gpu.total_bytes)}, more than the GPU budget of {mib(gpu_room)}, and "
        f"this beats offloading weights (LLM_VLLM_MIN_MODEL_LEN: {fit.min_tokens:,})"
    )
    facts = replace(
        need.facts_on_gpu, context_tokens=tokens, enforce_eager=need.facts_on_gpu.enforce_eager or eager
    )
    return _whole_on_gpu(estimate, facts, reason)


def _at_least_context(need: ModelNeed) -> tuple[MemoryEstimate, ServingFacts]:
    """The GPU estimate and facts at the least context allowed (the full ones without a context fit)."""
    fit = need.context_fit
    if fit is None or fit.min_tokens >= fit.full_tokens:
        return need.on_gpu, need.facts_on_gpu
    estimate = replace(need.on_gpu, kv_cache_bytes=fit.min_tokens * fit.kv_bytes_per_context_token)
    return estimate, replace(need.facts_on_gpu, context_tokens=fit.min_tokens)


def _on_gpu(need: ModelNeed, why: str) -> PlacementPlan:
    estimate = need.on_gpu
    reason = f"needs {estimate.describe()} = {mib(estimate.total_bytes)}; {why}"
    return _whole_on_gpu(estimate, need.facts_on_gpu, reason)


def _whole_on_gpu(estimate: MemoryEstimate, facts: ServingFacts, reason: str) -> PlacementPlan:
    return PlacementPlan(
        Placement.GPU,
        "cuda",
        estimate,
        gpu_bytes=estimate.total_bytes,
        ram_bytes=0,
        reason=reason,
        facts=facts,
    )


def _on_cpu(need: ModelNeed, room: Room, why: str) -> PlacementPlan:
    cpu = need.on_cpu
    if cpu.total_bytes > room.ram_bytes:
        raise _refusal(need, room, why)
    return PlacementPlan(
        Placement.CPU,
        "cpu",
        cpu,
        gpu_bytes=0,
        ram_bytes=cpu.total_bytes,
        reason=f"needs {cpu.describe()} = {mib(cpu.total_bytes)}; {why}; fits the RAM budget of "
        f"{mib(room.ram_bytes)}",
        facts=need.facts_on_cpu,
    )


def _refusal(need: ModelNeed, room: Room, why: str) -> InsufficientMemoryError:
    gpu = f" and {mib(room.gpu_bytes)} of GPU memory" if room.gpu_bytes is not None else ""
    return InsufficientMemoryError(
        f"Model '{need.name}' does not fit: it needs {mib(need.on_cpu.total_bytes)} on the CPU"
        + (f" or {mib(need.on_gpu.total_bytes)} on the GPU" if room.gpu_bytes is not None else "")
        + f" ({why}); the budget left for it is {mib(room.ram_bytes)} of RAM{gpu} "
        "(LLM_AVAILABLE_RAM_GB, LLM_AVAILABLE_GPU_MEMORY_GB; pinned models keep theirs)."
    )
