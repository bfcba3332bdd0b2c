"""Session fixtures: one models folder, one real server on 127.0.0.1, shared by every test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from model_zoo import build_zoo, bundled_minilm_path

SERVER_START_TIMEOUT_S = 120
# Kept between runs (git-ignored): the imported SmolLM2 and vLLM's compile cache, made once.
DATA_DIR = Path(__file__).parent.parent / ".cache" / "test-data"
# vLLM settings every test server uses: eager start-up (13 s, not 40) and a small KV cache, so several
# test models fit beside each other.
CHAT_ARGS = ("--vllm-enforce-eager", "--vllm-kv-cache-gb", "0.25", "--vllm-max-model-len", "1024")


TIERS = ("unit", "server", "soak")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test is in exactly one tier (pyproject.toml's markers): a test without one is refused."""
    untiered = [
        item.nodeid for item in items if sum(item.get_closest_marker(t) is not None for t in TIERS) != 1
    ]
    if untiered:
        raise pytest.UsageError(
            "tests without exactly one tier marker (unit, server, soak): " + ", ".join(untiered)
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zoo(tmp_path_factory.mktemp("models"), DATA_DIR)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return bundled_minilm_path()


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def api(self) -> str:
        return self.base_url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    models_dir: Path,
    log_path: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    data_dir: Path = DATA_DIR,
) -> RunningServer:
    """``local-llm serve`` as a user runs it, on a free loopback port; waits for /health."""
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_llm",
            "serve",
            "--port",
            str(port),
            "--models-dir",
            str(models_dir),
            "--data-dir",
            str(data_dir),
            *CHAT_ARGS,
            *extra_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.base_url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start in {SERVER_START_TIMEOUT_S}s:\n{server.log()}")


def engine_cores(server: RunningServer) -> set[int]:
    """The server's live vLLM engine-core processes (what a test kills to make an engine die)."""
    import psutil

    found = set()
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if child.name().startswith("VLLM::EngineCore") and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The shared server: the zoo plus the bundled MiniLM; small caps so limit tests stay cheap."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    running = start_server(
        zoo,
        log_path,
        "--max-inputs-per-request",
        "64",
        "--max-request-body-mb",
        "1",
        "--model-cache-size",
        "8",
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def openai_client(server: RunningServer):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def ollama_client(server: RunningServer):  # type: ignore[no-untyped-def]
    """The stock ``ollama`` library, pointed at the shared server as at an Ollama."""
    import ollama

    return ollama.Client(host=server.base_url, timeout=300)


@pytest.fixture(scope="session")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def minilm(minilm_path: Path):  # type: ignore[no-untyped-def]
    """The reference: sentence-transformers' own model, in this process."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


def assert_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error
