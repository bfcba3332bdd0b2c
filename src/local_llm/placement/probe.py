"""What the machine has: GPU memory from NVML (torch as a fallback), RAM from psutil.

"Used by us" counts this process and its children (vLLM runs each engine in a child process), so
the ledger can be checked against reality and a freed model's memory is seen, not assumed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import psutil

from local_llm.backends import import_backend

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Footprint:
    """Bytes on each device: what a model holds (as measured), or would hold parked."""

    gpu_bytes: int = 0
    ram_bytes: int = 0

    def at_least(self, other: Footprint | None) -> Footprint:
        """Each device's larger figure of the two."""
        if other is None:
            return self
        return Footprint(max(self.gpu_bytes, other.gpu_bytes), max(self.ram_bytes, other.ram_bytes))

    def describe(self) -> str:
        """``GPU 1,170 MiB, RAM 1,359 MiB`` (the GPU only where it holds some): what the log shows."""
        gpu = f"GPU {self.gpu_bytes / 2**20:,.0f} MiB, " if self.gpu_bytes else ""
        return f"{gpu}RAM {self.ram_bytes / 2**20:,.0f} MiB"


@dataclass(frozen=True)
class GpuSnapshot:
    name: str
    total_bytes: int
    free_bytes: int
    # Memory our process tree holds on this GPU; None where the driver does not tell (torch fallback).
    used_by_us_bytes: int | None
    source: str


@dataclass(frozen=True)
class DeviceSnapshot:
    ram_total_bytes: int
    ram_available_bytes: int
    # Resident memory of this process and its children.
    ram_used_by_us_bytes: int
    gpu: GpuSnapshot | None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``avx512f``, ...) from /proc/cpuinfo, read once (they do not
    change while the server runs); empty where unreadable."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    return frozenset()


def our_process_ids(pid: int | None = None) -> set[int]:
    """``pid`` (default: this process) and all its children: vLLM engines run as child processes."""
    root = psutil.Process(pid or os.getpid())
    ids = {root.pid}
    with contextlib.suppress(psutil.Error):
        ids.update(child.pid for child in root.children(recursive=True))
    return ids


def processes_rss(pids: set[int]) -> int:
    """Resident bytes of the processes ``pids`` (those that have ended count nothing)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def process_gpu_bytes(pids: set[int]) -> int | None:
    """GPU memory the processes ``pids`` hold (NVML); None where NVML cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(_visible_device_index())
        return sum(int(p.usedGpuMemory or 0) for p in _compute_processes(pynvml, handle) if p.pid in pids)
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


def process_tree_rss(pid: int | None = None) -> int:
    """Resident bytes of ``pid`` (default: this process) and all its children."""
    return processes_rss(our_process_ids(pid))


def probe_devices() -> DeviceSnapshot:
    memory = psutil.virtual_memory()
    return DeviceSnapshot(
        ram_total_bytes=int(memory.total),
        ram_available_bytes=int(memory.available),
        ram_used_by_us_bytes=process_tree_rss(),
        gpu=_probe_gpu(),
    )


def _probe_gpu() -> GpuSnapshot | None:
    try:
        return _probe_nvml()
    except Exception as exc:  # no driver, no GPU, or no nvidia-ml-py: try torch
        logger.debug("NVML unavailable (%s); asking torch", exc)
    try:
        return _probe_torch()
    except Exception as exc:  # a broken CUDA install must not stop CPU serving
        logger.warning("GPU probe failed, planning for CPU only: %s", exc)
        return None


def _probe_nvml() -> GpuSnapshot | None:
    import pynvml

    pynvml.nvmlInit()
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(_visible_device_index())
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        ours = our_process_ids()
        used = sum(
            int(process.usedGpuMemory or 0)
            for process in _compute_processes(pynvml, handle)
            if process.pid in ours
        )
        name = pynvml.nvmlDeviceGetName(handle)
        return GpuSnapshot(
            name=name.decode() if isinstance(name, bytes) else str(name),
            total_bytes=int(memory.total),
            free_bytes=int(memory.free),
            used_by_us_bytes=used,
            source="nvml",
        )
    finally:
        pynvml.nvmlShutdown()


def _compute_processes(pynvml: Any, handle: Any) -> list[Any]:
    try:
        return list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except pynvml.NVMLError:
        return []


def _visible_device_index() -> int:
    """The physical index of the first GPU CUDA_VISIBLE_DEVICES shows us (NVML ignores that variable)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(visible) if visible.isdigit() else 0


def _probe_torch() -> GpuSnapshot | None:
    torch = import_backend("torch")
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return GpuSnapshot(
        name=torch.cuda.get_device_name(),
        total_bytes=int(total),
        free_bytes=int(free),
        used_by_us_bytes=None,
        source="torch",
    )
