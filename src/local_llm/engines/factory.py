"""Which engine serves which model: the one place that maps a spec and a plan to a backend."""

from __future__ import annotations

from local_llm.config import Settings
from local_llm.engines.base import Engine
from local_llm.engines.embedding import SentenceTransformersEmbeddingEngine
from local_llm.errors import EngineUnavailableError
from local_llm.placement import PlacementPlan
from local_llm.registry.spec import ModelKind, ModelSpec


def create_engine(spec: ModelSpec, plan: PlacementPlan, settings: Settings) -> Engine:
    """A not-yet-started engine for ``spec``; raises :class:`EngineUnavailableError` for kinds not served."""
    if spec.kind is ModelKind.EMBEDDING:
        return SentenceTransformersEmbeddingEngine(
            spec,
            plan,
            batch_size=settings.embedding_batch_size,
            batch_tokens=settings.embedding_batch_tokens,
            max_queued=settings.max_queued_inputs,
        )
    raise EngineUnavailableError(
        f"Model '{spec.name}' is a {spec.kind.value} model; no engine serves those yet."
    )
