"""Every benchmark under benchmarks/ still runs the way docs/benchmarks.md says to run it.

Why: the benchmarks start real servers with real flags, and nothing else notices when a flag goes
away or a setting changes its meaning (chat.py passed a ``--gpu-memory-utilization`` that ``local-llm
serve`` no longer has; LLM_AVAILABLE_RAM_GB came to count the server's own footprint). So each test
runs one script as a subprocess, as its documented command does, with tiny inputs: tiny random models
from tests/model_zoo.py (or the bundled MiniLM, which loads in a second), a couple of requests, short
durations. It checks that the script exits 0, prints its table, and that the table says what makes
the run mean something (no failed request, vectors and scores equal to the reference, a swap that
happened, a fault that was injected and recovered from). No timing is asserted.

What cannot run here, without a GPU: ``embeddings_gpu.py`` (it encodes on ``cuda``),
``vllm_memory_probe.py`` (NVML and a GPU vLLM), ``swap_models.py`` (it builds 7B-shaped models for the
GPU run), and the ``--gpu`` / ``--gpu-budget-gb`` modes of chat.py and swap.py. Those scripts get
``--help``, which imports everything they import at the top, and the names the probe imports later
are checked to exist; chat.py and swap.py run their CPU paths. Competitor anchors that are not
installed (infinity-emb's venv) are skipped by the benchmarks themselves, which say so: the tests
accept that message or the anchor's row.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CHAT_ARGS, DATA_DIR, free_port
from model_zoo import chat_tokenizer_source

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
# A benchmark that has not finished by then is stuck; the test fails instead of hanging the suite.
RUN_TIMEOUT_S = 600
# The tests' vLLM settings (eager, a small KV cache), for the benchmarks that take extra server flags.
SERVER_ARGS = [f"--server-arg={token}" for token in CHAT_ARGS]  # each token in order: flag, value
INFINITY_SKIPPED = "infinity-emb skipped:"


def run_benchmark(script: str, *args: str) -> str:
    """``python benchmarks/SCRIPT ARGS`` from the repository root; its output, once it exited 0."""
    finished = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, f"{script} exited {finished.returncode}:\n{output[-6000:]}"
    return output


def table_rows(output: str, header_start: str) -> list[list[str]]:
    """The cells of each row of the markdown table whose header begins with ``header_start``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def chat_and_minilm(zoo: Path, minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder of a tiny chat model and the bundled MiniLM under its own name: the soak's and
    the swap benchmark's default pair, with a chat model that starts in seconds."""
    folder = tmp_path_factory.mktemp("bench-models")
    (folder / "tiny-chat").symlink_to(zoo / "tiny-chat", target_is_directory=True)
    (folder / "all-MiniLM-L6-v2").symlink_to(minilm_path, target_is_directory=True)
    return folder


def test_chat_benchmark_compares_our_server_with_bare_vllm(zoo: Path) -> None:
    """docs: ``python benchmarks/chat.py --requests-per-client 6 --write-docs`` (here without
    --write-docs, on the tiny chat model, eager, two concurrencies of one request each)."""
    port = free_port()
    output = run_benchmark(
        "chat.py", "--model-dir", str(zoo / "tiny-chat"), "--eager", "--concurrency", "1,2",
        "--requests-per-client", "1", "--max-tokens", "8", "--max-model-len", "512",
        "--kv-cache-gb", "0.25", "--port-base", str(port),
    )  # fmt: skip
    rows = table_rows(output, "| streams | server |")
    assert [(row[0], row[1]) for row in rows] == [("1", "vllm"), ("1", "ours"), ("2", "vllm"), ("2", "ours")]
    assert [row[-1] for row in rows] == ["1 (0 failed)", "1 (0 failed)", "2 (0 failed)", "2 (0 failed)"]
    assert all(float(row[2]) > 0 for row in rows), rows  # tokens streamed by both servers
    assert "stream(s):" in output


def test_embeddings_benchmark_matches_raw_encode_through_our_server() -> None:
    """docs: ``.venv/bin/python benchmarks/embeddings.py --write-docs`` (here a 48-text corpus, two
    clients, one batch size, no waiting for a quiet machine, infinity-emb only if already built)."""
    output = run_benchmark(
        "embeddings.py", "--corpus-size", "48", "--clients", "2", "--inputs-per-request", "4",
        "--batch-sizes", "16", "--quiet-wait", "0", "--no-build-infinity", "--port-base", str(free_port()),
    )  # fmt: skip
    rows = {row[0]: row for row in table_rows(output, "| | embeddings/s |")}
    ours = rows["our server (local-llm serve)"]
    assert ours[-1] == "0", ours  # no failed request
    assert ours[-2] == "1.00000", ours  # every vector is the one SentenceTransformer.encode gives
    assert "infinity-emb" in rows or INFINITY_SKIPPED in output
    assert "ours / raw =" in output


def test_rerank_benchmark_scores_as_cross_encoder_predict_and_runs_the_llm_reranker() -> None:
    """docs: ``flock /tmp/llm-bench.lock .venv/bin/python benchmarks/rerank.py --quiet-wait 180
    --write-docs`` (here four requests of four documents, and a tiny LLM reranker)."""
    output = run_benchmark(
        "rerank.py", "--clients", "2", "--documents", "4", "--requests", "4", "--llm-requests", "1",
        "--llm-documents", "2", "--llm-shape", "tiny", "--quiet-wait", "0", "--no-build-infinity",
        "--port-base", str(free_port()),
    )  # fmt: skip
    rows = {row[0]: row for row in table_rows(output, "| | pairs/s |")}
    ours = rows["our server (local-llm serve)"]
    assert ours[-1] == "0", ours  # no failed request
    assert float(ours[-2]) < 1e-5, ours  # scores equal CrossEncoder.predict's
    assert "infinity-emb" in rows or INFINITY_SKIPPED in output
    assert re.search(r"LLM reranker \(Qwen3-Reranker-tiny-shape: .*\): [\d.]+ pairs/s", output), output[
        -3000:
    ]


def test_swap_benchmark_swaps_under_a_budget_that_holds_one_model(chat_and_minilm: Path) -> None:
    """docs (CPU): ``python benchmarks/swap.py --ram-budget-gb 2.8 --rounds 2 --order
    SmolLM2-135M-Instruct,all-MiniLM-L6-v2 ...`` (here the tiny chat model, one round of visits that
    must swap it out and in, 3 s of mixed load on MiniLM alone, and ``--ram-budget-gb one``, which the
    same calibration start computes for these models)."""
    output = run_benchmark(
        "swap.py", "--models-dir", str(chat_and_minilm), "--ram-budget-gb", "one", "--rounds", "1",
        "--order", "tiny-chat,all-MiniLM-L6-v2,tiny-chat", "--mixed-models", "all-MiniLM-L6-v2",
        "--mixed-s", "3", "--workers", "2",
        "--port", str(free_port()), f"--server-arg=--data-dir={DATA_DIR}", *SERVER_ARGS,
    )  # fmt: skip
    rows = {row[0]: row for row in table_rows(output, "| Model | Type |")}
    assert set(rows) == {"tiny-chat", "all-MiniLM-L6-v2"}
    reload_s = rows["tiny-chat"][8]
    assert reload_s != "–", f"the chat model was never swapped out and loaded again: {rows['tiny-chat']}"
    assert re.search(r"LLM_AVAILABLE_RAM_GB \(the whole process tree\): [\d,]+ MiB", output)
    mixed = re.search(r"a random model per request: (\d+) answered, (\d+) failed", output)
    assert mixed, output[-3000:]
    assert int(mixed[1]) > 0
    assert mixed[2] == "0"


def test_soak_benchmark_survives_an_engine_kill_and_dropped_clients(chat_and_minilm: Path) -> None:
    """docs: ``.venv/bin/python benchmarks/soak.py --write-docs`` (here the tiny chat model beside
    MiniLM, 40 s of load with one fault at 20 s, answers of 400 tokens so that the kill finds a stream
    flowing, a calibrated budget as by default)."""
    output = run_benchmark(
        "soak.py", "--models-dir", str(chat_and_minilm), "--chat-model", "tiny-chat",
        "--duration-s", "40", "--fault-every-s", "20", "--chat-tokens", "400", "--hang-timeout-s", "180",
        "--data-dir", str(DATA_DIR), "--port", str(free_port()), *SERVER_ARGS,
    )  # fmt: skip
    rows = {row[0]: row for row in table_rows(output, "| requests | answered |")}
    assert set(rows) == {"chat streams", "embeddings", "rerank", "all"}
    header = ["answered", "cut by a fault", "dropped", "failed", "hung", "all"]
    total = dict(zip(header, (int(cell) for cell in rows["all"][1:]), strict=True))
    assert total["failed"] == 0
    assert total["hung"] == 0
    assert total["dropped"] == 2  # one client gone mid-stream, one mid-embedding
    assert all(int(rows[kind][1]) > 0 for kind in ("chat streams", "embeddings", "rerank")), rows
    assert re.search(r"budget: LLM_AVAILABLE_RAM_GB = [\d.]+ GiB \(the server's own", output)
    assert "1 engine kills (SIGKILL to VLLM::EngineCore), 1 recovered" in output
    flowing = re.search(r"fault: SIGKILL to the engine core \(pid \d+\), (\d+) stream\(s\) flowing", output)
    assert flowing, output[-3000:]
    if int(flowing[1]):  # a stream the kill cut ended with engine_failed, then data: [DONE]
        assert total["cut by a fault"] >= 1, rows
    assert "requests in flight at the end: none" in output


def test_random_chat_model_builds_a_model_of_the_shape_asked_for(tmp_path: Path, zoo: Path) -> None:
    """docs: ``python benchmarks/random_chat_model.py --shape qwen2.5-0.5b --tokenizer DIR --out
    /tmp/q05`` (here the two-layer shape, with the imported SmolLM2's tokenizer)."""
    out = tmp_path / "random-chat"
    tokenizer = chat_tokenizer_source(DATA_DIR)
    output = run_benchmark(
        "random_chat_model.py", "--shape", "tiny", "--tokenizer", str(tokenizer), "--out", str(out)
    )
    assert "parameters written to" in output
    config = json.loads((out / "config.json").read_text())
    assert (config["architectures"], config["num_hidden_layers"]) == (["Qwen2ForCausalLM"], 2)
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()


def test_pooling_benchmark_runs_its_anchors_and_checks_our_answers_against_vllm_offline() -> None:
    """pooling_gpu.py's CPU smoke run: a 2-layer Qwen3 body, vLLM offline and its own server, ours; the
    answers of every server agree with vLLM offline's (on a CPU ours serves these models in process)."""
    output = run_benchmark("pooling_gpu.py", "--smoke", "--passages", "128")
    for anchor in ("vLLM offline LLM.encode (classify)", "vLLM offline LLM.embed", "vLLM's server"):
        assert f"| {anchor} |" in output
    assert re.search(r"\| ours \(vLLM pooling\) \| [\d,]+ \| [\d.]+x \| \d+ \| \d+ \| 0 \| cos 0\.99", output)
    scores = [float(d) for d in re.findall(r"max \|score diff\| ([\d.]+)", output)]
    assert len(scores) == 2
    assert max(scores) < 0.01


@pytest.mark.parametrize(
    "script", ["embeddings_gpu.py", "swap_models.py", "vllm_memory_probe.py", "park_copy.py"]
)
def test_gpu_only_benchmarks_import_and_explain_themselves(script: str) -> None:
    """GPU only (see the module's docstring): ``--help`` imports what the script imports at its top
    and parses its command line."""
    output = run_benchmark(script, "--help")
    assert output.startswith("usage: "), output[-3000:]


def test_the_memory_probe_imports_names_vllm_still_has() -> None:
    """vllm_memory_probe.py imports vLLM and NVML only once its arguments are parsed: those names."""
    finished = subprocess.run(
        [sys.executable, "-c", "import pynvml; from vllm import LLM, SamplingParams"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
