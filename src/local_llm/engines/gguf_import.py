"""Import a GGUF file once as a safetensors model folder that vLLM and transformers load fast.

transformers de-quantizes GGUF tensors into a model it cannot save (it stays marked as GGUF), so
the weights are copied into a fresh model built from the same config and saved with the tokenizer
(chat template included). They are saved in float32: a de-quantized weight (scale × level + min,
the scale and min in float16) is exact there, and bfloat16 rounds it. That rounding was enough to
turn SmolLM2's greedy "The capital of France is Paris." into "L'Étoile, ..." under vLLM.
The folder lands in ``LLM_DATA_DIR/imported`` under a name keyed on the file's size and mtime and
the import format, is written to a temporary folder and renamed when complete (a crash never leaves
half a model), and is reused by every later start. One import of a file runs at a time, within this
server (an asyncio lock) and across servers sharing the data dir (a lock file).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import shutil
import time
from pathlib import Path

from local_llm.backends import IMPORT_LOCK

logger = logging.getLogger(__name__)

_DONE_MARKER = ".import-complete"
# Part of the folder's key: a change to how files are imported makes a fresh import.
_IMPORT_FORMAT = "float32-v2"
# One import per destination at a time, however many requests or start-up tasks ask for it.
_locks: dict[Path, asyncio.Lock] = {}


def imported_folder(gguf_file: Path, data_dir: Path) -> Path:
    """Where ``gguf_file`` is (or will be) imported: stable for an unchanged file."""
    stat = gguf_file.stat()
    identity = f"{gguf_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_IMPORT_FORMAT}"
    key = hashlib.sha256(identity.encode()).hexdigest()
    return data_dir / "imported" / f"{gguf_file.stem}-{key[:12]}"


def is_imported(folder: Path) -> bool:
    return (folder / _DONE_MARKER).is_file()


async def ensure_imported(gguf_file: Path, data_dir: Path) -> Path:
    """The imported folder for ``gguf_file``, importing it first if needed (single-flight)."""
    destination = imported_folder(gguf_file, data_dir)
    lock = _locks.setdefault(destination, asyncio.Lock())
    async with lock:
        if not is_imported(destination):
            await asyncio.to_thread(_import_once, gguf_file, destination)
    return destination


def _import_once(gguf_file: Path, destination: Path) -> None:
    """Import unless another process sharing the data dir did while this one waited for its lock."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with destination.with_name(destination.name + ".lock").open("w") as lock_file:
        if not _try_lock(lock_file):
            logger.info("waiting for another server to finish importing %s", gguf_file.name)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not is_imported(destination):
            import_gguf(gguf_file, destination)


def _try_lock(lock_file: object) -> bool:
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
    except BlockingIOError:
        return False
    return True


def import_gguf(gguf_file: Path, destination: Path) -> None:
    """Convert ``gguf_file`` into ``destination`` (blocking; tens of seconds for a small model)."""
    with IMPORT_LOCK:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    size_mb = gguf_file.stat().st_size / 1e6
    logger.info("importing %s (%.0f MB) into %s: reading the tokenizer", gguf_file.name, size_mb, destination)
    folder, name = gguf_file.parent, gguf_file.name
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    dtype = torch.float32
    logger.info("importing %s: de-quantizing %s weights to %s", gguf_file.name, config.model_type, dtype)
    dequantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(dequantized.state_dict(), strict=True)
    del dequantized
    logger.info("importing %s: writing safetensors", gguf_file.name)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / _DONE_MARKER).write_text(f"{gguf_file}\n")
    shutil.rmtree(destination, ignore_errors=True)
    partial.rename(destination)
    logger.info("imported %s in %.1fs into %s", gguf_file.name, time.perf_counter() - started, destination)
