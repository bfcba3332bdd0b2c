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
from typing import TYPE_CHECKING, Any

import numpy as np

from local_llm.engines.base import IMPORT_LOCK, Engine
from local_llm.engines.batching import BatchQueue, plan_forward_passes
from local_llm.errors import InvalidRequestError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from local_llm.placement import PlacementPlan
    from local_llm.registry.spec import ModelSpec

logger = logging.getLogger(__name__)

# Token ids of the model's own vocabulary: what every input becomes before it reaches the model.
TokenIds = list[int]

# The queue gathers up to this many forward passes' worth of inputs at a time: the more it holds,
# the better inputs of similar length share a pass (less padding). Each pass answers its requests as
# soon as it is done, so a wide window costs little latency; a newcomer waits at most one window.
_PASSES_PER_GATHER = 8


class EmbeddingEngine(Engine):
    """What an embedding backend offers: tokenization as the model reads text, and batched embedding."""

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
    async def tokenize(self, texts: Sequence[str], truncate: bool) -> list[TokenIds]:
        """Token ids of each text exactly as the model reads it (special tokens, default prompt).

        With ``truncate`` the ids stop at :attr:`max_input_tokens`; without, they are complete, so
        the caller can refuse over-long inputs.
        """

    @abstractmethod
    async def embed(self, inputs: Sequence[TokenIds]) -> np.ndarray:
        """Vectors (float32, one row per input), normalised as the model's own pipeline says."""


class SentenceTransformersEmbeddingEngine(EmbeddingEngine):
    """Runs the model's sentence-transformers modules (Transformer, Pooling, Dense, Normalize).

    Text is tokenized once, on a thread of its own with a tokenizer of its own, the way
    sentence-transformers tokenizes it; the batch thread then only pads ids and runs the modules.
    That keeps vectors identical to ``SentenceTransformer.encode`` while the tokenizer's work
    overlaps the model's, and ``encode``'s second tokenization and tensor conversion are skipped.
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
        self._queue: BatchQueue[TokenIds, np.ndarray] | None = None
        self._prompt = ""
        # sentence-transformers changes its tokenizer's padding/truncation settings per call, so the
        # tokenizing thread works on a copy: two threads on one fast tokenizer corrupt each other.
        self._tokenizer: Any = None
        self._tokenizing_thread: ThreadPoolExecutor | None = None
        self._pad_id = 0
        self._pad_left = False

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        started = time.perf_counter()
        self._model = await asyncio.to_thread(self._load)
        self._tokenizing_thread = ThreadPoolExecutor(
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
        with IMPORT_LOCK:
            from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(
            str(self.spec.path),
            device=self.plan.device,
            trust_remote_code=self.spec.options.trust_remote_code,
            local_files_only=True,
            **self.spec.options.engine_options,
        )
        model.eval()
        modalities = getattr(model[0], "modality_config", None) or {"text": {}}
        if "text" not in modalities:
            raise ValueError(f"the model's input module reads {sorted(modalities)}, not plain text")
        tokenizer = model.tokenizer
        self._tokenizer = copy.deepcopy(tokenizer)
        self._pad_id = int(tokenizer.pad_token_id or 0)
        self._pad_left = tokenizer.padding_side == "left"
        default_prompt = model.default_prompt_name
        self._prompt = (model.prompts.get(default_prompt) or "") if default_prompt else ""
        self.memory_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        return model

    async def stop(self) -> None:
        if self._queue is not None:
            await self._queue.stop()
            self._queue = None
        if self._tokenizing_thread is not None:
            self._tokenizing_thread.shutdown(wait=True)
            self._tokenizing_thread = None
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
        model = self.model
        # sentence-transformers 6.2 renamed get_sentence_embedding_dimension; older ones lack the new name.
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter() or 0)

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
    def max_model_len(self) -> int:
        return self.max_input_tokens

    @property
    def queue(self) -> BatchQueue[TokenIds, np.ndarray]:
        if self._queue is None:
            raise RuntimeError(f"embedding engine for {self.spec.name} is not started")
        return self._queue

    # --- work ----------------------------------------------------------------------------------
    async def tokenize(self, texts: Sequence[str], truncate: bool) -> list[TokenIds]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizing_thread, self._tokenize, list(texts), truncate)

    def _tokenize(self, texts: list[str], truncate: bool) -> list[TokenIds]:
        prompted = [self._prompt + text for text in texts] if self._prompt else texts
        limit = (
            {"truncation": True, "max_length": self.max_input_tokens} if truncate else {"truncation": False}
        )
        encoded = self._tokenizer(prompted, add_special_tokens=True, verbose=False, **limit)
        return list(encoded["input_ids"])

    async def embed(self, inputs: Sequence[TokenIds]) -> np.ndarray:
        for index, ids in enumerate(inputs):
            if not ids:
                raise InvalidRequestError(f"Input {index} has no tokens.", param="input")
        return np.stack(await self.queue.submit(inputs, [len(ids) for ids in inputs]))

    def _run_batch(self, batch: list[TokenIds]) -> Iterator[list[tuple[int, np.ndarray]]]:
        """On the queue's thread, a forward pass at a time, inputs of similar length together."""
        for forward in plan_forward_passes([len(ids) for ids in batch], self._batch_size, self._batch_tokens):
            rows = self._forward([batch[i] for i in forward])
            yield list(zip(forward, rows, strict=True))

    def _forward(self, token_lists: list[TokenIds]) -> np.ndarray:
        """Pad (on the tokenizer's side), run every module of the model, and return float32 rows."""
        import torch

        model = self.model
        longest = max(len(ids) for ids in token_lists)
        input_ids = np.full((len(token_lists), longest), self._pad_id, dtype=np.int64)
        attention = np.zeros((len(token_lists), longest), dtype=np.int64)
        for row, ids in enumerate(token_lists):
            span = slice(longest - len(ids), longest) if self._pad_left else slice(0, len(ids))
            input_ids[row, span] = ids
            attention[row, span] = 1
        features: dict[str, Any] = {
            "input_ids": torch.from_numpy(input_ids).to(model.device),
            "attention_mask": torch.from_numpy(attention).to(model.device),
            "modality": "text",
        }
        with torch.inference_mode():
            embeddings = model(features)["sentence_embedding"]
        if model.truncate_dim:
            embeddings = embeddings[:, : model.truncate_dim]
        return embeddings.float().cpu().numpy()
