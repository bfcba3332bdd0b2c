"""LLM-based embedders and rerankers on a GPU: our server (vLLM's pooling runner behind it) against
vLLM itself, offline and as its own OpenAI server, and against our in-process transformers engine.

Run on the GPU machine, from the repository root, with vLLM and the server's packages importable::

    PYTHONPATH=src:tests python benchmarks/pooling_gpu.py [--passages 20000] [--out FILE]

No weights travel: the models are random-weight Qwen3 bodies of Qwen3-Embedding-0.6B's and
Qwen3-Reranker-0.6B's shape (bf16), laid out as the real ones ship, with a byte-level BPE of 32k
tokens trained on the corpus (so texts have realistic token counts; the real vocabulary's 151k rows
only make the embedding table bigger). Every anchor is measured in the same run:

- reranker: vLLM offline ``LLM.encode`` (classify, the published ``hf_overrides``) on the very token
  ids our engine builds; our server with the model on vLLM; our server with ``engine: transformers``;
- embedder: vLLM offline ``LLM.embed`` on the same token ids; vLLM's own OpenAI server
  (``--runner pooling``) and ours under the same load: CLIENT_PROCESSES processes x CONCURRENCY
  requests in flight, 8 texts a request, base64 vectors.

Each server's first-pass answers are checked against the offline anchor's (cosine, score difference).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from corpus import build_corpus  # noqa: E402
from harness import child_env, free_port, running_server, serve_argv  # noqa: E402
from rerank import QWEN3_0_6B_BODY  # noqa: E402

CLIENT_PROCESSES = 8
CONCURRENCY = 8
TEXTS_PER_REQUEST = 8
DOCUMENTS_PER_REQUEST = 16
EMBEDDER = "Qwen3-Embedding-0.6B-shape"
RERANKER = "Qwen3-Reranker-0.6B-shape"
RERANKER_IN_PROCESS = "Qwen3-Reranker-0.6B-shape-transformers"
# What the offline anchor's process prints its figures after (vLLM writes its logs to stdout too).
RESULT = "pooling-anchor: "
YES_NO_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


@dataclass
class Run:
    name: str
    items: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    check: str = ""

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


# --- models ---------------------------------------------------------------------------------------
def to_bf16(folder: Path) -> None:
    """Store the folder's weights in bfloat16, as the real models ship."""
    import torch
    from safetensors.torch import load_file, save_file

    for file in folder.rglob("*.safetensors"):
        tensors = {
            k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(file).items()
        }
        save_file(tensors, file, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config))


def build_models(root: Path, corpus: list[str], shape: dict[str, int]) -> None:
    from model_zoo import build_qwen3_embedder, build_qwen3_reranker, qwen3_style_tokenizer

    tokenizer = qwen3_style_tokenizer(corpus[:5000], vocab_size=32000)
    build_qwen3_embedder(root / EMBEDDER, tokenizer=tokenizer, **shape)
    build_qwen3_reranker(root / RERANKER, tokenizer=qwen3_style_tokenizer(corpus[:5000], 32000), **shape)
    for name in (EMBEDDER, RERANKER):
        to_bf16(root / name)
    shutil.copytree(root / RERANKER, root / RERANKER_IN_PROCESS)
    (root / "models.yaml").write_text(f"models:\n  {RERANKER_IN_PROCESS}:\n    engine: transformers\n")


def context_of(folder: Path) -> int:
    """The context our server serves the model with (registry/pooling.py): at most 8,192 tokens."""
    from local_llm.registry.pooling import POOLING_CONTEXT_TOKENS

    positions = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    return min(POOLING_CONTEXT_TOKENS, int(positions))


# --- the token ids our engines build, for the offline anchors ----------------------------------------
def embedder_ids(folder: Path, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return [
        list(ids)
        for ids in tokenizer(texts, add_special_tokens=True, truncation=True, max_length=context_of(folder))[
            "input_ids"
        ]
    ]


def reranker_ids(folder: Path, requests: list[tuple[str, list[str]]]) -> list[list[int]]:
    from transformers import AutoTokenizer

    from local_llm.engines.rerank import QWEN3_RERANKER as T

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prefix = tokenizer.encode(T.prefix, add_special_tokens=False)
    suffix = tokenizer.encode(T.suffix, add_special_tokens=False)
    bodies = [
        T.body.format(instruction=T.default_instruction, query=query, document=doc)
        for query, docs in requests
        for doc in docs
    ]
    encoded = tokenizer(bodies, add_special_tokens=False)["input_ids"]
    return [[*prefix, *ids, *suffix] for ids in encoded]


def offline(model: Path, task: str, ids_file: Path, out: Path) -> None:
    """(In a process of its own, so its GPU memory goes with it.) vLLM's offline pooling, timed."""
    from vllm import LLM, PoolingParams

    args: dict[str, Any] = {"model": str(model), "runner": "pooling", "max_model_len": context_of(model)}
    if task == "classify":
        args["hf_overrides"] = YES_NO_OVERRIDES
    llm = LLM(**args)
    inputs = [{"prompt_token_ids": ids} for ids in json.loads(ids_file.read_text())]
    params = PoolingParams(use_activation=task == "embed")
    llm.encode(inputs[:512], pooling_task=task, pooling_params=params, use_tqdm=False)
    started = time.perf_counter()
    outputs = llm.encode(inputs, pooling_task=task, pooling_params=params, use_tqdm=False)
    seconds = time.perf_counter() - started
    data = np.stack([o.outputs.data.float().numpy().reshape(-1) for o in outputs])
    np.save(out, data)
    print(RESULT + json.dumps({"items": len(inputs), "seconds": seconds}), flush=True)


def run_offline(
    name: str, model: Path, task: str, ids: list[list[int]], work: Path
) -> tuple[Run, np.ndarray]:
    ids_file, out = work / f"{task}-ids.json", work / f"{task}-offline.npy"
    ids_file.write_text(json.dumps(ids))
    command = [sys.executable, __file__, "--offline", str(model), task, str(ids_file), str(out)]
    print(f"\n{name}", flush=True)
    finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{finished.stderr[-4000:]}")
    (line,) = [line for line in finished.stdout.splitlines() if line.startswith(RESULT)]
    figures = json.loads(line.removeprefix(RESULT))
    run = Run(name, figures["items"], figures["seconds"])
    print(f"  {run.per_second:,.0f}/s", flush=True)
    return run, np.load(out)


# --- the HTTP load: processes x concurrent requests ---------------------------------------------------
def _client(job: tuple[str, str, list[dict[str, Any]], int, float]) -> dict[str, Any]:
    base, route, bodies, concurrency, start_at = job
    if not bodies:  # more processes than requests (a small run)
        empty: dict[str, Any] = {"results": {}, "latencies": [], "errors": 0, "items": 0}
        return {**empty, "started": start_at, "ended": start_at}

    async def drive() -> dict[str, Any]:
        results: dict[int, Any] = {}
        latencies: list[float] = []
        errors = 0
        items = 0
        queue = list(enumerate(bodies))
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
            # Untimed warm-up: connections open, the model loaded (ours loads on first use).
            await asyncio.gather(
                *(client.post(route, json=bodies[i % len(bodies)]) for i in range(concurrency))
            )
            await asyncio.sleep(max(0.0, start_at - time.time()))
            started = time.time()

            async def worker() -> None:
                nonlocal errors, items
                while queue:
                    index, body = queue.pop()
                    sent = time.perf_counter()
                    answer = await client.post(route, json=body)
                    if answer.status_code != 200:
                        errors += 1
                        continue
                    latencies.append((time.perf_counter() - sent) * 1000)
                    results[index] = answer.json()
                    items += len(body.get("input") or body.get("documents") or [])

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            ended = time.time()
        return {
            "results": results,
            "latencies": latencies,
            "errors": errors,
            "items": items,
            "started": started,
            "ended": ended,
        }

    return asyncio.run(drive())


def drive(name: str, base: str, route: str, bodies: list[dict[str, Any]]) -> tuple[Run, list[dict[str, Any]]]:
    share = -(-len(bodies) // CLIENT_PROCESSES)
    start_at = time.time() + 30
    jobs = [
        (base, route, bodies[i * share : (i + 1) * share], CONCURRENCY, start_at)
        for i in range(CLIENT_PROCESSES)
    ]
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(CLIENT_PROCESSES, mp_context=spawn) as pool:
        outcomes = list(pool.map(_client, jobs))
    answers: list[dict[str, Any]] = [{}] * len(bodies)
    for part, outcome in enumerate(outcomes):
        for index, answer in outcome["results"].items():
            answers[part * share + int(index)] = answer
    seconds = max(o["ended"] for o in outcomes) - min(o["started"] for o in outcomes)
    run = Run(
        name,
        sum(o["items"] for o in outcomes),
        seconds,
        [ms for o in outcomes for ms in o["latencies"]],
        errors=sum(o["errors"] for o in outcomes),
    )
    print(
        f"  {name}: {run.per_second:,.0f}/s, p50 {ms(run.percentile(50))} ms, "
        f"p99 {ms(run.percentile(99))} ms, {run.errors} errors",
        flush=True,
    )
    return run, answers


def vectors_of(answers: list[dict[str, Any]], dimension: int) -> np.ndarray:
    rows = []
    for answer in answers:
        for item in sorted(answer.get("data", []), key=lambda d: d["index"]):
            rows.append(np.frombuffer(base64.b64decode(item["embedding"]), dtype=np.float32))
    return np.stack(rows) if rows else np.empty((0, dimension))


def scores_of(answers: list[dict[str, Any]]) -> np.ndarray:
    return np.array(
        [
            r["relevance_score"]
            for a in answers
            for r in sorted(a.get("results", []), key=lambda r: r["index"])
        ]
    )


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --- report --------------------------------------------------------------------------------------------
def table(rows: list[Run], anchor: Run, unit: str) -> str:
    lines = [
        f"| run | {unit}/s | vs {anchor.name} | p50 ms | p99 ms | errors | check |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.per_second:,.0f} | {r.per_second / anchor.per_second:.2f}x | "
            f"{ms(r.percentile(50))} | {ms(r.percentile(99))} | {r.errors} | {r.check} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=20000)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="A 2-layer body and a small load: this script's own check, on a CPU",
    )
    parser.add_argument("--offline", nargs=4, metavar=("MODEL", "TASK", "IDS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline:
        offline(Path(args.offline[0]), args.offline[1], Path(args.offline[2]), Path(args.offline[3]))
        return 0
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import vllm

    if not torch.cuda.is_available():
        # vLLM's CPU build sizes its KV cache from this (its default takes most of the RAM).
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    work = Path(tempfile.mkdtemp(prefix="pooling-gpu-"))
    models = work / "models"
    corpus = build_corpus(args.passages)
    queries = build_corpus(64, seed=7)
    started = time.perf_counter()
    build_models(models, corpus, {"head_dim": 32} if args.smoke else QWEN3_0_6B_BODY)
    print(f"models built in {time.perf_counter() - started:.0f}s", flush=True)

    # Reranker: the same pairs everywhere.
    pair_count = args.passages // 2
    requests = [
        (
            queries[i % len(queries)],
            [corpus[(i * DOCUMENTS_PER_REQUEST + j) % len(corpus)] for j in range(DOCUMENTS_PER_REQUEST)],
        )
        for i in range(pair_count // DOCUMENTS_PER_REQUEST)
    ]
    pair_ids = reranker_ids(models / RERANKER, requests)
    tokens_per_pair = sum(map(len, pair_ids)) / len(pair_ids)
    rerank_offline, offline_logits = run_offline(
        "vLLM offline LLM.encode (classify)", models / RERANKER, "classify", pair_ids, work
    )
    offline_scores = sigmoid(offline_logits.reshape(-1))

    # Embedder: the same texts everywhere.
    text_ids = embedder_ids(models / EMBEDDER, corpus)
    tokens_per_text = sum(map(len, text_ids)) / len(text_ids)
    embed_offline, offline_vectors = run_offline(
        "vLLM offline LLM.embed", models / EMBEDDER, "embed", text_ids, work
    )
    embed_bodies = [
        {"model": EMBEDDER, "input": corpus[i : i + TEXTS_PER_REQUEST], "encoding_format": "base64"}
        for i in range(0, len(corpus), TEXTS_PER_REQUEST)
    ]

    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(models / EMBEDDER),
        "--served-model-name",
        EMBEDDER,
        "--runner",
        "pooling",
        "--convert",
        "embed",
        "--max-model-len",
        str(context_of(models / EMBEDDER)),
        "--port",
        str(port),
    ]
    print("\nvLLM's own OpenAI server", flush=True)
    with running_server(
        "vLLM server", argv, port, work / "vllm-server.log", child_env(), start_timeout_s=900
    ):
        embed_vllm_server, answers = drive(
            "vLLM's server", f"http://127.0.0.1:{port}", "/v1/embeddings", embed_bodies
        )
    embed_vllm_server.check = f"cos {min_cosine(vectors_of(answers, 1024), offline_vectors):.4f}"

    port = free_port()
    print("\nour server", flush=True)
    env = {**child_env(), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    with running_server(
        "ours",
        serve_argv(port, "--models-dir", str(models), "--no-bundled-models"),
        port,
        work / "ours.log",
        env,
        start_timeout_s=900,
    ):
        base = f"http://127.0.0.1:{port}"
        embed_ours, answers = drive("ours (vLLM pooling)", base, "/v1/embeddings", embed_bodies)
        embed_ours.check = f"cos {min_cosine(vectors_of(answers, 1024), offline_vectors):.4f}"
        rerank_runs = []
        for name, model in (
            ("ours (vLLM pooling)", RERANKER),
            ("ours, engine: transformers", RERANKER_IN_PROCESS),
        ):
            bodies = [
                {"model": model, "query": q, "documents": d, "return_documents": False} for q, d in requests
            ]
            run, answers = drive(name, base, "/v1/rerank", bodies)
            got = scores_of(answers)
            run.check = f"max |score diff| {np.abs(got - offline_scores[: len(got)]).max():.4f}"
            rerank_runs.append(run)
        cards = {c["id"]: c for c in httpx.get(base + "/v1/models", timeout=30).json()["data"]}
    placements = ", ".join(
        f"{n}: {cards[n]['backend']} on {cards[n]['placement']}, measured "
        f"{(cards[n].get('measured_bytes') or 0) / 2**20:,.0f} MiB, estimated "
        f"{(cards[n].get('estimated_bytes') or 0) / 2**20:,.0f} MiB"
        for n in (EMBEDDER, RERANKER, RERANKER_IN_PROCESS)
    )

    rerank_ours, rerank_transformers = rerank_runs
    device = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU (smoke run)"
    head = (
        f"{device}; vLLM {vllm.__version__}, torch {torch.__version__}; "
        f"{CLIENT_PROCESSES} client processes x {CONCURRENCY} requests in flight."
    )
    section = "\n\n".join(
        [
            head,
            f"Reranker ({len(pair_ids):,} pairs, {tokens_per_pair:.0f} tokens a pair, "
            f"{DOCUMENTS_PER_REQUEST} documents a request):",
            table([rerank_offline, rerank_ours, rerank_transformers], rerank_offline, "pairs"),
            f"ours / transformers engine = {rerank_ours.per_second / rerank_transformers.per_second:.2f}x; "
            f"ours / vLLM offline = {rerank_ours.per_second / rerank_offline.per_second:.2f}x",
            f"Embedder ({len(corpus):,} passages, {tokens_per_text:.0f} tokens a text, "
            f"{TEXTS_PER_REQUEST} texts a request, base64):",
            table([embed_offline, embed_vllm_server, embed_ours], embed_offline, "embeddings"),
            f"ours / vLLM's server = {embed_ours.per_second / embed_vllm_server.per_second:.2f}x; "
            f"ours / vLLM offline = {embed_ours.per_second / embed_offline.per_second:.2f}x",
            f"Models: {placements}.",
        ]
    )
    print("\n" + section)
    if args.out:
        args.out.write_text(section + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
