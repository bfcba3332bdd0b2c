"""Parking an in-process model on a GPU: ``module.to("cpu")`` against our pinned-buffer copy.

Run on the GPU machine, from the repository root::

    PYTHONPATH=src:tests python benchmarks/park_copy.py

A random-weight Qwen3-Reranker-0.6B-shaped causal LM (bf16) is parked and woken four times each way;
the table gives the first park apart (ours page-locks its buffer then), the median of the others, and
the bus rate each reaches (bytes moved / seconds). The pinned path is
:class:`local_llm.engines.base.TorchModuleParking`, exactly as the engines run it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from local_llm.engines.base import TorchModuleParking  # noqa: E402
from local_llm.placement import MemoryEstimate, Placement, PlacementPlan  # noqa: E402
from rerank import QWEN3_0_6B_BODY  # noqa: E402


class Parked(TorchModuleParking):
    def __init__(self, model: Any) -> None:
        self._model = model
        self.memory_bytes = None
        self.plan = PlacementPlan(
            Placement.GPU, "cuda", MemoryEstimate(0), gpu_bytes=0, ram_bytes=0, reason=""
        )


def timed(work: Any) -> float:
    import torch

    torch.cuda.synchronize()
    started = time.perf_counter()
    work()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from model_zoo import build_qwen3_reranker

    folder = Path(tempfile.mkdtemp()) / "Qwen3-Reranker-0.6B-shape"
    build_qwen3_reranker(folder, **QWEN3_0_6B_BODY)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).to("cuda").eval()
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))

    def module_to(device: str) -> None:
        model.to(device)
        if device == "cpu":
            torch.cuda.empty_cache()

    parked = Parked(model)
    rows: dict[str, tuple[list[float], list[float]]] = {
        "module.to": ([], []),
        "pinned buffer (ours)": ([], []),
    }
    for _ in range(4):
        for name, park, wake in (
            ("module.to", lambda: module_to("cpu"), lambda: module_to("cuda")),
            ("pinned buffer (ours)", parked._to_host, parked._to_device),
        ):
            rows[name][0].append(timed(park))
            rows[name][1].append(timed(wake))
    print(
        f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}; {size / 2**30:.2f} GiB of weights\n"
    )
    print("| copy | first park s | park s | wake s | park GB/s | wake GB/s |\n|---|---|---|---|---|---|")
    for name, (parks, wakes) in rows.items():
        park, wake = statistics.median(parks[1:]), statistics.median(wakes)
        print(
            f"| {name} | {parks[0]:.3f} | {park:.3f} | {wake:.3f} | {size / park / 1e9:.1f} | "
            f"{size / wake / 1e9:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
