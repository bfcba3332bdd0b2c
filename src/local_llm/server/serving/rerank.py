"""The rerank service: picks the model, checks the request against it, runs its scorer, shapes the answer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import orjson

from local_llm.config import Settings
from local_llm.engines.rerank import RerankEngine, RerankScores
from local_llm.errors import InvalidRequestError, ModelTypeMismatchError
from local_llm.manager import ModelManager
from local_llm.protocol.rerank import RerankRequest, TEIRerankRequest
from local_llm.registry import ModelKind, ModelRegistry, ModelSpec

ROUTE = "/v1/rerank"


def default_rerank_model(registry: ModelRegistry, configured: str | None) -> str | InvalidRequestError:
    """The model a request without ``model`` gets (TEI's clients send none), or why there is none.

    LLM_DEFAULT_RERANK_MODEL when set; else the only reranker; else, with no reranker at all, the only
    embedding model (out of the box: the bundled MiniLM). Anything else would be a guess.
    """
    if configured:
        return configured
    rerankers = [m.name for m in registry.models if m.kind is ModelKind.RERANKER]
    if len(rerankers) == 1:
        return rerankers[0]
    embedders = [m.name for m in registry.models if m.kind is ModelKind.EMBEDDING]
    if not rerankers and len(embedders) == 1:
        return embedders[0]
    choices = rerankers or embedders
    listing = ", ".join(sorted(choices)) or "none"
    return InvalidRequestError(
        f"No `model` given, and {'none' if not choices else 'several'} of the served models can rerank "
        f"({listing}): name one in `model`, or set LLM_DEFAULT_RERANK_MODEL.",
        param="model",
    )


class RerankService:
    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self._manager = manager
        self._settings = settings
        self._default = default_rerank_model(manager.registry, settings.default_rerank_model)

    async def cohere(self, request: RerankRequest) -> bytes:
        """The JSON body of a :class:`RerankResponse` (Cohere/Jina)."""
        documents = request.texts()
        model, scored = await self._score(request, documents, "documents", request.max_tokens_per_doc)
        order = _ranking(scored.scores, request.top_n)
        results = [
            {"index": int(i), "relevance_score": scored.scores[i]}
            | ({"document": {"text": documents[i]}} if request.return_documents else {})
            for i in order
        ]
        body = {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": model,
            "results": results,
            "usage": {"total_tokens": scored.tokens},
        }
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    async def tei(self, request: TEIRerankRequest) -> bytes:
        """The JSON body of TEI's answer: ``[{index, score, text?}]``, highest score first."""
        _, scored = await self._score(request, request.texts, "texts", None)
        scores = scored.raw_scores if request.raw_scores else scored.scores
        ranks = [
            {"index": int(i), "score": scores[i]}
            | ({"text": request.texts[i]} if request.return_text else {})
            for i in _ranking(scores, None)
        ]
        return orjson.dumps(ranks, option=orjson.OPT_SERIALIZE_NUMPY)

    async def _score(
        self,
        request: RerankRequest | TEIRerankRequest,
        documents: Sequence[str],
        documents_param: str,
        max_tokens_per_doc: int | None,
    ) -> tuple[str, RerankScores]:
        """The served name answered with, and every document's scores."""
        spec = self._model_for(request.model)
        if len(documents) > self._settings.max_inputs_per_request:
            raise InvalidRequestError(
                f"{len(documents)} documents in one request; at most "
                f"{self._settings.max_inputs_per_request} are accepted (LLM_MAX_INPUTS_PER_REQUEST).",
                param=documents_param,
            )
        async with self._manager.lease(spec.name, keep_alive_s=request.keep_alive) as engine:
            if not isinstance(engine, RerankEngine):
                raise ModelTypeMismatchError(spec.name, spec.kind.value, ROUTE)
            try:
                scored = await engine.rerank(
                    request.query,
                    documents,
                    instruction=request.instruction,
                    truncate=request.truncate,
                    max_tokens_per_doc=max_tokens_per_doc,
                )
            except InvalidRequestError as exc:
                if exc.param == "documents":  # TEI calls them texts
                    exc.param = documents_param
                raise
        return request.model or spec.name, scored

    def _model_for(self, name: str | None) -> ModelSpec:
        if name is None:
            if isinstance(self._default, InvalidRequestError):
                raise self._default
            name = self._default
        spec = self._manager.registry.get(name)
        if spec.rerank is None:
            raise ModelTypeMismatchError(name, spec.kind.value, ROUTE)
        return spec


def _ranking(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Document indices, highest score first (ties keep the given order); ``top_n`` past the end is all."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_n]]
