"""The batching queue with plain functions as the model: gathering, limits, cancellation, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from local_llm.engines.batching import BatchQueue, plan_forward_passes
from local_llm.errors import EngineFailedError, EngineUnavailableError

pytestmark = pytest.mark.unit


class Recorder:
    """A 'model' that doubles numbers, ``pass_size`` at a time, ``delay`` s a pass; it records batches."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None, pass_size: int = 1_000_000) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.pass_size = pass_size
        self.batches: list[list[int]] = []
        # What each forward pass really computed (after leaving out abandoned inputs).
        self.passes: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(
        self, batch: list[int], wanted: Callable[[int], bool]
    ) -> Iterator[list[tuple[int, int | Exception]]]:
        self.batches.append(list(batch))
        for start in range(0, len(batch), self.pass_size):
            forward = [i for i in range(start, min(start + self.pass_size, len(batch))) if wanted(i)]
            if not forward:
                continue
            self.passes.append([batch[i] for i in forward])
            self.threads.add(threading.current_thread().name)
            time.sleep(self.delay)
            yield [
                (i, ValueError(f"bad {batch[i]}") if batch[i] == self.fail_on else batch[i] * 2)
                for i in forward
            ]


def run(coro_factory: Callable[[], object]) -> object:
    return asyncio.run(coro_factory())  # type: ignore[arg-type]


def make_queue(model: Recorder, **limits: int) -> BatchQueue[int, int]:
    options = {"max_batch_items": 8, "max_batch_cost": 10_000} | limits
    return BatchQueue("test", model, **options)


def test_concurrent_requests_are_gathered_into_few_batches() -> None:
    model = Recorder(delay=0.05)

    async def scenario() -> list[list[int]]:
        queue = make_queue(model, max_batch_items=64)
        queue.start()
        try:
            return await asyncio.gather(*(queue.submit([i, i + 100], [1, 1]) for i in range(20)))
        finally:
            await queue.stop()

    results = run(scenario)
    assert results == [[2 * i, 2 * (i + 100)] for i in range(20)]
    # The first request runs alone; the other 19 gather while it runs.
    assert len(model.batches) <= 3
    assert sorted(x for batch in model.batches for x in batch) == sorted([*range(20), *range(100, 120)])
    assert all(name.startswith("batch-test") for name in model.threads)


def test_batch_item_limit() -> None:
    model = Recorder(delay=0.01)

    async def scenario() -> None:
        queue = make_queue(model, max_batch_items=4)
        queue.start()
        await asyncio.gather(*(queue.submit([i], [1]) for i in range(10)))
        await queue.stop()

    run(scenario)
    assert max(len(b) for b in model.batches) <= 4
    assert sum(len(b) for b in model.batches) == 10


def test_token_budget_bounds_a_batch() -> None:
    model = Recorder(delay=0.05)
    costs = {0: 1, 99: 60, 500: 500} | {i: 10 for i in range(1, 11)}

    async def scenario() -> None:
        queue = make_queue(model, max_batch_items=64, max_batch_cost=100)
        queue.start()
        # All four requests are queued before the worker wakes: it fills 100 tokens, then the rest;
        # the 500-token input is larger than the budget and runs alone.
        await asyncio.gather(
            queue.submit([0], [1]),
            queue.submit(list(range(1, 11)), [10] * 10),
            queue.submit([99], [60]),
            queue.submit([500], [500]),
        )
        await queue.stop()

    run(scenario)
    assert model.batches == [[0, *range(1, 10)], [10, 99], [500]]
    for batch in model.batches:
        assert sum(costs[x] for x in batch) <= 100 or len(batch) == 1


def test_one_failing_item_fails_only_its_request() -> None:
    model = Recorder(delay=0.02, fail_on=7)

    async def scenario() -> tuple[object, object]:
        queue = make_queue(model)
        queue.start()
        ok, bad = await asyncio.gather(
            queue.submit([1, 2], [1, 1]), queue.submit([7], [1]), return_exceptions=True
        )
        await queue.stop()
        return ok, bad

    ok, bad = run(scenario)  # type: ignore[misc]
    assert ok == [2, 4]
    assert isinstance(bad, ValueError)


def test_cancelled_requests_never_reach_the_model() -> None:
    model = Recorder(delay=0.1)

    async def scenario() -> None:
        queue = make_queue(model, max_batch_items=1)
        queue.start()
        first = asyncio.ensure_future(queue.submit([1], [1]))
        await asyncio.sleep(0.02)  # the first batch is running
        doomed = asyncio.ensure_future(queue.submit([666], [1]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        assert await first == [2]
        assert await queue.submit([3], [1]) == [6]
        await queue.stop()

    run(scenario)
    assert [666] not in model.batches


def test_inputs_of_a_request_that_went_away_leave_a_gathered_batch_at_the_next_pass() -> None:
    """A client gone mid-batch costs at most the forward pass under way, not the whole batch."""
    model = Recorder(delay=0.1, pass_size=2)

    async def scenario() -> None:
        queue = make_queue(model, max_batch_items=64)
        queue.start()
        doomed = asyncio.ensure_future(queue.submit(list(range(100, 110)), [1] * 10))
        await asyncio.sleep(0.05)  # the first pass of two is running
        doomed.cancel()
        assert await queue.submit([1], [1]) == [2]
        await queue.stop()

    run(scenario)
    assert model.batches[0] == list(range(100, 110))  # gathered whole
    assert model.passes[0] == [100, 101]  # the pass under way finished
    assert [100, 102] not in model.passes
    assert model.passes[1:] == [[1]]  # nothing of the abandoned request after it


def test_an_engine_failure_fails_running_and_queued_work_at_once() -> None:
    def dying(batch: list[int], wanted: Callable[[int], bool]) -> Iterator[list[tuple[int, int | Exception]]]:
        time.sleep(0.1)
        raise EngineFailedError("the engine died")
        yield []

    async def scenario() -> None:
        queue: BatchQueue[int, int] = BatchQueue("dying", dying, max_batch_items=1, max_batch_cost=100)
        queue.start()
        outcomes = await asyncio.gather(*(queue.submit([i], [1]) for i in range(3)), return_exceptions=True)
        assert all(isinstance(o, EngineFailedError) for o in outcomes), outcomes
        with pytest.raises(EngineFailedError):
            await queue.submit([9], [1])
        await queue.stop()

    run(scenario)


def test_stop_fails_queued_work_instead_of_leaving_it_hanging() -> None:
    model = Recorder(delay=0.2)

    async def scenario() -> None:
        queue = make_queue(model, max_batch_items=1)
        queue.start()
        pending = [asyncio.ensure_future(queue.submit([i], [1])) for i in range(3)]
        await asyncio.sleep(0.05)
        await queue.stop()
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(o, EngineUnavailableError) for o in outcomes)
        with pytest.raises(EngineUnavailableError):
            await queue.submit([9], [1])

    run(scenario)


@pytest.mark.parametrize(
    ("lengths", "max_items", "max_padded", "expected"),
    [
        ([], 4, 100, []),
        ([5, 50, 10, 40], 4, 1000, [[1, 3, 2, 0]]),
        ([5, 50, 10, 40], 2, 1000, [[1, 3], [2, 0]]),
        # 50 x 2 = 100 fits; 40 x 3 = 120 would not, so the 40 starts the next pass.
        ([5, 50, 10, 40, 45], 8, 100, [[1, 4], [3, 2], [0]]),
        ([500, 3, 3], 8, 100, [[0], [1, 2]]),
    ],
)
def test_forward_passes_group_similar_lengths(
    lengths: list[int], max_items: int, max_padded: int, expected: list[list[int]]
) -> None:
    passes = plan_forward_passes(lengths, max_items, max_padded)
    assert passes == expected
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))


def test_each_pass_answers_its_requests_before_the_batch_ends() -> None:
    model = Recorder(delay=0.2, pass_size=2)
    finished: dict[int, float] = {}

    async def scenario() -> None:
        queue = make_queue(model, max_batch_items=64)
        queue.start()
        loop = asyncio.get_running_loop()

        async def request(i: int) -> None:
            assert await queue.submit([i, i], [1, 1]) == [2 * i, 2 * i]
            finished[i] = loop.time()

        await asyncio.gather(*(request(i) for i in range(3)))
        await queue.stop()

    run(scenario)
    assert model.batches == [[0, 0, 1, 1, 2, 2]]  # one gathered batch, three passes
    assert finished[0] < finished[1] < finished[2]
    assert finished[2] - finished[0] > 0.3


def test_a_batch_function_that_raises_fails_only_what_is_unanswered() -> None:
    def flaky(batch: list[int], wanted: Callable[[int], bool]) -> Iterator[list[tuple[int, int | Exception]]]:
        yield [(0, batch[0])]
        raise RuntimeError("device lost")

    async def scenario() -> None:
        queue: BatchQueue[int, int] = BatchQueue("flaky", flaky, max_batch_items=8, max_batch_cost=100)
        queue.start()
        first, second = await asyncio.gather(
            queue.submit([5], [1]), queue.submit([6], [1]), return_exceptions=True
        )
        await queue.stop()
        assert first == [5]
        assert isinstance(second, RuntimeError)

    run(scenario)
