"""The models of the GPU swap run, random weights of real shapes (no model hub there):
Qwen2.5-7B and Qwen2.5-1.5B (chat, on vLLM), Qwen3-Reranker-0.6B, and an all-MiniLM-L6-v2 embedder.

    python benchmarks/swap_models.py --tokenizer DIR --minilm DIR --out /tmp/swap-models

Vocabularies are the tokenizers' (SmolLM2's 49k for the chat models, a small trained one for the
reranker), so embeddings are smaller than the real models': 7B-shaped is 6.9B parameters here.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from embeddings_gpu import SHAPES as ENCODER_SHAPES  # noqa: E402
from embeddings_gpu import build_model as build_encoder  # noqa: E402
from model_zoo import build_qwen3_reranker  # noqa: E402
from random_chat_model import build  # noqa: E402
from rerank import QWEN3_0_6B_BODY  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", type=Path, required=True, help="A chat tokenizer folder (SmolLM2's)")
    parser.add_argument("--minilm", type=Path, required=True, help="all-MiniLM-L6-v2's tokenizer folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    build("qwen2.5-7b", args.tokenizer, args.out / "Qwen2.5-7B-Instruct", max_position_embeddings=32768)
    build("qwen2.5-1.5b", args.tokenizer, args.out / "Qwen2.5-1.5B-Instruct", max_position_embeddings=32768)
    reranker = args.out / "Qwen3-Reranker-0.6B"
    shutil.rmtree(reranker, ignore_errors=True)
    build_qwen3_reranker(reranker, **QWEN3_0_6B_BODY)
    build_encoder(args.minilm, args.out / "all-MiniLM-L6-v2", ENCODER_SHAPES["minilm-l6-h384"])
    print(f"models in {args.out}: {sorted(p.name for p in args.out.iterdir())}")


if __name__ == "__main__":
    main()
