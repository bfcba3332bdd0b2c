"""Embeddings on a CUDA GPU: our server against in-process ``encode``, both on the GPU.

Run on a machine with a GPU, from the repository root (the `device` tool's machine has torch and
sentence-transformers; the server's own packages travel as wheels)::

    PYTHONPATH=src python benchmarks/embeddings_gpu.py --tokenizer DIR [--out FILE]

``--tokenizer`` is a folder holding a BERT tokenizer (all-MiniLM-L6-v2's: its tokenizer files
only, no weights). No model hub is reachable and no weights travel: the models are random-weight
BERTs of real shapes (all-MiniLM-L6-v2's and bge-base's), mean-pooled and normalised like the
real ones, so speed is what those models would give. The load is the CPU benchmark's
(``benchmarks/embeddings.py``): 32 clients, 8 texts a request, the same corpus.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from corpus import build_corpus
from embeddings import Load, Result, child_env, drive, min_cosine, report, running_server, table

SHAPES = {
    "minilm-l6-h384": {"num_hidden_layers": 6, "hidden_size": 384, "intermediate_size": 1536},
    "bge-base-l12-h768": {"num_hidden_layers": 12, "hidden_size": 768, "intermediate_size": 3072},
}


def build_model(tokenizer_dir: Path, dest: Path, shape: dict[str, int]) -> None:
    """A random-weight BERT of ``shape`` as a sentence-transformers folder (mean pooling, Normalize)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    raw = dest.with_name(dest.name + "-hf")
    config = BertConfig(vocab_size=30522, num_attention_heads=12, max_position_embeddings=512, **shape)
    BertModel(config).save_pretrained(raw)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(raw)
    transformer = models.Transformer(str(raw), max_seq_length=256)
    pooling = models.Pooling(shape["hidden_size"], pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(str(dest))
    shutil.rmtree(raw)


def measure_raw(
    folder: Path, texts: list[str], batch_sizes: list[int], repeat: int
) -> tuple[Result, np.ndarray]:
    """``encode`` on the GPU at each batch size; the best is the ceiling."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cuda")
    model.encode(texts[:512], batch_size=64)  # kernels picked, memory pooled: out of the timings
    best: Result | None = None
    vectors = np.empty(0)
    for batch_size in batch_sizes:
        started = time.perf_counter()
        for _ in range(repeat):
            vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        result = Result(
            f"raw encode on GPU, batch {batch_size}", len(texts) * repeat, time.perf_counter() - started
        )
        report(result)
        if best is None or result.per_second > best.per_second:
            best = result
    assert best is not None
    del model
    return best, np.asarray(vectors, dtype=np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="write the markdown tables here too")
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--server-batch-sizes", default="32,128")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"

    import torch

    gpu = torch.cuda.get_device_name(0)
    texts = build_corpus(2048)
    warmup = build_corpus(512, seed=1)
    load = Load(clients=32, per_request=8, repeat=args.repeat, quiet_wait_s=0)
    models_dir = Path(tempfile.mkdtemp(prefix="gpu-models-"))
    sections = [
        f"GPU: {gpu}; torch {torch.__version__}; corpus 2048 texts x {args.repeat}; 32 clients x 8 texts."
    ]
    port = 18700
    for name, shape in SHAPES.items():
        folder = models_dir / name
        build_model(args.tokenizer, folder, shape)
        print(f"\n{name}", flush=True)
        raw, reference = measure_raw(folder, texts, [32, 64, 128, 256], args.repeat)
        rows = [raw]
        for batch in (int(b) for b in args.server_batch_sizes.split(",")):
            argv = [
                sys.executable,
                "-m",
                "local_llm",
                "serve",
                "--port",
                str(port),
                "--models-dir",
                str(models_dir),
                "--no-bundled-models",
                "--embedding-batch-size",
                str(batch),
            ]
            log = models_dir / f"{name}-{batch}.log"
            env = {**child_env(), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
            with running_server(f"ours, batch {batch}", argv, port, log, env) as server:
                base = f"http://127.0.0.1:{port}"
                result, vectors = asyncio.run(
                    drive(
                        base,
                        "/v1/embeddings",
                        texts,
                        warmup,
                        load,
                        reference.shape[1],
                        f"our server, batch {batch}",
                        server.pid,
                        model=name,
                    )
                )
                card = httpx.get(f"{base}/v1/models/{name}").json()
            result.min_cosine = min_cosine(vectors, reference)
            report(result)
            print(f"  placement: {card['placement']} ({card['placement_reason']})")
            rows.append(result)
            port += 1
        ratio = max(r.per_second for r in rows[1:]) / raw.per_second
        verdict = f"ours (best) / raw = {ratio:.2f}; placement {card['placement']}"
        sections.append(f"### {name}\n\n{table(rows, raw)}\n\n{verdict}")
    output = "\n\n".join(sections)
    print("\n" + output)
    if args.out:
        args.out.write_text(output + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
