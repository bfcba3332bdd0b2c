"""Swapping models under a memory budget: cold loads, parks, wakes, peak memory, mixed load.

Starts our server on ``--models-dir`` with a budget (``--gpu-budget-gb`` on a GPU, ``--ram-budget-gb``
on a CPU), then
1. visits the models in turn, ``--rounds`` times, so each visit forces a swap: the first visit is a
   cold load, later ones find the model parked (GPU) or unloaded (CPU). Per model it reports the
   server's own load / park / wake times (/v1/models) and the cold-load-to-wake ratio;
2. sends ``--mixed-s`` seconds of concurrent requests to random models and counts failures, while
   a sampler records the device's peak memory (NVML on a GPU: the whole device, less what was in use
   before the server started; process-tree RSS on a CPU) and the ledger's peak (/admin/memory);
3. measures every chat model's generation speed at ``--speed-streams`` concurrent streams (tokens/s
   of all streams together, ``--speed-tokens`` each, ignore_eos), once the model is awake.

``--bare-wake MODEL`` first measures the anchors on that chat model with bare vLLM (offline ``LLM``,
compiled, sleep mode, in a process of its own): sleep, wake, wake + the same 8-token request the visits
send, and generation speed at the same stream counts.

    python benchmarks/swap.py --models-dir /tmp/swap-models --gpu-budget-gb 8 --docs-key gpu --write-docs

The RAM budget. ``LLM_AVAILABLE_RAM_GB`` is now the budget of the server's whole process tree: what
the server itself holds (its Python, torch, sentence-transformers and vLLM's front end: about 1.5 GiB
on a CPU, reported as ``server_overhead_bytes`` by /admin/memory) counts against it, and models get
the rest. When the CPU figures in docs/benchmarks.md were measured it was the models' alone (2.8 GiB:
SmolLM2's 2,513 MiB fits, with MiniLM's 407 MiB it does not). So ``--ram-budget-gb`` stays what models
may hold, the figure /admin/memory shows as the RAM budget and the table reports, and the benchmark
adds the server's own footprint to it: a calibration start (no budget) loads each model of
``--order`` once, unloads it, and measures what the server then holds; the measured server is
started with ``--available-ram-gb`` = that + ``--ram-budget-gb``. ``--ram-budget-gb one`` computes
the models' share from the same start: the largest model's need plus half the smallest's, so every
visit to another model is a swap on any machine.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from local_llm.placement.probe import process_tree_rss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    MIB,
    PROMPT,
    calibrate,
    cards,
    child_env,
    cpu_model,
    ram_gib,
    request_for,
    running_server,
    serve_argv,
    version,
    vllm_version,
    write_docs,
)


@dataclass
class Sampler:
    """Peak memory, sampled every 50 ms on a thread: the GPU's used bytes, or the server tree's RSS."""

    server_pid: int
    gpu: bool
    baseline: int = 0
    peak: int = 0
    # When the peak was seen, and what each process held on the GPU then: what explains a peak over the
    # budget (an engine still exiting beside the next load, a load's transient, the server's own).
    peak_at: str = ""
    peak_holders: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.baseline = self._read() if self.gpu else 0

    def _read(self) -> int:
        if self.gpu:
            import pynvml

            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        return process_tree_rss(self.server_pid)

    def run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(Exception):
                reading = self._read() - self.baseline
                if reading > self.peak:
                    self.peak, self.peak_at = reading, time.strftime("%H:%M:%S")
                    self.peak_holders = self._holders() if self.gpu else ""

    @staticmethod
    def _holders() -> str:
        """``pid 123 (VLLM::EngineCore) 6,666 MiB, ...``: each process's memory on the GPU now."""
        import psutil
        import pynvml

        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        held = []
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            name = "?"
            with contextlib.suppress(psutil.Error):
                name = psutil.Process(process.pid).name()
            held.append(f"pid {process.pid} ({name}) {(process.usedGpuMemory or 0) / MIB:,.0f} MiB")
        return ", ".join(held)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Visits:
    cold: dict[str, float] = field(default_factory=dict)
    park: dict[str, list[float]] = field(default_factory=dict)
    wake: dict[str, list[float]] = field(default_factory=dict)
    # Seconds from sending a request to a parked model to its answer (8 tokens), as the client sees it.
    wake_request: dict[str, list[float]] = field(default_factory=dict)
    reload: dict[str, list[float]] = field(default_factory=dict)


def visit_in_turn(client: httpx.Client, names: list[str], rounds: int) -> Visits:
    """Each model in turn: every visit evicts (parks or unloads) the one before when the budget is tight."""
    visits = Visits()
    for _ in range(rounds):
        for name in names:
            before = cards(client)
            state = before[name]["state"]
            path, body = request_for(before[name])
            response = client.post(path, json=body)
            response.raise_for_status()
            after = cards(client)
            card = after[name]
            if name not in visits.cold:
                visits.cold[name] = card["load_seconds"]
            elif state == "parked":
                visits.wake.setdefault(name, []).append(card["wake_seconds"])
                visits.wake_request.setdefault(name, []).append(response.elapsed.total_seconds())
            elif state != "loaded":
                visits.reload.setdefault(name, []).append(card["load_seconds"])
            for other, other_card in after.items():
                if before[other]["state"] == "loaded" and other_card["state"] == "parked":
                    visits.park.setdefault(other, []).append(other_card["park_seconds"])
            print(f"  {name}: was {state}, {response.elapsed.total_seconds():.2f}s", flush=True)
    return visits


def generation_speed(base_url: str, card: dict[str, Any], streams: int, tokens: int) -> float:
    """Tokens/s of ``streams`` concurrent requests of ``tokens`` each (ignore_eos), all together; the
    model is asked once first, so a swap is not timed."""
    path, body = request_for(card, max_tokens=tokens)
    with httpx.Client(base_url=base_url, timeout=900) as client:
        client.post(path, json=request_for(card)[1]).raise_for_status()
    generated: list[int] = []

    def one() -> None:
        with httpx.Client(base_url=base_url, timeout=900) as client:
            answer = client.post(path, json=body)
            answer.raise_for_status()
            generated.append(answer.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=one) for _ in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(generated) / (time.perf_counter() - started)


def mixed_load(base_url: str, names: list[str], seconds: float, workers: int) -> tuple[int, int, list[str]]:
    """``workers`` clients sending requests to random models for ``seconds``; (ok, failed, errors)."""
    ok = failed = 0
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> None:
        nonlocal ok, failed
        rng = random.Random(seed)
        with httpx.Client(base_url=base_url, timeout=900) as client:
            all_cards = cards(client)
            while time.monotonic() < deadline:
                path, body = request_for(all_cards[rng.choice(names)])
                try:
                    response = client.post(path, json=body)
                    good = response.status_code == 200
                    detail = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    good, detail = False, repr(exc)
                with lock:
                    if good:
                        ok += 1
                    else:
                        failed += 1
                        errors.append(detail)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ok, failed, errors


def ledger_peak(base_url: str, stop: threading.Event, peaks: dict[str, int]) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while not stop.wait(0.2):
            with contextlib.suppress(Exception):
                memory = client.get("/admin/memory").json()
                for device in ("ram", "gpu"):
                    if memory.get(device):
                        peaks[device] = max(peaks.get(device, 0), memory[device]["reserved_bytes"])
                        peaks[f"{device}_budget"] = memory[device]["budget_bytes"]


def median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None else "–"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, help="Default: the bundled models (MiniLM, SmolLM2)")
    parser.add_argument("--gpu-budget-gb", type=float)
    parser.add_argument(
        "--ram-budget-gb",
        type=ram_budget,
        help="RAM the models may hold, GiB (the server's own measured footprint is added), or `one`: "
        "room for the largest model alone",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mixed-s", type=float, default=60)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--speed-tokens", type=int, default=128, help="Tokens a speed stream generates")
    parser.add_argument(
        "--speed-streams", default="1", help="Comma-separated concurrent streams of the chat speed runs"
    )
    parser.add_argument("--log-copy", type=Path, help="Copy the server's log here when it stops")
    parser.add_argument("--port", type=int, default=15580)
    parser.add_argument(
        "--order", help="Comma-separated models to visit in this order (default: all, sorted)"
    )
    parser.add_argument(
        "--mixed-models", help="Comma-separated models of the mixed load (default: --order's)"
    )
    parser.add_argument("--server-arg", action="append", default=[], help="Extra flag for local-llm serve")
    parser.add_argument(
        "--bare-wake",
        type=Path,
        help="A chat model folder: bare vLLM's sleep / wake + first request on it, the anchor of our wakes",
    )
    parser.add_argument("--bare-wake-run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--docs-key", choices=["cpu", "gpu", "seed"])
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.bare_wake_run:
        bare_wake_run(args.bare_wake_run, [int(n) for n in args.speed_streams.split(",")], args.speed_tokens)
        return
    streams = [int(n) for n in args.speed_streams.split(",")]
    bare = bare_wake(args.bare_wake, streams, args.speed_tokens) if args.bare_wake else None

    gpu = args.gpu_budget_gb is not None
    env = child_env()
    flags: list[str] = []
    if args.models_dir:
        flags += ["--models-dir", str(args.models_dir), "--no-bundled-models"]
    flags += args.server_arg
    if gpu:
        flags += ["--available-gpu-memory-gb", str(args.gpu_budget_gb)]
        import pynvml

        pynvml.nvmlInit()
    log_path = Path("/tmp") / f"swap-bench-{args.port}.log"
    overhead_line = ""
    if args.ram_budget_gb is not None:
        order = args.order.split(",") if args.order else None
        calibration = calibrate(flags, log_path.with_suffix(".calibration.log"), env, order)
        models_share = (
            calibration.one_at_a_time() if args.ram_budget_gb == "one" else int(args.ram_budget_gb * 2**30)
        )
        tree_budget = calibration.overhead_bytes + models_share
        flags += ["--available-ram-gb", f"{tree_budget / 2**30:.3f}"]
        overhead_line = (
            f"- LLM_AVAILABLE_RAM_GB (the whole process tree): {tree_budget / MIB:,.0f} MiB, the models' "
            f"{models_share / MIB:,.0f} MiB plus the server's own "
            f"{calibration.overhead_bytes / MIB:,.0f} MiB (measured by a calibration start that loaded "
            "each model once)."
        )
        print(overhead_line.removeprefix("- "), flush=True)
    argv = serve_argv(args.port, *flags)
    base_url = f"http://127.0.0.1:{args.port}"
    sampler: Sampler | None = None
    with running_server("local-llm", argv, args.port, log_path, env) as process:
        sampler = Sampler(process.pid, gpu)
        threading.Thread(target=sampler.run, daemon=True).start()
        stop_ledger = threading.Event()
        peaks: dict[str, int] = {}
        threading.Thread(target=ledger_peak, args=(base_url, stop_ledger, peaks), daemon=True).start()
        with httpx.Client(base_url=base_url, timeout=1800) as client:
            names = args.order.split(",") if args.order else sorted(cards(client))
            print(f"visiting {names} x{args.rounds}", flush=True)
            visits = visit_in_turn(client, names, args.rounds)
            mixed = args.mixed_models.split(",") if args.mixed_models else sorted(set(names))
            print(f"mixed load on {mixed} for {args.mixed_s:.0f}s with {args.workers} clients", flush=True)
            ok, failed, errors = mixed_load(base_url, mixed, args.mixed_s, args.workers)
            chat = [n for n in dict.fromkeys(names) if cards(client)[n]["type"] == "chat"]
            speeds = {
                name: {
                    n: generation_speed(base_url, cards(client)[name], n, args.speed_tokens) for n in streams
                }
                for name in chat
            }
            final = cards(client)
        stop_ledger.set()
        sampler.stop()
    if args.log_copy:
        shutil.copy(log_path, args.log_copy)

    device = "GPU " + _gpu_name() if gpu else f"CPU {cpu_model()}, {ram_gib():.0f} GiB RAM"
    rows = [
        "| Model | Type | Placement | Estimated MiB | Measured MiB | Cold load s | Park s | Wake s | "
        "Reload s | Cold load / wake |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(names):
        card = final[name]
        wake = median(visits.wake.get(name))
        cold = visits.cold.get(name)
        ratio = f"{cold / wake:.0f}x" if cold and wake else "–"
        measured = card.get("measured_bytes")
        rows.append(
            f"| {name} | {card['type']} | {card.get('placement') or '–'} | "
            f"{card['estimated_bytes'] / MIB:,.0f} | {fmt(measured / MIB if measured else None, 0)} | "
            f"{fmt(cold)} | {fmt(median(visits.park.get(name)))} | {fmt(wake)} | "
            f"{fmt(median(visits.reload.get(name)))} | {ratio} |"
        )
    budget_key = "gpu" if gpu else "ram"
    budget = peaks.get(f"{budget_key}_budget", 0)
    summary = [
        f"- Machine: {device}; vLLM {vllm_version()}, torch {version('torch')}.",
        f"- Budget: {budget / MIB:,.0f} MiB of {'GPU memory' if gpu else 'RAM'}; ledger peak "
        f"{peaks.get(budget_key, 0) / MIB:,.0f} MiB; measured peak "
        f"{(sampler.peak if sampler else 0) / MIB:,.0f} MiB "
        + (
            "(NVML, whole device less what was used before the server started)."
            if gpu
            else "(RSS of the server's process tree, its code and libraries included)."
        ),
        *([overhead_line] if overhead_line else []),
        *(
            [f"- At the measured peak ({sampler.peak_at}) the GPU held: {sampler.peak_holders}."]
            if sampler and sampler.peak_holders
            else []
        ),
        f"- Visits in this order: {', '.join(names)} (x{args.rounds}).",
        f"- Mixed load on {', '.join(mixed)}: {args.workers} clients, {args.mixed_s:.0f} s, "
        f"a random model per request: {ok} answered, {failed} failed.",
    ]
    for name, requests in visits.wake_request.items():
        line = (
            f"- {name}: a request to it parked was answered (8 tokens) in {fmt(median(requests))} s, "
            f"its wake {fmt(median(visits.wake.get(name)))} s of that"
        )
        answered = median(requests)
        if bare and answered and final[name]["type"] == "chat":
            anchor = bare["wake_and_first_request_s"]
            line += (
                f"; bare vLLM on {args.bare_wake.name}: sleep {bare['sleep_s']:.2f} s, wake "
                f"{bare['wake_s']:.2f} s, wake + the same request {anchor:.2f} s "
                f"(ours / bare = {answered / anchor:.2f}x)"
            )
        summary.append(line + ".")
    for name, by_streams in speeds.items():
        shown = []
        for n, speed in by_streams.items():
            figure = f"{speed:,.0f} tokens/s at {n} stream{'s' if n > 1 else ''}"
            anchor = (bare or {}).get(f"tokens_per_s_{n}") if final[name]["type"] == "chat" else None
            if anchor and args.bare_wake and args.bare_wake.name == name:
                figure += f" (bare vLLM {anchor:,.0f}: {speed / anchor:.2f}x)"
            shown.append(figure)
        summary.append(
            f"- {name} ({final[name].get('placement')}, context {final[name].get('max_model_len') or '–'}): "
            f"{'; '.join(shown)}; {args.speed_tokens} tokens a stream."
        )
    table = "\n".join([*rows, "", *summary])
    print(table)
    for error in errors[:5]:
        print("  error:", error)
    if args.write_docs and args.docs_key:
        start, end = f"<!-- swap:{args.docs_key}:start -->", f"<!-- swap:{args.docs_key}:end -->"
        command = (
            "python benchmarks/"
            + " ".join(sys.argv[0:1]).split("benchmarks/")[-1]
            + " "
            + " ".join(a for a in sys.argv[1:] if a != "--write-docs")
        )
        write_docs(f"{start}\n`{command}`\n\n{table}\n{end}", start, end)


def bare_wake(model: Path, streams: list[int], tokens: int) -> dict[str, float]:
    """Bare vLLM's figures on ``model``, in a process of its own (its GPU memory goes with it)."""
    import json
    import subprocess

    command = [sys.executable, __file__, "--bare-wake-run", str(model)]
    command += ["--speed-streams", ",".join(map(str, streams)), "--speed-tokens", str(tokens)]
    print(f"bare vLLM sleep / wake on {model.name}", flush=True)
    finished = subprocess.run(command, capture_output=True, text=True, check=False, env=child_env())
    if finished.returncode != 0:
        raise RuntimeError(f"the bare vLLM anchor failed:\n{finished.stderr[-4000:]}")
    (line,) = [line for line in finished.stdout.splitlines() if line.startswith("bare-wake: ")]
    figures: dict[str, float] = json.loads(line.removeprefix("bare-wake: "))
    print(f"  bare vLLM: {figures}", flush=True)
    return figures


def bare_wake_run(model: Path, streams: list[int], tokens: int) -> None:
    """Offline vLLM, compiled, with sleep mode: sleep (level 1), wake, and answer what our visits ask
    (8 tokens of the same prompt), three times, the last after 5 s asleep (as a parked model waits);
    medians. Then generation speed: ``n`` prompts of ``tokens`` each, for each ``n`` of ``streams``."""
    import json

    from vllm import LLM, SamplingParams

    # A KV cache of 1 GiB, as a model gets on an 8 GB card (a larger one is more memory to map back).
    llm = LLM(
        model=str(model),
        enable_sleep_mode=True,
        gpu_memory_utilization=0.5,
        kv_cache_memory_bytes=1024**3,
        max_model_len=4096,
    )
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    messages = [{"role": "user", "content": PROMPT}]
    llm.chat(messages, params, use_tqdm=False)
    sleeps, wakes, firsts = [], [], []
    for asleep_s in (0, 0, 5):
        started = time.perf_counter()
        llm.sleep(level=1)
        slept = time.perf_counter()
        time.sleep(asleep_s)
        waking = time.perf_counter()
        llm.wake_up()
        woken = time.perf_counter()
        llm.chat(messages, params, use_tqdm=False)
        sleeps.append(slept - started)
        wakes.append(woken - waking)
        firsts.append(time.perf_counter() - waking)
    figures = {"sleep_s": median(sleeps), "wake_s": median(wakes), "wake_and_first_request_s": median(firsts)}
    figures["wake_after_5s_asleep_s"] = wakes[-1]
    long = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    for n in streams:
        started = time.perf_counter()
        outputs = llm.chat([messages] * n, long, use_tqdm=False)
        generated = sum(len(o.outputs[0].token_ids) for o in outputs)
        figures[f"tokens_per_s_{n}"] = generated / (time.perf_counter() - started)
    print("bare-wake: " + json.dumps(figures), flush=True)


def ram_budget(value: str) -> float | str:
    """``--ram-budget-gb``: GiB for the models, or ``one`` (computed by the calibration start)."""
    if value == "one":
        return value
    try:
        gib = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of GiB, nor `one`: {value!r}") from None
    if gib <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return gib


def _gpu_name() -> str:
    import pynvml

    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    return name.decode() if isinstance(name, bytes) else str(name)


if __name__ == "__main__":
    main()
