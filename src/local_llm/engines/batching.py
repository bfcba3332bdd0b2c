"""Dynamic batching: one queue per loaded model gathers work from concurrent requests.

Modelled on Infinity's batch handler and TEI's queue: requests put their items on the queue and
await futures; one worker takes as many items as fit a batch (by count and by total tokens),
runs the model on a dedicated thread so the event loop keeps serving, and resolves the futures.
While one batch runs, the next one gathers, so under load batches fill up by themselves and a lone
request is never held back waiting for company. How a gathered batch is cut into forward passes
(sorted by length, so little compute goes to padding) is the engine's business, not the queue's.

A request whose client left has its items abandoned: they leave the queue before they reach the
model, and those already in a gathered batch are skipped from the next forward pass on, so the
work of a client that has gone is at most the pass under way. How many inputs may wait is decided
before the request is let in (the serving layer's permits), not here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from local_llm.errors import EngineFailedError, EngineUnavailableError

logger = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")

# A batch function yields results as it goes: (index into the batch, result) pairs, a chunk per
# forward pass, so each request is answered as soon as its own inputs are done. An Exception as a
# result fails only that item; an exception raised fails every item not yet answered, and an
# EngineFailedError (the engine died) also every item still queued. Before each forward pass it asks
# ``wanted(index)`` and leaves out the inputs whose request has gone (it runs on the queue's thread;
# the flag it reads is set on the event loop's).
BatchResults = Iterable[Sequence[tuple[int, R | Exception]]]
BatchFunction = Callable[[list[P], Callable[[int], bool]], BatchResults[R]]


@dataclass
class _Item(Generic[P, R]):
    payload: P
    cost: int
    future: asyncio.Future[R]
    # Set when the request went away: the item is dropped wherever it is, queue or gathered batch.
    abandoned: bool = False
    # When its gathered batch began (the loop's clock): the end of its wait in the queue.
    started: float | None = None


@dataclass
class BatchStats:
    """Counters for tests and /metrics: how well the queue gathers."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    sizes: list[int] = field(default_factory=list)

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest_batch = max(self.largest_batch, size)
        if len(self.sizes) < 10_000:
            self.sizes.append(size)


class BatchQueue(Generic[P, R]):
    """Gathers items into batches for ``run_batch`` and runs them one at a time off the event loop.

    ``cost`` of an item is its length in tokens; a batch holds at most ``max_batch_items`` items and
    ``max_batch_cost`` tokens in all (a single item larger than that still runs, alone).
    ``on_waited(seconds)`` hears, per request, how long it waited until its first input's batch began.
    """

    def __init__(
        self,
        name: str,
        run_batch: BatchFunction[P, R],
        *,
        max_batch_items: int,
        max_batch_cost: int,
        on_waited: Callable[[float], None] | None = None,
    ) -> None:
        self.name = name
        self._on_waited = on_waited
        self._run_batch = run_batch
        self._max_items = max_batch_items
        self._max_cost = max_batch_cost
        self._pending: deque[_Item[P, R]] = deque()
        self._wakeup = asyncio.Event()
        self._running: list[_Item[P, R]] = []
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._failure: EngineFailedError | None = None
        self.stats = BatchStats()
        # Inputs that were abandoned before their forward pass (client gone): tests and metrics.
        self.abandoned = 0

    @property
    def queued(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._worker is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{self.name}")
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batch-queue-{self.name}")

    async def stop(self) -> None:
        """Stop the worker; items still queued fail with :class:`EngineUnavailableError`."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        for item in (*self._running, *self._pending):
            if not item.future.done():
                item.future.set_exception(EngineUnavailableError(f"model {self.name} was unloaded"))
        self._running, self._pending = [], deque()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, payloads: Sequence[P], costs: Sequence[int]) -> list[R]:
        """Queue ``payloads`` and wait for their results, in order.

        If the caller is cancelled (client gone), its items are abandoned: none of them reaches the
        model after the forward pass under way.
        """
        if self._failure is not None:
            raise self._failure
        if self._worker is None:
            raise EngineUnavailableError(f"model {self.name} is not running")
        loop = asyncio.get_running_loop()
        items = [
            _Item[P, R](p, max(1, c), loop.create_future()) for p, c in zip(payloads, costs, strict=True)
        ]
        self._pending.extend(items)
        self._wakeup.set()
        queued = loop.time()
        try:
            results = list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:
                if not item.future.done():
                    self.abandoned += 1
                item.abandoned = True
                item.future.cancel()
            raise
        if self._on_waited is not None:
            began = min((item.started for item in items if item.started is not None), default=queued)
            self._on_waited(began - queued)
        return results

    def _take_batch(self) -> list[_Item[P, R]]:
        batch: list[_Item[P, R]] = []
        total = 0
        while self._pending and len(batch) < self._max_items:
            item = self._pending[0]
            if item.abandoned or item.future.done():
                self._pending.popleft()
                continue
            if batch and total + item.cost > self._max_cost:
                break
            batch.append(self._pending.popleft())
            total += item.cost
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            batch = self._take_batch()
            if not batch:
                self._wakeup.clear()
                continue
            self.stats.record(len(batch))
            self._running = batch
            began = loop.time()
            for item in batch:
                item.started = began

            def wanted(index: int, batch: list[_Item[P, R]] = batch) -> bool:
                return not batch[index].abandoned

            try:
                chunks = iter(self._run_batch([item.payload for item in batch], wanted))
                while (chunk := await loop.run_in_executor(self._executor, _next_chunk, chunks)) is not None:
                    for index, result in chunk:
                        _resolve(batch[index].future, result)
            except EngineFailedError as exc:
                self._fail_everything(exc)
                return
            except Exception as exc:
                logger.exception("batch of %d for %s failed", len(batch), self.name)
                for item in batch:
                    _resolve(item.future, exc)
            for item in batch:
                if item.abandoned and not item.future.done():
                    item.future.cancel()
                _resolve(
                    item.future, RuntimeError(f"batch function gave no result for an input of {self.name}")
                )
            self._running = []

    def _fail_everything(self, failure: EngineFailedError) -> None:
        """The engine died: every input, running or queued, fails with that, and no batch runs again."""
        self._failure = failure
        for item in (*self._running, *self._pending):
            _resolve(item.future, failure)
        self._running, self._pending = [], deque()


def _next_chunk(chunks: Iterator[T]) -> T | None:
    """Advance the batch function by one forward pass, on the queue's thread."""
    return next(chunks, None)


def _resolve(future: asyncio.Future[R], result: R | Exception) -> None:
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def plan_forward_passes(lengths: Sequence[int], max_items: int, max_padded_tokens: int) -> list[list[int]]:
    """Cut a gathered batch into forward passes of similar length.

    Pure. Returns indices into ``lengths``, longest first (as sentence-transformers orders its own
    batches). A pass holds at most ``max_items`` inputs and ``max_padded_tokens`` once padded to its
    longest input; one input longer than that budget runs alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    passes: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) >= max_items or longest * (len(current) + 1) > max_padded_tokens):
            passes.append(current)
            current = []
        current.append(index)
    if current:
        passes.append(current)
    return passes
