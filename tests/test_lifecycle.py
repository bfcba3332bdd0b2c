"""The manager's lifecycle with fake engines and a fake machine: no model, no GPU, milliseconds each.

What the engines really do (vLLM sleep mode, torch modules moving) is tested on real models in
test_swaps.py and on the GPU (docs/benchmarks.md); here it is the manager's side of the contract:
the ledger stays within budget, busy models stay, waits are bounded, parked models come back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from local_llm.config import Settings
from local_llm.engines.base import Engine
from local_llm.errors import InsufficientMemoryError, ModelLoadError, ModelLoadTimeoutError
from local_llm.manager import ModelManager, ModelState
from local_llm.manager.policy import within_budget
from local_llm.placement import (
    DeviceSnapshot,
    Footprint,
    GpuSnapshot,
    MemoryEstimate,
    ModelNeed,
    Placement,
    PlacementPlan,
)
from local_llm.registry import ModelKind, ModelRegistry, ModelSpec, WeightFormat

pytestmark = pytest.mark.unit

G = 1024**3


class FakeEngine(Engine):
    backend = "fake"

    def __init__(
        self,
        spec: ModelSpec,
        plan: PlacementPlan,
        events: list[tuple[str, str]],
        fail: bool,
        fail_pinning: bool = False,
    ) -> None:
        super().__init__(spec, plan)
        self.events = events
        self.fail = fail
        self.fail_pinning = fail_pinning
        self.awake = False

    async def start(self) -> None:
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("weights are corrupt")
        self.awake = True
        self.events.append(("start", self.spec.name))

    async def stop(self) -> None:
        self.events.append(("stop", self.spec.name))

    @property
    def parked_footprint(self) -> Footprint | None:
        if self.plan.placement is not Placement.GPU:
            return None
        return Footprint(gpu_bytes=G // 4, ram_bytes=self.plan.estimate.weights_bytes)

    async def prepare_parking(self) -> None:
        if self.fail_pinning:
            raise RuntimeError("CUDA error: out of memory (pinning host memory)")
        self.events.append(("prepare", self.spec.name))

    async def park(self) -> None:
        self.awake = False
        self.events.append(("park", self.spec.name))

    async def wake(self) -> None:
        self.awake = True
        self.events.append(("wake", self.spec.name))


def spec(name: str) -> ModelSpec:
    return ModelSpec(
        name, ModelKind.CHAT, Path("/nowhere") / name, WeightFormat.SAFETENSORS, 0, "test", "test"
    )


def machine(gpu_gb: float | None, ram_gb: float = 64) -> DeviceSnapshot:
    gpu = GpuSnapshot("fake GPU", int(gpu_gb * G), int(gpu_gb * G), 0, "test") if gpu_gb else None
    return DeviceSnapshot(int(ram_gb * G), int(ram_gb * G), 0, gpu)


def need_of(name: str, weights_gb: float) -> ModelNeed:
    estimate = MemoryEstimate(weights_bytes=int(weights_gb * G), runtime_bytes=G // 2)
    return ModelNeed(name, on_gpu=estimate, on_cpu=estimate, can_offload=True, checkpoint="test")


class Rig:
    """A manager over fake models ``sizes`` (weights in GiB) on a fake machine."""

    def __init__(
        self,
        sizes: dict[str, float],
        *,
        gpu_gb: float | None = 8,
        fail: tuple[str, ...] = (),
        fail_pinning: tuple[str, ...] = (),
        **settings: object,
    ) -> None:
        self.events: list[tuple[str, str]] = []
        registry = ModelRegistry([spec(name) for name in sizes])
        self.manager = ModelManager(
            registry,
            Settings(**settings),  # type: ignore[arg-type]
            engine_factory=lambda s, plan, _: FakeEngine(
                s, plan, self.events, s.name in fail, s.name in fail_pinning
            ),
            device_probe=lambda: machine(gpu_gb),
            need_estimator=lambda s: need_of(s.name, sizes[s.name]),
        )

    def state(self, name: str) -> ModelState:
        return self.manager.status(name).state

    def within_budget(self) -> bool:
        ledger = self.manager.ledger()
        return within_budget(ledger.holdings, ledger.budget)


def run(scenario):  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_an_evicted_gpu_model_is_parked_and_woken_not_reloaded() -> None:
    async def scenario() -> None:
        rig = Rig({"a": 5, "b": 5})
        async with rig.manager.lease("a"):
            pass
        async with rig.manager.lease("b"):
            assert rig.state("a") is ModelState.PARKED
            assert rig.within_budget()
        async with rig.manager.lease("a") as engine:
            assert engine.awake  # type: ignore[attr-defined]
            assert rig.state("b") is ModelState.PARKED
        assert rig.events == [
            ("start", "a"),
            ("prepare", "a"),
            ("park", "a"),
            ("start", "b"),
            ("prepare", "b"),
            ("park", "b"),
            ("wake", "a"),
        ]
        records = rig.manager.scheduler.records
        assert (records["a"].loads + records["b"].loads, records["a"].wakes) == (2, 1)
        assert rig.manager.status("a").wake_seconds is not None
        await rig.manager.shutdown()

    run(scenario)


def test_what_a_park_needs_is_prepared_as_part_of_the_load_only_where_parking_can_happen() -> None:
    """The first park of an in-process model page-locked its RAM buffer while the request that needed
    the GPU waited (2 s of a 2.2 s wake on an H200): that work belongs to the load."""

    async def scenario() -> None:
        parking = Rig({"a": 5})
        async with parking.manager.lease("a"):
            assert parking.events == [("start", "a"), ("prepare", "a")]
        no_parking = Rig({"a": 5}, enable_parking=False)
        no_gpu = Rig({"a": 5}, gpu_gb=None)
        for rig in (no_parking, no_gpu):
            async with rig.manager.lease("a"):
                assert rig.events == [("start", "a")]
        for rig in (parking, no_parking, no_gpu):
            await rig.manager.shutdown()

    run(scenario)


def test_a_model_whose_parking_ram_cannot_be_pinned_still_serves_and_parks_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        rig = Rig({"a": 5, "b": 5}, fail_pinning=("a",))
        async with rig.manager.lease("a") as engine:
            assert engine.awake  # type: ignore[attr-defined]
        async with rig.manager.lease("b"):
            assert rig.state("a") is ModelState.PARKED
        assert ("park", "a") in rig.events
        await rig.manager.shutdown()

    run(scenario)
    assert "a: no RAM pinned to park it in yet" in caplog.text


def test_parking_needs_ram_else_the_model_is_unloaded() -> None:
    async def scenario() -> None:
        rig = Rig({"a": 5, "b": 5}, available_ram_gb=2)
        async with rig.manager.lease("a"):
            pass
        async with rig.manager.lease("b"):
            assert rig.state("a") is ModelState.AVAILABLE
        assert ("park", "a") not in rig.events
        assert ("stop", "a") in rig.events
        await rig.manager.shutdown()

    run(scenario)


def test_a_request_waits_for_a_busy_model_then_is_served_within_budget() -> None:
    async def scenario() -> None:
        rig = Rig({"a": 5, "b": 5}, enable_parking=False)
        served: list[str] = []

        async def use_b() -> None:
            async with rig.manager.lease("b"):
                served.append("b")

        async with rig.manager.lease("a"):
            waiting = asyncio.create_task(use_b())
            await asyncio.sleep(0.3)
            assert not served
            assert rig.state("a") is ModelState.LOADED
            assert rig.state("b") is ModelState.LOADING
            assert rig.within_budget()
        await waiting
        assert served == ["b"]
        assert rig.state("a") is ModelState.AVAILABLE
        assert rig.within_budget()
        await rig.manager.shutdown()

    run(scenario)


def test_the_wait_is_bounded_in_time_and_says_what_it_waited_for() -> None:
    async def scenario() -> None:
        rig = Rig({"a": 5, "b": 5}, model_load_timeout_s=0.5)

        async def use_b() -> None:
            async with rig.manager.lease("b"):
                pass

        async with rig.manager.lease("a"):
            waiters = [asyncio.create_task(use_b()) for _ in range(2)]
            results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, ModelLoadTimeoutError) for r in results), results
        assert all("waiting for memory" in r.message and r.retry_after_s for r in results)  # type: ignore[union-attr]
        assert rig.manager.waiting() == 0
        # The model that waited too long loads on the next request, once memory is free.
        await use_b()
        await rig.manager.shutdown()

    run(scenario)


def test_a_request_cancelled_while_waiting_leaves_nothing_behind() -> None:
    async def scenario() -> None:
        rig = Rig({"a": 5, "b": 5})

        async def use_b() -> None:
            async with rig.manager.lease("b"):
                pass

        async with rig.manager.lease("a"):
            waiter = asyncio.create_task(use_b())
            await asyncio.sleep(0.05)
            assert rig.manager.waiting() == 1
            waiter.cancel()  # the client went away
            await asyncio.gather(waiter, return_exceptions=True)
            assert rig.manager.waiting() == 0
        assert rig.manager.status("a").in_flight == 0
        assert rig.state("b") is ModelState.AVAILABLE  # nobody asked any more: no load for nobody
        await rig.manager.shutdown()

    run(scenario)


def test_pinned_models_are_never_evicted() -> None:
    async def scenario() -> None:
        rig = Rig({"a": 5, "b": 5}, pinned_models=["a"])
        async with rig.manager.lease("a"):
            pass
        # b is planned for the room a leaves it: the GPU budget less a's share, the rest offloaded.
        async with rig.manager.lease("b"):
            plan = rig.manager.status("b").plan
            assert plan is not None
            assert plan.placement is Placement.GPU_OFFLOAD
            assert rig.state("a") is ModelState.LOADED
            assert rig.within_budget()
        await rig.manager.shutdown()

        strict = Rig(
            {"a": 5, "b": 5}, pinned_models=["a"], enable_gpu_memory_offload=False, available_ram_gb=1
        )
        async with strict.manager.lease("a"):
            pass
        with pytest.raises(InsufficientMemoryError, match="'b' does not fit"):
            async with strict.manager.lease("b"):
                pass
        assert strict.state("a") is ModelState.LOADED
        strict.manager.pin("a", False)
        async with strict.manager.lease("b"):
            assert strict.state("a") is not ModelState.LOADED
        await strict.manager.shutdown()

    run(scenario)


def test_idle_models_unload_after_their_ttl_unless_a_request_keeps_them() -> None:
    async def scenario() -> None:
        rig = Rig({"a": 1, "b": 1}, model_idle_ttl_s=0.2)
        await rig.manager.start()
        async with rig.manager.lease("a"):
            pass
        async with rig.manager.lease("b", keep_alive_s=-1):
            pass
        await asyncio.sleep(1.6)
        assert rig.state("a") is ModelState.AVAILABLE
        assert rig.state("b") is ModelState.LOADED
        await rig.manager.shutdown()

    run(scenario)


def test_a_model_larger_than_the_gpu_budget_runs_offloaded() -> None:
    async def scenario() -> None:
        rig = Rig({"big": 14})
        async with rig.manager.lease("big"):
            plan = rig.manager.status("big").plan
            assert plan is not None
            assert plan.placement is Placement.GPU_OFFLOAD
            assert plan.gpu_bytes == rig.manager.budget.gpu_bytes
            assert plan.offload_bytes == int(14.5 * G) - plan.gpu_bytes
            assert rig.within_budget()
        await rig.manager.shutdown()

    run(scenario)


def test_a_failed_load_gives_its_reservation_back() -> None:
    async def scenario() -> None:
        rig = Rig({"bad": 5, "good": 5}, fail=("bad",))
        with pytest.raises(ModelLoadError, match="corrupt"):
            async with rig.manager.lease("bad"):
                pass
        assert rig.state("bad") is ModelState.FAILED
        assert rig.manager.ledger().holdings == ()
        async with rig.manager.lease("good"):
            pass
        await rig.manager.shutdown()

    run(scenario)
