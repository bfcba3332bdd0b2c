"""On an NVIDIA GPU only (skipped elsewhere, so not in CI): parking for real, with vLLM's sleep mode.

Run on the GPU machine (docs/benchmarks.md says how): two vLLM chat models under a GPU budget with
room for one awake and the other asleep; each request for the other swaps them through RAM, and
the model that comes back is woken, not loaded again.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import start_server, stop_server


def _gpu_visible() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return bool(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


pytestmark = [pytest.mark.server, pytest.mark.skipif(not _gpu_visible(), reason="needs an NVIDIA GPU")]


def test_a_model_that_gives_way_on_the_gpu_is_parked_and_woken_not_reloaded(
    zoo: Path, tmp_path: Path
) -> None:
    # Each tiny vLLM engine plans about 1.27 GiB on the GPU (runtime 1 GiB + a 0.25 GiB KV cache); a
    # parked one keeps 768 MiB: 2.9 GiB, less 768 MiB kept for the server's own CUDA context (the zoo
    # has embedders; none loads here, so it is never measured), holds one awake and one asleep
    # (2.0 GiB), not two awake (2.5 GiB). Passed on an H200 (2026-12-02, 104 s, with 512 MiB kept).
    running = start_server(
        zoo, tmp_path / "server.log", "--no-bundled-models", "--available-gpu-memory-gb", "2.9"
    )
    try:
        base = running.base_url

        def chat() -> None:
            body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
            assert httpx.post(base + "/v1/chat/completions", json=body, timeout=300).status_code == 200

        def complete() -> None:
            body = {"model": "tiny-base", "prompt": "Once upon a time", "max_tokens": 3}
            assert httpx.post(base + "/v1/completions", json=body, timeout=300).status_code == 200

        def card(name: str) -> dict:
            return httpx.get(f"{base}/v1/models/{name}", timeout=30).json()

        chat()
        assert (card("tiny-chat")["state"], card("tiny-chat")["placement"]) == ("loaded", "gpu")
        complete()
        assert card("tiny-chat")["state"] == "parked"
        assert card("tiny-base")["state"] == "loaded"
        chat()
        woken = card("tiny-chat")
        assert woken["state"] == "loaded"
        assert woken["wake_seconds"] is not None
        assert woken["wake_seconds"] < woken["load_seconds"]
        assert card("tiny-base")["state"] == "parked"
        # The one load decided ("loading tiny-chat (chat) on gpu: ..."); its progress lines do not count.
        assert running.log().count("loading tiny-chat (") == 1  # woken, never loaded again
        memory = httpx.get(base + "/admin/memory", timeout=30).json()
        assert memory["gpu"]["reserved_bytes"] <= memory["gpu"]["budget_bytes"]
        # What the GPU itself says our processes hold (NVML) stays near the budget.
        assert memory["gpu"]["used_by_server_bytes"] <= memory["gpu"]["budget_bytes"] * 1.15
    finally:
        stop_server(running)


def test_llm_embedders_and_rerankers_run_on_vllms_pooling_runner_and_match_the_reference(
    tmp_path: Path,
) -> None:
    """On a GPU placement a Qwen3-Embedding-like embedder and a Qwen3-Reranker-like reranker go to
    vLLM's pooling runner by default (bf16), and answer as the fp32 reference computation does, within
    bf16's tolerance; the in-process engines (``engine: transformers``) serve the same models alike."""
    import shutil

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from model_zoo import build_qwen3_embedder, build_qwen3_reranker
    from test_pooling_vllm import DOCUMENTS, QUERY, TEXTS, reference_scores

    models = tmp_path / "models"
    build_qwen3_embedder(models / "qwen3-embed")
    shutil.copytree(models / "qwen3-embed", models / "qwen3-embed-st")
    build_qwen3_reranker(models / "Qwen3-Reranker-tiny", head_dim=32)
    shutil.copytree(models / "Qwen3-Reranker-tiny", models / "Qwen3-Reranker-tiny-hf")
    in_process = ("qwen3-embed-st", "Qwen3-Reranker-tiny-hf")
    (models / "models.yaml").write_text(
        "models:\n" + "".join(f"  {name}:\n    engine: transformers\n" for name in in_process)
    )
    running = start_server(models, tmp_path / "server.log", "--no-bundled-models")
    try:
        base = running.base_url

        def embed(model: str) -> np.ndarray:
            answer = httpx.post(base + "/v1/embeddings", json={"model": model, "input": TEXTS}, timeout=300)
            assert answer.status_code == 200, answer.text
            return np.array([row["embedding"] for row in answer.json()["data"]], dtype=np.float32)

        def rerank(model: str) -> np.ndarray:
            body = {"model": model, "query": QUERY, "documents": DOCUMENTS}
            answer = httpx.post(base + "/v1/rerank", json=body, timeout=300)
            assert answer.status_code == 200, answer.text
            results = sorted(answer.json()["results"], key=lambda r: r["index"])
            return np.array([r["relevance_score"] for r in results])

        def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

        reference = SentenceTransformer(str(models / "qwen3-embed"), device="cpu").encode(TEXTS)
        for model in ("qwen3-embed", "qwen3-embed-st"):
            assert cosines(embed(model), reference).min() > 0.999, model
        expected = reference_scores(models / "Qwen3-Reranker-tiny")
        for model in ("Qwen3-Reranker-tiny", "Qwen3-Reranker-tiny-hf"):
            assert np.abs(rerank(model) - expected).max() < 0.01, model
        cards = {c["id"]: c for c in httpx.get(base + "/v1/models", timeout=30).json()["data"]}
        assert cards["qwen3-embed"]["backend"] == "vllm-pooling"
        assert cards["Qwen3-Reranker-tiny"]["backend"] == "vllm-pooling-yes-no"
        assert cards["qwen3-embed-st"]["backend"] == "sentence-transformers"
        assert {cards[m]["placement"] for m in cards} == {"gpu"}
    finally:
        stop_server(running)
