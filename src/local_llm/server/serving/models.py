"""The models service: the manager's statuses as OpenAI model cards, and the operator's actions."""

from __future__ import annotations

import asyncio
import time

from local_llm.manager import ModelManager, ModelStatus
from local_llm.placement import MemoryEstimate
from local_llm.protocol.admin import (
    DeviceMemory,
    EventList,
    HoldingReport,
    LifecycleEntry,
    MemoryReport,
    UnloadResult,
)
from local_llm.protocol.models import LoadingReport, MemoryParts, ModelCard, ModelList
from local_llm.registry import ModelSpec


class ModelsService:
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        self._created = {spec.name: _created(spec) for spec in manager.registry.models}

    def list(self) -> ModelList:
        return ModelList(data=[self._card(status) for status in self._manager.statuses()])

    def get(self, name: str) -> ModelCard:
        return self._card(self._manager.status(name))

    # --- operators ---------------------------------------------------------------------------
    async def load(self, name: str) -> ModelCard:
        return self._card(await self._manager.load(name))

    async def unload(self, name: str) -> UnloadResult:
        unloaded = await self._manager.unload(name)
        return UnloadResult(unloaded=unloaded, model=self.get(name))

    def pin(self, name: str, pinned: bool) -> ModelCard:
        return self._card(self._manager.pin(name, pinned))

    async def memory(self) -> MemoryReport:
        ledger = await asyncio.to_thread(self._manager.ledger)
        budget, device = ledger.budget, ledger.device
        gpu = None
        if budget.gpu_bytes is not None and device.gpu is not None:
            gpu = DeviceMemory(
                budget_bytes=budget.gpu_bytes,
                reserved_bytes=ledger.used_gpu_bytes,
                total_bytes=device.gpu.total_bytes,
                free_bytes=device.gpu.free_bytes,
                used_by_server_bytes=device.gpu.used_by_us_bytes,
            )
        return MemoryReport(
            server_overhead_bytes=ledger.server_overhead_bytes,
            ram=DeviceMemory(
                budget_bytes=budget.ram_bytes,
                reserved_bytes=ledger.used_ram_bytes,
                total_bytes=device.ram_total_bytes,
                free_bytes=device.ram_available_bytes,
                used_by_server_bytes=device.ram_used_by_us_bytes,
            ),
            gpu=gpu,
            gpu_name=device.gpu.name if device.gpu else None,
            max_models=budget.max_models,
            holdings=[
                HoldingReport(
                    model=h.name,
                    stage=h.stage,
                    gpu_bytes=h.gpu_bytes,
                    ram_bytes=h.ram_bytes,
                    in_flight=h.in_flight,
                    pinned=h.pinned,
                )
                for h in ledger.holdings
            ],
        )

    def events(self, after: int, limit: int) -> EventList:
        journal = self._manager.journal
        return EventList(
            events=[
                LifecycleEntry.model_validate(entry, from_attributes=True).model_copy(
                    update={"time": round(entry.time, 3), "seconds": _rounded(entry.seconds)}
                )
                for entry in journal.since(after, limit)
            ],
            last_seq=journal.last_seq,
        )

    # --- cards -------------------------------------------------------------------------------
    def _estimate(self, status: ModelStatus) -> MemoryEstimate:
        """The plan's estimate once placed; before, the need on the GPU where there is one."""
        if status.plan is not None:
            return status.plan.estimate
        need = self._manager.estimate(status.spec.name)
        return need.on_gpu if self._manager.budget.gpu_bytes is not None else need.on_cpu

    def _card(self, status: ModelStatus) -> ModelCard:
        spec, plan = status.spec, status.plan
        estimate = self._estimate(status)
        return ModelCard(
            id=spec.name,
            created=self._created[spec.name],
            type=spec.kind,
            state=status.state,
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
            estimated_bytes=estimate.total_bytes,
            estimate=MemoryParts(
                weights=estimate.weights_bytes,
                kv_cache=estimate.kv_cache_bytes,
                activations=estimate.activation_bytes,
                runtime=estimate.runtime_bytes,
                total=estimate.total_bytes,
            ),
            offload_bytes=plan.offload_bytes if plan else None,
            measured_bytes=status.measured_bytes,
            load_seconds=_rounded(status.load_seconds),
            wake_seconds=_rounded(status.wake_seconds),
            park_seconds=_rounded(status.park_seconds),
            pinned=status.pinned,
            last_used=int(status.last_used) if status.last_used else None,
            idle_ttl_s=status.idle_ttl_s,
            max_model_len=status.max_model_len,
            in_flight=status.in_flight,
            running_requests=status.running_requests,
            error=status.error,
            retry_after_s=round(status.retry_at - time.time(), 1) if status.retry_at else None,
            loading=_loading(status),
        )


def _created(spec: ModelSpec) -> int:
    """When the model's folder was written: stable across restarts, unlike the server's start time."""
    try:
        return int(spec.path.stat().st_mtime)
    except OSError:
        return 0


def _loading(status: ModelStatus) -> LoadingReport | None:
    loading = status.loading
    if loading is None:
        return None
    return LoadingReport(
        stage=loading.stage, elapsed_s=round(loading.elapsed_s, 1), expected_s=_rounded(loading.expected_s)
    )


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None
