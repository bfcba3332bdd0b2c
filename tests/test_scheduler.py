"""The scheduler, driven event by event over fake effects: synchronous, no engine, no sleep.

As llama-swap's ``fifo_test.go`` drives its FIFO: each test sends the events a real run would (a
request, a bring-up that ended, a lease that ended, an engine that died, a tick) and checks what the
scheduler asked of the world and what state it shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from local_llm.errors import (
    InsufficientMemoryError,
    LocalLLMError,
    ModelBusyError,
    ModelLoadError,
    ShuttingDownError,
)
from local_llm.manager.policy import Budget, within_budget
from local_llm.manager.scheduler import ModelEntry, ModelState, Phase, Rules, Scheduler, Ticket
from local_llm.placement import (
    Footprint,
    MemoryEstimate,
    ModelNeed,
    Placement,
    PlacementPlan,
    PlacementRules,
    Room,
)
from local_llm.placement import plan_placement as real_plan_placement

pytestmark = pytest.mark.unit

G = 1024**3


@dataclass
class FakeEffects:
    """Records what the scheduler asks; callers in ``gone`` have left (their grant fails)."""

    calls: list[tuple[object, ...]] = field(default_factory=list)
    granted: list[int] = field(default_factory=list)
    refused: dict[int, LocalLLMError] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)

    def bring_up(self, name: str, plan: PlacementPlan, *, wake: bool, after: frozenset[str]) -> None:
        self.calls.append(("wake" if wake else "load", name, after))

    def park(self, name: str) -> None:
        self.calls.append(("park", name))

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))

    def grant(self, ticket: Ticket) -> bool:
        if ticket.seq in self.gone:
            return False
        self.granted.append(ticket.seq)
        return True

    def refuse(self, ticket: Ticket, error: LocalLLMError) -> None:
        self.refused[ticket.seq] = error

    def take(self) -> list[tuple[object, ...]]:
        calls, self.calls = self.calls, []
        return calls


class Rig:
    """A scheduler over models of the given sizes (GiB, weights and runtime together)."""

    def __init__(
        self,
        sizes: dict[str, float],
        *,
        ram_gb: float = 10,
        gpu_gb: float | None = None,
        pinned: tuple[str, ...] = (),
        ttl: dict[str, float] | None = None,
        max_models: int | None = None,
        overhead_measured: bool = True,
        planner: Callable[[str, Room], PlacementPlan] | None = None,
        **rules: object,
    ) -> None:
        self.sizes = sizes
        self.effects = FakeEffects()
        budget = Budget(
            ram_bytes=int(ram_gb * G), gpu_bytes=int(gpu_gb * G) if gpu_gb else None, max_models=max_models
        )
        entries = [ModelEntry(name, name in pinned, (ttl or {}).get(name)) for name in sizes]
        self.scheduler = Scheduler(
            entries,
            budget,
            planner or self.plan,
            self.effects,
            Rules(**rules),  # type: ignore[arg-type]
            overhead_measured=overhead_measured,
        )
        self.seq = 0
        self.now = 1000.0

    def plan(self, name: str, room: Room) -> PlacementPlan:
        estimate = MemoryEstimate(weights_bytes=int(self.sizes[name] * G))
        need = ModelNeed(name, on_gpu=estimate, on_cpu=estimate, can_offload=False, checkpoint="test")
        return real_plan_placement(need, room, PlacementRules(enable_offload=False))

    def ask(self, name: str, keep_alive_s: float | None = None) -> Ticket:
        self.seq += 1
        ticket = Ticket(name, self.seq, keep_alive_s)
        self.scheduler.request(ticket, self.now)
        return ticket

    def up(self, name: str, measured_gb: float | None = None, parking: Footprint | None = None) -> None:
        measured = Footprint(ram_bytes=int(measured_gb * G)) if measured_gb is not None else None
        self.scheduler.brought_up(name, self.now, seconds=1.0, measured=measured, parking=parking)

    def done(self, name: str) -> None:
        self.scheduler.lease_ended(name, self.now)

    def state(self, name: str) -> ModelState:
        return self.scheduler.records[name].state

    def in_flight(self, name: str) -> int:
        return self.scheduler.records[name].in_flight

    def within_budget(self) -> bool:
        return within_budget(self.scheduler.holdings(), self.scheduler.budget)


# --- bringing a model up -----------------------------------------------------------------------------------
def test_fifty_first_requests_start_one_bring_up_and_all_are_granted_when_it_ends() -> None:
    rig = Rig({"a": 1})
    tickets = [rig.ask("a") for _ in range(50)]
    assert rig.effects.take() == [("load", "a", frozenset())]
    assert rig.state("a") is ModelState.LOADING
    assert rig.effects.granted == []
    rig.up("a")
    assert rig.effects.granted == [t.seq for t in tickets]
    assert rig.in_flight("a") == 50
    assert rig.effects.take() == []


def test_a_loaded_model_is_granted_at_once() -> None:
    rig = Rig({"a": 1})
    rig.ask("a")
    rig.up("a")
    rig.done("a")
    rig.effects.take()
    ticket = rig.ask("a")
    assert rig.effects.granted[-1] == ticket.seq
    assert rig.effects.take() == []


def test_a_grant_to_a_caller_that_left_is_not_counted() -> None:
    rig = Rig({"a": 1})
    stays, leaves = rig.ask("a"), rig.ask("a")
    rig.effects.gone.add(leaves.seq)
    rig.up("a")
    assert rig.effects.granted == [stays.seq]
    assert rig.in_flight("a") == 1


def test_a_waiter_that_withdraws_is_dropped_and_the_load_goes_on() -> None:
    rig = Rig({"a": 1})
    ticket = rig.ask("a")
    assert "still loading" in rig.scheduler.withdraw(ticket, rig.now)
    assert rig.scheduler.records["a"].waiters == []
    rig.up("a")
    assert rig.effects.granted == []
    assert (rig.state("a"), rig.in_flight("a")) == (ModelState.LOADED, 0)


# --- no swap while serving --------------------------------------------------------------------------------
def test_a_busy_model_is_never_stopped_and_is_drained_for_the_one_waiting() -> None:
    rig = Rig({"a": 6, "b": 6})  # room for one
    rig.ask("a")
    rig.up("a")
    rig.effects.take()
    b = rig.ask("b")
    assert rig.effects.take() == []  # a is busy: nothing stops, b waits
    assert rig.state("b") is ModelState.LOADING
    later_a = rig.ask("a")  # a drains: a new request for it waits behind b
    assert later_a.seq not in rig.effects.granted
    rig.done("a")
    # a is idle: it goes, and b comes up once a's memory is back.
    assert rig.effects.take() == [("stop", "a"), ("load", "b", frozenset({"a"}))]
    assert rig.within_budget()
    rig.scheduler.stopped("a", rig.now)
    rig.up("b")
    assert b.seq in rig.effects.granted
    # Then a comes back for its waiter, once b is idle: swaps happen in rounds.
    assert rig.effects.take() == []
    rig.done("b")
    assert rig.effects.take() == [("stop", "b"), ("load", "a", frozenset({"b"}))]
    rig.scheduler.stopped("b", rig.now)
    rig.up("a")
    assert later_a.seq in rig.effects.granted


def test_a_bring_up_that_fits_beside_a_stop_in_progress_does_not_wait_for_it() -> None:
    rig = Rig({"a": 6, "b": 6, "small": 1})
    rig.ask("a")
    rig.up("a")
    rig.done("a")
    rig.effects.take()
    rig.ask("b")  # a goes for b
    assert rig.effects.take() == [("stop", "a"), ("load", "b", frozenset({"a"}))]
    rig.ask("small")  # fits the ledger (6 + 1), but not beside what a still holds (6 + 6 + 1 > 10)
    assert rig.effects.take() == [("load", "small", frozenset({"a"}))]
    rig.scheduler.stopped("a", rig.now)
    tiny = Rig({"a": 3, "b": 3, "small": 1})
    tiny.ask("a")
    tiny.up("a")
    tiny.done("a")
    tiny.effects.take()
    tiny.scheduler.unload("a", tiny.now)
    tiny.ask("small")  # 1 + 3 still being freed fits in 10: no wait
    assert tiny.effects.take() == [("stop", "a"), ("load", "small", frozenset())]


def test_least_recently_used_idle_model_goes_first_and_a_slot_cap_counts() -> None:
    rig = Rig({"a": 1, "b": 1, "c": 1}, max_models=2)
    for name in ("a", "b"):
        rig.ask(name)
        rig.up(name)
        rig.done(name)
        rig.now += 10
    rig.effects.take()
    rig.ask("a")  # a is now the most recently used
    rig.done("a")
    rig.ask("c")
    assert rig.effects.take() == [("stop", "b"), ("load", "c", frozenset())]


# --- failures -------------------------------------------------------------------------------------------
def test_a_failed_load_refuses_its_waiters_with_the_cause_and_later_tries_back_off() -> None:
    rig = Rig({"bad": 1, "good": 1}, retry_backoff_s=5)
    first = rig.ask("bad")
    rig.effects.take()
    rig.scheduler.bring_up_failed("bad", rig.now, "SafetensorError: incomplete metadata")
    error = rig.effects.refused[first.seq]
    assert isinstance(error, ModelLoadError)
    assert "SafetensorError: incomplete metadata" in error.message
    assert error.retry_after_s == 5
    assert rig.state("bad") is ModelState.FAILED
    assert rig.scheduler.holdings() == []
    # Within the backoff: refused at once, no new load.
    rig.now += 2
    soon = rig.ask("bad")
    assert rig.effects.take() == []
    assert "next try is allowed in 3s" in rig.effects.refused[soon.seq].message
    # After it: tried again; a second failure doubles the wait.
    rig.now += 4
    rig.ask("bad")
    assert rig.effects.take() == [("load", "bad", frozenset())]
    rig.scheduler.bring_up_failed("bad", rig.now, "SafetensorError: incomplete metadata")
    assert rig.scheduler.records["bad"].failure.retry_at == rig.now + 10  # type: ignore[union-attr]
    # Other models are unaffected, and an operator's load skips the backoff.
    rig.ask("good")
    assert rig.effects.take() == [("load", "good", frozenset())]
    rig.scheduler.retry_now("bad")
    rig.ask("bad")
    assert rig.effects.take() == [("load", "bad", frozenset())]


def test_an_engine_that_dies_fails_the_model_frees_its_memory_and_the_next_request_reloads() -> None:
    rig = Rig({"a": 4})
    rig.ask("a")
    rig.ask("a")
    rig.up("a", measured_gb=4.5)
    rig.effects.take()
    rig.scheduler.engine_died("a", rig.now, "vLLM's engine process was killed by SIGKILL")
    assert rig.effects.take() == [("stop", "a")]
    assert rig.state("a") is ModelState.FAILED
    assert rig.scheduler.holdings() == []  # its memory leaves the ledger at once
    rig.done("a")
    rig.done("a")  # the two requests in flight end (the engine failed them)
    nxt = rig.ask("a")
    assert rig.effects.take() == []  # waits for the remains to be stopped
    rig.scheduler.stopped("a", rig.now)
    assert rig.effects.take() == [("load", "a", frozenset())]  # no backoff after a death
    assert rig.state("a") is ModelState.LOADING
    rig.up("a")
    assert nxt.seq in rig.effects.granted
    assert rig.scheduler.records["a"].failure is None


def test_a_death_reported_during_a_take_down_changes_nothing() -> None:
    rig = Rig({"a": 1})
    rig.ask("a")
    rig.up("a")
    rig.done("a")
    rig.scheduler.unload("a", rig.now)
    rig.effects.take()
    rig.scheduler.engine_died("a", rig.now, "exited")
    assert rig.effects.take() == []
    assert rig.scheduler.records["a"].failure is None


# --- memory that is measured ----------------------------------------------------------------------------
def test_a_measurement_over_the_estimate_is_adopted_and_idle_models_make_way() -> None:
    rig = Rig({"a": 4, "b": 4})
    rig.ask("a")
    rig.up("a")
    rig.done("a")
    rig.now += 1
    rig.ask("b")
    rig.effects.take()
    rig.up("b", measured_gb=6.5)  # b really holds 6.5: with a's 4, over the 10 budget
    assert rig.effects.take() == [("stop", "a")]
    assert rig.within_budget()
    # And b's next load reserves what it was measured to hold.
    rig.done("b")
    rig.scheduler.stopped("a", rig.now)
    rig.scheduler.unload("b", rig.now)
    rig.scheduler.stopped("b", rig.now)
    rig.ask("b")
    assert rig.scheduler.holdings()[0].ram_bytes == int(6.5 * G)


def test_a_parked_model_measured_over_its_whole_room_is_planned_again_in_less_not_refused() -> None:
    """Seen on an H200: a 7B-AWQ whose context was cut to fill a 9,728 MiB room measured 9,836 MiB,
    was parked (over budget), and its next request got 507: it "could never fit". Now it is unloaded
    and planned again in a room smaller by what it went over (the planner then cuts its context more)."""
    rooms: list[int] = []

    def fill_the_room(name: str, room: Room) -> PlacementPlan:
        assert room.gpu_bytes is not None
        rooms.append(room.gpu_bytes)
        estimate = MemoryEstimate(weights_bytes=room.gpu_bytes)  # as a context cut to fit does
        return PlacementPlan(
            Placement.GPU, "cuda", estimate, gpu_bytes=room.gpu_bytes, ram_bytes=0, reason="fills it"
        )

    rig = Rig({"chat": 12}, ram_gb=64, gpu_gb=10, planner=fill_the_room)
    parked = Footprint(gpu_bytes=G // 2, ram_bytes=6 * G)
    rig.ask("chat")
    assert rig.effects.take() == [("load", "chat", frozenset())]
    over = Footprint(gpu_bytes=10 * G + int(0.1 * G), ram_bytes=0)
    rig.scheduler.brought_up("chat", rig.now, seconds=60, measured=over, parking=parked)
    rig.done("chat")
    assert rig.effects.take() == [("park", "chat")]  # the ledger is over budget once it is measured
    rig.scheduler.parked("chat", rig.now, seconds=5, measured=parked)
    nxt = rig.ask("chat")
    assert rig.effects.take() == [("stop", "chat")]  # not woken (it could not fit), not refused
    assert nxt.seq not in rig.effects.refused
    rig.scheduler.stopped("chat", rig.now)
    assert rig.effects.take() == [("load", "chat", frozenset())]
    assert rooms == [10 * G, 10 * G - int(0.1 * G)]  # planned again 0.1 GiB smaller
    rig.scheduler.brought_up(
        "chat", rig.now, seconds=60, measured=Footprint(gpu_bytes=10 * G), parking=parked
    )
    assert nxt.seq in rig.effects.granted
    assert rig.within_budget()


def test_the_servers_own_footprint_counts_against_the_ram_budget() -> None:
    rig = Rig({"a": 4, "b": 4})
    for name in ("a", "b"):
        rig.ask(name)
        rig.up(name)
        rig.done(name)
        rig.now += 1
    rig.effects.take()
    rig.scheduler.measured_overhead(3 * G, rig.now)  # 4 + 4 + 3 > 10
    assert rig.effects.take() == [("stop", "a")]
    assert rig.scheduler.budget.ram_bytes == 7 * G


def test_the_servers_own_gpu_memory_counts_as_measured_not_as_reserved() -> None:
    """Its CUDA context is reserved until measured: on an H200 it measured 806 MiB, more than the 512 then
    reserved, and the device went over the budget by the difference with everything resident."""
    rig = Rig({"a": 4, "b": 3}, gpu_gb=8)
    rig.scheduler.overhead_gpu_bytes = G // 2  # reserved before any in-process model loaded
    for name in ("a", "b"):
        rig.ask(name)
        rig.up(name)
        rig.done(name)
        rig.now += 1
    assert [call[:2] for call in rig.effects.take()] == [("load", "a"), ("load", "b")]
    rig.scheduler.measured_overhead(0, rig.now, gpu_bytes=int(1.5 * G))  # 4 + 3 + 1.5 > 8
    assert rig.effects.take() == [("stop", "a")]
    rig.scheduler.stopped("a", rig.now)
    assert rig.scheduler.budget.gpu_bytes == int(6.5 * G)
    assert rig.within_budget()
    rig.scheduler.measured_overhead(0, rig.now, gpu_bytes=None)  # NVML could not tell: it stands
    assert rig.scheduler.budget.gpu_bytes == int(6.5 * G)
    rig.scheduler.measured_overhead(0, rig.now, gpu_bytes=G // 4)  # less than reserved: room again
    rig.ask("a")
    assert [call[:2] for call in rig.effects.take()] == [("load", "a")]


def test_nothing_is_brought_up_before_the_servers_own_footprint_is_measured() -> None:
    """At start the server holds a fraction of what it will once its engine libraries are in: a budget
    less that guess admitted three models where one fitted (CI). Requests wait for the measurement,
    which then decides what fits."""
    rig = Rig({"chat": 5, "embed": 2}, overhead_measured=False)
    chat, embed = rig.ask("chat"), rig.ask("embed")
    assert rig.effects.take() == []
    why = rig.scheduler.withdraw(embed, rig.now)
    assert "engine libraries" in why
    embed = rig.ask("embed")
    rig.scheduler.measured_overhead(4 * G, rig.now)  # 6 GiB for models: chat first, embed after it
    assert [call[:2] for call in rig.effects.take()] == [("load", "chat")]
    rig.up("chat")
    assert rig.effects.granted == [chat.seq]
    rig.done("chat")
    assert [call[:2] for call in rig.effects.take()] == [("stop", "chat"), ("load", "embed")]
    assert embed.seq not in rig.effects.refused


# --- pins, time to live, operators ------------------------------------------------------------------------
def test_a_pinned_model_is_never_evicted_and_what_cannot_fit_beside_it_is_refused() -> None:
    rig = Rig({"a": 6, "b": 6}, pinned=("a",))
    rig.ask("a")
    rig.up("a")
    rig.done("a")
    b = rig.ask("b")
    assert isinstance(rig.effects.refused[b.seq], InsufficientMemoryError)
    assert rig.state("a") is ModelState.LOADED
    with pytest.raises(ModelBusyError, match="pinned"):
        rig.scheduler.unload("a", rig.now)
    rig.scheduler.pin("a", False, rig.now)
    rig.effects.take()
    rig.ask("b")
    assert rig.effects.take() == [("stop", "a"), ("load", "b", frozenset({"a"}))]


def test_idle_models_go_after_their_time_to_live_unless_keep_alive_says_otherwise() -> None:
    rig = Rig({"a": 1, "b": 1, "c": 1}, idle_ttl_s=60)
    rig.ask("a")
    rig.ask("b", keep_alive_s=-1)  # forever
    rig.ask("c", keep_alive_s=0)  # as soon as it is idle
    for name in ("a", "b", "c"):
        rig.up(name)
    rig.effects.take()
    for name in ("a", "b", "c"):
        rig.done(name)
    assert rig.effects.take() == [("stop", "c")]
    rig.now += 59
    rig.scheduler.tick(rig.now)
    assert rig.effects.take() == []
    rig.now += 2
    rig.scheduler.tick(rig.now)
    assert rig.effects.take() == [("stop", "a")]
    assert rig.state("b") is ModelState.LOADED


def test_an_operators_unload_is_refused_while_requests_hold_the_model() -> None:
    rig = Rig({"a": 1})
    rig.ask("a")
    with pytest.raises(ModelBusyError, match="loading"):
        rig.scheduler.unload("a", rig.now)
    rig.up("a")
    with pytest.raises(ModelBusyError, match="in flight"):
        rig.scheduler.unload("a", rig.now)
    rig.done("a")
    rig.effects.take()
    assert rig.scheduler.unload("a", rig.now) is True
    assert rig.effects.take() == [("stop", "a")]
    rig.scheduler.stopped("a", rig.now)
    assert rig.scheduler.unload("a", rig.now) is False


def test_auto_unload_off_refuses_what_does_not_fit() -> None:
    rig = Rig({"a": 6, "b": 6}, may_evict=False)
    rig.ask("a")
    rig.up("a")
    rig.done("a")
    b = rig.ask("b")
    assert "LLM_AUTO_UNLOAD_MODELS is off" in rig.effects.refused[b.seq].message
    assert rig.state("a") is ModelState.LOADED


def test_closing_refuses_the_waiting_and_the_new() -> None:
    rig = Rig({"a": 1})
    waiting = rig.ask("a")
    rig.scheduler.close()
    assert isinstance(rig.effects.refused[waiting.seq], ShuttingDownError)
    late = rig.ask("a")
    assert isinstance(rig.effects.refused[late.seq], ShuttingDownError)


# --- parking (a GPU) ---------------------------------------------------------------------------------------
def test_an_evicted_gpu_model_is_parked_then_woken_not_reloaded() -> None:
    rig = Rig({"a": 5, "b": 5}, gpu_gb=8, ram_gb=20)
    parked = Footprint(gpu_bytes=G // 4, ram_bytes=5 * G)
    rig.ask("a")
    rig.up("a", parking=parked)
    rig.done("a")
    rig.effects.take()
    rig.now += 1
    rig.ask("b")
    assert rig.effects.take() == [("park", "a"), ("load", "b", frozenset({"a"}))]
    assert rig.scheduler.records["a"].phase is Phase.PARKING
    rig.scheduler.parked("a", rig.now, seconds=0.5, measured=None)
    rig.up("b", parking=parked)
    rig.done("b")
    rig.now += 1
    rig.ask("a")
    assert rig.effects.take() == [("park", "b"), ("wake", "a", frozenset({"b"}))]
    assert rig.within_budget()


def test_a_model_that_fits_only_at_the_servers_least_footprint_waits_without_draining_others() -> None:
    """A reading of the server's footprint taken while requests ran can leave a model no room for now:
    it waits (bounded by its request's timeout) and nothing is drained for it, so the others serve;
    one that does not fit even at the least footprint ever measured is refused at once."""
    rig = Rig({"chat": 6, "embed": 1})
    rig.scheduler.measured_overhead(2 * G, rig.now)  # the least reading: 6 fits in 10 - 2
    rig.ask("embed")
    rig.up("embed")
    rig.effects.take()
    rig.scheduler.measured_overhead(int(4.5 * G), rig.now)  # now 6 does not fit in 10 - 4.5
    busy = rig.ask("embed")  # embed stays in use
    chat = rig.ask("chat")
    assert chat.seq not in rig.effects.refused
    assert rig.effects.take() == []
    assert rig.scheduler.records["embed"].drained_for == set()
    rig.ask("embed")
    assert rig.effects.granted[-1] == busy.seq + 2  # embed still serves at once
    big = Rig({"huge": 9})
    big.scheduler.measured_overhead(2 * G, big.now)
    refused = big.ask("huge")
    assert isinstance(big.effects.refused[refused.seq], InsufficientMemoryError)


# --- the journal ------------------------------------------------------------------------------------------
def _journal(rig: Rig) -> list[tuple[str, str, str | None, float | None]]:
    return [
        (e.model, e.event.value, e.cause.value if e.cause else None, e.seconds)
        for e in rig.scheduler.journal.since()
    ]


def test_the_journal_pairs_each_decision_with_its_outcome_the_reason_and_the_seconds() -> None:
    rig = Rig({"a": 5, "b": 5, "bad": 1}, gpu_gb=8, ram_gb=20)
    parked = Footprint(gpu_bytes=G // 4, ram_bytes=5 * G)
    rig.ask("a")
    rig.scheduler.brought_up("a", rig.now + 3, seconds=3.0, measured=None, parking=parked)
    rig.done("a")
    rig.now += 10
    rig.ask("b")  # a is parked to make room for b
    rig.now += 1
    rig.scheduler.parked("a", rig.now, seconds=0.5, measured=None)
    rig.up("b")
    rig.done("b")
    rig.scheduler.pin("b", True, rig.now)
    rig.ask("bad")
    rig.scheduler.bring_up_failed("bad", rig.now + 2, "SafetensorError: incomplete metadata")
    rig.scheduler.engine_died("b", rig.now, "killed by SIGKILL")
    rig.now += 4
    rig.scheduler.stopped("b", rig.now)
    assert _journal(rig) == [
        ("a", "loading", None, None),
        ("a", "loaded", None, 3.0),
        ("a", "parking", "evicted", None),
        ("b", "loading", None, None),
        ("a", "parked", "evicted", 0.5),
        ("b", "loaded", None, 1.0),
        ("b", "pinned", None, None),
        ("bad", "loading", None, None),
        ("bad", "failed", None, 2.0),
        ("b", "died", None, None),
        ("b", "unloading", "engine_died", None),
        ("b", "unloaded", "engine_died", 4.0),
    ]
    entries = rig.scheduler.journal.since()
    assert entries[2].reason == "least recently used idle model, making room for b"
    assert entries[0].placement == "gpu"
    assert entries[0].reason
    assert entries[8].reason == "SafetensorError: incomplete metadata"
    assert [e.seq for e in rig.scheduler.journal.since(after=10)] == [11, 12]
    assert [e.seq for e in rig.scheduler.journal.since(limit=2)] == [11, 12]


def test_an_idle_model_past_its_time_to_live_and_an_operators_unload_are_told_apart() -> None:
    rig = Rig({"a": 1, "b": 1}, ttl={"a": 30})
    for name in ("a", "b"):
        rig.ask(name)
        rig.up(name)
        rig.done(name)
    rig.scheduler.unload("b", rig.now)
    rig.now += 31
    rig.scheduler.tick(rig.now)
    takedowns = [(e.model, e.cause) for e in rig.scheduler.journal.since() if e.event.value == "unloading"]
    assert [(m, c.value if c else None) for m, c in takedowns] == [("b", "operator"), ("a", "idle")]
