"""The scheduler: every model's lifecycle state, owned by one synchronous state machine.

Shaped after llama-swap's ``internal/router`` (``scheduler/fifo.go``): events come in as method calls
(a request, a request withdrawn, a lease ended, a model brought up or not, parked, stopped, an engine
died, an operator's unload or pin, a tick, a memory reading), and decisions go out through
:class:`Effects` (bring a model up, park or stop one, grant or refuse a waiting request). The
scheduler holds plain data only (no engines, tasks or clock) and never awaits, so

* every method runs to completion on the event loop's thread: that loop is the one loop that owns
  this state, and no lock guards it;
* its tests drive it with fake effects, synchronously, with no sleeps (``tests/test_scheduler.py``).

Which models give way is the pure policy's call (:mod:`local_llm.manager.policy`); where a model goes
is the pure planner's, handed in as ``planner``.

The rules it keeps:

* A lease is granted once: ``Effects.grant`` says whether the caller was still there to take it, and
  only then is it counted in flight. A model with a request in flight is never parked or stopped.
* Bringing a model up is single-flight: every request for it waits on the one bring-up.
* The ledger (what models hold) is the committed state and never exceeds the budget. A model that
  gives way stops counting at once, but its memory is physically free only when its take-down ends:
  a bring-up that needs that memory waits for the take-downs in progress (``after``).
* The ledger adopts a measurement that exceeds the estimate; when that (or the server's own footprint)
  puts it over budget, idle models give way until it is back within.
* A failed load refuses its waiters with the cause, and further tries back off (doubling, capped).
  An engine that dies makes the model ``failed`` with the cause; the next request loads it again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

from local_llm.errors import (
    InsufficientMemoryError,
    LocalLLMError,
    ModelBusyError,
    ModelLoadError,
    ShuttingDownError,
)
from local_llm.manager.journal import Cause, Journal, LifecycleEvent
from local_llm.manager.policy import (
    Budget,
    Holding,
    Need,
    Stage,
    admit,
    expired,
    over_budget,
    to_drain,
    used,
)
from local_llm.placement import Footprint, PlacementPlan, Room
from local_llm.placement.estimate import mib

logger = logging.getLogger(__name__)


class ModelState(str, Enum):
    """What /v1/models says of a model."""

    AVAILABLE = "available"
    LOADING = "loading"
    LOADED = "loaded"
    PARKED = "parked"
    FAILED = "failed"


class Phase(str, Enum):
    """The scheduler's finer view: what the model's engine is doing now."""

    IDLE = "idle"  # no engine
    LOADING = "loading"  # a cold load, admitted and under way
    WAKING = "waking"  # parked weights coming back
    LOADED = "loaded"
    PARKING = "parking"
    PARKED = "parked"
    STOPPING = "stopping"


@dataclass(eq=False)
class Ticket:
    """One request asking for a model's engine; ``seq`` orders waiters, first come first served."""

    model: str
    seq: int
    # A request's ``keep_alive`` in seconds (Ollama's meaning): how long the model stays once idle.
    keep_alive_s: float | None = None


@dataclass(frozen=True)
class Failure:
    """Why a model is not serving: a failed load (``count`` in a row) or an engine that died."""

    cause: str
    count: int
    # When the next try is allowed (a time on the scheduler's clock).
    retry_at: float
    while_serving: bool = False


@dataclass(frozen=True)
class Rules:
    """The operator's settings the scheduler decides by."""

    may_evict: bool = True  # LLM_AUTO_UNLOAD_MODELS
    may_park: bool = True  # LLM_ENABLE_PARKING
    idle_ttl_s: float | None = None  # LLM_MODEL_IDLE_TTL_S
    retry_backoff_s: float = 5.0  # LLM_LOAD_RETRY_BACKOFF_S: after the first failed load; doubles
    max_retry_backoff_s: float = 300.0


@dataclass(frozen=True)
class ModelEntry:
    """What the scheduler is told of each model at start."""

    name: str
    pinned: bool = False
    idle_ttl_s: float | None = None  # models.yaml's, which wins over Rules.idle_ttl_s


@dataclass
class ModelRecord:
    """One model's lifecycle state: plain data, changed only by the scheduler."""

    name: str
    pinned: bool
    idle_ttl_s: float | None
    phase: Phase = Phase.IDLE
    plan: PlacementPlan | None = None
    waiters: list[Ticket] = field(default_factory=list)
    in_flight: int = 0
    last_used: float = 0.0
    keep_alive_s: float | None = None
    # Models waiting for this one's memory: while any does, new requests for it wait (it drains).
    drained_for: set[str] = field(default_factory=set)
    failure: Failure | None = None
    # What the engine holds now, as measured after its last bring-up or park.
    measured: Footprint | None = None
    # The most it was ever measured to hold beyond its plan, per device (the estimate's error): later
    # plans are made in a room smaller by this, and reserve this much more.
    overshoot: Footprint | None = None
    # What it holds parked, where its engine can park.
    parking: Footprint | None = None
    # Memory a take-down in progress has not given back yet.
    releasing: Footprint | None = None
    logged_wait: bool = False
    # The bring-up or take-down under way: when it was decided, and (a take-down) why, for the journal.
    since: float = 0.0
    down_cause: Cause | None = None
    down_reason: str | None = None
    load_seconds: float | None = None
    wake_seconds: float | None = None
    park_seconds: float | None = None
    loads: int = 0
    wakes: int = 0

    @property
    def state(self) -> ModelState:
        if self.phase is Phase.LOADED:
            return ModelState.LOADED
        if self.phase in (Phase.LOADING, Phase.WAKING):
            return ModelState.LOADING
        if self.phase in (Phase.PARKING, Phase.PARKED):
            return ModelState.PARKED
        if self.failure is not None:
            return ModelState.FAILED
        if self.phase is Phase.IDLE and self.waiters:
            return ModelState.LOADING  # waiting for memory
        return ModelState.AVAILABLE

    def reserved(self, plan: PlacementPlan) -> Footprint:
        """What a bring-up under ``plan`` reserves: the plan, and what the model was measured to hold
        beyond its plan before."""
        over = self.overshoot or Footprint()
        return Footprint(plan.gpu_bytes + over.gpu_bytes, plan.ram_bytes + over.ram_bytes)

    def held(self) -> Footprint:
        """What the model holds in the committed ledger in its current phase (nothing when idle)."""
        if self.plan is None:
            return Footprint()
        if self.phase in (Phase.LOADING, Phase.WAKING):
            return self.reserved(self.plan)
        if self.phase is Phase.LOADED:
            return self.reserved(self.plan).at_least(self.measured)
        if self.phase in (Phase.PARKING, Phase.PARKED):
            return (self.parking or Footprint()).at_least(
                self.measured if self.phase is Phase.PARKED else None
            )
        return Footprint()


class Effects(Protocol):
    """What the scheduler asks of the world. Each call returns at once; slow work reports back as an
    event (``brought_up`` / ``bring_up_failed`` / ``parked`` / ``stopped``)."""

    def bring_up(self, name: str, plan: PlacementPlan, *, wake: bool, after: frozenset[str]) -> None:
        """Load (or wake) the model once the take-downs of the models ``after`` have ended."""

    def park(self, name: str) -> None:
        """Move the model's weights to RAM; a failed park stops it instead (reported as ``stopped``)."""

    def stop(self, name: str) -> None:
        """Stop the model's engine and release its memory."""

    def grant(self, ticket: Ticket) -> bool:
        """Hand the waiting request its engine; False when the caller had already gone."""

    def refuse(self, ticket: Ticket, error: LocalLLMError) -> None:
        """Answer the waiting request with ``error``."""


# Where a model goes, given the room it could have (the budget less what pinned models hold).
Planner = Callable[[str, Room], PlacementPlan]


class Scheduler:
    def __init__(
        self,
        models: Sequence[ModelEntry],
        budget: Budget,
        planner: Planner,
        effects: Effects,
        rules: Rules | None = None,
        *,
        overhead_measured: bool = True,
        journal: Journal | None = None,
    ) -> None:
        self.records = {m.name: ModelRecord(m.name, pinned=m.pinned, idle_ttl_s=m.idle_ttl_s) for m in models}
        self._base_budget = budget
        self._planner = planner
        self._effects = effects
        self.rules = rules or Rules()
        # RAM the server itself holds beyond its models (measured): it counts against the RAM budget.
        self.overhead_ram_bytes = 0
        # GPU memory the server itself holds beyond what the ledger holds for its in-process models: its
        # CUDA context, cuBLAS workspaces and allocator cache. Until measured, what the manager reserves
        # for it (a context appears with the first in-process GPU model and is never given back).
        self.overhead_gpu_bytes = 0
        # The least of those readings: what "could this model ever fit" is judged by, so a reading
        # taken while requests ran (their activations counted in) makes a model wait, never refused.
        self.overhead_floor_bytes: int | None = None
        # False until the server's own footprint has been measured once with its engine libraries
        # imported: until then nothing is brought up, as a budget less a guess of it could admit
        # models that do not fit (a server at start holds a fraction of what it holds once torch
        # and vLLM are in).
        self.overhead_measured = overhead_measured
        self.closing = False
        # What happened to each model and why: the status page's and the metrics' record.
        self.journal = journal or Journal()

    # --- what others read ------------------------------------------------------------------------
    @property
    def budget(self) -> Budget:
        """The budget models may hold now: the operator's, less the server's own measured footprint."""
        base = self._base_budget
        gpu = max(base.gpu_bytes - self.overhead_gpu_bytes, 0) if base.gpu_bytes is not None else None
        return replace(base, ram_bytes=max(base.ram_bytes - self.overhead_ram_bytes, 0), gpu_bytes=gpu)

    def holdings(self, exclude: str | None = None) -> list[Holding]:
        """The committed ledger: one entry per model that holds memory."""
        return [h for r in self.records.values() if r.name != exclude and (h := _holding(r)) is not None]

    def ready(self, name: str) -> bool:
        """Whether a request for ``name`` would be granted at once (the edge's back-pressure asks)."""
        record = self.records[name]
        return record.phase is Phase.LOADED and not record.drained_for and not record.waiters

    def waiting(self) -> int:
        return sum(len(r.waiters) for r in self.records.values())

    def ttl(self, record: ModelRecord) -> float | None:
        """Seconds an idle model stays: a request's keep_alive, else models.yaml's, else the setting."""
        if record.keep_alive_s is not None:
            return None if math.isinf(record.keep_alive_s) else record.keep_alive_s
        if record.idle_ttl_s is not None:
            return record.idle_ttl_s
        return self.rules.idle_ttl_s

    # --- events: requests --------------------------------------------------------------------------
    def request(self, ticket: Ticket, now: float) -> None:
        """A request asks for its model: granted now if it is up, else it waits for the bring-up."""
        record = self.records[ticket.model]
        if self.closing:
            self._effects.refuse(ticket, ShuttingDownError("The server is shutting down."))
            return
        if ticket.keep_alive_s is not None:
            record.keep_alive_s = math.inf if ticket.keep_alive_s < 0 else ticket.keep_alive_s
        if self.ready(ticket.model):
            self._grant(record, ticket, now)
            return
        record.waiters.append(ticket)
        self._advance(now)

    def withdraw(self, ticket: Ticket, now: float) -> str:
        """A waiting request gave up (its client left, or it waited too long). Returns what it was
        waiting for, for the answer a request that timed out gets."""
        record = self.records[ticket.model]
        if ticket in record.waiters:
            record.waiters.remove(ticket)
        why = self._waiting_for(record)
        if not record.waiters:
            self._undrain(record.name)
            self._advance(now)
        return why

    def lease_ended(self, name: str, now: float) -> None:
        record = self.records[name]
        record.in_flight -= 1
        record.last_used = now
        self._advance(now)

    # --- events: effects reporting back -------------------------------------------------------------
    def brought_up(
        self,
        name: str,
        now: float,
        *,
        seconds: float,
        measured: Footprint | None,
        parking: Footprint | None,
    ) -> None:
        """A load or wake ended well: every request waiting for the model is granted at once, so a
        model another one is waiting for cannot be drained before serving those it came up for."""
        record = self.records[name]
        if record.phase not in (Phase.LOADING, Phase.WAKING):
            logger.warning("%s came up while %s; ignored", name, record.phase.value)
            return
        waking = record.phase is Phase.WAKING
        record.phase, record.failure, record.last_used = Phase.LOADED, None, now
        record.measured, record.parking = measured, parking
        if measured is not None and record.plan is not None:
            beyond = Footprint(
                max(measured.gpu_bytes - record.plan.gpu_bytes, 0),
                max(measured.ram_bytes - record.plan.ram_bytes, 0),
            )
            record.overshoot = beyond.at_least(record.overshoot)
        if waking:
            record.wake_seconds, record.wakes = seconds, record.wakes + 1
        else:
            record.load_seconds, record.loads = seconds, record.loads + 1
        self._check_measurement(record)
        self.journal.record(
            now,
            name,
            LifecycleEvent.WOKEN if waking else LifecycleEvent.LOADED,
            seconds=seconds,
            placement=record.plan.placement.value if record.plan else None,
        )
        for ticket in record.waiters:
            self._grant(record, ticket, now)
        record.waiters.clear()
        self._advance(now)

    def bring_up_failed(self, name: str, now: float, cause: str) -> None:
        """A load or wake failed (the effects have stopped what was left of the engine)."""
        record = self.records[name]
        self.journal.record(now, name, LifecycleEvent.FAILED, reason=cause, seconds=now - record.since)
        previous = record.failure
        count = previous.count + 1 if previous is not None and not previous.while_serving else 1
        backoff = min(self.rules.retry_backoff_s * 2 ** (count - 1), self.rules.max_retry_backoff_s)
        record.phase, record.measured, record.releasing = Phase.IDLE, None, None
        record.failure = Failure(cause, count, retry_at=now + backoff)
        logger.error(
            "%s failed to load (%d time%s in a row; next try allowed in %.0fs): %s",
            name,
            count,
            "" if count == 1 else "s",
            backoff,
            cause,
        )
        error = ModelLoadError(f"Model '{name}' failed to load: {cause}", retry_after_s=backoff)
        self._refuse_all(record, error)
        self._advance(now)

    def parked(self, name: str, now: float, *, seconds: float, measured: Footprint | None) -> None:
        record = self.records[name]
        record.phase, record.releasing, record.measured = Phase.PARKED, None, measured
        record.park_seconds = seconds
        self.journal.record(
            now,
            name,
            LifecycleEvent.PARKED,
            reason=record.down_reason,
            seconds=seconds,
            cause=record.down_cause,
        )
        self._advance(now)

    def stopped(self, name: str, now: float) -> None:
        """An engine is gone and its memory given back."""
        record = self.records[name]
        record.phase, record.releasing, record.measured, record.parking = Phase.IDLE, None, None, None
        self.journal.record(
            now,
            name,
            LifecycleEvent.UNLOADED,
            reason=record.down_reason,
            seconds=now - record.since,
            cause=record.down_cause,
        )
        self._advance(now)

    def engine_died(self, name: str, now: float, cause: str) -> None:
        """A loaded (or parked) engine died: the model fails with the cause and its remains are
        stopped; its requests in flight end on their own (the engine fails them), and the next request
        loads it again."""
        record = self.records[name]
        if record.phase not in (Phase.LOADED, Phase.PARKED):
            return  # a bring-up or take-down in progress reports its own outcome
        logger.error("%s: its engine died: %s; the next request loads it again", name, cause)
        record.failure = Failure(cause, count=0, retry_at=now, while_serving=True)
        record.drained_for.clear()
        self.journal.record(now, name, LifecycleEvent.DIED, reason=cause)
        self._take_down(record, park=False, why="its engine died", cause=Cause.ENGINE_DIED, now=now)
        self._advance(now)

    def measured_overhead(self, ram_bytes: int, now: float, *, gpu_bytes: int | None = None) -> None:
        """The server's own RAM beyond its models' (measured while nothing was loading), and its own
        GPU memory where it holds any (``gpu_bytes``; None: it holds none yet, or NVML cannot tell)."""
        if abs(ram_bytes - self.overhead_ram_bytes) >= 16 * 2**20:
            logger.info("the server itself holds %s of RAM beyond its models", mib(ram_bytes))
        self.overhead_ram_bytes = ram_bytes
        if gpu_bytes is not None:
            if abs(gpu_bytes - self.overhead_gpu_bytes) >= 16 * 2**20:
                logger.info(
                    "the server itself holds %s of GPU memory beyond its models (was counted as %s)",
                    mib(gpu_bytes),
                    mib(self.overhead_gpu_bytes),
                )
            self.overhead_gpu_bytes = gpu_bytes
        self.overhead_measured = True
        floor = self.overhead_floor_bytes
        self.overhead_floor_bytes = ram_bytes if floor is None else min(floor, ram_bytes)
        self._advance(now)

    # --- events: operators and time -----------------------------------------------------------------
    def unload(self, name: str, now: float) -> bool:
        """An operator's unload: True when a take-down started, False when nothing was held."""
        record = self.records[name]
        if record.pinned:
            raise ModelBusyError(f"Model '{name}' is pinned; unpin it first.")
        if record.in_flight:
            raise ModelBusyError(
                f"Model '{name}' has {record.in_flight} requests in flight; try again when they end."
            )
        if record.phase in (Phase.LOADING, Phase.WAKING):
            raise ModelBusyError(f"Model '{name}' is loading; try again when it has loaded.")
        if record.phase not in (Phase.LOADED, Phase.PARKED):
            return False
        self._take_down(record, park=False, why="an operator asked", cause=Cause.OPERATOR, now=now)
        self._advance(now)
        return True

    def pin(self, name: str, pinned: bool, now: float) -> None:
        record = self.records[name]
        record.pinned = pinned
        logger.info("%s %s", "pinned" if pinned else "unpinned", name)
        self.journal.record(now, name, LifecycleEvent.PINNED if pinned else LifecycleEvent.UNPINNED)
        self._advance(now)

    def retry_now(self, name: str) -> None:
        """An operator asks for a load: a failed model's backoff no longer applies."""
        record = self.records[name]
        if record.failure is not None:
            record.failure = replace(record.failure, retry_at=-math.inf)

    def tick(self, now: float) -> None:
        """Time passed: idle models past their time to live go."""
        self._advance(now)

    def close(self) -> None:
        """Shutdown: no request is admitted any more; those waiting are refused."""
        self.closing = True
        error = ShuttingDownError("The server is shutting down.")
        for record in self.records.values():
            self._refuse_all(record, error)

    # --- deciding ------------------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        """Re-decide after any change: expire idle models, fit the ledger to the budget, then serve
        the waiting models first come first served (a model that cannot come in yet does not hold
        back one that can)."""
        self._expire(now)
        self._fit_to_budget(now)
        waiting = sorted((r for r in self.records.values() if r.waiters), key=lambda r: r.waiters[0].seq)
        for record in waiting:
            self._serve_waiters(record, now)

    def _serve_waiters(self, record: ModelRecord, now: float) -> None:
        if not record.waiters:
            return
        if record.phase is Phase.LOADED:
            if not record.drained_for:
                for ticket in record.waiters:
                    self._grant(record, ticket, now)
                record.waiters.clear()
            return
        if record.phase not in (Phase.IDLE, Phase.PARKED):
            return  # a bring-up or take-down is under way; its end comes back here
        if not self.overhead_measured:
            return  # the first measurement of the server's own footprint comes back here
        failure = record.failure
        if failure is not None and now < failure.retry_at:
            self._refuse_all(record, self._backing_off(record.name, failure, now))
            return
        waking = record.phase is Phase.PARKED
        try:
            plan = (
                record.plan if waking and record.plan else self._planner(record.name, self._plan_room(record))
            )
        except InsufficientMemoryError as exc:
            self._refuse_all(record, exc)
            return
        need = Need(record.name, *_pair(record.reserved(plan)))
        if waking and not self._can_ever_fit(need, record.name):
            # Its plan was wrong: awake it was measured to hold more than the whole room, so it could
            # never be woken. Unloaded, it is planned afresh in a room smaller by what it went over
            # (a chat model at a shorter context, or elsewhere), and its waiters wait for that.
            why = f"awake it holds {record.reserved(plan).describe()}, more than its room; planning it again"
            self._take_down(record, park=False, why=why, cause=Cause.OVER_BUDGET, now=now)
            return
        holdings = self.holdings(exclude=record.name)
        budget = self.budget
        decision = admit(holdings, budget, need, may_evict=self.rules.may_evict, may_park=self.rules.may_park)
        if decision.fits:
            self._commit(record, plan, decision.park, decision.unload, waking, now)
            return
        if not self.rules.may_evict or not self._can_ever_fit(need, record.name):
            message = f"Model '{record.name}' cannot be loaded now: {decision.short}."
            self._refuse_all(record, InsufficientMemoryError(message))
            return
        if not self._fits_now_with_every_unpinned_model_gone(need, record.name):
            # Only a smaller server footprint (measured again once engines settle) would let it in:
            # nothing is drained for it meanwhile, so the others keep serving; it waits (bounded).
            if not record.logged_wait:
                logger.warning(
                    "%s waits: with every unpinned model gone there would be %s for models, and it needs "
                    "%s (the server itself holds %s)",
                    record.name,
                    mib(self._room(record, floor=False).ram_bytes),
                    mib(need.ram_bytes),
                    mib(self.overhead_ram_bytes),
                )
                record.logged_wait = True
            return
        for name in to_drain(holdings, budget, need, may_park=self.rules.may_park):
            self.records[name].drained_for.add(record.name)
        if not record.logged_wait:
            logger.info("%s waits for memory: %s", record.name, decision.short)
            record.logged_wait = True

    def _commit(
        self,
        record: ModelRecord,
        plan: PlacementPlan,
        park: Iterable[str],
        unload: Iterable[str],
        waking: bool,
        now: float,
    ) -> None:
        """Admit ``record``: its victims leave the ledger now, and it comes up once their memory is
        really free (at once where it fits beside what is still being given back)."""
        why = f"least recently used idle model, making room for {record.name}"
        for name in park:
            self._take_down(self.records[name], park=True, why=why, cause=Cause.EVICTED, now=now)
        for name in unload:
            self._take_down(self.records[name], park=False, why=why, cause=Cause.EVICTED, now=now)
        record.plan = plan
        need = record.reserved(plan)
        record.phase = Phase.WAKING if waking else Phase.LOADING
        record.since = now
        self.journal.record(
            now,
            record.name,
            LifecycleEvent.WAKING if waking else LifecycleEvent.LOADING,
            reason=None if waking else plan.reason,
            placement=plan.placement.value,
        )
        record.logged_wait = False
        self._undrain(record.name)
        after = frozenset() if self._fits_beside_releases(need, record.name) else self._releasing()
        self._effects.bring_up(record.name, record.plan, wake=waking, after=after)

    def _take_down(self, record: ModelRecord, *, park: bool, why: str, cause: Cause, now: float) -> None:
        """Out of the ledger (parked: down to its parked holding) in this step; the effects finish it.
        The one place a park or an unload is decided, so the one place it is logged."""
        held = record.held()
        parked = (record.parking or Footprint()) if park else Footprint()
        record.releasing = Footprint(
            max(held.gpu_bytes - parked.gpu_bytes, 0), max(held.ram_bytes - parked.ram_bytes, 0)
        )
        idle = f", idle {now - record.last_used:.0f}s" if record.last_used else ""
        logger.info(
            "%s %s (holding %s%s): %s",
            "parking" if park else "unloading",
            record.name,
            held.describe(),
            idle,
            why,
        )
        record.since, record.down_cause, record.down_reason = now, cause, why
        self.journal.record(
            now,
            record.name,
            LifecycleEvent.PARKING if park else LifecycleEvent.UNLOADING,
            reason=why,
            cause=cause,
        )
        if park:
            record.phase = Phase.PARKING
            self._effects.park(record.name)
        else:
            record.phase = Phase.STOPPING
            self._effects.stop(record.name)

    def _expire(self, now: float) -> None:
        ttl = {name: self.ttl(record) for name, record in self.records.items()}
        if all(value is None for value in ttl.values()):
            return
        for name in expired(self.holdings(), ttl, now).unload:
            record = self.records[name]
            if record.waiters:
                continue
            why = f"idle longer than its time to live of {ttl[name]:g}s"
            self._take_down(record, park=False, why=why, cause=Cause.IDLE, now=now)

    def _fit_to_budget(self, now: float) -> None:
        """After a measurement raised what a model holds (or the server's own footprint grew)."""
        holdings = self.holdings()
        decision = over_budget(holdings, self.budget, may_park=self.rules.may_park)
        why = "the ledger is over budget once what models really hold was measured"
        for name in decision.park:
            self._take_down(self.records[name], park=True, why=why, cause=Cause.OVER_BUDGET, now=now)
        for name in decision.unload:
            self._take_down(self.records[name], park=False, why=why, cause=Cause.OVER_BUDGET, now=now)

    def _check_measurement(self, record: ModelRecord) -> None:
        if record.measured is None or record.plan is None:
            return
        planned = Footprint(record.plan.gpu_bytes, record.plan.ram_bytes)
        over = [
            f"{device} {mib(got)} measured, {mib(want)} planned"
            for device, got, want in (
                ("GPU", record.measured.gpu_bytes, planned.gpu_bytes),
                ("RAM", record.measured.ram_bytes, planned.ram_bytes),
            )
            if got > want + max(want // 10, 64 * 2**20)
        ]
        if over:
            logger.info(
                "%s holds more than its estimate (%s): the ledger counts what was measured",
                record.name,
                "; ".join(over),
            )

    # --- helpers -------------------------------------------------------------------------------------
    def _grant(self, record: ModelRecord, ticket: Ticket, now: float) -> None:
        if self._effects.grant(ticket):
            record.in_flight += 1
            record.last_used = now

    def _refuse_all(self, record: ModelRecord, error: LocalLLMError) -> None:
        waiters, record.waiters = record.waiters, []
        for ticket in waiters:
            self._effects.refuse(ticket, error)
        self._undrain(record.name)

    def _undrain(self, name: str) -> None:
        for record in self.records.values():
            record.drained_for.discard(name)

    def _room(self, record: ModelRecord, *, floor: bool = True) -> Room:
        """The room a model could have with every unpinned model gone: what its plan is made against
        (and what tells whether waiting can ever help). The server's own footprint counts at the least
        it was measured (``floor``), or as it was last measured."""
        pinned_gpu, pinned_ram = used(h for h in self.holdings(exclude=record.name) if h.pinned)
        base = self._base_budget
        overhead = self.overhead_ram_bytes
        if floor and self.overhead_floor_bytes is not None:
            overhead = self.overhead_floor_bytes
        gpu = base.gpu_bytes - self.overhead_gpu_bytes - pinned_gpu if base.gpu_bytes is not None else None
        return Room(ram_bytes=max(base.ram_bytes - overhead, 0) - pinned_ram, gpu_bytes=gpu)

    def _plan_room(self, record: ModelRecord) -> Room:
        """The room a fresh plan is made in: :meth:`_room`, less what the model was measured to hold
        beyond its plans before, so that plan and overshoot together fit."""
        room, over = self._room(record), record.overshoot or Footprint()
        gpu = max(room.gpu_bytes - over.gpu_bytes, 0) if room.gpu_bytes is not None else None
        return Room(ram_bytes=max(room.ram_bytes - over.ram_bytes, 0), gpu_bytes=gpu)

    def _can_ever_fit(self, need: Need, name: str) -> bool:
        """Whether waiting can help: the need fits the budget less what pinned models hold."""
        return _fits(need, self._room(self.records[name]))

    def _fits_now_with_every_unpinned_model_gone(self, need: Need, name: str) -> bool:
        return _fits(need, self._room(self.records[name], floor=False))

    def _releasing(self) -> frozenset[str]:
        return frozenset(r.name for r in self.records.values() if r.releasing is not None)

    def _fits_beside_releases(self, need: Footprint, name: str) -> bool:
        """Whether ``need`` fits in memory that is physically free now: the budget less the ledger
        and less what take-downs in progress still hold."""
        gpu, ram = used(self.holdings(exclude=name))
        for record in self.records.values():
            if record.releasing is not None:
                gpu += record.releasing.gpu_bytes
                ram += record.releasing.ram_bytes
        budget = self.budget
        gpu_ok = budget.gpu_bytes is None or gpu + need.gpu_bytes <= budget.gpu_bytes
        return gpu_ok and ram + need.ram_bytes <= budget.ram_bytes

    def _waiting_for(self, record: ModelRecord) -> str:
        if record.phase is Phase.LOADED and record.drained_for:
            return f"is making way for {', '.join(sorted(record.drained_for))}"
        if record.phase in (Phase.LOADING, Phase.WAKING):
            return "is still loading"
        if record.phase in (Phase.STOPPING, Phase.PARKING):
            return "is being taken down and will load again after"
        if not self.overhead_measured:
            return "is waiting for the server's engine libraries to be imported (its memory is measured then)"
        return "is waiting for memory to load in (models in use hold it)"

    @staticmethod
    def _backing_off(name: str, failure: Failure, now: float) -> ModelLoadError:
        wait = failure.retry_at - now
        times = "once" if failure.count == 1 else f"{failure.count} times in a row"
        return ModelLoadError(
            f"Model '{name}' failed to load ({times}): {failure.cause}. "
            f"The next try is allowed in {math.ceil(wait)}s.",
            retry_after_s=wait,
        )


def _holding(record: ModelRecord) -> Holding | None:
    """The record's entry in the committed ledger, or None when it holds nothing there."""
    if record.phase in (Phase.IDLE, Phase.STOPPING):
        return None
    stage = {
        Phase.LOADING: Stage.LOADING,
        Phase.WAKING: Stage.LOADING,
        Phase.LOADED: Stage.LOADED,
        Phase.PARKING: Stage.PARKING,
        Phase.PARKED: Stage.PARKED,
    }[record.phase]
    held = record.held()
    parking = record.parking if record.phase is Phase.LOADED else None
    return Holding(
        record.name,
        stage,
        held.gpu_bytes,
        held.ram_bytes,
        in_flight=record.in_flight,
        last_used=record.last_used,
        pinned=record.pinned,
        parked_gpu_bytes=parking.gpu_bytes if parking else None,
        parked_ram_bytes=parking.ram_bytes if parking else None,
    )


def _fits(need: Need, room: Room) -> bool:
    gpu_ok = room.gpu_bytes is None or need.gpu_bytes <= room.gpu_bytes
    return gpu_ok and need.ram_bytes <= room.ram_bytes


def _pair(footprint: Footprint) -> tuple[int, int]:
    return footprint.gpu_bytes, footprint.ram_bytes
