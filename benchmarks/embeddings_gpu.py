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
import concurrent.futures
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from corpus import build_corpus
from embeddings import CpuMeter, Load, Result, child_env, drive, min_cosine, report, running_server, table

# One Python load generator tops out near 150 requests/s (httpx and JSON parsing of ~35 KB answers),
# below what a GPU serves: the clients are spread over processes so the server is what is measured.
CLIENT_PROCESSES = 4

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


def _client_process(
    job: tuple[str, list[str], list[str], int, int, int, str, float],
) -> tuple[Result, np.ndarray]:
    """One load-generating process: its share of the clients and of the corpus, from a common start."""
    base, texts, warmup, clients, per_request, repeat, model, start_at = job
    time.sleep(max(0.0, start_at - time.time()))
    load = Load(clients=clients, per_request=per_request, repeat=repeat, quiet_wait_s=0)
    dimension = len(
        httpx.post(f"{base}/v1/embeddings", json={"model": model, "input": "x"}).json()["data"][0][
            "embedding"
        ]
    )
    return asyncio.run(
        drive(base, "/v1/embeddings", texts, warmup, load, dimension, "client", os.getpid(), model=model)
    )


def drive_processes(
    base: str, texts: list[str], warmup: list[str], repeat: int, model: str, name: str
) -> tuple[Result, np.ndarray]:
    """32 clients x 8 texts, as on the CPU, from CLIENT_PROCESSES processes; one combined result."""
    share = len(texts) // CLIENT_PROCESSES
    slices = [texts[i * share : (i + 1) * share] for i in range(CLIENT_PROCESSES)]
    start_at = time.time() + 20  # every process warmed up and waiting
    jobs = [(base, part, warmup, 32 // CLIENT_PROCESSES, 8, repeat, model, start_at) for part in slices]
    spawn = multiprocessing.get_context("spawn")  # this process holds a CUDA context: never fork it
    with concurrent.futures.ProcessPoolExecutor(CLIENT_PROCESSES, mp_context=spawn) as pool:
        outcomes = list(pool.map(_client_process, jobs))
    results = [r for r, _ in outcomes]
    combined = Result(
        name,
        sum(r.embeddings for r in results),
        max(r.seconds for r in results),
        [ms for r in results for ms in r.latencies_ms],
        errors=sum(r.errors for r in results),
    )
    return combined, np.concatenate([v for _, v in outcomes])


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
                meter = CpuMeter(server.pid)
                result, vectors = drive_processes(
                    base, texts, warmup, args.repeat, name, f"our server, batch {batch}"
                )
                meter.stop(result)
                card = httpx.get(f"{base}/v1/models/{name}").json()
            result.min_cosine = min_cosine(vectors, reference[: len(vectors)])
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
