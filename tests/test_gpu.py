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
    # Each tiny vLLM engine plans about 1.8 GiB on the GPU (runtime 1.5 GiB + a 0.25 GiB KV cache); a
    # parked one keeps 768 MiB: 3.5 GiB, less 512 MiB for the server's own CUDA context (the zoo has
    # embedders), holds one awake and one asleep, not two awake.
    running = start_server(
        zoo, tmp_path / "server.log", "--no-bundled-models", "--available-gpu-memory-gb", "3.5"
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
