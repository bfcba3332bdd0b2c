"""The operator's API (``/admin/...``): answers of load / unload / pin and the memory ledger."""

from __future__ import annotations

from pydantic import BaseModel

from local_llm.manager.journal import Cause, LifecycleEvent
from local_llm.manager.policy import Stage
from local_llm.protocol.models import ModelCard


class UnloadResult(BaseModel):
    # False when the model held no memory to give back (it was not loaded or parked).
    unloaded: bool
    model: ModelCard


class DeviceMemory(BaseModel):
    """One device's budget, what the ledger holds of it, and what the device itself reports."""

    budget_bytes: int
    reserved_bytes: int
    total_bytes: int | None = None
    free_bytes: int | None = None
    used_by_server_bytes: int | None = None


class HoldingReport(BaseModel):
    model: str
    stage: Stage
    gpu_bytes: int
    ram_bytes: int
    in_flight: int
    pinned: bool


class MemoryReport(BaseModel):
    # RAM the server itself holds beyond its models (measured): it counts against the RAM budget.
    server_overhead_bytes: int = 0
    # The RAM budget here is what models may hold: the operator's (or the machine's) less that overhead.
    ram: DeviceMemory
    gpu: DeviceMemory | None = None
    gpu_name: str | None = None
    max_models: int | None = None
    holdings: list[HoldingReport]


class LifecycleEntry(BaseModel):
    """One entry of the lifecycle journal: a decision (with its reason) or its outcome (with the
    seconds it took)."""

    seq: int
    time: float
    model: str
    event: LifecycleEvent
    reason: str | None = None
    seconds: float | None = None
    cause: Cause | None = None
    placement: str | None = None


class EventList(BaseModel):
    events: list[LifecycleEntry]
    # The newest entry's number: what a poller passes as ``after`` next time.
    last_seq: int
