"""What a model's checkpoint holds, read from file headers before the model is loaded.

The memory planner needs the weights' runtime size and the KV cache's per-token size. Weight files
are a poor guide to the first: a float32 checkpoint loaded in bfloat16 needs half its file size, an
AWQ checkpoint exactly its file size. So the tensors are split by what their runtime size depends
on: floating-point tensors (sized by the dtype the engine loads them in) and the rest (int-packed
quantized weights, FP8, bitsandbytes bytes: sized as stored). Everything here reads headers only
(a safetensors header is a few hundred KB of JSON, a GGUF tensor table a few KB), so it takes
milliseconds for any model size, and it never imports torch.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_llm.registry.classify import UnservableFolder, find_weights, quantization_of, read_json
from local_llm.registry.gguf import GGUFLayout, read_gguf_layout
from local_llm.registry.spec import ModelKind, ModelSpec, WeightFormat

logger = logging.getLogger(__name__)

# Floating-point safetensors dtypes an engine may cast on load; every other dtype keeps its size.
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
# config.json's torch_dtype / dtype, in bytes per element (for checkpoints without a header).
_TORCH_DTYPE_BYTES = {"float64": 8, "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}
_DEFAULT_ELEMENT_BYTES = 4
# The safetensors library refuses headers above 100 MB; a larger length means a corrupt file.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_SAFETENSORS_INDEX = "model.safetensors.index.json"
# Where a config states the longest sequence the model was trained for, in the order vLLM reads them.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")
# Where multimodal configs nest their language model's config; it wins over the top level.
_TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")


@dataclass(frozen=True)
class CheckpointSummary:
    """What a model's weights and attention need, read from headers only."""

    # Elements of floating-point tensors (F64/F32/F16/BF16): their runtime bytes depend on the dtype
    # the engine loads in.
    float_elements: int
    # The same tensors' bytes as stored.
    float_bytes: int
    # Tensors whose runtime size is their stored size: integer / packed-quantized (AWQ/GPTQ qweight,
    # qzeros, g_idx), FP8, U8/I8 (bitsandbytes), BOOL; every tensor of a quantized checkpoint.
    fixed_bytes: int
    # config.json's quantization_config.quant_method, or the GGUF file type (e.g. "Q4_K_M").
    quantization: str | None
    # KV cache elements per token across all layers; None for encoders and unknown shapes.
    kv_elements_per_token: int | None
    hidden_size: int | None
    max_position_embeddings: int | None
    # How it was read, for logs: "safetensors headers (2 files)", "GGUF tensor table", ...
    source: str
    # config.json's model_type (the GGUF architecture), e.g. "qwen3": picks a reasoning parser.
    model_type: str | None = None


def runtime_weight_bytes(summary: CheckpointSummary, float_dtype_bytes: int | None) -> int:
    """Float tensors at the runtime dtype's size (None: as stored) + fixed_bytes.

    A GGUF's float tensors are stored quantized and imported de-quantized: pass the import dtype.
    """
    floats = summary.float_bytes if float_dtype_bytes is None else summary.float_elements * float_dtype_bytes
    return floats + summary.fixed_bytes


def read_checkpoint(spec: ModelSpec) -> CheckpointSummary:
    """Summarize ``spec``'s checkpoint from its headers (cached until a file read changes).

    A weight file whose header cannot be read is counted by its size (the load reports the damage);
    a config.json that is missing or odd leaves the attention fields None. Raises
    :class:`UnservableFolder` only when the weight files themselves are gone.
    """
    files = _checkpoint_files(spec)
    config = spec.path / "config.json" if spec.weight_format is not WeightFormat.GGUF else None
    stamps = tuple(_stamp(f) for f in (*files, *([config] if config and config.is_file() else [])))
    return _read_cached(spec.path, spec.weight_format, spec.kind is ModelKind.CHAT, files, stamps)


def _stamp(path: Path) -> tuple[str, int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise UnservableFolder(f"{path.name} is unreadable: {exc}") from exc
    return str(path), stat.st_mtime_ns, stat.st_size


def _checkpoint_files(spec: ModelSpec) -> tuple[Path, ...]:
    """The files whose headers (or sizes) describe the weights.

    A sharded checkpoint's index names its shards, which keeps out stray files beside them (Mistral
    repos ship a ``consolidated.safetensors`` copy of the same weights). Without an index, every
    ``*.safetensors`` in the folder counts, as discovery counts them.
    """
    if spec.weight_format is WeightFormat.GGUF:
        return (spec.path,)
    if spec.weight_format is WeightFormat.PYTORCH:
        return tuple(sorted(spec.path.glob("pytorch_model*.bin")))
    shards = _indexed_shards(spec.path)
    if shards:
        return shards
    return tuple(sorted(f for f in spec.path.glob("*.safetensors") if f.is_file()))


def _indexed_shards(folder: Path) -> tuple[Path, ...]:
    index = folder / _SAFETENSORS_INDEX
    if not index.is_file():
        return ()
    try:
        weight_map = read_json(index).get("weight_map")
    except UnservableFolder as exc:
        logger.debug("%s: ignoring %s: %s", folder.name, _SAFETENSORS_INDEX, exc)
        return ()
    if not isinstance(weight_map, dict):
        return ()
    # A shard name is a file name in the folder, never a path elsewhere.
    names = sorted({n for n in weight_map.values() if isinstance(n, str) and Path(n).name == n})
    shards = tuple(folder / n for n in names)
    return shards if shards and all(s.is_file() for s in shards) else ()


@functools.lru_cache(maxsize=128)
def _read_cached(
    path: Path,
    weight_format: WeightFormat,
    is_chat: bool,
    files: tuple[Path, ...],
    stamps: tuple[tuple[str, int, int], ...],  # part of the key only: a changed file reads afresh
) -> CheckpointSummary:
    if weight_format is WeightFormat.GGUF:
        return _from_gguf(read_gguf_layout(path))
    config = _read_config(path)
    summary = _from_weight_files(path, weight_format, files, config)
    shape = _attention_shape(config, is_chat, path.name)
    return CheckpointSummary(
        float_elements=summary.float_elements,
        float_bytes=summary.float_bytes,
        fixed_bytes=summary.fixed_bytes,
        quantization=quantization_of(config),
        kv_elements_per_token=shape.kv_elements_per_token,
        hidden_size=shape.hidden_size,
        max_position_embeddings=shape.max_position_embeddings,
        source=summary.source,
        model_type=_model_type(config),
    )


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except UnservableFolder as exc:
        logger.debug("%s: config.json unreadable, attention shape unknown: %s", folder.name, exc)
        return {}


def _model_type(config: dict[str, Any]) -> str | None:
    for section in (*_text_configs(config), config):
        value = section.get("model_type")
        if isinstance(value, str) and value:
            return value
    return None


# --- weights --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _WeightTotals:
    float_elements: int
    float_bytes: int
    fixed_bytes: int
    source: str


def _from_weight_files(
    folder: Path, weight_format: WeightFormat, files: tuple[Path, ...], config: dict[str, Any]
) -> _WeightTotals:
    """Totals from the safetensors headers, or from file sizes where there is no header to read.

    In a quantized checkpoint every tensor counts as stored: its F16 scales and zeros are not cast
    with the float weights, and its "float" layers (norms, embeddings) are a rounding error.
    """
    quantized = quantization_of(config) is not None
    if weight_format is WeightFormat.SAFETENSORS:
        try:
            totals = _safetensors_totals(files)
        except (OSError, UnservableFolder) as exc:
            logger.warning("%s: safetensors header unreadable, counting file sizes: %s", folder.name, exc)
        else:
            if quantized:
                stored = totals.float_bytes + totals.fixed_bytes
                return _WeightTotals(0, 0, stored, totals.source)
            return totals
    return _size_totals(folder, config, quantized, weight_format)


def _size_totals(
    folder: Path, config: dict[str, Any], quantized: bool, weight_format: WeightFormat
) -> _WeightTotals:
    """A pickled checkpoint has no header: its size is its floats, of config.json's dtype."""
    size = find_weights(folder).size_bytes
    what = "pytorch .bin" if weight_format is WeightFormat.PYTORCH else "unreadable safetensors"
    source = f"file size ({what})"
    if quantized:
        return _WeightTotals(0, 0, size, source)
    return _WeightTotals(size // _config_dtype_bytes(config), size, 0, source)


def _config_dtype_bytes(config: dict[str, Any]) -> int:
    for section in (config, *_text_configs(config)):
        for key in ("torch_dtype", "dtype"):
            dtype = section.get(key)
            if isinstance(dtype, str) and dtype.removeprefix("torch.") in _TORCH_DTYPE_BYTES:
                return _TORCH_DTYPE_BYTES[dtype.removeprefix("torch.")]
    return _DEFAULT_ELEMENT_BYTES


def _safetensors_totals(files: Iterable[Path]) -> _WeightTotals:
    float_elements = float_bytes = fixed_bytes = count = 0
    for file in files:
        for entry in _safetensors_header(file).values():
            stored = _stored_bytes(entry)
            if entry.get("dtype") in _FLOAT_DTYPES:
                float_elements += math.prod(int(d) for d in entry.get("shape", []))
                float_bytes += stored
            else:
                fixed_bytes += stored
        count += 1
    if count == 0:
        raise UnservableFolder("no *.safetensors files")
    plural = "file" if count == 1 else "files"
    return _WeightTotals(float_elements, float_bytes, fixed_bytes, f"safetensors headers ({count} {plural})")


def _safetensors_header(file: Path) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors file: 8-byte little-endian length, then that much JSON."""
    with file.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise UnservableFolder(f"{file.name}: too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES:
            raise UnservableFolder(f"{file.name}: header length {length} is not plausible")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnservableFolder(f"{file.name}: header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise UnservableFolder(f"{file.name}: header is not a JSON object")
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _stored_bytes(entry: dict[str, Any]) -> int:
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise UnservableFolder(f"tensor entry without data_offsets: {entry}")
    return int(offsets[1]) - int(offsets[0])


# --- attention shape (config.json) ----------------------------------------------------------------


@dataclass(frozen=True)
class _AttentionShape:
    kv_elements_per_token: int | None
    hidden_size: int | None
    max_position_embeddings: int | None


def _text_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [config[k] for k in _TEXT_CONFIG_KEYS if isinstance(config.get(k), dict)]


def _lookup(config: dict[str, Any], *keys: str) -> int | None:
    """The first positive int under ``keys``, the language model's nested config searched first."""
    for section in (*_text_configs(config), config):
        for key in keys:
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _flag(config: dict[str, Any], key: str) -> bool:
    return any(section.get(key) is True for section in (*_text_configs(config), config))


def _attention_shape(config: dict[str, Any], is_chat: bool, name: str) -> _AttentionShape:
    hidden = _lookup(config, "hidden_size", "n_embd", "d_model")
    max_positions = _lookup(config, *_CONTEXT_KEYS)
    # Encoders have no KV cache; an embedder or reranker with a causal-LM body (Qwen3-Embedding) has one
    # on vLLM's pooling runner, like a chat model.
    architectures = config.get("architectures") or []
    causal = any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    kv = _kv_elements_per_token(config, hidden) if is_chat or causal else None
    if is_chat and kv is None and config:
        logger.debug("%s: config.json gives no attention shape; KV cache size unknown", name)
    return _AttentionShape(kv, hidden, max_positions)


def _kv_elements_per_token(config: dict[str, Any], hidden: int | None) -> int | None:
    """KV cache elements one token adds across all layers: keys and values of each KV head.

    Multi-head latent attention (DeepSeek's ``kv_lora_rank``) caches one compressed latent and the
    shared rope key per layer instead. Sliding-window and linear-attention layers are counted as
    full ones: an over-estimate, which is the safe side for a planner.
    """
    layers = _lookup(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    if layers is None:
        return None
    kv_lora_rank = _lookup(config, "kv_lora_rank")
    if kv_lora_rank is not None:
        rope_dim = _lookup(config, "qk_rope_head_dim")
        return layers * (kv_lora_rank + rope_dim) if rope_dim is not None else None
    heads = _lookup(config, "num_attention_heads", "n_head", "num_heads")
    kv_heads = _kv_heads(config, heads)
    head_dim = _lookup(config, "head_dim")
    if head_dim is None and hidden is not None and heads is not None:
        head_dim = hidden // heads
    if kv_heads is None or not head_dim:
        return None
    return 2 * layers * kv_heads * head_dim


def _kv_heads(config: dict[str, Any], heads: int | None) -> int | None:
    explicit = _lookup(config, "num_key_value_heads", "num_kv_heads", "n_head_kv")
    if explicit is not None:
        return explicit
    if _flag(config, "multi_query_attention"):  # ChatGLM
        return _lookup(config, "multi_query_group_num") or 1
    if _flag(config, "multi_query"):  # GPT-BigCode, Falcon-7B
        return 1
    return heads


# --- GGUF -----------------------------------------------------------------------------------------


def _from_gguf(layout: GGUFLayout) -> CheckpointSummary:
    """A GGUF is imported by de-quantizing every tensor to float (engines/gguf_import.py), so all of
    its tensors are float tensors here, whatever their stored type."""
    return CheckpointSummary(
        float_elements=layout.tensor_elements,
        float_bytes=layout.tensor_data_bytes,
        fixed_bytes=0,
        quantization=layout.quantization,
        kv_elements_per_token=_gguf_kv_elements(layout),
        hidden_size=layout.embedding_length,
        max_position_embeddings=layout.context_length,
        source=f"GGUF tensor table ({layout.tensor_count} tensors)",
        model_type=layout.architecture,
    )


def _gguf_kv_elements(layout: GGUFLayout) -> int | None:
    if layout.block_count is None:
        return None
    if layout.kv_lora_rank is not None:
        if layout.rope_dimension_count is None:
            return None
        return layout.block_count * (layout.kv_lora_rank + layout.rope_dimension_count)
    # Files converted before grouped-query attention omit head_count_kv: as many as query heads.
    kv_heads = layout.head_count_kv or layout.head_count
    if kv_heads is None:
        return None
    head_dim = layout.key_length
    if head_dim is None and layout.embedding_length and layout.head_count and max(layout.head_count) > 0:
        head_dim = layout.embedding_length // max(layout.head_count)
    if not head_dim:
        return None
    value_dim = layout.value_length or head_dim
    return sum(kv_heads) * (head_dim + value_dim)


__all__ = ["CheckpointSummary", "read_checkpoint", "runtime_weight_bytes"]
