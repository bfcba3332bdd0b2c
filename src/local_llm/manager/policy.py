"""The swap decision: pure functions over plain data, no engines, no I/O.

Following llama-swap's split, the manager takes a snapshot of the ledger (what each model holds),
asks these functions what to evict, park or expire, and carries the answer out. Tests drive them
from tables, with no model.

The ledger's rule: the sum of every holding stays within the budget on each device. A model
holds its plan's bytes from the moment admission lets it load; a parked model holds its weights in
RAM (and, for vLLM, its process's CUDA context on the GPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum


class Stage(str, Enum):
    LOADING = "loading"  # admitted: its engine is coming up (a cold load, or a wake)
    LOADED = "loaded"
    PARKING = "parking"  # on its way to RAM: holds what it will hold parked, and may not be chosen
    PARKED = "parked"


@dataclass(frozen=True)
class Holding:
    """One model's entry in the ledger."""

    name: str
    stage: Stage
    gpu_bytes: int
    ram_bytes: int
    in_flight: int = 0
    last_used: float = 0.0
    pinned: bool = False
    # What it would hold parked, when its engine can park; None: it can only be unloaded.
    parked_gpu_bytes: int | None = None
    parked_ram_bytes: int | None = None

    @property
    def idle(self) -> bool:
        """Only idle, settled, unpinned models may go: a request in flight is never cut off."""
        return self.in_flight == 0 and self.stage in (Stage.LOADED, Stage.PARKED) and not self.pinned

    @property
    def can_park(self) -> bool:
        return self.stage is Stage.LOADED and self.parked_ram_bytes is not None


@dataclass(frozen=True)
class Budget:
    """Bytes models may hold: in RAM, and on the GPU (None without one)."""

    ram_bytes: int
    gpu_bytes: int | None = None
    # LLM_MODEL_CACHE_SIZE: most models loaded (or loading) at once; parked ones do not count.
    max_models: int | None = None


@dataclass(frozen=True)
class Need:
    """What the model asking to come in will hold."""

    name: str
    gpu_bytes: int
    ram_bytes: int


@dataclass(frozen=True)
class Admission:
    """What to do so ``need`` fits: unload these, park those; ``fits`` False means wait."""

    fits: bool
    unload: tuple[str, ...] = ()
    park: tuple[str, ...] = ()
    # Why it does not fit yet (for the log and the 503's message).
    short: str = ""


@dataclass
class _Free:
    gpu: int
    ram: int
    slots: int

    def satisfies(self, need: Need) -> bool:
        return self.gpu >= need.gpu_bytes and self.ram >= need.ram_bytes and self.slots >= 1


def used(holdings: Iterable[Holding]) -> tuple[int, int]:
    """(GPU, RAM) bytes the ledger holds."""
    gpu = ram = 0
    for holding in holdings:
        gpu += holding.gpu_bytes
        ram += holding.ram_bytes
    return gpu, ram


def _free(holdings: Sequence[Holding], budget: Budget) -> _Free:
    gpu, ram = used(holdings)
    counted = sum(h.stage not in (Stage.PARKED, Stage.PARKING) for h in holdings)
    slots = budget.max_models - counted if budget.max_models is not None else len(holdings) + 1
    return _Free(gpu=(budget.gpu_bytes or 0) - gpu, ram=budget.ram_bytes - ram, slots=slots)


def admit(
    holdings: Sequence[Holding], budget: Budget, need: Need, *, may_evict: bool = True, may_park: bool = True
) -> Admission:
    """Make room for ``need``: least recently used idle models first, parked rather than unloaded
    where RAM allows; nothing is touched unless the result fits.

    ``holdings`` excludes the model asking (a parked model waking is asked for with its loaded need,
    and its parked holding is released as it wakes).
    """
    free = _free(holdings, budget)
    if free.satisfies(need):
        return Admission(fits=True)
    if not may_evict:
        return Admission(fits=False, short=_shortfall(free, need) + "; LLM_AUTO_UNLOAD_MODELS is off")
    unload: list[str] = []
    park: list[str] = []
    by_age = sorted((h for h in holdings if h.idle), key=lambda h: (h.last_used, h.name))
    # 1. Loaded models give way where they help: GPU memory, a slot, or RAM.
    for holding in (h for h in by_age if h.stage is Stage.LOADED):
        helps_gpu = free.gpu < need.gpu_bytes and holding.gpu_bytes > 0
        helps_slot = free.slots < 1
        helps_ram = free.ram < need.ram_bytes and holding.ram_bytes > 0
        if not (helps_gpu or helps_slot or helps_ram):
            continue
        parked_ram = (holding.parked_ram_bytes or 0) - holding.ram_bytes
        parks = (
            may_park
            and holding.can_park
            and helps_gpu
            and not helps_ram
            and free.ram - parked_ram >= need.ram_bytes
        )
        if parks:
            park.append(holding.name)
            free.gpu += holding.gpu_bytes - (holding.parked_gpu_bytes or 0)
            free.ram -= parked_ram
        else:
            unload.append(holding.name)
            free.gpu += holding.gpu_bytes
            free.ram += holding.ram_bytes
        free.slots += 1
        if free.satisfies(need):
            return Admission(fits=True, unload=tuple(unload), park=tuple(park))
    # 2. Parked models give their RAM (and what they keep on the GPU) back.
    for holding in (h for h in by_age if h.stage is Stage.PARKED):
        if free.ram >= need.ram_bytes and free.gpu >= need.gpu_bytes:
            break
        unload.append(holding.name)
        free.gpu += holding.gpu_bytes
        free.ram += holding.ram_bytes
        if free.satisfies(need):
            return Admission(fits=True, unload=tuple(unload), park=tuple(park))
    return Admission(fits=False, short=_shortfall(_free(holdings, budget), need) + "; the rest is in use")


def to_drain(
    holdings: Sequence[Holding], budget: Budget, need: Need, *, may_park: bool = True
) -> tuple[str, ...]:
    """Busy models that must finish before ``need`` can fit: new requests for them wait, so they drain.

    Without this, a model under steady traffic would never be idle, and a request for another
    model would wait until its timeout (starvation); with it, swaps happen in rounds, as in Ollama.
    """
    if admit(holdings, budget, need, may_park=may_park).fits:
        return ()
    as_if_idle = [replace(h, in_flight=0) if h.stage is Stage.LOADED else h for h in holdings]
    decision = admit(as_if_idle, budget, need, may_park=may_park)
    if not decision.fits:
        return ()
    busy = {h.name for h in holdings if h.in_flight}
    return tuple(name for name in (*decision.unload, *decision.park) if name in busy)


def _shortfall(free: _Free, need: Need) -> str:
    parts = []
    if need.gpu_bytes > free.gpu:
        parts.append(
            f"GPU: needs {need.gpu_bytes / 2**20:,.0f} MiB, {max(free.gpu, 0) / 2**20:,.0f} MiB free"
        )
    if need.ram_bytes > free.ram:
        parts.append(
            f"RAM: needs {need.ram_bytes / 2**20:,.0f} MiB, {max(free.ram, 0) / 2**20:,.0f} MiB free"
        )
    if free.slots < 1:
        parts.append("LLM_MODEL_CACHE_SIZE models already loaded")
    return "; ".join(parts) or "no room"


@dataclass(frozen=True)
class Expiry:
    """Idle models past their time to live, to unload."""

    unload: tuple[str, ...] = field(default_factory=tuple)


def expired(holdings: Sequence[Holding], ttl_s: dict[str, float | None], now: float) -> Expiry:
    """Idle models (loaded or parked) whose idle time exceeds their TTL; None means no TTL."""
    return Expiry(
        tuple(
            h.name
            for h in sorted(holdings, key=lambda h: (h.last_used, h.name))
            if h.idle and (ttl := ttl_s.get(h.name)) is not None and now - h.last_used >= ttl
        )
    )


def over_budget(holdings: Sequence[Holding], budget: Budget, *, may_park: bool = True) -> Admission:
    """Idle models to park or unload so the ledger is back within ``budget``.

    The ledger adopts what engines really hold when that exceeds their estimate, and the server's own
    footprint counts against the RAM budget, so the ledger can end up over budget without any new
    admission; the least recently used idle models then give way as they would for a newcomer.
    ``fits`` False: even with every idle model gone it is over (busy models will be evicted as they
    go idle and another model needs room).
    """
    return admit(holdings, replace(budget, max_models=None), Need("", 0, 0), may_park=may_park)


def within_budget(holdings: Sequence[Holding], budget: Budget) -> bool:
    """The ledger's invariant, checked by the manager after every change and by the tests."""
    gpu, ram = used(holdings)
    return ram <= budget.ram_bytes and (budget.gpu_bytes is None or gpu <= budget.gpu_bytes)
