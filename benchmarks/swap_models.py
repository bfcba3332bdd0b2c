"""The models of the GPU swap runs, random weights of real shapes (no model hub there).

``--set swap``: Qwen2.5-7B and Qwen2.5-1.5B (chat, on vLLM), Qwen3-Reranker-0.6B, and an
all-MiniLM-L6-v2 embedder. Vocabularies are the tokenizers' (SmolLM2's 49k for the chat models, a small
trained one for the reranker), so embeddings are smaller than the real models': 7B-shaped is 6.9B
parameters here.

``--set seed``: the seed's 8 GB deployment, at the real models' sizes: Qwen2.5-7B-Instruct-AWQ (4-bit
AWQ in AutoAWQ's GEMM layout, Qwen2.5's 152,064-row embeddings, 5.2 GiB as the real one), and
Qwen3-Embedding-0.6B and Qwen3-Reranker-0.6B in bfloat16 with Qwen3's 151,669-row embeddings (1.1 GiB
each); their tokenizer is trained on the benchmark corpus (Qwen3's chat tokens, single "yes" / "no").

    python benchmarks/swap_models.py --tokenizer DIR --minilm DIR --out /tmp/swap-models
    python benchmarks/swap_models.py --set seed --tokenizer DIR --out /tmp/seed-models
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from corpus import build_corpus  # noqa: E402
from embeddings_gpu import SHAPES as ENCODER_SHAPES  # noqa: E402
from embeddings_gpu import build_model as build_encoder  # noqa: E402
from model_zoo import build_qwen3_embedder, build_qwen3_reranker, qwen3_style_tokenizer  # noqa: E402
from pooling_gpu import to_bf16  # noqa: E402
from random_chat_model import QWEN2_5_VOCAB, build, build_awq  # noqa: E402
from rerank import QWEN3_0_6B_BODY  # noqa: E402

# Qwen3-0.6B's config.json sizes its (tied) embeddings for this many tokens.
QWEN3_VOCAB = 151669
SEED_CHAT = "Qwen2.5-7B-Instruct-AWQ"
SEED_EMBEDDER = "Qwen3-Embedding-0.6B"
SEED_RERANKER = "Qwen3-Reranker-0.6B"


def build_swap_set(tokenizer: Path, minilm: Path, out: Path) -> None:
    build("qwen2.5-7b", tokenizer, out / "Qwen2.5-7B-Instruct", max_position_embeddings=32768)
    build("qwen2.5-1.5b", tokenizer, out / "Qwen2.5-1.5B-Instruct", max_position_embeddings=32768)
    reranker = out / "Qwen3-Reranker-0.6B"
    shutil.rmtree(reranker, ignore_errors=True)
    build_qwen3_reranker(reranker, **QWEN3_0_6B_BODY)
    build_encoder(minilm, out / "all-MiniLM-L6-v2", ENCODER_SHAPES["minilm-l6-h384"])


def build_seed_set(tokenizer: Path, out: Path) -> None:
    build_awq("qwen2.5-7b", tokenizer, out / SEED_CHAT, vocab_size=QWEN2_5_VOCAB)
    corpus = build_corpus()
    shape = QWEN3_0_6B_BODY | {"vocab_size": QWEN3_VOCAB}
    for name, builder in ((SEED_EMBEDDER, build_qwen3_embedder), (SEED_RERANKER, build_qwen3_reranker)):
        shutil.rmtree(out / name, ignore_errors=True)
        builder(out / name, tokenizer=qwen3_style_tokenizer(corpus, vocab_size=32000), **shape)
        to_bf16(out / name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", choices=["swap", "seed"], default="swap")
    parser.add_argument("--tokenizer", type=Path, required=True, help="A chat tokenizer folder (SmolLM2's)")
    parser.add_argument("--minilm", type=Path, help="all-MiniLM-L6-v2's tokenizer folder (--set swap)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.set == "seed":
        build_seed_set(args.tokenizer, args.out)
    elif args.minilm is None:
        parser.error("--set swap needs --minilm")
    else:
        build_swap_set(args.tokenizer, args.minilm, args.out)
    print(f"models in {args.out}: {sorted(p.name for p in args.out.iterdir())}")


if __name__ == "__main__":
    main()
