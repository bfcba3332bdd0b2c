"""Which scorer ranks with which model (files, names, models.yaml); the model a request without one gets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from local_llm.errors import InvalidRequestError
from local_llm.registry import ModelKind, ModelRegistry, RerankScorer
from local_llm.server.serving.rerank import default_rerank_model

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def registry(zoo: Path) -> ModelRegistry:
    return ModelRegistry.discover(zoo, include_bundled=True)


@pytest.mark.parametrize(
    ("name", "kind", "scorer"),
    [
        ("tiny-cross-encoder", ModelKind.RERANKER, RerankScorer.CROSS_ENCODER),
        ("st-cross-encoder", ModelKind.RERANKER, RerankScorer.CROSS_ENCODER),
        ("Qwen3-Reranker-tiny", ModelKind.RERANKER, RerankScorer.LLM_YES_NO),
        ("all-MiniLM-L6-v2", ModelKind.EMBEDDING, RerankScorer.BI_ENCODER),
        ("Qwen3-Embedding-tiny", ModelKind.EMBEDDING, RerankScorer.BI_ENCODER),
        ("as-reranker-by-yaml", ModelKind.RERANKER, RerankScorer.BI_ENCODER),
    ],
)
def test_scorer_follows_the_files(
    registry: ModelRegistry, name: str, kind: ModelKind, scorer: RerankScorer
) -> None:
    spec = registry.get(name)
    assert spec.kind is kind
    assert spec.rerank is not None
    assert spec.rerank.scorer is scorer
    assert spec.rerank.reason


def test_chat_models_do_not_rerank(registry: ModelRegistry) -> None:
    assert registry.get("tiny-chat").rerank is None


def test_models_yaml_scorer_marks_a_causal_lm_as_an_llm_reranker(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(zoo / "Qwen3-Reranker-tiny", folder / "my-judge")  # the name says nothing
    shutil.copytree(zoo / "tiny-embed", folder / "embed-as-cross")
    shutil.copytree(zoo / "tiny-embed", folder / "embed-as-bi")
    (folder / "models.yaml").write_text(
        "models:\n"
        "  my-judge:\n    scorer: llm-yes-no\n"
        "  embed-as-cross:\n    type: embedding\n    scorer: cross-encoder\n"
        "  embed-as-bi:\n    scorer: bi-encoder\n"
    )
    registry = ModelRegistry.discover(folder, include_bundled=False)
    judge = registry.get("my-judge")
    assert judge.kind is ModelKind.RERANKER
    assert judge.rerank is not None
    assert judge.rerank.scorer is RerankScorer.LLM_YES_NO
    assert "models.yaml" in judge.rerank.reason
    assert registry.get("embed-as-bi").kind is ModelKind.EMBEDDING
    # A contradiction is reported, not guessed at.
    assert any("type: reranker" in s.reason for s in registry.skipped if s.path.name == "embed-as-cross")
    # Unmarked, the same folder is a chat model.
    shutil.copytree(zoo / "Qwen3-Reranker-tiny", tmp_path / "plain" / "my-judge")
    assert (
        ModelRegistry.discover(tmp_path / "plain", include_bundled=False).get("my-judge").kind
        is ModelKind.CHAT
    )


def test_default_rerank_model(zoo: Path, tmp_path: Path) -> None:
    bundled_only = ModelRegistry.discover(None, include_bundled=True)
    assert default_rerank_model(bundled_only, None) == "all-MiniLM-L6-v2"  # out of the box
    one = tmp_path / "one"
    shutil.copytree(zoo / "tiny-cross-encoder", one / "tiny-cross-encoder")
    assert (
        default_rerank_model(ModelRegistry.discover(one, include_bundled=True), None) == "tiny-cross-encoder"
    )
    several = ModelRegistry.discover(zoo, include_bundled=True)
    refusal = default_rerank_model(several, None)
    assert isinstance(refusal, InvalidRequestError)
    assert "tiny-cross-encoder" in refusal.message
    assert "LLM_DEFAULT_RERANK_MODEL" in refusal.message
    assert default_rerank_model(several, "st-cross-encoder") == "st-cross-encoder"
