"""``GET /v1/models``: the OpenAI list, each entry also saying what kind of model it is and where it runs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "local-llm"
    # Extensions: what the model is and what state it is in.
    type: Literal["chat", "embedding", "reranker"]
    state: Literal["available", "loading", "loaded", "parked", "failed"]
    aliases: list[str]
    format: str
    quantization: str | None = None
    size_bytes: int
    classified_as: str
    # How /v1/rerank scores with this model (cross-encoder, llm-yes-no, bi-encoder); null for chat models.
    rerank_scorer: str | None = None
    source: str
    backend: str | None = None
    placement: str | None = None
    placement_reason: str | None = None
    estimated_bytes: int | None = None
    measured_bytes: int | None = None
    load_seconds: float | None = None
    max_model_len: int | None = None
    # Requests holding the model, and (where the engine tells) those it is computing right now.
    in_flight: int = 0
    running_requests: int | None = None
    error: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
