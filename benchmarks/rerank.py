"""Rerank throughput: our server against infinity-emb on the same cross-encoder, and the LLM reranker.

Run from the repository root (on a shared machine, under the benchmark lock)::

    flock /tmp/llm-bench.lock .venv/bin/python benchmarks/rerank.py [--write-docs]

1. A cross-encoder of real shape: no real one can be had here, so all-MiniLM-L6-v2 (the bundled
   model) gets a random one-label head (``CrossEncoder(minilm, num_labels=1)``, saved to a temp
   folder). Speed is that of a MiniLM-L6 cross-encoder (ms-marco-MiniLM-L6-v2's shape); the scores
   mean nothing, but both servers must give ``CrossEncoder.predict``'s, which is checked.
2. Our server and infinity-emb (its own venv, ``.bench/infinity-venv``, shared with
   benchmarks/embeddings.py) serve that folder in turn; ``--clients`` concurrent clients send
   requests of one query and ``--documents`` documents from ``benchmarks/corpus.py``. Pairs per
   second over the whole run, p50/p99 latency per request.
3. The LLM reranker: a random Qwen3ForCausalLM with Qwen3-Reranker-0.6B's body (28 layers, hidden
   1024, 16 heads, 8 KV heads) and all-MiniLM-L6-v2's WordPiece tokenizer plus Qwen3's chat tokens
   (its token counts are close to Qwen3's on this text), through our server only (infinity-emb does
   not run Qwen3-Reranker as published). ``--llm-shape tiny`` builds a 2-layer one instead, for a
   smoke run of the command in seconds (its figures mean nothing).

infinity-emb's venv is built when missing (``--no-build-infinity``: used only if already built);
where it cannot be had, its row is left out with the reason printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

# benchmarks/ is sys.path[0] when this file runs as a script; the tiny-model builders live with the tests.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

from corpus import build_corpus
from embeddings import (
    CpuMeter,
    Result,
    fmt,
    infinity_python,
    infinity_versions,
    machine_line,
    model_folder,
    wait_for_quiet,
)
from harness import child_env, run_main, running_server, serve_argv, write_docs
from model_zoo import QWEN3_SPECIAL_TOKENS, build_qwen3_reranker

DOCS_START = "<!-- benchmarks/rerank.py:start -->"
DOCS_END = "<!-- benchmarks/rerank.py:end -->"
CROSS_ENCODER = "minilm-cross-encoder"
GOAL_VS_INFINITY = 1.2
# Qwen3-Reranker-0.6B's config, less its 151k-token vocabulary.
QWEN3_0_6B_BODY = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
}


@dataclass(frozen=True)
class LlmShape:
    """The LLM reranker's body: its served name, what the docs call it, and its config (beyond
    the tokenizer's vocabulary); empty means model_zoo's tiny default."""

    name: str
    description: str
    config: dict[str, int]


LLM_SHAPES = {
    "0.6b": LlmShape("Qwen3-Reranker-0.6B-shape", "Qwen3-Reranker-0.6B's body", QWEN3_0_6B_BODY),
    "tiny": LlmShape("Qwen3-Reranker-tiny-shape", "a 2-layer, 64-wide Qwen3 body (a smoke run)", {}),
}


@dataclass
class Run:
    """One server's figures, its scores per request, and the tokens it read per pair (usage)."""

    result: Result
    scores: dict[int, np.ndarray]
    tokens_per_pair: float


@dataclass
class Load:
    clients: int
    documents: int
    requests: int
    quiet_wait_s: float
    # Untimed requests first: they load the model (ours loads on first use) and open connections.
    warmup: int = 4


def requests_of(corpus: list[str], queries: list[str], load: Load) -> list[tuple[str, list[str]]]:
    """Request i: query i (cycled) and the next ``load.documents`` corpus chunks (cycled)."""
    return [
        (
            queries[i % len(queries)],
            [corpus[(i * load.documents + j) % len(corpus)] for j in range(load.documents)],
        )
        for i in range(load.requests)
    ]


async def drive(
    base_url: str, model: str, work: list[tuple[str, list[str]]], load: Load, name: str, server_pid: int
) -> Run:
    """``load.clients`` tasks post the requests in turn, each request timed."""
    limits = httpx.Limits(max_connections=load.clients, max_keepalive_connections=load.clients)
    scores: dict[int, np.ndarray] = {}
    tokens: list[int] = []
    latencies: list[float] = []
    errors: list[str] = []
    pending = iter(range(len(work)))

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(600.0)) as client:

        async def post(query: str, documents: list[str]) -> np.ndarray:
            body = {"model": model, "query": query, "documents": documents}
            response = await client.post("/rerank", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            got = np.full(len(documents), np.nan)
            answer = response.json()
            tokens.append(int(answer.get("usage", {}).get("total_tokens", 0)))
            for result in answer["results"]:
                got[result["index"]] = result["relevance_score"]
            return got

        await asyncio.gather(*(post(q, d) for q, d in work[: load.warmup]))

        async def client_task() -> None:
            for index in pending:
                query, documents = work[index]
                sent = time.perf_counter()
                try:
                    scores[index] = await post(query, documents)
                except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)

        await wait_for_quiet(server_pid, load.quiet_wait_s)
        meter = CpuMeter(server_pid)
        started = time.perf_counter()
        await asyncio.gather(*(client_task() for _ in range(load.clients)))
        result = Result(
            name, len(scores) * load.documents, time.perf_counter() - started, latencies, len(errors)
        )
        meter.stop(result)
    if errors:
        print(f"  {len(errors)} requests to {name} failed; first: {errors[0]}", file=sys.stderr)
    return Run(result, scores, sum(tokens) / max(1, len(tokens) * load.documents))


def max_difference(scores: dict[int, np.ndarray], reference: dict[int, np.ndarray]) -> float:
    return max(float(np.abs(scores[i] - reference[i]).max()) for i in scores)


def report(result: Result, difference: float | None) -> None:
    print(
        f"  {result.name}: {result.per_second:.1f} pairs/s, p50 {fmt(result.percentile_ms(50))} ms, "
        f"p99 {fmt(result.percentile_ms(99))} ms, {fmt(result.cpu_ms_per_embedding, 1)} CPU ms/pair, "
        f"others' load {fmt(result.others_cores, 2)}, failed {result.errors}"
        + ("" if difference is None else f", max |score - predict| {difference:.1e}"),
        flush=True,
    )


def serve_and_drive(
    name: str,
    argv: list[str],
    port: int,
    log: Path,
    model: str,
    work: list[tuple[str, list[str]]],
    load: Load,
) -> Run:
    print(f"\n{name}", flush=True)
    with running_server(name, argv, port, log, child_env()) as server:
        return asyncio.run(drive(f"http://127.0.0.1:{port}", model, work, load, name, server.pid))


def table(rows: list[tuple[Result, float | None]], infinity: Result | None) -> str:
    lines = [
        "| | pairs/s | vs infinity-emb | p50 ms | p99 ms | CPU ms / pair | others' load (cores) "
        "| max abs diff vs `CrossEncoder.predict` | failed requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row, difference in rows:
        ratio = f"{row.per_second / infinity.per_second:.2f}" if infinity and infinity.per_second else "–"
        lines.append(
            f"| {row.name} | {fmt(row.per_second, 1)} | {ratio} | {fmt(row.percentile_ms(50))} "
            f"| {fmt(row.percentile_ms(99))} | {fmt(row.cpu_ms_per_embedding, 1)} "
            f"| {fmt(row.others_cores, 2)} | {'–' if difference is None else f'{difference:.1e}'} "
            f"| {row.errors} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--documents", type=int, default=16, help="documents per request (default 16)")
    parser.add_argument(
        "--requests", type=int, default=256, help="requests per cross-encoder run (default 256)"
    )
    parser.add_argument(
        "--llm-requests", type=int, default=8, help="requests to the LLM reranker (default 8)"
    )
    parser.add_argument(
        "--llm-documents", type=int, default=4, help="documents per LLM reranker request (default 4)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="both servers' largest batch (default 32)")
    parser.add_argument("--quiet-wait", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--skip-infinity", action="store_true")
    parser.add_argument(
        "--no-build-infinity",
        action="store_true",
        help="use infinity-emb only if its venv is already built (default: build it when missing)",
    )
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument(
        "--llm-shape",
        choices=sorted(LLM_SHAPES),
        default="0.6b",
        help="the LLM reranker's body (default 0.6b)",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="write the Rerank section of docs/benchmarks.md"
    )
    parser.add_argument("--port-base", type=int, default=18760)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = shlex.join([".venv/bin/python", "benchmarks/rerank.py", *sys.argv[1:]])
    load = Load(args.clients, args.documents, args.requests, args.quiet_wait)
    corpus = build_corpus(2048)
    queries = build_corpus(64, seed=7)
    work = requests_of(corpus, queries, load)
    scratch = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    models = scratch / "models"

    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    folder = models / CROSS_ENCODER
    CrossEncoder(str(model_folder()), num_labels=1, device="cpu").save(str(folder))
    reference_model = CrossEncoder(str(folder), device="cpu")
    reference = {
        i: np.asarray(reference_model.predict([(q, d) for d in docs], batch_size=args.documents))
        for i, (q, docs) in enumerate(work)
    }
    pair_tokens = [
        len(ids) for q, docs in work for ids in reference_model.tokenizer([q] * len(docs), docs)["input_ids"]
    ]
    del reference_model

    inf_python = None if args.skip_infinity else infinity_python(build=not args.no_build_infinity)
    our_flags = (
        "--models-dir",
        str(models),
        "--no-bundled-models",
        "--embedding-batch-size",
        str(args.batch_size),
    )
    ours_run = serve_and_drive(
        "our server (local-llm serve)",
        serve_argv(args.port_base, *our_flags),
        args.port_base,
        scratch / "ours.log",
        CROSS_ENCODER,
        work,
        load,
    )
    ours = ours_run.result
    rows = [(ours, max_difference(ours_run.scores, reference))]
    report(*rows[0])
    infinity: Result | None = None
    if inf_python is not None:
        port = args.port_base + 1
        infinity_argv = [
            str(inf_python.parent / "infinity_emb"), "v2", "--model-id", str(folder),
            "--served-model-name", CROSS_ENCODER, "--host", "127.0.0.1", "--port", str(port),
            "--engine", "torch", "--device", "cpu", "--batch-size", str(args.batch_size),
            "--no-vector-disk-cache", "--no-bettertransformer", "--no-compile",
        ]  # fmt: skip
        infinity_run = serve_and_drive(
            "infinity-emb", infinity_argv, port, scratch / "infinity.log", CROSS_ENCODER, work, load
        )
        infinity = infinity_run.result
        rows.append((infinity, max_difference(infinity_run.scores, reference)))
        report(*rows[-1])

    llm: Run | None = None
    shape = LLM_SHAPES[args.llm_shape]
    if not args.skip_llm:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_folder()))
        tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN3_SPECIAL_TOKENS)})
        build_qwen3_reranker(models / shape.name, tokenizer, **shape.config)
        llm_load = Load(
            min(args.clients, args.llm_requests), args.llm_documents, args.llm_requests, args.quiet_wait, 1
        )
        llm_work = requests_of(corpus, queries, llm_load)
        port = args.port_base + 2
        llm_argv = serve_argv(port, *our_flags)
        llm = serve_and_drive(
            "our server, LLM reranker", llm_argv, port, scratch / "llm.log", shape.name, llm_work, llm_load
        )
        report(llm.result, None)

    table_md = table(rows, infinity)
    verdict = ""
    if infinity is not None:
        ratio = ours.per_second / infinity.per_second
        met = "met" if ratio >= GOAL_VS_INFINITY else "NOT met"
        verdict = f"ours / infinity-emb = {ratio:.2f} (goal ≥ {GOAL_VS_INFINITY}: {met})"
    machine = machine_line(infinity_versions(inf_python) if inf_python else None)
    llm_line = (
        f"LLM reranker ({shape.name}: {shape.description}, random weights, float32, "
        f"{llm_load.clients} concurrent clients × {args.llm_documents} documents, "
        f"{args.llm_requests} requests): "
        f"{llm.result.per_second:.2f} pairs/s, p50 {fmt(llm.result.percentile_ms(50))} ms, "
        f"p99 {fmt(llm.result.percentile_ms(99))} ms, {fmt(llm.result.cpu_ms_per_embedding)} CPU ms/pair; "
        f"prompts of {llm.tokens_per_pair:.0f} tokens on average, template included."
        if llm is not None
        else ""
    )
    print("\n" + table_md + "\n\n" + verdict + "\n" + llm_line + f"\n\nmachine: {machine}\nlogs: {scratch}")
    workload = (
        f"{args.requests} requests of one query and {args.documents} RAG-style chunks from "
        f"`benchmarks/corpus.py` (English, Chinese, mixed; pairs of {min(pair_tokens)}–{max(pair_tokens)} "
        f"tokens, median {np.median(pair_tokens):.0f}), {args.clients} concurrent clients; "
        f"both servers batch up to {args.batch_size} pairs"
    )
    if args.write_docs:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        section = "\n".join(
            [
                DOCS_START,
                "## Rerank",
                "",
                f"Measured {stamp} by `benchmarks/rerank.py` (this section is rewritten by `--write-docs`).",
                "",
                f"- Machine: {machine}.",
                f"- Workload: {workload}.",
                "- Model: all-MiniLM-L6-v2 with a random one-label head, saved as a sentence-transformers "
                "CrossEncoder (no real cross-encoder can be had here): the speed of a MiniLM-L6 "
                "cross-encoder such as ms-marco-MiniLM-L6-v2, float32 on the CPU; the scores mean nothing, "
                "but must equal `CrossEncoder.predict`'s (last column).",
                f"- Command: `flock /tmp/llm-bench.lock {command}`",
                "",
                table_md,
                "",
                verdict + ("." if verdict else ""),
                "",
                llm_line,
                DOCS_END,
            ]
        )
        write_docs(section, DOCS_START, DOCS_END)
    return 0


if __name__ == "__main__":
    run_main(main)
