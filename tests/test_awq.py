"""An AWQ checkpoint (the seed's Qwen2.5-7B-Instruct-AWQ layout), built tiny with random integers by the
benchmarks' own builder: its headers read as stored bytes, and vLLM's CPU build serves it through ours."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import DATA_DIR, start_server, stop_server
from local_llm.config import Settings
from local_llm.engines.factory import estimate_for
from local_llm.placement.checkpoint import read_checkpoint
from local_llm.placement.probe import cpu_flags
from local_llm.registry import ModelRegistry
from model_zoo import chat_tokenizer_source

BUILDER = Path(__file__).parent.parent / "benchmarks" / "random_chat_model.py"
NAME = "tiny-chat-awq"


@pytest.fixture(scope="module")
def awq_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("awq")
    command = [sys.executable, str(BUILDER), "--shape", "tiny-awq", "--awq", "--vocab-size", "60000"]
    command += ["--tokenizer", str(chat_tokenizer_source(DATA_DIR)), "--out", str(root / NAME)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return root


def _tensors(folder: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for file in folder.glob("*.safetensors"):
        with file.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            entries |= {k: v for k, v in json.loads(handle.read(length)).items() if k != "__metadata__"}
    return entries


def _stored_bytes(folder: Path) -> int:
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for e in _tensors(folder).values())


@pytest.mark.unit
def test_the_awq_builder_writes_autoawqs_gemm_layout_and_the_estimate_counts_it_as_stored(
    awq_models: Path,
) -> None:
    folder = awq_models / NAME
    tensors = _tensors(folder)
    # q_proj: 128 in x 128 out features, groups of 128, eight 4-bit values an int32.
    q = "model.layers.0.self_attn.q_proj"
    assert (tensors[f"{q}.qweight"]["dtype"], tensors[f"{q}.qweight"]["shape"]) == ("I32", [128, 16])
    assert (tensors[f"{q}.qzeros"]["dtype"], tensors[f"{q}.qzeros"]["shape"]) == ("I32", [1, 16])
    assert (tensors[f"{q}.scales"]["dtype"], tensors[f"{q}.scales"]["shape"]) == ("F16", [1, 128])
    down = "model.layers.1.mlp.down_proj"
    assert tensors[f"{down}.qweight"]["shape"] == [256, 16]  # in 256 (intermediate), out 128
    assert tensors["lm_head.weight"]["shape"] == [
        60000,
        128,
    ]  # the vocabulary asked for, past the tokenizer's
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
    }  # fmt: skip

    spec = ModelRegistry.discover(awq_models, include_bundled=False).get(NAME)
    assert spec.quantization == "awq"
    summary = read_checkpoint(spec)
    assert (summary.float_elements, summary.fixed_bytes) == (0, _stored_bytes(folder))
    need = estimate_for(spec, Settings())
    # Quantized weights run as stored, on either device: the headers' bytes, not a dtype's guess.
    assert need.on_gpu.weights_bytes == need.on_cpu.weights_bytes == _stored_bytes(folder)


@pytest.mark.server
def test_an_awq_model_is_served_by_vllm_and_its_card_says_what_it_is(
    awq_models: Path, tmp_path: Path
) -> None:
    """Where the CPU has AVX-512 vLLM serves it; where it has not (vLLM's CPU kernel for 4-bit weights
    is AVX-512 only) the request is refused at once with the reason, not by an engine that dies."""
    running = start_server(awq_models, tmp_path / "server.log", "--no-bundled-models")
    try:
        body = {
            "model": NAME,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4,
            "temperature": 0,
        }
        answer = httpx.post(running.api + "/chat/completions", json=body, timeout=300)
        card = httpx.get(f"{running.api}/models/{NAME}", timeout=30).json()
        assert card["quantization"] == "awq"
        if "avx512f" not in cpu_flags():
            assert answer.status_code == 503, answer.text
            assert "only with AVX-512" in answer.json()["error"]["message"]
            assert card["state"] != "loaded"
            assert f"starting vLLM for {NAME}" not in running.log(), "no engine is started to die"
            assert httpx.get(running.base_url + "/health", timeout=30).status_code == 200
            return
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 4
        assert (card["state"], card["backend"]) == ("loaded", "vllm")
        assert card["estimate"]["weights"] == _stored_bytes(awq_models / NAME)
        assert card["measured_bytes"] > card["estimate"]["weights"]
    finally:
        stop_server(running)
