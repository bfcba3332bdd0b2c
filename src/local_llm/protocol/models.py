"""``GET /v1/models``: the OpenAI list, each entry also saying what kind of model it is and where it runs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from local_llm.manager.scheduler import ModelState
from local_llm.registry.spec import ModelKind


class MemoryParts(BaseModel):
    """A memory estimate by part, in bytes."""

    weights: int
    kv_cache: int = 0
    activations: int = 0
    runtime: int = 0
    total: int


class LoadingReport(BaseModel):
    """A load (or wake) under way, or a model waiting to load: what it is doing, for how long so far,
    and how long its last load (or wake) took (null before one; waiting for memory not included)."""

    stage: str
    elapsed_s: float
    expected_s: float | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "local-llm"
    # Extensions: what the model is and what state it is in.
    type: ModelKind
    state: ModelState
    aliases: list[str]
    format: str
    quantization: str | None = None
    size_bytes: int
    classified_as: str
    # How /v1/rerank scores with this model (cross-encoder, llm-yes-no, bi-encoder); null for chat models.
    rerank_scorer: str | None = None
    source: str
    backend: str | None = None
    # Where it runs and why; before the first load, what it would need on the device it is likely to use.
    placement: str | None = None
    placement_reason: str | None = None
    estimated_bytes: int | None = None
    estimate: MemoryParts | None = None
    # Weight bytes kept in CPU RAM while computing on the GPU (gpu+offload).
    offload_bytes: int | None = None
    # What loading really took: GPU memory of vLLM's process, its RSS on a CPU, tensors in-process.
    measured_bytes: int | None = None
    load_seconds: float | None = None
    wake_seconds: float | None = None
    park_seconds: float | None = None
    pinned: bool = False
    # Unix time of the last request; the idle time to live in seconds (null: none).
    last_used: int | None = None
    idle_ttl_s: float | None = None
    max_model_len: int | None = None
    # Requests holding the model, and (where the engine tells) those it is computing right now.
    in_flight: int = 0
    running_requests: int | None = None
    # Why the model is failed (a load that failed, or an engine that died), and, after failed loads,
    # how many seconds until the next try is allowed (requests before then get 503 at once).
    error: str | None = None
    retry_after_s: float | None = None
    # While the model loads: its stage and time (null otherwise).
    loading: LoadingReport | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
