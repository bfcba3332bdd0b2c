"""Model backends behind one small interface per kind."""

from local_llm.engines.base import Engine
from local_llm.engines.embedding import EmbeddingEngine, TokenIds

__all__ = ["EmbeddingEngine", "Engine", "TokenIds"]
