"""Embedders and LLM rerankers on vLLM's pooling runner: an engine process of their own, on a GPU.

A causal-LM body (Qwen3-Embedding, Qwen3-Reranker) is a small LLM: vLLM runs it with its paged
attention and continuous batching, several times faster than a padded transformers batch (the
numbers are in docs/benchmarks.md). Tokenizing stays ours, on a thread of the engine's own and exactly
as the in-process engines tokenize (sentence-transformers' prompts; the yes/no family's template), so
both engines answer alike; vLLM receives token ids only and pools them:

- an embedder's last token (or mean) through its ``embed`` task, normalised where the model's own
  pipeline normalises;
- a yes/no reranker through the ``classify`` task, its LM head turned by the published
  ``hf_overrides`` into one logit, yes minus no; the score is its sigmoid, which is the softmax over
  the "no"/"yes" logits that the authors publish.

Requests from concurrent clients meet in vLLM's scheduler, which batches them by tokens. The process,
its memory, its death and sleep mode are :class:`~local_llm.engines.vllm_base.VllmEngine`'s.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from local_llm.backends import IMPORT_LOCK
from local_llm.config import Settings
from local_llm.engines.batched import TokenizerThread
from local_llm.engines.embedding import TokenIds
from local_llm.engines.rerank import (
    BiEncoderReranking,
    PairReranking,
    PairTokens,
    ScoredPair,
    YesNoPrompting,
    template_for,
)
from local_llm.engines.vllm_base import VllmEngine
from local_llm.errors import EngineRequestError, Subject
from local_llm.placement import PlacementPlan
from local_llm.placement.estimate import pooling_pass_tokens
from local_llm.registry.pooling import PoolingRunner
from local_llm.registry.spec import ModelSpec, RerankScorer

T = TypeVar("T")


class VllmPoolingEngine(VllmEngine):
    """A model on vLLM's pooling runner: our tokenizer on a thread of its own, vLLM's pooled outputs."""

    def __init__(
        self, spec: ModelSpec, plan: PlacementPlan, settings: Settings, runner: PoolingRunner
    ) -> None:
        super().__init__(spec, plan, settings)
        self._runner = runner
        self._tokenizer: Any = None
        self._tokenizing: TokenizerThread | None = None
        self._request_ids = itertools.count()

    def _runner_args(self) -> dict[str, Any]:
        # A pass holds LLM_EMBEDDING_BATCH_TOKENS, as the in-process engines' do, and at least one whole
        # input (vLLM refuses fewer batched tokens than the context); the plan's KV cache holds a pass.
        tokens = pooling_pass_tokens(self.plan.facts.context_tokens, self._settings)
        return {"runner": "pooling", "max_num_batched_tokens": tokens, **self._runner.engine_args}

    async def start(self) -> None:
        await super().start()
        self.stage("loading the tokenizer")
        self._tokenizer = await asyncio.to_thread(self._load_tokenizer)
        self._tokenizing = TokenizerThread(self.spec.name)
        self._prepare()

    def _load_tokenizer(self) -> Any:
        with IMPORT_LOCK:
            from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            str(self.spec.path), local_files_only=True, trust_remote_code=self.spec.options.trust_remote_code
        )

    def _prepare(self) -> None:
        """Read what requests need from the tokenizer, once it is loaded."""

    async def stop(self) -> None:
        if self._tokenizing is not None:
            self._tokenizing.close()
            self._tokenizing = None
        await super().stop()

    async def _on_tokenizing_thread(self, work: Callable[[], T]) -> T:
        if self._tokenizing is None:
            raise RuntimeError(f"engine for {self.spec.name} is not started")
        return await self._tokenizing.run(work, self.observer)

    async def _pool(self, inputs: Sequence[TokenIds], task: str, use_activation: bool) -> list[Any]:
        """vLLM's pooled output (a tensor) for each input, all sent at once: vLLM batches them with
        every other request. Cancelling this aborts them in vLLM."""
        with IMPORT_LOCK:
            from vllm import PoolingParams

        params = PoolingParams(task=task, use_activation=use_activation)  # type: ignore[arg-type]

        async def one(ids: TokenIds) -> Any:
            final = None
            request_id = f"{self.spec.name}-{next(self._request_ids)}"
            async for output in self.engine.encode({"prompt_token_ids": list(ids)}, params, request_id):
                final = output
            assert final is not None, "vLLM finished a pooling request without an output"
            return final.outputs.data

        return await self._guarded(lambda: asyncio.gather(*(one(ids) for ids in inputs)))


class VllmEmbeddingEngine(VllmPoolingEngine, BiEncoderReranking):
    """An embedder on vLLM's pooling runner; it reranks as a bi-encoder too (cosine), like the
    sentence-transformers engine it stands in for."""

    backend = "vllm-pooling"

    def __init__(
        self, spec: ModelSpec, plan: PlacementPlan, settings: Settings, runner: PoolingRunner
    ) -> None:
        super().__init__(spec, plan, settings, runner)
        self._prompt = runner.prompts.get(runner.default_prompt_name or "", "")

    @property
    def prompts(self) -> dict[str, str]:
        return self._runner.prompts

    @property
    def dimension(self) -> int:
        return int(self.engine.model_config.get_hidden_size())

    @property
    def max_input_tokens(self) -> int:
        return self.max_model_len

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def _describe(self) -> str:
        normalised = "normalised" if self._runner.normalize else "not normalised"
        return (
            f"embedding model on vLLM's pooling runner, {self.dimension} dims {normalised}, "
            f"{self.max_input_tokens} tokens max; reranks as a bi-encoder (cosine)"
        )

    async def embed(self, inputs: Sequence[TokenIds]) -> np.ndarray:
        for index, ids in enumerate(inputs):
            if not ids:
                raise EngineRequestError(f"Input {index} has no tokens.", subject=Subject.INPUT, index=index)
        vectors = await self._pool(inputs, "embed", use_activation=self._runner.normalize)
        return np.stack([vector.float().numpy() for vector in vectors])


class VllmYesNoRerankEngine(VllmPoolingEngine, YesNoPrompting, PairReranking):
    """A yes/no LLM reranker on vLLM's pooling runner, prompted with the family's template as the
    transformers engine prompts it."""

    backend = "vllm-pooling-yes-no"
    scorer = RerankScorer.LLM_YES_NO

    def __init__(
        self, spec: ModelSpec, plan: PlacementPlan, settings: Settings, runner: PoolingRunner
    ) -> None:
        super().__init__(spec, plan, settings, runner)
        self.template = template_for(spec.name)
        self._prefix: TokenIds = []
        self._suffix: TokenIds = []
        self._max_length = self.template.max_length

    def _prepare(self) -> None:
        self._prepare_prompting(self._tokenizer, self.max_model_len)

    def _describe(self) -> str:
        return YesNoPrompting._describe(self) + ", on vLLM's pooling runner"

    async def _score_pairs(self, pairs: Sequence[PairTokens]) -> list[ScoredPair]:
        logits = await self._pool([pair.ids for pair in pairs], "classify", use_activation=False)
        return [(raw, _sigmoid(raw)) for raw in (float(logit.reshape(-1)[0]) for logit in logits)]


def _sigmoid(x: float) -> float:
    """The score of a yes-minus-no logit: softmax over ("no", "yes"), taken at "yes"."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
