"""The models service: the manager's statuses as OpenAI model cards."""

from __future__ import annotations

from local_llm.manager import ModelManager, ModelStatus
from local_llm.placement import estimate_bytes
from local_llm.protocol.models import ModelCard, ModelList
from local_llm.registry import ModelSpec


class ModelsService:
    def __init__(self, manager: ModelManager, batch_tokens: int) -> None:
        self._manager = manager
        # Static per model, so computed once: what a model will need, shown before it is ever loaded.
        self._estimates = {spec.name: estimate_bytes(spec, batch_tokens) for spec in manager.registry.models}
        self._created = {spec.name: _created(spec) for spec in manager.registry.models}

    def list(self) -> ModelList:
        return ModelList(data=[self._card(status) for status in self._manager.statuses()])

    def get(self, name: str) -> ModelCard:
        return self._card(self._manager.status(name))

    def _card(self, status: ModelStatus) -> ModelCard:
        spec, plan = status.spec, status.plan
        return ModelCard(
            id=spec.name,
            created=self._created[spec.name],
            type=spec.kind.value,
            state=status.state.value,
            aliases=list(spec.aliases),
            format=spec.weight_format.value,
            quantization=spec.quantization,
            size_bytes=spec.size_bytes,
            classified_as=spec.reason,
            rerank_scorer=spec.rerank.scorer.value if spec.rerank else None,
            source=spec.source,
            backend=status.backend,
            placement=plan.placement.value if plan else None,
            placement_reason=plan.reason if plan else None,
            estimated_bytes=plan.estimated_bytes if plan else self._estimates[spec.name],
            measured_bytes=status.measured_bytes,
            load_seconds=round(status.load_seconds, 3) if status.load_seconds is not None else None,
            max_model_len=status.max_model_len,
            in_flight=status.in_flight,
            running_requests=status.running_requests,
            error=status.error,
        )


def _created(spec: ModelSpec) -> int:
    """When the model's folder was written: stable across restarts, unlike the server's start time."""
    try:
        return int(spec.path.stat().st_mtime)
    except OSError:
        return 0
