"""Build a random-weight chat model of a real model's shape, for machines that reach no model hub.

Speed and memory depend on a model's shape, not on its weights, so a random Qwen2.5-1.5B-shaped
model measures what the real one would (its answers are noise: benchmarks use ``ignore_eos``).
The tokenizer and chat template come from a folder you give (e.g. the imported SmolLM2's).

    python benchmarks/random_chat_model.py --shape qwen2.5-0.5b --tokenizer DIR --out /tmp/qwen05
    python benchmarks/random_chat_model.py --shape qwen2.5-7b --awq --vocab-size 152064 \
        --tokenizer DIR --out /tmp/q7awq
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

# Layer shapes of real models (from their config.json), vocabulary aside (the tokenizer's is used).
SHAPES: dict[str, dict[str, int | float | bool]] = {
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "qwen2.5-7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False},
    # No real model's: two layers, for a smoke run of this script in seconds.
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True},
    # The smallest shape AWQ's group of 128 and vLLM's AWQ kernels take (every in_features a multiple
    # of 128, every out_features of 64).
    "tiny-awq": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": False},
}  # fmt: skip

# Qwen2.5's vocabulary as its config.json sizes the embeddings (the tokenizer holds 151,665 of them).
QWEN2_5_VOCAB = 152064
# Qwen2.5-7B-Instruct-AWQ's config.json, as AutoAWQ writes it (GEMM kernels, 4 bits, groups of 128).
AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
_PACK = 32 // AWQ_CONFIG["bits"]  # 4-bit values an int32 holds
# AWQ's scales keep a dequantized weight, (q - zero) x scale with q and zero in 0..15, near the 0.02
# spread of a trained layer, so activations stay finite through 28 layers of random weights.
_AWQ_SCALE = 0.0015
# An int32 of eight 4-bit zero points of 8, the middle of the range, as a symmetric layer's are.
_ZEROS_OF_EIGHT = 0x88888888 - 2**32
# Tensors per safetensors shard (as AutoAWQ's uploads are sharded, with an index).
_SHARD_BYTES = 2 * 1024**3


def build(shape: str, tokenizer_dir: Path, out: Path, max_position_embeddings: int = 32768) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="bfloat16",
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for name in ("chat_template.jinja",):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    params = sum(p.numel() for p in model.parameters())
    print(f"{shape}: {params / 1e9:.2f}B parameters written to {out} in {time.perf_counter() - started:.0f}s")
    return out


def build_awq(
    shape: str,
    tokenizer_dir: Path,
    out: Path,
    *,
    vocab_size: int | None = None,
    max_position_embeddings: int = 32768,
) -> Path:
    """A random-weight AWQ checkpoint of a real shape, in AutoAWQ's GEMM layout as vLLM's ``awq`` and
    ``awq_marlin`` loaders read it: per quantized linear of ``in`` x ``out`` features, ``qweight``
    int32 [in, out/8], ``qzeros`` int32 [in/128, out/8], ``scales`` float16 [in/128, out]; embeddings,
    norms, biases and ``lm_head`` in float16; config.json's ``quantization_config`` as AutoAWQ writes
    it. Built tensor by tensor (never a whole float model), on the GPU when there is one.

    ``vocab_size`` (e.g. :data:`QWEN2_5_VOCAB`) sizes the embeddings as the real model's, beyond the
    tokenizer: ``lm_head``'s extra rows repeat the tokenizer's, so greedy decoding (which takes the
    first of equal logits) only ever picks a token the tokenizer has.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2Config

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    dims = SHAPES[shape]
    hidden, inter = int(dims["hidden_size"]), int(dims["intermediate_size"])
    heads, kv_heads = int(dims["num_attention_heads"]), int(dims["num_key_value_heads"])
    kv_width = kv_heads * hidden // heads
    vocab = vocab_size or len(tokenizer)
    config = Qwen2Config(
        vocab_size=vocab,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="float16",
        **dims,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)

    def floats(*size: int, std: float = 0.02) -> torch.Tensor:
        values = torch.randn(*size, generator=generator, device=device, dtype=torch.float16) * std
        return values.cpu()

    def quantized(prefix: str, in_features: int, out_features: int) -> dict[str, torch.Tensor]:
        group = int(AWQ_CONFIG["group_size"])
        qweight = torch.randint(
            -(2**31), 2**31 - 1, (in_features, out_features // _PACK),
            generator=generator, device=device, dtype=torch.int32,
        )  # fmt: skip
        qzeros = torch.full((in_features // group, out_features // _PACK), _ZEROS_OF_EIGHT, dtype=torch.int32)
        scales = torch.full((in_features // group, out_features), _AWQ_SCALE, dtype=torch.float16)
        return {f"{prefix}.qweight": qweight.cpu(), f"{prefix}.qzeros": qzeros, f"{prefix}.scales": scales}

    embed = floats(vocab, hidden)
    shown = len(tokenizer)
    lm_head = floats(min(vocab, shown), hidden)
    if vocab > shown:
        lm_head = lm_head[torch.arange(vocab) % shown]
    tensors: dict[str, torch.Tensor] = {"model.embed_tokens.weight": embed, "lm_head.weight": lm_head}
    tensors["model.norm.weight"] = torch.ones(hidden, dtype=torch.float16)
    shards: list[dict[str, torch.Tensor]] = [tensors]
    for layer in range(int(dims["num_hidden_layers"])):
        block = f"model.layers.{layer}"
        part: dict[str, torch.Tensor] = {
            f"{block}.input_layernorm.weight": torch.ones(hidden, dtype=torch.float16),
            f"{block}.post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.float16),
        }
        for name, width in (("q_proj", hidden), ("k_proj", kv_width), ("v_proj", kv_width)):
            part |= quantized(f"{block}.self_attn.{name}", hidden, width)
            part[f"{block}.self_attn.{name}.bias"] = torch.zeros(width, dtype=torch.float16)
        part |= quantized(f"{block}.self_attn.o_proj", hidden, hidden)
        part |= quantized(f"{block}.mlp.gate_proj", hidden, inter)
        part |= quantized(f"{block}.mlp.up_proj", hidden, inter)
        part |= quantized(f"{block}.mlp.down_proj", inter, hidden)
        if _shard_bytes(shards[-1]) + _shard_bytes(part) > _SHARD_BYTES:
            shards.append({})
        shards[-1].update(part)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, name)
    total = sum(_shard_bytes(shard) for shard in shards)
    index_file = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2))
    written = config.to_dict() | {"architectures": ["Qwen2ForCausalLM"], "quantization_config": AWQ_CONFIG}
    (out / "config.json").write_text(json.dumps(written, indent=2))
    tokenizer.save_pretrained(out)
    for extra in ("chat_template.jinja",):
        if (tokenizer_dir / extra).is_file():
            shutil.copy(tokenizer_dir / extra, out / extra)
    print(
        f"{shape} AWQ: {total / 1024**3:.2f} GiB in {len(shards)} shards written to {out} "
        f"in {time.perf_counter() - started:.0f}s"
    )
    return out


def _shard_bytes(tensors: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--awq", action="store_true", help="AWQ 4-bit (AutoAWQ's GEMM layout), float16")
    parser.add_argument(
        "--vocab-size",
        type=int,
        help=f"Embedding rows (the real Qwen2.5's: {QWEN2_5_VOCAB}); default: the tokenizer's",
    )
    args = parser.parse_args()
    if args.awq:
        build_awq(args.shape, args.tokenizer, args.out, vocab_size=args.vocab_size)
    else:
        build(args.shape, args.tokenizer, args.out)


if __name__ == "__main__":
    main()
