"""Embedding engines: the interface the embeddings service uses, and its sentence-transformers backend."""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from local_llm.engines.base import Engine
from local_llm.engines.batching import BatchQueue, plan_forward_passes

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from local_llm.placement import PlacementPlan
    from local_llm.registry.spec import ModelSpec

logger = logging.getLogger(__name__)

# One input to embed: text, or token ids of the model's own vocabulary used as given.
EmbeddingInput = str | list[int]

# The queue gathers up to this many forward passes' worth of inputs at a time: the more it holds,
# the better inputs of similar length share a pass (less padding). Each pass answers its requests as
# soon as it is done, so a wide window costs little latency; a newcomer waits at most one window.
_PASSES_PER_GATHER = 8


@dataclass(frozen=True)
class _Work:
    """One input on the queue, with its token count for cutting forward passes."""

    item: EmbeddingInput
    tokens: int


class EmbeddingEngine(Engine):
    """What an embedding backend offers: token counting and batched embedding."""

    @property
    @abstractmethod
    def dimension(self) -> int:
        """Length of the vectors :meth:`embed` returns."""

    @property
    @abstractmethod
    def max_input_tokens(self) -> int:
        """Longest input, in tokens, the model reads; longer ones are refused or truncated."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Token ids must lie in ``[0, vocab_size)``."""

    @abstractmethod
    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes as the model reads it (special tokens and default prompt included)."""

    @abstractmethod
    async def embed(self, inputs: Sequence[EmbeddingInput], lengths: Sequence[int]) -> np.ndarray:
        """Vectors (float32, one row per input), normalised as the model's own pipeline says.

        ``lengths`` are the inputs' token counts, used to pack batches.
        """


class SentenceTransformersEmbeddingEngine(EmbeddingEngine):
    """Runs the model's full sentence-transformers pipeline (pooling, Dense, Normalize modules).

    Texts go through ``SentenceTransformer.encode`` itself, so vectors are exactly the library's;
    token ids are padded with the model's tokenizer and sent through the same modules.
    """

    backend = "sentence-transformers"

    def __init__(
        self,
        spec: ModelSpec,
        plan: PlacementPlan,
        *,
        batch_size: int,
        batch_tokens: int,
        max_queued: int,
    ) -> None:
        super().__init__(spec, plan)
        self._batch_size = batch_size
        self._batch_tokens = batch_tokens
        self._max_queued = max_queued
        self._model: SentenceTransformer | None = None
        self._queue: BatchQueue[_Work, np.ndarray] | None = None
        self._prompt = ""
        # Counting runs beside the batch thread's encode(), so it needs its own tokenizer: a fast
        # tokenizer's padding/truncation settings are per instance, and encode() changes them per call.
        self._counting_tokenizer: Any = None
        self._counting_thread: ThreadPoolExecutor | None = None
        self.memory_bytes: int | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        started = time.perf_counter()
        self._model = await asyncio.to_thread(self._load)
        self._counting_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"tokenize-{self.spec.name}"
        )
        self._queue = BatchQueue(
            self.spec.name,
            self._run_batch,
            max_batch_items=self._batch_size * _PASSES_PER_GATHER,
            max_batch_cost=self._batch_tokens * _PASSES_PER_GATHER,
            max_queued=self._max_queued,
        )
        self._queue.start()
        logger.info(
            "embedding model %s ready on %s in %.1fs: %d dims, %d tokens max, %.0f MiB of weights",
            self.spec.name,
            self.plan.device,
            time.perf_counter() - started,
            self.dimension,
            self.max_input_tokens,
            (self.memory_bytes or 0) / 2**20,
        )

    def _load(self) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(
            str(self.spec.path),
            device=self.plan.device,
            trust_remote_code=self.spec.options.trust_remote_code,
            local_files_only=True,
            **self.spec.options.engine_options,
        )
        model.eval()
        self._counting_tokenizer = copy.deepcopy(model.tokenizer)
        default_prompt = model.default_prompt_name
        self._prompt = (model.prompts.get(default_prompt) or "") if default_prompt else ""
        self.memory_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        return model

    async def stop(self) -> None:
        if self._queue is not None:
            await self._queue.stop()
            self._queue = None
        if self._counting_thread is not None:
            self._counting_thread.shutdown(wait=True)
            self._counting_thread = None
        model, self._model = self._model, None
        del model
        gc.collect()
        if self.plan.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # --- properties ----------------------------------------------------------------------------
    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            raise RuntimeError(f"embedding engine for {self.spec.name} is not started")
        return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension() or 0)

    @property
    def max_input_tokens(self) -> int:
        model = self.model
        if model.max_seq_length:
            return int(model.max_seq_length)
        return int(getattr(model.tokenizer, "model_max_length", 512))

    @property
    def vocab_size(self) -> int:
        return len(self.model.tokenizer)

    @property
    def queue(self) -> BatchQueue[_Work, np.ndarray]:
        if self._queue is None:
            raise RuntimeError(f"embedding engine for {self.spec.name} is not started")
        return self._queue

    # --- work ----------------------------------------------------------------------------------
    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._counting_thread, self._count_tokens, list(texts))

    def _count_tokens(self, texts: list[str]) -> list[int]:
        prompted = [self._prompt + text for text in texts] if self._prompt else texts
        encoded = self._counting_tokenizer(prompted, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    async def embed(self, inputs: Sequence[EmbeddingInput], lengths: Sequence[int]) -> np.ndarray:
        work = [_Work(item, tokens) for item, tokens in zip(inputs, lengths, strict=True)]
        return np.stack(await self.queue.submit(work, lengths))

    def _run_batch(self, batch: list[_Work]) -> Iterator[list[tuple[int, np.ndarray]]]:
        """On the queue's thread, a pass at a time: similar lengths together; texts via ``encode``."""
        for want_text in (True, False):
            slots = [i for i, work in enumerate(batch) if isinstance(work.item, str) is want_text]
            lengths = [batch[i].tokens for i in slots]
            for forward in plan_forward_passes(lengths, self._batch_size, self._batch_tokens):
                chosen = [slots[i] for i in forward]
                items = [batch[i].item for i in chosen]
                if want_text:
                    rows = self.model.encode(
                        items, batch_size=len(items), convert_to_numpy=True, show_progress_bar=False
                    )
                else:
                    rows = self._embed_token_ids(items)
                yield [
                    (slot, np.asarray(row, dtype=np.float32)) for slot, row in zip(chosen, rows, strict=True)
                ]

    def _embed_token_ids(self, token_lists: list[Any]) -> np.ndarray:
        import torch

        model = self.model
        features: dict[str, Any] = dict(
            model.tokenizer.pad({"input_ids": token_lists}, padding=True, return_tensors="pt")
        )
        features = {key: value.to(model.device) for key, value in features.items()}
        features["modality"] = "text"
        with torch.inference_mode():
            output = model(features)["sentence_embedding"]
        return output.float().cpu().numpy()
