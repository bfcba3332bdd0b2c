"""What every batched engine shares: a thread that tokenizes, one :class:`BatchQueue`, passes by length.

Embedding and rerank engines differ only in how they load, what an input becomes (token ids, or a
query-document pair's ids) and what one forward pass computes; the lifecycle, the gathering and the
cutting into length-sorted passes are the same, so they live here once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np

from local_llm.backends import TORCH_GLOBALS, import_backend
from local_llm.engines.base import Engine, EngineObserver, Progress, TorchModuleParking, fatal_cause
from local_llm.engines.batching import BatchQueue, plan_forward_passes
from local_llm.errors import EngineFailedError
from local_llm.placement import PlacementPlan
from local_llm.registry.spec import ModelSpec

logger = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")

# The queue gathers up to this many forward passes' worth of inputs at a time: the more it holds,
# the better inputs of similar length share a pass (less padding). Each pass answers its requests as
# soon as it is done, so a wide window costs little latency; a newcomer waits at most one window.
PASSES_PER_GATHER = 8


class TokenizerThread:
    """The one thread a model's tokenizer runs on: never the event loop, and beside the model's work
    (a fast tokenizer is not safe to share between threads, so each engine keeps one of its own)."""

    def __init__(self, model_name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokenize-{model_name}")

    async def run(self, work: Callable[[], T], observer: EngineObserver) -> T:
        """``work()`` on the thread; its seconds are the request's ``tokenize`` stage."""
        started = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        observer.stage("tokenize", time.perf_counter() - started)
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class BatchedEngine(TorchModuleParking, Engine, Generic[P, R]):
    """An engine whose inputs are tokenized on a thread of its own and run through one batch queue.

    Subclasses load the model (:meth:`_load`, on a worker thread), say how long an input is
    (:meth:`_length`), run one forward pass (:meth:`_forward`) and drop the model (:meth:`_release`).
    """

    def __init__(
        self,
        spec: ModelSpec,
        plan: PlacementPlan,
        *,
        batch_size: int,
        batch_tokens: int,
    ) -> None:
        super().__init__(spec, plan)
        self._batch_size = batch_size
        self._batch_tokens = batch_tokens
        self._queue: BatchQueue[P, R] | None = None
        self._tokenizing_thread: TokenizerThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- what a backend provides ---------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None:
        """Load weights and tokenizer onto ``plan.device`` and set ``memory_bytes`` (worker thread)."""

    @abstractmethod
    def _release(self) -> None:
        """Drop every reference to the model, so its memory can be freed."""

    @abstractmethod
    def _length(self, payload: P) -> int:
        """Tokens the input occupies in a forward pass: what passes are cut by."""

    @abstractmethod
    def _forward(self, payloads: list[P]) -> Iterable[R]:
        """One forward pass over ``payloads`` (similar lengths), one result each (queue's thread)."""

    @abstractmethod
    def _describe(self) -> str:
        """What the ready line in the log says about the loaded model."""

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        started = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        self.stage(f"reading the weights onto {self.plan.device}")
        await asyncio.to_thread(self._load_alone)
        self._tokenizing_thread = TokenizerThread(self.spec.name)
        self._queue = BatchQueue(
            self.spec.name,
            self._run_batch,
            max_batch_items=self._batch_size * PASSES_PER_GATHER,
            max_batch_cost=self._batch_tokens * PASSES_PER_GATHER,
            on_waited=lambda seconds: self.observer.stage("queue", seconds),
        )
        self._queue.start()
        logger.info(
            "%s ready on %s in %.1fs: %s, %.0f MiB of weights",
            self.spec.name,
            self.plan.device,
            time.perf_counter() - started,
            self._describe(),
            (self.memory_bytes or 0) / 2**20,
        )

    def _load_alone(self) -> None:
        with TORCH_GLOBALS.loading():
            self._load()

    async def stop(self) -> None:
        self.unwatch()
        if self._queue is not None:
            await self._queue.stop()
            self._queue = None
        if self._tokenizing_thread is not None:
            self._tokenizing_thread.close()
            self._tokenizing_thread = None
        self._release()
        self.release_host_copy()
        gc.collect()
        if self.plan.device.startswith("cuda"):
            import_backend("torch").cuda.empty_cache()

    # --- work ----------------------------------------------------------------------------------
    def progress(self) -> Progress | None:
        """Forward passes finished, and inputs queued or running."""
        if self._queue is None:
            return None
        return Progress(self._queue.stats.forward_passes, self._queue.unfinished)

    @property
    def queue(self) -> BatchQueue[P, R]:
        if self._queue is None:
            raise RuntimeError(f"engine for {self.spec.name} is not started")
        return self._queue

    async def _on_tokenizing_thread(self, work: Callable[[], T]) -> T:
        """Run tokenizer work beside the model's thread, never on the event loop."""
        if self._tokenizing_thread is None:
            raise RuntimeError(f"engine for {self.spec.name} is not started")
        return await self._tokenizing_thread.run(work, self.observer)

    async def _submit(self, payloads: Sequence[P]) -> list[R]:
        """Queue ``payloads`` with concurrent requests' and wait for their results, in order."""
        self.check_alive()
        return await self.queue.submit(payloads, [self._length(p) for p in payloads])

    def _run_batch(self, batch: list[P], wanted: Callable[[int], bool]) -> Iterator[list[tuple[int, R]]]:
        """On the queue's thread, a forward pass at a time, inputs of similar length together; inputs
        whose request has gone are left out of every pass not yet begun."""
        lengths = [self._length(p) for p in batch]
        for planned in plan_forward_passes(lengths, self._batch_size, self._batch_tokens):
            forward = [i for i in planned if wanted(i)]
            if not forward:
                continue
            started = time.perf_counter()
            try:
                with TORCH_GLOBALS.forward_pass():
                    results = list(self._forward([batch[i] for i in forward]))
            except Exception as exc:
                cause = fatal_cause(exc)
                if cause is None:
                    raise
                self._loop_call(self.died, cause)
                raise EngineFailedError(
                    f"The engine of model '{self.spec.name}' failed ({cause}); the next request loads "
                    "it again.",
                    retry_after_s=1,
                ) from exc
            self.observer.forward_pass(
                len(forward),
                sum(lengths[i] for i in forward),
                max(lengths[i] for i in forward) * len(forward),
                time.perf_counter() - started,
            )
            yield list(zip(forward, results, strict=True))

    def _loop_call(self, function: Callable[[str], None], argument: str) -> None:
        """Run ``function(argument)`` on the event loop's thread (from the queue's thread)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(function, argument)


def module_bytes(module: Any, device: str | None = None) -> int:
    """Bytes a loaded torch module holds in parameters and buffers: the engine's ``memory_bytes``.

    With ``device``, only what sits on that kind of device (a gpu+offload device map keeps the rest
    in CPU RAM, or on "meta" with accelerate's hooks holding the weights).
    """
    tensors = (*module.parameters(), *module.buffers())
    if device is not None:
        kind = device.split(":")[0]
        tensors = tuple(t for t in tensors if t.device.type == kind)
    return int(sum(t.numel() * t.element_size() for t in tensors))


def pad_rows(rows: Sequence[Sequence[int]], fill: int, *, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids padded to the longest with ``fill`` (on the left or right), and their mask.

    numpy, not the tokenizer's ``pad``: ids are already lists, and this is several times faster.
    """
    longest = max(len(row) for row in rows)
    padded = np.full((len(rows), longest), fill, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for index, row in enumerate(rows):
        span = slice(longest - len(row), longest) if left else slice(0, len(row))
        padded[index, span] = row
        mask[index, span] = 1
    return padded, mask
