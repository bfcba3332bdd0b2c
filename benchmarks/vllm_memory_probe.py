"""What bare vLLM holds on the GPU for given engine arguments: settled after its start, and its peak.

No server: one ``LLM(...)`` per configuration, each in a process of its own, with NVML read every 10 ms
on a thread (the whole device, less what was in use before). It prints the peak during the start, what
stayed once started, and a timeline of the steps, so a transient (weights repacked at load,
torch.compile's warm-up) shows where it falls against vLLM's own log lines.

Found with it on an H100 (vLLM 0.26): with ``cpu_offload_gb=10`` a 7B-shaped model held 17,093 MiB under the
V2 model runner (the offloader is never installed) and 6,691 MiB with ``VLLM_USE_V2_MODEL_RUNNER=0``, which
the server therefore sets (src/local_llm/engines/vllm_environment.py).

    python benchmarks/vllm_memory_probe.py /tmp/swap-models/Qwen2.5-7B-Instruct '{"cpu_offload_gb": 10}'
    python benchmarks/vllm_memory_probe.py FOLDER '{"env": {"VLLM_USE_V2_MODEL_RUNNER": "0"}}' '{...}'

Each configuration is ``LLM(...)``'s keyword arguments as JSON over these defaults: enforce_eager,
a 1.5 GiB KV cache, a 4,096-token context, gpu_memory_utilization 0.3; its ``env`` key sets variables for
that run's process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

MIB = 2**20
DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,
    "kv_cache_memory_bytes": int(1.5 * 2**30),
    "max_model_len": 4096,
    "gpu_memory_utilization": 0.3,
}
# A timeline step: the use moved this far from the last one shown.
STEP_BYTES = 192 * MIB
# vLLM's log lines that mark the start's phases, shown beside the timeline.
PHASES = (
    "Starting to load model",
    "Model loading took",
    "Dynamo bytecode transform",
    "torch.compile and initial",
    "GPU KV cache size",
    "Graph capturing finished",
    "init engine",
)


class Sampler(threading.Thread):
    """The device's used bytes every 10 ms, less the baseline: the peak and the steps between."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import pynvml

        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.t0 = time.perf_counter()
        self.baseline = self.read(raw=True)
        self.peak, self.peak_s = 0, 0.0
        self.steps: list[tuple[float, int]] = [(0.0, 0)]
        self._stop = threading.Event()

    def read(self, *, raw: bool = False) -> int:
        import pynvml

        used = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        return used if raw else used - self.baseline

    def run(self) -> None:
        while not self._stop.wait(0.01):
            used, at = self.read(), time.perf_counter() - self.t0
            if used > self.peak:
                self.peak, self.peak_s = used, at
            if abs(used - self.steps[-1][1]) >= STEP_BYTES:
                self.steps.append((at, used))

    def stop(self) -> None:
        self._stop.set()
        self.join()


def measure(folder: str, config: dict[str, Any]) -> dict[str, Any]:
    """One start of bare vLLM (in this process), then 32 tokens: what it held and how fast it was."""
    from vllm import LLM, SamplingParams

    sampler = Sampler()
    sampler.start()
    clock = time.strftime("%H:%M:%S")
    llm = LLM(model=folder, **{**DEFAULTS, **config})
    started_s = time.perf_counter() - sampler.t0
    settled, start_peak, start_peak_s = sampler.read(), sampler.peak, sampler.peak_s
    began = time.perf_counter()
    llm.generate(["hello"], SamplingParams(max_tokens=32, ignore_eos=True))
    speed = 32 / (time.perf_counter() - began)
    sampler.stop()
    return {
        "clock": clock,
        "start_s": started_s,
        "settled_mib": settled / MIB,
        "start_peak_mib": start_peak / MIB,
        "start_peak_s": start_peak_s,
        "peak_mib": sampler.peak / MIB,
        "tokens_per_s": speed,
        "steps": [(round(at, 2), round(used / MIB)) for at, used in sampler.steps],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="a chat model folder")
    parser.add_argument("configs", nargs="+", type=json.loads, help="LLM(...) arguments, as JSON")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.folder, args.configs[0])), flush=True)
        return
    rows = []
    for config in args.configs:
        env = {**os.environ, **config.pop("env", {})}
        argv = [sys.executable, __file__, "--one", args.folder, json.dumps(config)]
        finished = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(f"{config}: failed (rc {finished.returncode})\n{finished.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(lines[-1].removeprefix("RESULT "))
        rows.append((config, result))
        print(f"{config}: steps (s, MiB) from {result['clock']}: {result['steps']}", flush=True)
        for line in (finished.stdout + finished.stderr).splitlines():
            if any(phase in line for phase in PHASES):
                print(f"    {line[-160:]}", flush=True)
    print("| Arguments | Start s | Start peak MiB (at s) | Settled MiB | Peak, request MiB | Tokens/s |")
    print("|---|---|---|---|---|---|")
    for config, r in rows:
        print(
            f"| `{json.dumps(config)}` | {r['start_s']:.1f} | {r['start_peak_mib']:,.0f} "
            f"({r['start_peak_s']:.1f}) | {r['settled_mib']:,.0f} | {r['peak_mib']:,.0f} | "
            f"{r['tokens_per_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
