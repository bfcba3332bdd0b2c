"""Does vLLM keep offloaded weights off the GPU? Bare vLLM, no server: the device's NVML use after start-up.

Found with it on an H100 (vLLM 0.26): with ``cpu_offload_gb=10`` a 7B-shaped model held 17,093 MiB under the
V2 model runner (the offloader is never installed) and 6,691 MiB with ``VLLM_USE_V2_MODEL_RUNNER=0``, which
the server therefore sets (src/local_llm/engines/vllm_environment.py).

    python benchmarks/vllm_offload_probe.py /tmp/swap-models/Qwen2.5-7B-Instruct '{"cpu_offload_gb": 10}'
    VLLM_USE_V2_MODEL_RUNNER=0 python benchmarks/vllm_offload_probe.py ... '{"cpu_offload_gb": 10}'
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="a chat model folder")
    parser.add_argument("engine_args", type=json.loads, help="extra vLLM LLM(...) arguments, as JSON")
    args = parser.parse_args()

    import pynvml
    from vllm import LLM, SamplingParams

    folder, extra = args.folder, args.engine_args
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    before = pynvml.nvmlDeviceGetMemoryInfo(handle).used
    llm = LLM(
        model=folder,
        enforce_eager=True,
        kv_cache_memory_bytes=int(1.5 * 2**30),
        max_model_len=4096,
        gpu_memory_utilization=0.3,
        **extra,
    )
    used = (pynvml.nvmlDeviceGetMemoryInfo(handle).used - before) / 2**20
    started = time.perf_counter()
    llm.generate(["hello"], SamplingParams(max_tokens=32, ignore_eos=True))
    speed = 32 / (time.perf_counter() - started)
    print(f"| {extra} | {used:,.0f} MiB on the GPU | {speed:.1f} tokens/s |", flush=True)


if __name__ == "__main__":
    main()
