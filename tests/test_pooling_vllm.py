"""Embedders and LLM rerankers on vLLM's pooling runner: which models go there, what they are planned
to need, and (on vLLM's CPU build, for real over HTTP) that they answer as the in-process engines and
the models' own pipelines do, batch concurrent requests, and survive their engine process's death.

On a GPU vLLM is the default for these models; here ``engine: vllm`` in models.yaml asks for it on the
CPU, which runs the same code. The GPU parity run is in tests/test_gpu.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from conftest import RunningServer, engine_cores, start_server, stop_server
from local_llm.config import Settings
from local_llm.engines.factory import engine_class, estimate_for, pooling_engine
from local_llm.engines.pooling_vllm import VllmEmbeddingEngine, VllmYesNoRerankEngine
from local_llm.engines.rerank import BiEncoderRerankEngine, LLMYesNoRerankEngine
from local_llm.placement import MemoryEstimate, Placement, PlacementPlan
from local_llm.registry import ModelRegistry
from local_llm.registry.pooling import POOLING_CONTEXT_TOKENS, PoolingRunner, vllm_pooling
from model_zoo import QWEN3_EMBEDDING_QUERY_PROMPT, build_qwen3_embedder, build_qwen3_reranker

# vLLM's CPU attention has no kernel for head_dim 16 (the zoo's tiny reranker's); 32 it has.
_CPU_SHAPE = {"head_dim": 32}

MODELS_YAML = """
models:
  qwen3-embed:
    engine: vllm
  qwen3-embed-st:
    engine: transformers
  Qwen3-Reranker-tiny:
    engine: vllm
  Qwen3-Reranker-tiny-hf:
    engine: transformers
"""

TEXTS = [
    "The capital of France is Paris.",
    "熊猫吃竹子。",
    "Open Settings, choose Security, and follow the link we email to you.",
    "yes",
]
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "The capital of France is Paris.",
    "Pandas eat bamboo.",
    "今天天气很好。",
    "Berlin is in Germany.",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pooling-models")
    build_qwen3_embedder(root / "qwen3-embed")
    shutil.copytree(root / "qwen3-embed", root / "qwen3-embed-st")
    build_qwen3_reranker(root / "Qwen3-Reranker-tiny", **_CPU_SHAPE)
    shutil.copytree(root / "Qwen3-Reranker-tiny", root / "Qwen3-Reranker-tiny-hf")
    (root / "models.yaml").write_text(MODELS_YAML)
    return root


def _spec(models: Path, name: str):  # type: ignore[no-untyped-def]
    return ModelRegistry.discover(models, include_bundled=False).get(name)


def _plan(placement: Placement) -> PlacementPlan:
    device = "cpu" if placement is Placement.CPU else "cuda"
    return PlacementPlan(placement, device, MemoryEstimate(1), gpu_bytes=0, ram_bytes=1, reason="test")


# --- which models vLLM's pooling runner serves --------------------------------------------------------
@pytest.mark.unit
def test_causal_lm_embedders_and_qwen3_yes_no_rerankers_fit_vllm_and_bert_encoders_do_not(
    models: Path, zoo: Path
) -> None:
    embedder = vllm_pooling(_spec(models, "qwen3-embed"))
    assert isinstance(embedder, PoolingRunner)
    assert embedder.task == "embed"
    assert embedder.normalize
    assert embedder.engine_args["pooler_config"] == {"seq_pooling_type": "LAST"}
    assert embedder.prompts["query"] == QWEN3_EMBEDDING_QUERY_PROMPT

    reranker = vllm_pooling(_spec(models, "Qwen3-Reranker-tiny"))
    assert isinstance(reranker, PoolingRunner)
    assert reranker.task == "classify"
    assert reranker.engine_args["hf_overrides"]["classifier_from_token"] == ["no", "yes"]

    bert = vllm_pooling(ModelRegistry.discover(zoo, include_bundled=False).get("tiny-embed"))
    assert isinstance(bert, str)
    assert "not a causal-LM embedder" in bert


@pytest.mark.unit
def test_an_embedder_whose_pipeline_vllm_would_not_compute_stays_in_process(
    models: Path, tmp_path: Path
) -> None:
    dense = shutil.copytree(models / "qwen3-embed", tmp_path / "qwen3-dense")
    modules = json.loads((dense / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (dense / "modules.json").write_text(json.dumps(modules))
    mean = shutil.copytree(models / "qwen3-embed", tmp_path / "qwen3-mean")
    (mean / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode": "mean", "include_prompt": False, "embedding_dimension": 64})
    )
    registry = ModelRegistry.discover(tmp_path, include_bundled=False)
    assert "more than Transformer, Pooling and Normalize" in str(vllm_pooling(registry.get("qwen3-dense")))
    assert "leaves the prompt out" in str(vllm_pooling(registry.get("qwen3-mean")))
    settings = Settings()
    assert pooling_engine(registry.get("qwen3-dense"), settings, on_gpu=True) == "in-process"


@pytest.mark.unit
def test_on_a_gpu_the_pooling_runner_is_planned_and_chosen_on_a_cpu_the_in_process_engine(
    models: Path, tmp_path: Path
) -> None:
    # models.yaml's engine aside: the defaults, as a user without a models.yaml gets them.
    plain = tmp_path / "plain"
    for name in ("qwen3-embed", "Qwen3-Reranker-tiny"):
        shutil.copytree(models / name, plain / name)
    registry = ModelRegistry.discover(plain, include_bundled=False)
    settings = Settings()
    for name, on_vllm, in_process in (
        ("qwen3-embed", VllmEmbeddingEngine, BiEncoderRerankEngine),
        ("Qwen3-Reranker-tiny", VllmYesNoRerankEngine, LLMYesNoRerankEngine),
    ):
        spec = registry.get(name)
        assert engine_class(spec, settings, _plan(Placement.GPU)) is on_vllm
        assert engine_class(spec, settings, _plan(Placement.CPU)) is in_process
        need = estimate_for(spec, settings)
        # On the GPU: vLLM's engine process, and a KV cache holding one input of the served context.
        assert need.on_gpu.runtime_bytes > need.on_cpu.runtime_bytes
        assert need.on_gpu.kv_cache_bytes > 0
        assert need.on_cpu.kv_cache_bytes == 0
        assert need.facts_on_gpu.context_tokens == min(512, POOLING_CONTEXT_TOKENS)
        assert not need.can_offload
    # The operator's engine wins on either device.
    forced = _spec(models, "qwen3-embed-st")
    assert engine_class(forced, settings, _plan(Placement.GPU)) is BiEncoderRerankEngine


@pytest.mark.unit
def test_on_a_small_gpu_budget_pooling_models_stay_in_process_and_leave_the_memory_to_chat(
    models: Path, tmp_path: Path
) -> None:
    shutil.copytree(models / "qwen3-embed", tmp_path / "qwen3-embed")  # without models.yaml's engine
    spec = _spec(tmp_path, "qwen3-embed")
    small, large = Settings(available_gpu_memory_gb=8), Settings(available_gpu_memory_gb=24)
    assert pooling_engine(spec, small, on_gpu=True) == "in-process"
    assert engine_class(spec, small, _plan(Placement.GPU)) is BiEncoderRerankEngine
    assert estimate_for(spec, small).on_gpu.kv_cache_bytes == 0
    assert pooling_engine(spec, large, on_gpu=True) == "vllm"
    assert (
        pooling_engine(spec, Settings(available_gpu_memory_gb=8, pooling_vllm_min_gpu_gb=4), on_gpu=True)
        == "vllm"
    )


# --- for real, on vLLM's CPU build ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pooling_server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    log = tmp_path_factory.mktemp("pooling-server") / "server.log"
    running = start_server(models, log, "--no-bundled-models")
    yield running
    stop_server(running)


def _embed(server: RunningServer, model: str, texts: list[str], **extra: object) -> np.ndarray:
    body = {"model": model, "input": texts, **extra}
    answer = httpx.post(server.api + "/embeddings", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    return np.array([row["embedding"] for row in answer.json()["data"]], dtype=np.float32)


def _rerank(server: RunningServer, model: str, **extra: object) -> dict:
    body = {"model": model, "query": QUERY, "documents": DOCUMENTS, "return_documents": False, **extra}
    answer = httpx.post(server.api + "/rerank", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    return answer.json()


def reference_scores(folder: Path) -> list[float]:
    """Qwen3-Reranker's published computation, in float32: the README's prompt around each document,
    softmax over the "no" and "yes" logits at the last position."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    scores = []
    for document in DOCUMENTS:
        text = f"{prefix}<Instruct>: {instruction}\n<Query>: {QUERY}\n<Document>: {document}{suffix}"
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        with torch.inference_mode():
            logits = model(ids).logits[0, -1]
        scores.append(torch.softmax(torch.stack([logits[no], logits[yes]]), 0)[1].item())
    return scores


def _by_index(answer: dict) -> np.ndarray:
    return np.array([r["relevance_score"] for r in sorted(answer["results"], key=lambda r: r["index"])])


@pytest.mark.server
def test_an_embedder_on_vllm_answers_as_sentence_transformers_does(
    pooling_server: RunningServer, models: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    on_vllm = _embed(pooling_server, "qwen3-embed", TEXTS)
    in_process = _embed(pooling_server, "qwen3-embed-st", TEXTS)
    reference = SentenceTransformer(str(models / "qwen3-embed"), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(on_vllm, reference, atol=2e-5)
    np.testing.assert_allclose(on_vllm, in_process, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(on_vllm, axis=1), 1.0, atol=1e-5)

    card = httpx.get(pooling_server.api + "/models/qwen3-embed", timeout=30).json()
    assert (card["state"], card["backend"], card["placement"]) == ("loaded", "vllm-pooling", "cpu")

    # Bi-encoder rerank on the same loaded copy, with the query prompt: as in process.
    np.testing.assert_allclose(
        _by_index(_rerank(pooling_server, "qwen3-embed")),
        _by_index(_rerank(pooling_server, "qwen3-embed-st")),
        atol=2e-5,
    )


@pytest.mark.server
def test_concurrent_embedding_requests_meet_in_vllm_and_each_gets_its_own_vectors(
    pooling_server: RunningServer,
) -> None:
    alone = {text: _embed(pooling_server, "qwen3-embed", [text])[0] for text in TEXTS}
    requests = [[TEXTS[i % 4], TEXTS[(i + 1) % 4]] for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda texts: _embed(pooling_server, "qwen3-embed", texts), requests))
    for texts, vectors in zip(requests, answers, strict=True):
        for text, vector in zip(texts, vectors, strict=True):
            np.testing.assert_allclose(vector, alone[text], atol=2e-5)


@pytest.mark.server
def test_a_yes_no_reranker_on_vllm_scores_by_the_published_formula(
    pooling_server: RunningServer, models: Path
) -> None:
    on_vllm = _rerank(pooling_server, "Qwen3-Reranker-tiny")
    in_process = _rerank(pooling_server, "Qwen3-Reranker-tiny-hf")
    np.testing.assert_allclose(_by_index(on_vllm), _by_index(in_process), atol=1e-5)

    # The formula itself, on the prompt the Qwen3-Embedding README builds.
    expected = reference_scores(models / "Qwen3-Reranker-tiny")
    np.testing.assert_allclose(_by_index(on_vllm), expected, atol=1e-5)
    card = httpx.get(pooling_server.api + "/models/Qwen3-Reranker-tiny", timeout=30).json()
    assert card["backend"] == "vllm-pooling-yes-no"

    # Over-long input is the client's error, in the API's shape; the engine serves on.
    long = _rerank(pooling_server, "Qwen3-Reranker-tiny", documents=["Paris " * 600])
    assert len(long["results"]) == 1  # truncated by default
    refused = httpx.post(
        pooling_server.api + "/rerank",
        json={
            "model": "Qwen3-Reranker-tiny",
            "query": QUERY,
            "documents": ["Paris " * 600],
            "truncate": False,
        },
        timeout=120,
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "documents"


@pytest.mark.server
def test_a_client_that_leaves_mid_embedding_has_its_inputs_aborted_in_vllm(
    pooling_server: RunningServer,
) -> None:
    # Token ids (the API takes them as input), 400 a text: the work is vLLM's, not the tokenizer's.
    texts = [[10 + (i + j) % 500 for j in range(400)] for i in range(1500)]
    url = pooling_server.api + "/embeddings"

    def running() -> int:
        card = httpx.get(pooling_server.api + "/models/qwen3-embed", timeout=30).json()
        return int(card["running_requests"] or 0)

    _embed(pooling_server, "qwen3-embed", TEXTS[:1])
    started = time.perf_counter()
    assert len(_embed(pooling_server, "qwen3-embed", texts)) == len(texts)
    whole = time.perf_counter() - started
    gave_up: list[BaseException] = []

    def impatient_client() -> None:
        try:  # gives up after a third of the time the work takes, and closes its socket
            httpx.post(url, json={"model": "qwen3-embed", "input": texts}, timeout=whole / 3)
        except httpx.ReadTimeout as exc:
            gave_up.append(exc)

    client = threading.Thread(target=impatient_client)
    client.start()
    peak = 0
    while client.is_alive():
        peak = max(peak, running())
        time.sleep(0.05)
    assert gave_up, "the request finished before the client gave up"
    assert peak > 100  # vLLM was at them: each input is a vLLM request
    # The route's cancellation aborts every one still in vLLM: the engine is idle long before it
    # would have finished them (which took `whole`).
    left = time.perf_counter()
    while running() and time.perf_counter() - left < whole:
        time.sleep(0.05)
    idle_after = time.perf_counter() - left
    assert running() == 0
    assert idle_after < whole / 3, f"idle {idle_after:.2f}s after the drop; all inputs take {whole:.2f}s"
    log = pooling_server.log()
    assert "POST /v1/embeddings: the client went away" in log
    # And the engine serves on, with the right vectors.
    again = _embed(pooling_server, "qwen3-embed", TEXTS[:2])
    np.testing.assert_allclose(again, _embed(pooling_server, "qwen3-embed", TEXTS[:2]), atol=1e-6)


@pytest.mark.server
def test_a_killed_pooling_engine_is_reported_and_the_next_request_loads_it_again(
    pooling_server: RunningServer,
) -> None:
    _embed(pooling_server, "qwen3-embed", TEXTS[:1])
    _rerank(pooling_server, "Qwen3-Reranker-tiny")
    cores = engine_cores(pooling_server)
    assert len(cores) == 2  # one engine process per vLLM model
    for pid in cores:
        psutil.Process(pid).kill()

    def states() -> tuple[str, str]:
        cards = {c["id"]: c for c in httpx.get(pooling_server.api + "/models", timeout=30).json()["data"]}
        return cards["qwen3-embed"]["state"], cards["Qwen3-Reranker-tiny"]["state"]

    deadline = time.monotonic() + 30
    while states() != ("failed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert states() == ("failed", "failed")
    health = httpx.get(pooling_server.base_url + "/health", timeout=30).json()
    assert health["status"] == "degraded"
    assert "SIGKILL" in health["failed"]["qwen3-embed"]

    # Served again, by new engine processes.
    assert _embed(pooling_server, "qwen3-embed", TEXTS[:2]).shape == (2, 64)
    assert len(_rerank(pooling_server, "Qwen3-Reranker-tiny")["results"]) == len(DOCUMENTS)
    assert states() == ("loaded", "loaded")
    assert not engine_cores(pooling_server) & cores
    assert httpx.get(pooling_server.base_url + "/health", timeout=30).json()["status"] == "ok"
