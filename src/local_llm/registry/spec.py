"""What discovery knows about a model: plain, immutable data shared by every layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Which engine serves a model: vLLM, or transformers in this process (sentence-transformers for
#: embedders). ``None``: chat follows LLM_CHAT_ENGINE; embedders and rerankers run on vLLM's pooling
#: runner on a GPU where it computes what their own pipeline does, in process elsewhere.
EngineName = Literal["vllm", "transformers"]
#: Where a model runs, when the operator decides instead of the planner (models.yaml ``placement``).
PlacementName = Literal["gpu", "gpu+offload", "cpu"]


class ModelKind(str, Enum):
    """Which APIs a model serves."""

    CHAT = "chat"
    EMBEDDING = "embedding"
    RERANKER = "reranker"


class RerankScorer(str, Enum):
    """How a model scores query-document pairs on the rerank routes (models.yaml: ``scorer``)."""

    # The model reads query and document together and its classification head gives the score.
    CROSS_ENCODER = "cross-encoder"
    # A causal LM asked whether the document meets the query: softmax over its "no"/"yes" logits.
    LLM_YES_NO = "llm-yes-no"
    # An embedding model: cosine of the query's and the document's embeddings.
    BI_ENCODER = "bi-encoder"


@dataclass(frozen=True)
class RerankScoring:
    """Which scorer serves a model's rerank requests, and why the registry chose it (logged at load)."""

    scorer: RerankScorer
    reason: str


class WeightFormat(str, Enum):
    SAFETENSORS = "safetensors"
    PYTORCH = "pytorch"
    GGUF = "gguf"


class ModelOptions(BaseModel):
    """Per-model options: declared here once, read from models.yaml (whose entries add how a folder
    is named and classified, see ``registry/overrides.py``). Defaults are the secure ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trust_remote_code: bool = False
    # Matryoshka-trained embedders may be truncated with `dimensions`; others are refused.
    matryoshka: bool = False
    engine_options: dict[str, Any] = Field(default_factory=dict)
    # The engine (see EngineName); chat models: vLLM's tool-call / reasoning parser names (detected
    # when unset).
    engine: EngineName | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    # Lifecycle: where it runs (None: planned), never evicted, unloaded after this long idle.
    placement: PlacementName | None = None
    pinned: bool = False
    idle_ttl_s: float | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class ModelSpec:
    """A servable model found by discovery.

    ``path`` is resolved by the registry only; request code never builds a path from a name.
    """

    name: str
    kind: ModelKind
    path: Path
    weight_format: WeightFormat
    size_bytes: int
    # Why the classifier chose ``kind``: shown by `local-llm models` and /v1/models.
    reason: str
    source: str
    aliases: tuple[str, ...] = ()
    quantization: str | None = None
    options: ModelOptions = field(default_factory=ModelOptions)
    # Chat models: whether the model has a chat template (without one it serves completions only).
    chat_template: bool = False
    # How /v1/rerank scores with this model; None where reranking makes no sense (chat models).
    rerank: RerankScoring | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class SkippedFolder:
    """A folder discovery looked at and will not serve, with the reason a user needs to fix it."""

    path: Path
    reason: str
