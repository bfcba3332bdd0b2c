"""The sentence-transformers engine on its own: counting beside encoding, token ids, lifecycle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from local_llm.config import Settings
from local_llm.engines.embedding import SentenceTransformersEmbeddingEngine
from local_llm.engines.factory import create_engine
from local_llm.errors import EngineFailedError
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


def test_a_fatal_device_error_kills_the_engine_once_and_fails_its_requests_at_once(zoo: Path) -> None:
    """A CUDA error leaves a torch engine's context unusable: every request on it (running or queued)
    fails with engine_failed, the engine reports its death once, and nothing waits for it."""
    engine = engine_for(zoo)
    deaths: list[str] = []

    async def scenario() -> None:
        await engine.start()
        engine.watch(deaths.append)

        def broken(payloads: list[list[int]]) -> np.ndarray:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        engine._forward = broken  # type: ignore[method-assign]
        token_lists = await engine.tokenize(TEXTS[:20], truncate=True)
        outcomes = await asyncio.gather(
            *(engine.embed(token_lists[i : i + 2]) for i in range(0, 20, 2)), return_exceptions=True
        )
        assert all(isinstance(o, EngineFailedError) for o in outcomes), outcomes
        await asyncio.sleep(0)  # the death is told on the event loop's thread
        assert deaths == ["RuntimeError: CUDA error: an illegal memory access was encountered"]
        with pytest.raises(EngineFailedError, match="died"):
            await engine.embed(token_lists[:1])
        await engine.stop()

    asyncio.run(scenario())


def test_an_ordinary_error_fails_only_its_batch_and_the_engine_lives(zoo: Path) -> None:
    engine = engine_for(zoo)
    deaths: list[str] = []

    async def scenario() -> None:
        await engine.start()
        engine.watch(deaths.append)
        forward = engine._forward
        calls = 0

        def flaky(payloads: list[list[int]]) -> np.ndarray:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise torch_out_of_memory()
            return forward(payloads)

        engine._forward = flaky  # type: ignore[method-assign]
        (ids,) = await engine.tokenize(TEXTS[:1], truncate=True)
        with pytest.raises(RuntimeError, match="out of memory"):
            await engine.embed([ids])
        assert (await engine.embed([ids])).shape == (1, 32)
        assert deaths == []
        await engine.stop()

    asyncio.run(scenario())


def torch_out_of_memory() -> Exception:
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_parked_engine_holds_its_pinned_buffer_in_ram_and_nothing_on_the_gpu(zoo: Path) -> None:
    """The ledger takes a parked model's footprint as measured: GPU bytes counted after the park had
    it unload what it had just parked (an H200 run). Parked here means a GPU plan whose tensors are in
    host memory, as the park leaves them."""
    import torch

    engine = engine_for(zoo)
    engine._load()  # on the CPU: where a park leaves the tensors
    weights = engine.memory_bytes or 0
    assert weights > 0
    size = engine.spec.size_bytes
    engine.plan = PlacementPlan(
        Placement.GPU, "cuda", MemoryEstimate(size), gpu_bytes=size, ram_bytes=0, reason="test"
    )
    engine._host_copy = torch.empty(weights, dtype=torch.uint8)
    assert not engine._awake()
    parked = engine.footprint()
    assert (parked.gpu_bytes, parked.ram_bytes) == (0, weights)
    engine._release()
