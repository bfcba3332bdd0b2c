"""Fake engines behind the real interfaces, and the app built on them, in this process.

For the cases that never reach an engine (validation, routing, admission), the whole app runs over an
ASGI transport in milliseconds, with no model, no engine library and no engine process. The fake
models carry the zoo's names (tests/model_zoo.py), so a case reads the same here and over real HTTP.

Each fake declares the capabilities of the real engine class that would serve its model (the factory
checks it), so the serving layer resolves models exactly as it does with real engines. A test can
hold loads and requests at a gate (:class:`FakeEngines`), to see what waits and what is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from local_llm.config import Settings
from local_llm.engines import EmbeddingEngine, Engine, TokenIds
from local_llm.engines.base import Capability, Progress
from local_llm.engines.chat import ChatEngine, ChatResult
from local_llm.engines.factory import engine_class
from local_llm.engines.rerank import RerankEngine, RerankScores
from local_llm.placement import PlacementPlan
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest
from local_llm.registry import ModelKind, ModelOptions, ModelRegistry, ModelSpec, WeightFormat
from local_llm.registry.spec import RerankScorer, RerankScoring
from local_llm.server.app import create_app

MINILM = "all-MiniLM-L6-v2"
# What the shared test server is started with (tests/conftest.py's ``server``): the same caps here.
SERVER_SETTINGS: dict[str, Any] = {
    "max_inputs_per_request": 64,
    "max_request_body_mb": 1,
    "model_cache_size": 8,
}
_DIMENSION = 32
_MAX_INPUT_TOKENS = 128
_VOCAB_SIZE = 30522


class Gate:
    """Where fake work waits until the test opens it; counts who is waiting."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.waiting = 0

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def passed(self) -> None:
        self.waiting += 1
        try:
            await self._open.wait()
        finally:
            self.waiting -= 1


class FakeEngines:
    """The engine factory of the app under test: builds fakes, counts them, holds them at gates."""

    def __init__(self) -> None:
        self.loads = Gate()  # engines starting wait here
        self.requests = Gate()  # engine calls wait here
        self.built: list[str] = []

    def __call__(self, spec: ModelSpec, plan: PlacementPlan, settings: Settings) -> Engine:
        fake = _fake_class(spec)(spec, plan, self)
        real = engine_class(spec, settings)
        assert type(fake).capabilities == real.capabilities, (type(fake), real)
        self.built.append(spec.name)
        return fake


class _Fake(Engine):
    backend = "fake"

    def __init__(self, spec: ModelSpec, plan: PlacementPlan, engines: FakeEngines) -> None:
        super().__init__(spec, plan)
        self._engines = engines
        self._done = 0
        self._pending = 0

    async def start(self) -> None:
        self.stage("passing the loads gate")
        await self._engines.loads.passed()
        self.memory_bytes = 1024

    async def stop(self) -> None:
        pass

    async def _work(self) -> None:
        self.check_alive()
        self._pending += 1
        try:
            await self._engines.requests.passed()
        finally:
            self._pending -= 1
        self._done += 1

    def progress(self) -> Progress:
        """Calls answered, and calls in progress (held at the requests gate: no progress meanwhile)."""
        return Progress(self._done, self._pending)


class FakeChatEngine(_Fake, ChatEngine):
    """Answers every chat with "ok" (a stream of one chunk when asked to stream)."""

    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        await self._work()
        return _answer("chat.completion", {"message": {"role": "assistant", "content": "ok"}}, request.stream)

    async def complete(self, request: CompletionRequest) -> ChatResult:
        await self._work()
        return _answer("text_completion", {"text": "ok"}, request.stream)

    async def count_prompt_tokens(self, request: ChatCompletionRequest) -> int:
        """One token per message: what the fake's answers count as their prompt is not modelled."""
        await self._work()
        return len(request.messages)

    @property
    def max_model_len(self) -> int:
        return 1024


def _answer(kind: str, choice: dict[str, Any], stream: bool) -> ChatResult:
    body = {
        "id": "fake-1",
        "object": kind,
        "created": int(time.time()),
        "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop", **choice}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    if not stream:
        return json.dumps(body).encode()

    async def events() -> AsyncIterator[bytes]:
        yield b"data: " + json.dumps({**body, "object": kind + ".chunk"}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return events()


class FakeEmbeddingEngine(_Fake, EmbeddingEngine, RerankEngine):
    """An embedder that also ranks, as the real bi-encoder engine does: one token per character."""

    scorer = RerankScorer.BI_ENCODER
    capabilities = frozenset({Capability.EMBEDDINGS, Capability.RERANK})

    @property
    def dimension(self) -> int:
        return _DIMENSION

    @property
    def max_input_tokens(self) -> int:
        return _MAX_INPUT_TOKENS

    @property
    def vocab_size(self) -> int:
        return _VOCAB_SIZE

    async def tokenize(self, texts: Sequence[str], truncate: bool) -> list[TokenIds]:
        ids = [[ord(char) % _VOCAB_SIZE for char in text] for text in texts]
        return [row[:_MAX_INPUT_TOKENS] for row in ids] if truncate else ids

    async def embed(self, inputs: Sequence[TokenIds]) -> np.ndarray:
        await self._work()
        vectors = np.ones((len(inputs), _DIMENSION), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None,
        truncate: bool,
        max_tokens_per_doc: int | None = None,
    ) -> RerankScores:
        return await _scores(self, documents)


class FakeRerankEngine(_Fake, RerankEngine):
    """A reranker (cross-encoder or LLM yes/no): the shorter document scores higher."""

    @property
    def max_input_tokens(self) -> int:
        return _MAX_INPUT_TOKENS

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None,
        truncate: bool,
        max_tokens_per_doc: int | None = None,
    ) -> RerankScores:
        return await _scores(self, documents)


async def _scores(engine: _Fake, documents: Sequence[str]) -> RerankScores:
    await engine._work()
    scores = np.array([1.0 / (1 + len(doc)) for doc in documents], dtype=np.float32)
    return RerankScores(scores=scores, raw_scores=scores, tokens=sum(len(doc) for doc in documents))


def _fake_class(spec: ModelSpec) -> type[_Fake]:
    if spec.kind is ModelKind.CHAT:
        return FakeChatEngine
    if spec.rerank is not None and spec.rerank.scorer is not RerankScorer.BI_ENCODER:
        return FakeRerankEngine
    return FakeEmbeddingEngine


# --- the models: the zoo's names, no files ---------------------------------------------------------
def _spec(name: str, kind: ModelKind, **fields: Any) -> ModelSpec:
    return ModelSpec(
        name,
        kind,
        Path("/nonexistent/fake-models") / name,
        WeightFormat.SAFETENSORS,
        2**20,
        "a fake model for in-process tests",
        "test",
        **fields,
    )


def _scoring(scorer: RerankScorer) -> RerankScoring:
    return RerankScoring(scorer, "a fake model for in-process tests")


def fake_registry() -> ModelRegistry:
    """The zoo's models the validation cases name, as specs without files."""
    bi_encoder = _scoring(RerankScorer.BI_ENCODER)
    return ModelRegistry(
        [
            _spec(
                MINILM, ModelKind.EMBEDDING, aliases=(f"sentence-transformers/{MINILM}",), rerank=bi_encoder
            ),
            _spec(
                "tiny-embed",
                ModelKind.EMBEDDING,
                aliases=("tiny-embed-alias",),
                options=ModelOptions(matryoshka=True),
                rerank=bi_encoder,
            ),
            _spec("tiny-chat", ModelKind.CHAT, chat_template=True),
            _spec("tiny-base", ModelKind.CHAT),
            _spec("tiny-cross-encoder", ModelKind.RERANKER, rerank=_scoring(RerankScorer.CROSS_ENCODER)),
            _spec("st-cross-encoder", ModelKind.RERANKER, rerank=_scoring(RerankScorer.CROSS_ENCODER)),
            _spec("Qwen3-Reranker-tiny", ModelKind.RERANKER, rerank=_scoring(RerankScorer.LLM_YES_NO)),
        ]
    )


@contextmanager
def _environment_kept() -> Iterator[None]:
    """create_app sets vLLM's environment defaults in ``os.environ`` (for the engines it starts); take
    them back, or a server a later test starts with another data dir would inherit them."""
    environment = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environment)


def _app(data_dir: Path, engines: FakeEngines, **settings: Any) -> FastAPI:
    merged = {
        "bundled_models": False,
        "models_dir": None,
        "data_dir": data_dir,
        **SERVER_SETTINGS,
        **settings,
    }
    return create_app(Settings(**merged), fake_registry(), engine_factory=engines, reap_processes=False)


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document, built in this process (nothing starts): what the server serves at
    /openapi.json, known before any server runs (test_schema.py makes its tests from it)."""
    with tempfile.TemporaryDirectory() as data_dir, _environment_kept():
        document: dict[str, Any] = _app(Path(data_dir), FakeEngines()).openapi()
        return document


@asynccontextmanager
async def serving(
    data_dir: Path, engines: FakeEngines | None = None, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The app on fake engines, its lifespan running: a client for it, and the app itself.

    ``settings`` override :data:`SERVER_SETTINGS`; nothing is read from a models folder.
    """
    with _environment_kept():
        app = _app(data_dir, engines or FakeEngines(), **settings)
        async with (
            LifespanManager(app) as running,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=running.app), base_url="http://fake"
            ) as client,
        ):
            yield client, app


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for ``condition`` (state other tasks change); fail the test when it does not come."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.01)
