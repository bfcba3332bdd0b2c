"""Where a model runs: the estimate, the device budget and the plan.

This is the first, deliberately small version: the estimate is the weight files plus the largest
batch's activations, and the plan puts a model on the GPU when one is there and it fits, else on
the CPU when it fits in RAM, else refuses. The memory-aware lifecycle issue refines the estimate
(safetensors headers, KV cache), adds GPU+CPU offload and a ledger across loaded models; the
shapes here (``estimate_bytes``, :class:`DeviceBudget`, :func:`plan_placement`) are what it grows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from local_llm.errors import InsufficientMemoryError
from local_llm.registry.classify import UnservableFolder, read_json
from local_llm.registry.spec import ModelKind, ModelSpec

logger = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
# Interpreter-side buffers, tokenizer, framework bookkeeping: seen 60-120 MB for small encoders.
_RUNTIME_OVERHEAD_BYTES = 128 * MIB
# Activation bytes per token and hidden unit during an encoder forward (fp32, attention + MLP buffers).
_ACTIVATION_FACTOR = 4 * 8


class Placement(str, Enum):
    GPU = "gpu"
    GPU_OFFLOAD = "gpu+offload"
    CPU = "cpu"


@dataclass(frozen=True)
class DeviceBudget:
    """What the machine can give a new model now, in bytes. ``gpu_free_bytes`` is None without a GPU."""

    ram_available_bytes: int
    gpu_free_bytes: int | None = None


@dataclass(frozen=True)
class PlacementPlan:
    placement: Placement
    # The torch device string the engine loads onto.
    device: str
    estimated_bytes: int
    reason: str


def estimate_bytes(spec: ModelSpec, batch_tokens: int) -> int:
    """Memory a model needs once loaded: its weights, the largest batch's activations and overhead."""
    estimate = spec.size_bytes + _RUNTIME_OVERHEAD_BYTES
    if spec.kind in (ModelKind.EMBEDDING, ModelKind.RERANKER):
        try:
            hidden = int(read_json(spec.path / "config.json").get("hidden_size", 1024))
        except (UnservableFolder, TypeError, ValueError):
            hidden = 1024
        estimate += batch_tokens * hidden * _ACTIVATION_FACTOR
    return estimate


def probe_devices(gpu_cap_bytes: int | None = None) -> DeviceBudget:
    """Measure free RAM (psutil) and free GPU memory (torch), the GPU capped at ``gpu_cap_bytes``."""
    import psutil

    ram = int(psutil.virtual_memory().available)
    gpu: int | None = None
    try:
        import torch

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info()
            gpu = int(free) if gpu_cap_bytes is None else min(int(free), gpu_cap_bytes)
    except Exception as exc:  # a broken CUDA install must not stop CPU serving
        logger.warning("GPU probe failed, planning for CPU only: %s", exc)
    return DeviceBudget(ram_available_bytes=ram, gpu_free_bytes=gpu)


def plan_placement(spec: ModelSpec, estimated: int, budget: DeviceBudget) -> PlacementPlan:
    """Pure: choose GPU when it fits, else CPU when RAM fits, else refuse with need and budget."""
    need = f"needs about {estimated / MIB:,.0f} MiB"
    if budget.gpu_free_bytes is not None:
        if estimated <= budget.gpu_free_bytes:
            reason = f"{need}; fits the free GPU budget of {budget.gpu_free_bytes / MIB:,.0f} MiB"
            return PlacementPlan(Placement.GPU, "cuda", estimated, reason)
        gpu_note = f"GPU budget {budget.gpu_free_bytes / MIB:,.0f} MiB is too small; "
    else:
        gpu_note = "no GPU; "
    if estimated <= budget.ram_available_bytes:
        reason = f"{need}; {gpu_note}fits available RAM of {budget.ram_available_bytes / MIB:,.0f} MiB"
        return PlacementPlan(Placement.CPU, "cpu", estimated, reason)
    raise InsufficientMemoryError(
        f"Model '{spec.name}' {need}, but only {budget.ram_available_bytes / MIB:,.0f} MiB of RAM"
        + (f" and {budget.gpu_free_bytes / MIB:,.0f} MiB of GPU memory" if budget.gpu_free_bytes else "")
        + " are available."
    )
