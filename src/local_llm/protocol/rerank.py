"""Rerank requests and responses: the Cohere/Jina shape and TEI's, both validated here.

Cohere/Jina (``/v1/rerank``, ``/v2/rerank``, ``/rerank``): ``{model, query, documents, top_n,
return_documents}`` in, ``{id, model, results: [{index, relevance_score, document?}], usage}`` out,
results sorted by score, highest first. TEI (``/rerank`` with ``texts``): ``{query, texts,
raw_scores, return_text, truncate}`` in, ``[{index, score, text?}]`` out, also sorted.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
)

from local_llm.protocol.keep_alive import KeepAlive

NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]


class RerankDocument(BaseModel):
    """A document as Cohere v1 and Jina also accept it, ``{"text": ...}``; other keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr


class _RerankOptions(BaseModel):
    """What both shapes share: the model, the query, truncation, the instruction."""

    # Unknown fields are ignored (as vLLM does), so clients that send extras keep working.
    model_config = ConfigDict(extra="ignore")

    keep_alive: KeepAlive = None

    model: StrictStr | None = Field(
        None,
        description="The model to rank with. When absent: LLM_DEFAULT_RERANK_MODEL, else the only "
        "reranker served, else the only embedding model (if there is no reranker).",
    )
    query: NonEmptyStr
    # Extension: cut over-long inputs to the model's limit (default), or answer 400 when false.
    truncate: StrictBool = Field(
        True, description="Cut inputs longer than the model reads (default); false answers 400 instead."
    )
    # Extension: the task description of instruction-following rerankers (Qwen3-Reranker,
    # Qwen3-Embedding); their published default when absent.
    instruction: NonEmptyStr | None = None


class RerankRequest(_RerankOptions):
    """Cohere (v1 and v2) and Jina."""

    documents: Annotated[list[StrictStr | RerankDocument], Field(min_length=1)]
    top_n: StrictInt | None = Field(
        None,
        gt=0,
        validation_alias=AliasChoices("top_n", "top_k"),
        description="Return the best N results (all when absent; larger than the list is the list). "
        "`top_k` is accepted as an alias.",
    )
    return_documents: StrictBool = False
    # Cohere v2: each document is cut to this many of its own tokens before scoring.
    max_tokens_per_doc: StrictInt | None = Field(None, gt=0)

    def texts(self) -> list[str]:
        return [doc if isinstance(doc, str) else doc.text for doc in self.documents]


class TEIRerankRequest(_RerankOptions):
    """Text Embeddings Inference's ``/rerank``."""

    texts: Annotated[list[StrictStr], Field(min_length=1)]
    raw_scores: StrictBool = False
    return_text: StrictBool = False


# pydantic puts a union member's tag in an error's location; the error handler drops these.
SHAPE_TAGS = frozenset({"cohere-shape", "tei-shape"})


def _shape(body: Any) -> str:
    """TEI's body names its documents ``texts``; Cohere's and Jina's name them ``documents``."""
    return "tei-shape" if isinstance(body, dict) and "texts" in body else "cohere-shape"


# ``POST /rerank`` takes either shape, told apart by the body.
AnyRerankRequest = Annotated[
    Annotated[RerankRequest, Tag("cohere-shape")] | Annotated[TEIRerankRequest, Tag("tei-shape")],
    Discriminator(_shape),
]


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankResultDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None
