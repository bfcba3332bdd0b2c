"""The sentence-transformers engine on its own: counting beside encoding, token ids, lifecycle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from local_llm.config import Settings
from local_llm.engines.embedding import SentenceTransformersEmbeddingEngine
from local_llm.engines.factory import create_engine
from local_llm.placement import Placement, PlacementPlan
from local_llm.registry import ModelRegistry

TEXTS = [
    ("short " * (i % 7 + 1)) + ("一段中文文本" * (i % 5)) + ("long tail words " * (i % 11)) for i in range(96)
]


def engine_for(zoo: Path, name: str = "tiny-embed") -> SentenceTransformersEmbeddingEngine:
    spec = ModelRegistry.discover(zoo, include_bundled=False).get(name)
    plan = PlacementPlan(Placement.CPU, "cpu", spec.size_bytes, "test")
    engine = create_engine(spec, plan, Settings(embedding_batch_size=8))
    assert isinstance(engine, SentenceTransformersEmbeddingEngine)
    return engine


def test_counting_beside_encoding_never_corrupts_either(zoo: Path) -> None:
    """Regression: counting once shared encode()'s tokenizer from another thread (wrong counts, 500s)."""
    engine = engine_for(zoo)

    async def scenario() -> None:
        await engine.start()
        expected = [len(ids) for ids in engine.model.tokenizer(TEXTS)["input_ids"]]
        reference = engine.model.encode(TEXTS, convert_to_numpy=True)
        for _ in range(10):
            vectors, *counts = await asyncio.gather(
                engine.embed(TEXTS, expected), *(engine.count_tokens(TEXTS[i:]) for i in range(16))
            )
            counts = [[*expected[:i], *c] for i, c in enumerate(counts)]
            assert all(c == expected for c in counts)
            np.testing.assert_allclose(vectors, reference, atol=1e-5)
        await engine.stop()

    asyncio.run(scenario())


def test_token_ids_and_text_agree_and_stop_releases_the_model(zoo: Path) -> None:
    engine = engine_for(zoo)

    async def scenario() -> None:
        await engine.start()
        ids = [engine.model.tokenizer(t)["input_ids"] for t in TEXTS[:10]]
        from_ids = await engine.embed(ids, [len(x) for x in ids])
        from_text = await engine.embed(TEXTS[:10], [len(x) for x in ids])
        np.testing.assert_allclose(from_ids, from_text, atol=1e-5)
        assert engine.dimension == 32
        assert engine.max_input_tokens == 128
        await engine.stop()
        assert engine._model is None

    asyncio.run(scenario())
