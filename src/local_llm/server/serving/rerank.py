"""The rerank service: picks the model, checks the request against it, runs its scorer, shapes the answer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
import orjson

from local_llm.config import Settings
from local_llm.engines.base import Capability
from local_llm.engines.rerank import RerankEngine, RerankScores
from local_llm.errors import InvalidRequestError, Subject
from local_llm.manager import ModelManager
from local_llm.protocol.rerank import RerankRequest, TEIRerankRequest
from local_llm.registry import ModelKind, ModelRegistry
from local_llm.server.serving.base import Admission, FieldNames, Serving

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


_TOO_LONG_HINT = "Shorten them, or leave `truncate` at its default (true) to cut them."
COHERE_FIELDS = FieldNames(
    {Subject.QUERY: "query", Subject.DOCUMENT: "documents"}, too_long_hint=_TOO_LONG_HINT
)
TEI_FIELDS = FieldNames({Subject.QUERY: "query", Subject.DOCUMENT: "texts"}, too_long_hint=_TOO_LONG_HINT)


class RerankService:
    def __init__(self, manager: ModelManager, admission: Admission, settings: Settings) -> None:
        self._serving: Serving[RerankEngine] = Serving(manager, admission, settings, Capability.RERANK, ROUTE)
        self._registry = manager.registry
        self._settings = settings
        self._default = default_rerank_model(manager.registry, settings.default_rerank_model)

    async def cohere(self, request: RerankRequest) -> bytes:
        """The JSON body of a :class:`RerankResponse` (Cohere/Jina)."""
        documents = request.texts()
        model, scored = await self._score(request, documents, COHERE_FIELDS, request.max_tokens_per_doc)
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
        _, scored = await self._score(request, request.texts, TEI_FIELDS, None)
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
        fields: FieldNames,
        max_tokens_per_doc: int | None,
    ) -> tuple[str, RerankScores]:
        """The served name answered with, and every document's scores."""
        spec = self._serving.resolve(self._model_name(request.model))
        if len(documents) > self._settings.max_inputs_per_request:
            raise InvalidRequestError(
                f"{len(documents)} documents in one request; at most "
                f"{self._settings.max_inputs_per_request} are accepted (LLM_MAX_INPUTS_PER_REQUEST).",
                param=fields.subjects[Subject.DOCUMENT],
            )
        scored = await self._serving.call(
            spec,
            lambda engine: engine.rerank(
                request.query,
                documents,
                instruction=request.instruction,
                truncate=request.truncate,
                max_tokens_per_doc=max_tokens_per_doc,
            ),
            fields=fields,
            inputs=len(documents) + 1,
            keep_alive_s=request.keep_alive,
        )
        return request.model or spec.name, scored

    def _model_name(self, name: str | None) -> str:
        """``name``, or the default for a request that names none."""
        if name is not None:
            return name
        if isinstance(self._default, InvalidRequestError):
            raise self._default
        return self._default


def _ranking(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Document indices, highest score first (ties keep the given order); ``top_n`` past the end is all."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_n]]
