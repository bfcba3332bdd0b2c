"""Discovery and classification of the models a folder holds."""

from local_llm.registry.registry import DEFAULT_TAG, ModelRegistry, tagged_name
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
    "DEFAULT_TAG",
    "ModelKind",
    "ModelOptions",
    "ModelRegistry",
    "ModelSpec",
    "RerankScorer",
    "RerankScoring",
    "SkippedFolder",
    "WeightFormat",
    "tagged_name",
]
