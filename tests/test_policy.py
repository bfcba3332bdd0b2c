"""The swap policy and the placement plan, table-driven, with no model anywhere."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from local_llm.errors import InsufficientMemoryError
from local_llm.manager.policy import (
    Admission,
    Budget,
    Holding,
    Need,
    Stage,
    admit,
    expired,
    to_drain,
    within_budget,
)
from local_llm.placement import (
    ContextFit,
    MemoryEstimate,
    ModelNeed,
    Placement,
    PlacementRules,
    Room,
    ServingFacts,
    plan_placement,
)

pytestmark = pytest.mark.unit

G = 1024**3
M = 1024**2


def loaded(
    name: str, used: float, *, gpu: float = 0, ram: float = 0, busy: int = 0, park: bool = False
) -> Holding:
    """A loaded model holding ``gpu``/``ram`` GiB; ``park``: it can park its weights (= its GPU share) in RAM."""
    return Holding(
        name,
        Stage.LOADED,
        int(gpu * G),
        int(ram * G),
        in_flight=busy,
        last_used=used,
        parked_gpu_bytes=int(0.5 * G) if park else None,
        parked_ram_bytes=int(gpu * G) if park else None,
    )


def parked(name: str, used: float, *, gpu: float = 0.5, ram: float = 2) -> Holding:
    return Holding(name, Stage.PARKED, int(gpu * G), int(ram * G), last_used=used)


def pinned(name: str, *, gpu: float = 0, ram: float = 0) -> Holding:
    return Holding(name, Stage.LOADED, int(gpu * G), int(ram * G), pinned=True)


def loading(name: str, *, gpu: float = 0, ram: float = 0) -> Holding:
    return Holding(name, Stage.LOADING, int(gpu * G), int(ram * G))


def need(gpu: float = 0, ram: float = 0) -> Need:
    return Need("new", int(gpu * G), int(ram * G))


CPU = Budget(ram_bytes=4 * G)
GPU = Budget(ram_bytes=16 * G, gpu_bytes=8 * G)

ADMIT_CASES = [
    # (case, holdings, budget, need, expected)
    ("fits as is", [loaded("a", 1, ram=1)], CPU, need(ram=2), Admission(True)),
    ("empty", [], CPU, need(ram=4), Admission(True)),
    (
        "evict the least recently used until it fits",
        [loaded("a", 5, ram=1.5), loaded("b", 1, ram=1.5), loaded("c", 3, ram=0.5)],
        CPU,
        need(ram=2),
        Admission(True, unload=("b",)),
    ),
    (
        "two must go, oldest first",
        [loaded("a", 5, ram=1.5), loaded("b", 1, ram=1.5), loaded("c", 3, ram=0.5)],
        CPU,
        need(ram=2.5),
        Admission(True, unload=("b", "c")),
    ),
    (
        "a busy model is never evicted; the next oldest goes",
        [loaded("a", 1, ram=2, busy=1), loaded("b", 9, ram=2)],
        CPU,
        need(ram=2),
        Admission(True, unload=("b",)),
    ),
    (
        "all busy: wait, touch nothing",
        [loaded("a", 1, ram=2, busy=1), loaded("b", 2, ram=2, busy=3)],
        CPU,
        need(ram=1),
        Admission(False, short="RAM: needs 1,024 MiB, 0 MiB free; the rest is in use"),
    ),
    (
        "evicting every idle one would not be enough: wait, touch nothing",
        [loaded("a", 1, ram=1), loaded("b", 2, ram=2, busy=1)],
        CPU,
        need(ram=3),
        Admission(False, short="RAM: needs 3,072 MiB, 1,024 MiB free; the rest is in use"),
    ),
    (
        "a loading model holds its reservation and stays",
        [loading("a", ram=2), loaded("b", 9, ram=2)],
        CPU,
        need(ram=2),
        Admission(True, unload=("b",)),
    ),
    (
        "pinned models stay",
        [pinned("a", ram=2), loaded("b", 9, ram=2)],
        CPU,
        need(ram=2),
        Admission(True, unload=("b",)),
    ),
    (
        "only models that free the short device go: a CPU model does not help the GPU",
        [loaded("cpu-embed", 1, ram=1), loaded("gpu-chat", 5, gpu=6)],
        GPU,
        need(gpu=4),
        Admission(True, unload=("gpu-chat",)),
    ),
    (
        "a GPU model parks in RAM rather than unloading",
        [loaded("chat", 1, gpu=6, park=True)],
        GPU,
        need(gpu=4),
        Admission(True, park=("chat",)),
    ),
    (
        "parking needs RAM for the weights: without it, unload",
        [loaded("chat", 1, gpu=6, park=True)],
        Budget(ram_bytes=5 * G, gpu_bytes=8 * G),
        need(gpu=4),
        Admission(True, unload=("chat",)),
    ),
    (
        "parking off: unload",
        [loaded("chat", 1, gpu=6, park=True)],
        GPU,
        need(gpu=4),
        "no-park",
    ),
    (
        "a parked model gives its RAM back when RAM runs short",
        [parked("old", 1, ram=10), loaded("chat", 5, gpu=2)],
        GPU,
        need(ram=8),
        Admission(True, unload=("old",)),
    ),
    (
        "what a parked model keeps on the GPU counts",
        [parked("old", 1, gpu=0.5, ram=2), loaded("a", 5, gpu=7.5, busy=1)],
        GPU,
        need(gpu=0.5),
        Admission(True, unload=("old",)),
    ),
    (
        "a slot under LLM_MODEL_CACHE_SIZE: evict even with memory to spare",
        [loaded("a", 2, ram=0.1), loaded("b", 1, ram=0.1)],
        Budget(ram_bytes=4 * G, max_models=2),
        need(ram=0.1),
        Admission(True, unload=("b",)),
    ),
    (
        "parked models take no slot",
        [parked("p", 1), loaded("a", 2, ram=0.1)],
        Budget(ram_bytes=16 * G, gpu_bytes=8 * G, max_models=2),
        need(ram=0.1),
        Admission(True),
    ),
    (
        "auto-unload off: refuse to evict",
        [loaded("a", 1, ram=3)],
        CPU,
        need(ram=2),
        "no-evict",
    ),
    (
        "ties broken by name",
        [loaded("b", 1, ram=2), loaded("a", 1, ram=2)],
        CPU,
        need(ram=2),
        Admission(True, unload=("a",)),
    ),
]


@pytest.mark.parametrize(
    ("case", "holdings", "budget", "new", "expected"), ADMIT_CASES, ids=[c[0] for c in ADMIT_CASES]
)
def test_admit(
    case: str, holdings: list[Holding], budget: Budget, new: Need, expected: Admission | str
) -> None:
    if expected == "no-park":
        assert admit(holdings, budget, new, may_park=False) == Admission(True, unload=("chat",))
        return
    if expected == "no-evict":
        decision = admit(holdings, budget, new, may_evict=False)
        assert not decision.fits
        assert not decision.unload
        assert "LLM_AUTO_UNLOAD_MODELS" in decision.short
        return
    decision = admit(holdings, budget, new)
    assert decision == expected
    if decision.fits:
        # Carrying the decision out leaves the ledger, with the newcomer, within the budget.
        after = [h for h in holdings if h.name not in decision.unload and h.name not in decision.park]
        after += [
            Holding(h.name, Stage.PARKED, h.parked_gpu_bytes or 0, h.parked_ram_bytes or 0)
            for h in holdings
            if h.name in decision.park
        ]
        after.append(Holding("new", Stage.LOADING, new.gpu_bytes, new.ram_bytes))
        assert within_budget(after, budget)


EXPIRY_CASES = [
    ("no TTL", [loaded("a", 0)], {"a": None}, 100, ()),
    ("past its TTL", [loaded("a", 0), loaded("b", 90)], {"a": 60, "b": 60}, 100, ("a",)),
    ("busy models do not expire", [loaded("a", 0, busy=1)], {"a": 1}, 100, ()),
    ("pinned models do not expire", [pinned("a")], {"a": 1}, 100, ()),
    ("parked models expire too", [parked("p", 0)], {"p": 10}, 100, ("p",)),
    ("TTL 0: as soon as idle", [loaded("a", 100)], {"a": 0}, 100, ("a",)),
]


@pytest.mark.parametrize(
    ("case", "holdings", "ttl", "now", "expected"), EXPIRY_CASES, ids=[c[0] for c in EXPIRY_CASES]
)
def test_expired(
    case: str, holdings: list[Holding], ttl: dict[str, float | None], now: float, expected: tuple[str, ...]
) -> None:
    assert expired(holdings, ttl, now).unload == expected


# --- the placement plan --------------------------------------------------------------------------
def model_need(
    weights: float, other: float = 0.5, *, offload: bool = True, cpu_weights: float | None = None
) -> ModelNeed:
    gpu = MemoryEstimate(weights_bytes=int(weights * G), runtime_bytes=int(other * G))
    cpu = MemoryEstimate(weights_bytes=int((cpu_weights or weights) * G), runtime_bytes=int(other * G))
    return ModelNeed("m", on_gpu=gpu, on_cpu=cpu, can_offload=offload, checkpoint="test")


PLAN_CASES = [
    # (case, need, room, rules, placement, gpu GiB, ram GiB, offload GiB)
    ("no GPU: CPU", model_need(1), Room(4 * G), PlacementRules(), Placement.CPU, 0, 1.5, 0),
    ("fits the GPU", model_need(1), Room(4 * G, 8 * G), PlacementRules(), Placement.GPU, 1.5, 0, 0),
    ("weights too large: offload the excess", model_need(14, 1), Room(32 * G, 8 * G), PlacementRules(), Placement.GPU_OFFLOAD, 8, 7, 7),
    ("offload disabled: CPU", model_need(14, 1), Room(32 * G, 8 * G), PlacementRules(enable_offload=False), Placement.CPU, 0, 15, 0),
    ("engine cannot offload: CPU", model_need(9, 0.5, offload=False), Room(32 * G, 8 * G), PlacementRules(), Placement.CPU, 0, 9.5, 0),
    ("threshold forces offload of the part above it", model_need(4, 1), Room(32 * G, 8 * G), PlacementRules(offload_threshold_bytes=3 * G), Placement.GPU_OFFLOAD, 4, 1, 1),
    ("models.yaml says cpu", model_need(1), Room(4 * G, 8 * G), PlacementRules(placement="cpu"), Placement.CPU, 0, 1.5, 0),
    ("CPU weights differ (float32 kept on a CPU)", model_need(1, cpu_weights=2), Room(4 * G), PlacementRules(), Placement.CPU, 0, 2.5, 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "need", "room", "rules", "placement", "gpu", "ram", "offload"),
    PLAN_CASES,
    ids=[c[0] for c in PLAN_CASES],
)
def test_plan_placement(
    case: str,
    need: ModelNeed,
    room: Room,
    rules: PlacementRules,
    placement: Placement,
    gpu: float,
    ram: float,
    offload: float,
) -> None:
    plan = plan_placement(need, room, rules)
    assert plan.placement is placement, plan.reason
    assert (plan.gpu_bytes, plan.ram_bytes, plan.offload_bytes) == (
        int(gpu * G),
        int(ram * G),
        int(offload * G),
    )
    assert plan.reason


def chat_need(
    weights: float, *, full_tokens: int = 32768, min_tokens: int = 4096, graphs: float = 0
) -> ModelNeed:
    """A vLLM chat model whose KV cache costs 64 KiB a token of context (two sequences of 32 KiB),
    whose runtime of 1.5 GiB holds ``graphs`` GiB of CUDA graphs."""
    per_token = 64 * 1024
    gpu = MemoryEstimate(
        weights_bytes=int(weights * G), kv_cache_bytes=per_token * full_tokens, runtime_bytes=int(1.5 * G)
    )
    return ModelNeed(
        "chat",
        on_gpu=gpu,
        on_cpu=gpu,
        can_offload=True,
        checkpoint="test",
        facts_on_gpu=ServingFacts(context_tokens=full_tokens, dtype="auto"),
        context_fit=ContextFit(
            per_token, full_tokens=full_tokens, min_tokens=min_tokens, graphs_bytes=int(graphs * G)
        ),
    )


CONTEXT_CASES = [
    # (case, need, GPU room GiB, rules, placement, context served)
    # 5.3 + 1.5 GiB leave 0.8 GiB of 95% of an 8 GiB card: 13,107 tokens, down to a multiple of 256.
    ("the full context does not fit: cut to what does", chat_need(5.3), 8, PlacementRules(), Placement.GPU, 13056),
    ("the full context fits: kept", chat_need(5.3), 16, PlacementRules(), Placement.GPU, 32768),
    ("what fits is under the least allowed: offload at the least", chat_need(5.3, min_tokens=24576), 8, PlacementRules(), Placement.GPU_OFFLOAD, 24576),
    ("the weights alone overflow: offload at the least context", chat_need(7.5), 8, PlacementRules(), Placement.GPU_OFFLOAD, 4096),
    ("placement: gpu takes the shorter context", chat_need(5.3), 8, PlacementRules(placement="gpu"), Placement.GPU, 13056),
    ("the offload threshold still offloads", chat_need(5.3), 8, PlacementRules(offload_threshold_bytes=4 * G), Placement.GPU_OFFLOAD, 4096),
    ("it fits whole past the threshold: full context", chat_need(5.3), 16, PlacementRules(offload_threshold_bytes=4 * G), Placement.GPU_OFFLOAD, 32768),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "need", "gpu_room", "rules", "placement", "context"),
    CONTEXT_CASES,
    ids=[c[0] for c in CONTEXT_CASES],
)
def test_a_chat_models_context_is_cut_to_fit_the_gpu_before_weights_are_offloaded_at_the_least(
    case: str,
    need: ModelNeed,
    gpu_room: float,
    rules: PlacementRules,
    placement: Placement,
    context: int,
) -> None:
    plan = plan_placement(need, Room(64 * G, int(gpu_room * G)), rules)
    assert plan.placement is placement, plan.reason
    assert plan.facts.context_tokens == context
    assert plan.estimate.kv_cache_bytes == context * 64 * 1024
    assert plan.gpu_bytes <= gpu_room * G
    if context != 32768:
        said = "cut from 32,768 to" if placement is Placement.GPU else "at"
        assert f"{said} {context:,} tokens" in plan.reason, plan.reason


EAGER_CASES = [
    # (case, need, GPU room GiB, placement, eager, context served)
    # 6.2 + 1.5 GiB + 4,096 tokens (0.25 GiB) overflow 95% of 8 GiB; without 0.4 GiB of graphs 307 MiB
    # are left for KV: 4,915 tokens, down to a multiple of 256.
    ("too big at the least context: graphs off, whole", chat_need(6.2, graphs=0.4), 8, Placement.GPU, True, 4864),
    ("graphs off and the full context fits", chat_need(5.3, full_tokens=6144, graphs=0.4), 7.15, Placement.GPU, True, 6144),
    ("a shorter context suffices: graphs stay", chat_need(5.3, graphs=0.4), 8, Placement.GPU, False, 13056),
    ("already eager (no graphs to free): offload", chat_need(6.2), 8, Placement.GPU_OFFLOAD, False, 4096),
    ("even without graphs too big: offload, compiled", chat_need(6.6, graphs=0.4), 8, Placement.GPU_OFFLOAD, False, 4096),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "need", "gpu_room", "placement", "eager", "context"),
    EAGER_CASES,
    ids=[c[0] for c in EAGER_CASES],
)
def test_cuda_graphs_are_turned_off_to_keep_a_chat_model_whole_before_weights_are_offloaded(
    case: str, need: ModelNeed, gpu_room: float, placement: Placement, eager: bool, context: int
) -> None:
    plan = plan_placement(need, Room(64 * G, int(gpu_room * G)), PlacementRules())
    assert plan.placement is placement, plan.reason
    assert plan.facts.enforce_eager is eager
    assert plan.facts.context_tokens == context
    assert plan.gpu_bytes <= gpu_room * G
    graphs = need.context_fit.graphs_bytes if need.context_fit and eager else 0
    assert plan.estimate.runtime_bytes == need.on_gpu.runtime_bytes - graphs
    assert ("CUDA graphs off" in plan.reason) is eager, plan.reason


REFUSAL_CASES = [
    ("nothing fits anywhere", model_need(20, 1), Room(8 * G, 8 * G), PlacementRules(), "21,504 MiB"),
    ("no GPU, too large for RAM", model_need(5), Room(4 * G), PlacementRules(), "4,096 MiB of RAM"),
    ("placement: gpu that does not fit", model_need(9), Room(32 * G, 8 * G), PlacementRules(placement="gpu"), "placement: gpu"),
    ("offload would leave nothing else room", model_need(2, 9), Room(32 * G, 8 * G), PlacementRules(placement="gpu+offload"), "gpu+offload"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "need", "room", "rules", "says"), REFUSAL_CASES, ids=[c[0] for c in REFUSAL_CASES]
)
def test_plan_refuses_naming_need_and_budget(
    case: str, need: ModelNeed, room: Room, rules: PlacementRules, says: str
) -> None:
    with pytest.raises(InsufficientMemoryError) as refused:
        plan_placement(need, room, rules)
    assert says in refused.value.message
    assert "budget" in refused.value.message


DRAIN_CASES = [
    ("busy model in the way drains", [loaded("a", 1, ram=3, busy=2)], CPU, need(ram=2), ("a",)),
    ("an idle one suffices: nothing drains", [loaded("a", 1, ram=2, busy=1), loaded("b", 2, ram=2)], CPU, need(ram=2), ()),
    ("it could never fit: nothing drains", [pinned("p", ram=3), loaded("a", 1, ram=1, busy=1)], CPU, need(ram=2), ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "holdings", "budget", "new", "expected"), DRAIN_CASES, ids=[c[0] for c in DRAIN_CASES]
)
def test_to_drain(
    case: str, holdings: list[Holding], budget: Budget, new: Need, expected: tuple[str, ...]
) -> None:
    """Busy models a waiting model needs gone stop taking new requests, so a swap is not starved."""
    assert to_drain(holdings, budget, new) == expected


def test_gpu_offload_asked_for_a_model_that_fits_runs_whole_on_the_gpu() -> None:
    plan = plan_placement(model_need(1), Room(4 * G, 8 * G), PlacementRules(placement="gpu+offload"))
    assert (plan.placement, plan.offload_bytes) == (Placement.GPU, 0)


@pytest.mark.parametrize("eager", [True, False])
def test_the_plans_eager_choice_is_what_vllm_is_started_with(eager: bool, tmp_path: Path) -> None:
    """The plan's facts are the one place the mode is decided: vLLM's engine args follow them."""
    from local_llm.config import Settings
    from local_llm.engines.chat.vllm_engine import VllmChatEngine
    from local_llm.registry.spec import ModelKind, ModelSpec, WeightFormat

    need = chat_need(6.2, graphs=0.4) if eager else chat_need(5.3, graphs=0.4)
    plan = plan_placement(need, Room(64 * G, 8 * G), PlacementRules())
    spec = ModelSpec("chat", ModelKind.CHAT, tmp_path, WeightFormat.SAFETENSORS, 2**20, "test", "test")
    # LLM_VLLM_ENFORCE_EAGER unset: only the plan can turn the graphs off.
    engine = VllmChatEngine(spec, replace(plan, placement=Placement.CPU), Settings(vllm_enforce_eager=False))
    args = engine._engine_args(tmp_path)
    assert args["enforce_eager"] is eager
    assert args["max_model_len"] == plan.facts.context_tokens
