"""The sentence-transformers engine on its own: counting beside encoding, token ids, lifecycle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from local_llm.config import Settings
from local_llm.engines.embedding import SentenceTransformersEmbeddingEngine
from local_llm.engines.factory import create_engine
from local_llm.placement import MemoryEstimate, Placement, PlacementPlan
from local_llm.registry import ModelRegistry, ModelSpec

pytestmark = pytest.mark.unit

TEXTS = [
    ("short " * (i % 7 + 1)) + ("一段中文文本" * (i % 5)) + ("long tail words " * (i % 11)) for i in range(96)
]


def cpu_plan(spec: ModelSpec) -> PlacementPlan:
    return PlacementPlan(
        Placement.CPU,
        "cpu",
        MemoryEstimate(spec.size_bytes),
        gpu_bytes=0,
        ram_bytes=spec.size_bytes,
        reason="test",
    )


def engine_for(zoo: Path, name: str = "tiny-embed") -> SentenceTransformersEmbeddingEngine:
    spec = ModelRegistry.discover(zoo, include_bundled=False).get(name)
    plan = cpu_plan(spec)
    engine = create_engine(spec, plan, Settings(embedding_batch_size=8))
    assert isinstance(engine, SentenceTransformersEmbeddingEngine)
    return engine


def test_counting_beside_encoding_never_corrupts_either(zoo: Path) -> None:
    """Regression: counting once shared encode()'s tokenizer from another thread (wrong counts, 500s)."""
    engine = engine_for(zoo)

    async def scenario() -> None:
        await engine.start()
        expected = engine.model.tokenizer(TEXTS)["input_ids"]
        reference = engine.model.encode(TEXTS, convert_to_numpy=True)
        for _ in range(10):
            # encode() (the reference library, on the default pool) runs beside our tokenizing thread.
            from_library, *tokenized = await asyncio.gather(
                asyncio.to_thread(engine.model.encode, TEXTS, batch_size=8),
                *(engine.tokenize(TEXTS[i:], truncate=False) for i in range(16)),
            )
            assert all(ids == expected[i:] for i, ids in enumerate(tokenized))
            np.testing.assert_allclose(from_library, reference, atol=1e-5)
            np.testing.assert_allclose(await engine.embed(tokenized[0]), reference, atol=1e-5)
        await engine.stop()

    asyncio.run(scenario())


def test_vectors_equal_encode_and_stop_releases_the_model(zoo: Path) -> None:
    engine = engine_for(zoo)

    async def scenario() -> None:
        await engine.start()
        ids = await engine.tokenize(TEXTS, truncate=False)
        np.testing.assert_allclose(await engine.embed(ids), engine.model.encode(TEXTS), atol=1e-5)
        long_text = "many words " * 200
        (cut,) = await engine.tokenize([long_text], truncate=True)
        assert len(cut) == 128
        assert cut[-1] == engine.model.tokenizer.sep_token_id
        np.testing.assert_allclose(await engine.embed([cut]), engine.model.encode([long_text]), atol=1e-5)
        assert engine.dimension == 32
        assert engine.max_input_tokens == 128
        await engine.stop()
        assert engine._model is None

    asyncio.run(scenario())


def test_engine_options_from_models_yaml_reach_the_model(zoo: Path) -> None:
    """models.yaml's engine_options are SentenceTransformer kwargs: here, half precision."""
    from dataclasses import replace

    from local_llm.registry import ModelOptions

    spec = ModelRegistry.discover(zoo, include_bundled=False).get("tiny-embed")
    half = replace(spec, options=ModelOptions(engine_options={"model_kwargs": {"dtype": "bfloat16"}}))
    plan = cpu_plan(spec)
    engine = create_engine(half, plan, Settings())
    assert isinstance(engine, SentenceTransformersEmbeddingEngine)

    async def scenario() -> None:
        await engine.start()
        assert str(next(engine.model.parameters()).dtype) == "torch.bfloat16"
        assert engine.memory_bytes is not None
        ids = await engine.tokenize(TEXTS[:8], truncate=False)
        vectors = await engine.embed(ids)
        assert vectors.dtype == np.float32
        from sentence_transformers import SentenceTransformer

        full = SentenceTransformer(str(spec.path), device="cpu").encode(TEXTS[:8])
        cosines = (vectors * full).sum(axis=1) / (
            np.linalg.norm(vectors, axis=1) * np.linalg.norm(full, axis=1)
        )
        assert cosines.min() > 0.99
        await engine.stop()

    asyncio.run(scenario())
