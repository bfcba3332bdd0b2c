"""Rerank engines: one interface, three scorers, each scoring as the model's authors do.

- :class:`CrossEncoderRerankEngine`: the model reads query and document together; its head's logit,
  through the model's own activation (sentence-transformers' ``CrossEncoder.predict``), is the score.
- :class:`LLMYesNoRerankEngine`: a causal LM is asked, in its published template, whether the document
  meets the query; the score is softmax over its "no"/"yes" logits at the last position (Qwen3-Reranker).
- :class:`BiEncoderRerankEngine`: any embedding model; the score is the cosine of query and document
  embeddings. It *is* the embedding engine, so one loaded copy serves /v1/embeddings and /v1/rerank.

Pairs from concurrent requests share forward passes through the same :class:`BatchQueue` the
embedding engine uses (see :mod:`local_llm.engines.batched`).
"""

from __future__ import annotations

import copy
import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from local_llm.backends import IMPORT_LOCK, import_backend
from local_llm.engines.base import Capability, Engine, offload_options
from local_llm.engines.batched import BatchedEngine, module_bytes, pad_rows
from local_llm.engines.embedding import (
    PromptedEmbedding,
    SentenceTransformersEmbeddingEngine,
    TokenIds,
    load_sentence_transformers,
)
from local_llm.errors import InputTooLongError, Subject, UnsupportedOptionError
from local_llm.registry.spec import RerankScorer

if TYPE_CHECKING:
    import torch

    from local_llm.placement import PlacementPlan
    from local_llm.registry.spec import ModelSpec

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RerankScores:
    """One entry per document, in the order the documents were given."""

    # The relevance score as the model's authors define it (after the model's activation).
    scores: np.ndarray
    # Before the activation: the head's logit, the yes-minus-no logit, or (bi-encoders) the cosine.
    raw_scores: np.ndarray
    # Tokens the model read (query and template included), for ``usage``.
    tokens: int


class RerankEngine(Engine):
    """What the rerank service needs from a model."""

    scorer: ClassVar[RerankScorer]
    capabilities = frozenset({Capability.RERANK})

    @property
    @abstractmethod
    def max_input_tokens(self) -> int:
        """Longest input the model reads: a whole pair (cross-encoder, LLM) or one text (bi-encoder)."""

    @abstractmethod
    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None,
        truncate: bool,
        max_tokens_per_doc: int | None = None,
    ) -> RerankScores:
        """Score every document against ``query``.

        ``instruction`` is the task description of instruction-following rerankers (their published
        default when None). With ``truncate`` inputs longer than :attr:`max_input_tokens` are cut
        (the document's end goes first); without, they raise :class:`InputTooLongError`.
        ``max_tokens_per_doc`` (Cohere's) first cuts each document to that many of its own tokens.
        """


def cut_documents(tokenizer: Any, documents: list[str], max_tokens: int | None) -> list[str]:
    """Each document cut after its first ``max_tokens`` tokens (Cohere's ``max_tokens_per_doc``).

    Cut by the tokens' character offsets, so what remains is text the scorer then reads as usual.
    """
    if max_tokens is None:
        return documents
    encoded = tokenizer(documents, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [
        doc if len(offsets) <= max_tokens else doc[: offsets[max_tokens - 1][1]]
        for doc, offsets in zip(documents, encoded["offset_mapping"], strict=True)
    ]


def _refuse_over_long(lengths: Sequence[int], limit: int, model: str, what: str) -> None:
    """:class:`InputTooLongError` naming the first document whose input is over ``limit`` tokens."""
    too_long = [i for i, length in enumerate(lengths) if length > limit]
    if too_long:
        first = too_long[0]
        raise InputTooLongError(
            f"Document {first} makes {what} of {lengths[first]} tokens, but model '{model}' reads at most "
            f"{limit} ({len(too_long)} document(s) too long).",
            subject=Subject.DOCUMENT,
            index=first,
        )


# A query-document pair as the model reads it: token ids, and token type ids where the model has them.
@dataclass(frozen=True)
class PairTokens:
    ids: TokenIds
    type_ids: TokenIds | None = None


# What a forward pass gives per pair: (raw score, score).
ScoredPair = tuple[float, float]


class PairReranking(RerankEngine):
    """A reranker that reads each query-document pair as one input: tokenize the pairs (on the
    engine's tokenizing thread), refuse or cut the over-long, score them (:meth:`_score_pairs`)."""

    # The tokenizing thread's tokenizer (never the one the model's thread may use).
    _tokenizer: Any

    @abstractmethod
    async def _on_tokenizing_thread(self, work: Callable[[], T]) -> T:
        """Run tokenizer work off the event loop."""

    @abstractmethod
    async def _score_pairs(self, pairs: Sequence[PairTokens]) -> list[ScoredPair]:
        """(raw score, score) of each pair, in order."""

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None,
        truncate: bool,
        max_tokens_per_doc: int | None = None,
    ) -> RerankScores:
        def tokenize() -> list[PairTokens]:
            cut = cut_documents(self._tokenizer, list(documents), max_tokens_per_doc)
            return self._tokenize_pairs(query, cut, instruction, truncate)

        pairs = await self._on_tokenizing_thread(tokenize)
        if not truncate:
            lengths = [len(pair.ids) for pair in pairs]
            _refuse_over_long(lengths, self.max_input_tokens, self.spec.name, "a query-document pair")
        scored = np.asarray(await self._score_pairs(pairs), dtype=np.float32).reshape(-1, 2)
        return RerankScores(
            scores=scored[:, 1], raw_scores=scored[:, 0], tokens=sum(len(pair.ids) for pair in pairs)
        )

    @abstractmethod
    def _tokenize_pairs(
        self, query: str, documents: list[str], instruction: str | None, truncate: bool
    ) -> list[PairTokens]:
        """Every pair as the model reads it; complete (not cut) unless ``truncate`` (tokenizing thread)."""


class _PairRerankEngine(BatchedEngine[PairTokens, ScoredPair], PairReranking):
    """A pair reranker whose pairs from concurrent requests share the batch queue's forward passes."""

    async def _score_pairs(self, pairs: Sequence[PairTokens]) -> list[ScoredPair]:
        return await self._submit(pairs)

    def _length(self, payload: PairTokens) -> int:
        return len(payload.ids)


# --- cross-encoders --------------------------------------------------------------------------------
class CrossEncoderRerankEngine(_PairRerankEngine):
    """Runs a cross-encoder's sentence-transformers modules on pairs tokenized once, beside the model.

    Loaded as ``CrossEncoder`` (a plain ``*ForSequenceClassification`` folder loads the same way), so
    the head, the activation (config's ``activation_fn``, else sigmoid for one label) and the length
    limit are the model's own, and scores equal ``CrossEncoder.predict``'s.
    """

    backend = "sentence-transformers-cross-encoder"
    scorer = RerankScorer.CROSS_ENCODER

    def __init__(self, spec: ModelSpec, plan: PlacementPlan, **batching: int) -> None:
        super().__init__(spec, plan, **batching)
        self._model: Any = None
        self._tokenizer: Any = None
        self._pad_id = 0
        self._pad_left = False
        self._max_length = 512

    def _load(self) -> None:
        with IMPORT_LOCK:
            from sentence_transformers import CrossEncoder

        model = load_sentence_transformers(CrossEncoder, self.spec, self.plan)
        if model.num_labels != 1:
            raise ValueError(f"a reranker has one output label; this model has {model.num_labels}")
        tokenizer = model.tokenizer
        self._tokenizer = copy.deepcopy(tokenizer)  # see SentenceTransformersEmbeddingEngine
        self._pad_id = int(tokenizer.pad_token_id or 0)
        self._pad_left = tokenizer.padding_side == "left"
        self._max_length = int(model.max_seq_length or tokenizer.model_max_length)
        self.memory_bytes = module_bytes(model)
        self._model = model

    def _release(self) -> None:
        self._model = None

    def _describe(self) -> str:
        activation = type(self._model.activation_fn).__name__ if self._model else "?"
        return f"cross-encoder, activation {activation}, {self._max_length} tokens a pair max"

    @property
    def max_input_tokens(self) -> int:
        return self._max_length

    def _tokenize_pairs(
        self, query: str, documents: list[str], instruction: str | None, truncate: bool
    ) -> list[PairTokens]:
        if instruction is not None:
            raise UnsupportedOptionError(
                f"Model '{self.spec.name}' is a cross-encoder and takes no instruction.", option="instruction"
            )
        # What CrossEncoder.predict asks of the tokenizer, less the padding (done per pass instead).
        limit = {"truncation": "longest_first", "max_length": self._max_length} if truncate else {}
        encoded = self._tokenizer([query] * len(documents), documents, verbose=False, **limit)
        type_ids = encoded.get("token_type_ids")
        return [
            PairTokens(ids, type_ids[i] if type_ids is not None else None)
            for i, ids in enumerate(encoded["input_ids"])
        ]

    def _forward(self, payloads: list[PairTokens]) -> list[ScoredPair]:
        torch = import_backend("torch")
        model = self._model
        input_ids, attention = pad_rows([p.ids for p in payloads], self._pad_id, left=self._pad_left)
        features: dict[str, Any] = {
            "input_ids": torch.from_numpy(input_ids).to(model.device),
            "attention_mask": torch.from_numpy(attention).to(model.device),
            "modality": "text",
        }
        if payloads[0].type_ids is not None:
            type_ids, _ = pad_rows([p.type_ids or [] for p in payloads], 0, left=self._pad_left)
            features["token_type_ids"] = torch.from_numpy(type_ids).to(model.device)
        with torch.inference_mode():
            raw = model(features)["scores"].float()
            scores = model.activation_fn(raw) if model.activation_fn is not None else raw
        return _pairs_of(raw.reshape(-1), scores.reshape(-1))


def _pairs_of(raw: torch.Tensor, scores: torch.Tensor) -> list[ScoredPair]:
    return list(zip(raw.cpu().tolist(), scores.cpu().tolist(), strict=True))


# --- LLM yes/no rerankers --------------------------------------------------------------------------
@dataclass(frozen=True)
class YesNoTemplate:
    """How one family of LLM rerankers is prompted, as its authors publish it.

    The prompt is ``prefix + body.format(instruction, query, document) + suffix``; the body alone is cut
    when a pair is too long, so the template's end (where the answer goes) always survives.
    """

    name: str
    # Lower-case parts of a model's name that pick this template.
    name_hints: tuple[str, ...]
    prefix: str
    body: str
    suffix: str
    default_instruction: str
    # The answer tokens whose logits are compared at the last position.
    yes_token: str = "yes"
    no_token: str = "no"
    # The longest prompt the authors' own code builds.
    max_length: int = 8192


# Qwen3-Reranker, exactly as the QwenLM/Qwen3-Embedding README scores it.
QWEN3_RERANKER = YesNoTemplate(
    name="qwen3-reranker",
    name_hints=("qwen3-reranker", "qwen3_reranker"),
    prefix=(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    ),
    body="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    default_instruction="Given a web search query, retrieve relevant passages that answer the query",
)

# Other yes/no rerankers plug in here with their own template; the first is the default.
YES_NO_TEMPLATES: tuple[YesNoTemplate, ...] = (QWEN3_RERANKER,)


def template_for(model_name: str) -> YesNoTemplate:
    """The template whose name hints match ``model_name``; Qwen3-Reranker's when none does."""
    lowered = model_name.lower()
    return next((t for t in YES_NO_TEMPLATES if any(h in lowered for h in t.name_hints)), YES_NO_TEMPLATES[0])


class YesNoPrompting:
    """How a yes/no LLM reranker's pairs are prompted, by whichever engine computes the logits: the
    family's template around each pair, the body cut (never the template) when a pair is too long."""

    spec: ModelSpec
    template: YesNoTemplate
    _tokenizer: Any
    _prefix: TokenIds
    _suffix: TokenIds
    _max_length: int

    def _prepare_prompting(self, tokenizer: Any, max_positions: int | None) -> tuple[int, int]:
        """Read the template's tokens with ``tokenizer``; the ids of the "yes" and "no" answers."""
        template = self.template
        answers = [tokenizer.convert_tokens_to_ids(t) for t in (template.yes_token, template.no_token)]
        if any(a is None or a == tokenizer.unk_token_id for a in answers):
            raise ValueError(
                f"the tokenizer has no single token for '{template.yes_token}' and "
                f"'{template.no_token}', which the {template.name} template scores by"
            )
        self._prefix = tokenizer.encode(template.prefix, add_special_tokens=False)
        self._suffix = tokenizer.encode(template.suffix, add_special_tokens=False)
        self._max_length = min(template.max_length, int(max_positions or template.max_length))
        self._tokenizer = tokenizer
        return int(answers[0]), int(answers[1])

    @property
    def max_input_tokens(self) -> int:
        return self._max_length

    def _tokenize_pairs(
        self, query: str, documents: list[str], instruction: str | None, truncate: bool
    ) -> list[PairTokens]:
        template = self.template
        task = template.default_instruction if instruction is None else instruction
        bodies = [template.body.format(instruction=task, query=query, document=doc) for doc in documents]
        room = self._max_length - len(self._prefix) - len(self._suffix)
        limit = {"truncation": True, "max_length": room} if truncate else {}
        encoded = self._tokenizer(bodies, add_special_tokens=False, verbose=False, **limit)
        return [PairTokens([*self._prefix, *ids, *self._suffix]) for ids in encoded["input_ids"]]

    def _describe(self) -> str:
        return f"LLM yes/no reranker, template {self.template.name}, {self._max_length} tokens a prompt max"


class LLMYesNoRerankEngine(YesNoPrompting, _PairRerankEngine):
    """A causal LM scored by its "yes"/"no" logits at the last position, in the family's template.

    Pairs are left-padded with positions counted from each row's first real token, so a batched pair
    scores as it does alone; only the last position's logits are computed (not a vocabulary-sized row
    per token).
    """

    backend = "transformers-yes-no"
    scorer = RerankScorer.LLM_YES_NO

    def __init__(self, spec: ModelSpec, plan: PlacementPlan, **batching: int) -> None:
        super().__init__(spec, plan, **batching)
        self.template = template_for(self.spec.name)
        self._model: Any = None
        self._tokenizer: Any = None
        self._prefix: TokenIds = []
        self._suffix: TokenIds = []
        self._yes_no: tuple[int, int] = (0, 0)
        self._pad_id = 0
        self._max_length = self.template.max_length

    def _load(self) -> None:
        with IMPORT_LOCK:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

        options = {**offload_options(self.plan), **self.spec.options.engine_options}
        # float32 on a CPU (bfloat16 matmuls there are slow and round the scores); the model's own on a GPU.
        options.setdefault("dtype", torch.float32 if self.plan.device == "cpu" else "auto")
        trust = self.spec.options.trust_remote_code
        path = str(self.spec.path)
        tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust)
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust, **options
        )
        if "device_map" not in options:
            model.to(self.plan.device)
        model.eval()
        self._yes_no = self._prepare_prompting(
            tokenizer, getattr(model.config, "max_position_embeddings", None)
        )
        self._pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        )
        self.memory_bytes = module_bytes(model, self.plan.device)
        self._model = model

    def _release(self) -> None:
        self._model = None

    def _forward(self, payloads: list[PairTokens]) -> list[ScoredPair]:
        torch = import_backend("torch")
        model = self._model
        input_ids, attention = pad_rows([p.ids for p in payloads], self._pad_id, left=True)
        positions = np.clip(attention.cumsum(axis=1) - 1, 0, None)
        with torch.inference_mode():
            logits = model(
                input_ids=torch.from_numpy(input_ids).to(model.device),
                attention_mask=torch.from_numpy(attention).to(model.device),
                position_ids=torch.from_numpy(positions).to(model.device),
                logits_to_keep=1,
            ).logits[:, -1, :]
            yes, no = self._yes_no
            no_yes = torch.stack([logits[:, no], logits[:, yes]], dim=1).float()
            scores = torch.softmax(no_yes, dim=1)[:, 1]
        return _pairs_of(no_yes[:, 1] - no_yes[:, 0], scores)


# --- bi-encoders -----------------------------------------------------------------------------------
# Qwen3-Embedding's (and other instruction-tuned embedders') query prompt; `instruction` fills it in.
INSTRUCT_QUERY_PROMPT = "Instruct: {instruction}\nQuery:"


class BiEncoderReranking(PromptedEmbedding, RerankEngine):
    """An embedding model that also reranks: cosine of the query's and each document's embedding.

    Query and documents get the prompts ``encode_query`` / ``encode_document`` give them (a model's
    ``query`` prompt, its ``document``/``passage``/``corpus`` prompt, else the default one), and are
    embedded together, batched with concurrent embedding requests.
    """

    scorer = RerankScorer.BI_ENCODER
    capabilities = frozenset({Capability.EMBEDDINGS, Capability.RERANK})

    def _query_prompt(self, instruction: str | None) -> str:
        prompts = self.prompts
        if instruction is None:
            return (prompts.get("query") or "") if "query" in prompts else self._prompt
        if not (prompts.get("query") or "").startswith("Instruct:"):
            raise UnsupportedOptionError(
                f"Model '{self.spec.name}' is an embedding model without an instruction prompt "
                "(Instruct: ...\\nQuery:), so it takes no instruction.",
                option="instruction",
            )
        return INSTRUCT_QUERY_PROMPT.format(instruction=instruction)

    def _document_prompt(self) -> str:
        prompts = self.prompts
        name = next((n for n in ("document", "passage", "corpus") if n in prompts), None)
        return (prompts[name] or "") if name else self._prompt

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None,
        truncate: bool,
        max_tokens_per_doc: int | None = None,
    ) -> RerankScores:
        (query_ids,) = await self.tokenize([query], truncate, prompt=self._query_prompt(instruction))
        if max_tokens_per_doc is not None:
            cut = list(documents)
            documents = await self._on_tokenizing_thread(
                lambda: cut_documents(self._tokenizer, cut, max_tokens_per_doc)
            )
        document_ids = await self.tokenize(documents, truncate, prompt=self._document_prompt())
        if not truncate:
            limit = self.max_input_tokens
            if len(query_ids) > limit:
                raise InputTooLongError(
                    f"The query has {len(query_ids)} tokens, but model '{self.spec.name}' reads at most "
                    f"{limit}.",
                    subject=Subject.QUERY,
                )
            _refuse_over_long([len(ids) for ids in document_ids], limit, self.spec.name, "a text")
        vectors = await self.embed([query_ids, *document_ids])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        cosines = (unit[1:] @ unit[0]).astype(np.float32)
        tokens = len(query_ids) + sum(len(ids) for ids in document_ids)
        return RerankScores(scores=cosines, raw_scores=cosines, tokens=tokens)


class BiEncoderRerankEngine(BiEncoderReranking, SentenceTransformersEmbeddingEngine):
    """The sentence-transformers embedding engine, reranking as a bi-encoder too."""

    def _describe(self) -> str:
        return super()._describe() + "; reranks as a bi-encoder (cosine)"
