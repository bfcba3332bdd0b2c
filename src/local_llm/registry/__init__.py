"""Discovery and classification of the models a folder holds."""

from local_llm.registry.registry import ModelRegistry
from local_llm.registry.spec import (
    ModelKind,
    ModelOptions,
    ModelSpec,
    RerankScorer,
    RerankScoring,
    SkippedFolder,
    WeightFormat,
)

__all__ = [
    "ModelKind",
    "ModelOptions",
    "ModelRegistry",
    "ModelSpec",
    "RerankScorer",
    "RerankScoring",
    "SkippedFolder",
    "WeightFormat",
]
