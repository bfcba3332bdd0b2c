"""Build a random-weight chat model of a real model's shape, for machines that reach no model hub.

Speed and memory depend on a model's shape, not on its weights, so a random Qwen2.5-1.5B-shaped
model measures what the real one would (its answers are noise: benchmarks use ``ignore_eos``).
The tokenizer and chat template come from a folder you give (e.g. the imported SmolLM2's).

    python benchmarks/random_chat_model.py --shape qwen2.5-0.5b --tokenizer DIR --out /tmp/qwen05
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

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
}  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    build(args.shape, args.tokenizer, args.out)


if __name__ == "__main__":
    main()
