"""Embedding engines: the interface the embeddings service uses, and its sentence-transformers backend."""

from __future__ import annotations

import copy
import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from local_llm.backends import IMPORT_LOCK, import_backend
from local_llm.engines.base import Capability, Engine
from local_llm.engines.batched import BatchedEngine, module_bytes, pad_rows
from local_llm.errors import EngineRequestError, Subject

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from local_llm.placement import PlacementPlan
    from local_llm.registry.spec import ModelSpec

logger = logging.getLogger(__name__)

# Token ids of the model's own vocabulary: what every input becomes before it reaches the model.
TokenIds = list[int]


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


class PromptedEmbedding(EmbeddingEngine):
    """An embedder that tokenizes as sentence-transformers does: the prompt before the text, the
    model's special tokens, cut at :attr:`max_input_tokens` when asked; on a thread of its own."""

    # The tokenizing thread's tokenizer, and the default prompt's text.
    _tokenizer: Any
    _prompt: str

    @property
    @abstractmethod
    def prompts(self) -> dict[str, str]:
        """The model's named prompts (sentence-transformers' ``prompts``: ``query``, ``document``)."""

    @abstractmethod
    async def _on_tokenizing_thread(self, work: Callable[[], T]) -> T:
        """Run tokenizer work off the event loop."""

    async def tokenize(
        self, texts: Sequence[str], truncate: bool, prompt: str | None = None
    ) -> list[TokenIds]:
        """As :meth:`EmbeddingEngine.tokenize`; ``prompt`` replaces the model's default prompt."""
        prompt = self._prompt if prompt is None else prompt
        return await self._on_tokenizing_thread(lambda: self._tokenize(list(texts), truncate, prompt))

    def _tokenize(self, texts: list[str], truncate: bool, prompt: str) -> list[TokenIds]:
        prompted = [prompt + text for text in texts] if prompt else texts
        limit = (
            {"truncation": True, "max_length": self.max_input_tokens} if truncate else {"truncation": False}
        )
        encoded = self._tokenizer(prompted, add_special_tokens=True, verbose=False, **limit)
        return list(encoded["input_ids"])


M = TypeVar("M")
T = TypeVar("T")


def load_sentence_transformers(model_class: Callable[..., M], spec: ModelSpec, plan: PlacementPlan) -> M:
    """A sentence-transformers model (``SentenceTransformer``, ``CrossEncoder``) loaded as engines load:
    from its folder only, onto the plan's device, remote code only where models.yaml allows it, and
    models.yaml's ``engine_options`` as keyword arguments; in eval mode."""
    model = model_class(
        str(spec.path),
        device=plan.device,
        trust_remote_code=spec.options.trust_remote_code,
        local_files_only=True,
        **spec.options.engine_options,
    )
    model.eval()  # type: ignore[attr-defined]
    return model


class SentenceTransformersEmbeddingEngine(BatchedEngine[TokenIds, np.ndarray], PromptedEmbedding):
    """Runs the model's sentence-transformers modules (Transformer, Pooling, Dense, Normalize).

    Text is tokenized once, on a thread of its own with a tokenizer of its own, the way
    sentence-transformers tokenizes it; the batch thread then only pads ids and runs the modules.
    That keeps vectors identical to ``SentenceTransformer.encode`` while the tokenizer's work
    overlaps the model's, and ``encode``'s second tokenization and tensor conversion are skipped.
    """

    backend = "sentence-transformers"
    capabilities = frozenset({Capability.EMBEDDINGS})

    def __init__(self, spec: ModelSpec, plan: PlacementPlan, **batching: int) -> None:
        super().__init__(spec, plan, **batching)
        self._model: SentenceTransformer | None = None
        self._prompt = ""
        # sentence-transformers changes its tokenizer's padding/truncation settings per call, so the
        # tokenizing thread works on a copy: two threads on one fast tokenizer corrupt each other.
        self._tokenizer: Any = None
        self._pad_id = 0
        self._pad_left = False

    # --- lifecycle -----------------------------------------------------------------------------
    def _load(self) -> None:
        with IMPORT_LOCK:
            from sentence_transformers import SentenceTransformer

        model = load_sentence_transformers(SentenceTransformer, self.spec, self.plan)
        modalities = getattr(model[0], "modality_config", None) or {"text": {}}
        if "text" not in modalities:
            raise ValueError(f"the model's input module reads {sorted(modalities)}, not plain text")
        tokenizer = model.tokenizer
        self._tokenizer = copy.deepcopy(tokenizer)
        self._pad_id = int(tokenizer.pad_token_id or 0)
        self._pad_left = tokenizer.padding_side == "left"
        self._prompt = self.prompt_named(model.default_prompt_name, model)
        self.memory_bytes = module_bytes(model)
        self._model = model

    def _release(self) -> None:
        self._model = None

    def _describe(self) -> str:
        return f"embedding model, {self.dimension} dims, {self.max_input_tokens} tokens max"

    @staticmethod
    def prompt_named(name: str | None, model: SentenceTransformer) -> str:
        """The text of the model's prompt ``name`` (sentence-transformers' ``prompts``), or ""."""
        return (model.prompts.get(name) or "") if name else ""

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
    def prompts(self) -> dict[str, str]:
        return {name: text or "" for name, text in self.model.prompts.items()}

    # --- work ----------------------------------------------------------------------------------
    async def embed(self, inputs: Sequence[TokenIds]) -> np.ndarray:
        for index, ids in enumerate(inputs):
            if not ids:
                raise EngineRequestError(f"Input {index} has no tokens.", subject=Subject.INPUT, index=index)
        return np.stack(await self._submit(inputs))

    def _length(self, payload: TokenIds) -> int:
        return len(payload)

    def _forward(self, payloads: list[TokenIds]) -> np.ndarray:
        """Pad (on the tokenizer's side), run every module of the model, and return float32 rows."""
        torch = import_backend("torch")
        model = self.model
        input_ids, attention = pad_rows(payloads, self._pad_id, left=self._pad_left)
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
