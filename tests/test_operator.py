"""The operator's view of a real server: readiness, JSON logs with request ids, load progress, and a
real vLLM engine core stopped with SIGSTOP.

One server for the module, started as a user starts it with ``--log-format json``, tiny-chat pinned
(its first load is what start-up waits for) and a readiness stall time of 3 s.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import RunningServer, engine_cores, start_server, stop_server

pytestmark = pytest.mark.server

STALL_S = 3
LOAD_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def operated(zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_path = tmp_path_factory.mktemp("operator") / "server.log"
    running = start_server(
        zoo,
        log_path,
        "--log-format",
        "json",
        "--pinned-models",
        "tiny-chat",
        "--ready-stall-s",
        str(STALL_S),
    )
    yield running
    stop_server(running)


def json_lines(server: RunningServer) -> list[dict[str, Any]]:
    """The server's own log lines (vLLM's engine processes write theirs in vLLM's format)."""
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def until_ready(server: RunningServer, timeout_s: float = LOAD_TIMEOUT_S) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(server.base_url + "/health/ready", timeout=10)
        if response.status_code == 200:
            return response
        assert time.monotonic() < deadline, response.text
        time.sleep(0.5)


def test_not_ready_until_the_pinned_model_has_loaded_and_its_load_shows_stages(
    operated: RunningServer,
) -> None:
    # /health answered 200 already (start_server waited for it); the pinned vLLM load takes 15 s or more.
    early = httpx.get(operated.base_url + "/health/ready", timeout=10)
    assert early.status_code == 503, early.text
    assert early.json()["status"] == "starting"
    assert early.json()["reason"].startswith(("start-up: ", "loading pinned models: tiny-chat"))
    stages = set()
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while (ready := httpx.get(operated.base_url + "/health/ready", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        loading = httpx.get(operated.api + "/models/tiny-chat", timeout=10).json()["loading"]
        if loading is not None:
            stages.add(loading["stage"])
            assert loading["elapsed_s"] >= 0
            assert loading["expected_s"] is None  # its first load
        time.sleep(0.3)
    assert ready.json() == {"status": "ready", "reason": None, "stalled": {}}
    assert httpx.get(operated.api + "/models/tiny-chat", timeout=10).json()["loading"] is None
    assert "starting vLLM's engine process" in stages or len(stages) > 1, stages
    logged = [e["message"] for e in json_lines(operated) if e["logger"] == "local_llm.manager.progress"]
    # A line per stage, from the effects' and from vLLM's own lines (its progress bar for the weights).
    assert any(m.startswith("loading tiny-chat: starting vLLM's engine process") for m in logged), logged
    assert any(m.startswith("loading tiny-chat: loading the weights") for m in logged), logged
    assert any(m.startswith("loading tiny-chat: measuring the memory it holds") for m in logged), logged


def test_every_server_line_is_json_and_a_request_line_names_its_request(operated: RunningServer) -> None:
    until_ready(operated)
    body = {"model": "tiny-embed", "input": "hello", "options": {"mirostat": 1}}
    response = httpx.post(
        operated.base_url + "/api/embed", json=body, headers={"X-Request-ID": "op-test-1"}, timeout=120
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "op-test-1"
    missing = httpx.get(operated.api + "/no-such-route", timeout=10)
    assert missing.status_code == 404
    assert len(missing.headers["x-request-id"]) == 32
    entries = json_lines(operated)
    assert {"local_llm.manager.effects", "local_llm.cli", "uvicorn.error"} <= {e["logger"] for e in entries}
    (ignored,) = [e for e in entries if e["message"].startswith("options ignored for embeddings")]
    assert ignored["request_id"] == "op-test-1"
    assert ignored["level"] == "INFO"
    # A load is logged as part of the request that set it off; the pinned model's, at start, of none.
    (loaded,) = [e for e in entries if e["message"].startswith("loaded tiny-embed in")]
    assert loaded["request_id"] == "op-test-1"
    (pinned,) = [e for e in entries if e["message"].startswith("loaded tiny-chat in")]
    assert "request_id" not in pinned


def test_a_stopped_engine_core_is_not_ready_naming_the_model_and_recovers(operated: RunningServer) -> None:
    until_ready(operated)
    (core,) = engine_cores(operated)
    chunks: list[str] = []
    first_chunk = threading.Event()
    request = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 600,
        "ignore_eos": True,
        "stream": True,
    }

    def stream() -> None:
        with httpx.stream("POST", operated.api + "/chat/completions", json=request, timeout=300) as answer:
            for line in answer.iter_lines():
                chunks.append(line)
                first_chunk.set()

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        assert first_chunk.wait(120)
        os.kill(core, signal.SIGSTOP)
        stalled = poll_ready(operated, lambda r: r.status_code == 503, timeout_s=STALL_S + 30)
        body = stalled.json()
        assert body["status"] == "stalled", body
        assert list(body["stalled"]) == ["tiny-chat"]
        assert "model tiny-chat has 1 requests running or queued and has made no progress" in body["reason"]
        assert httpx.get(operated.base_url + "/health", timeout=10).status_code == 200
    finally:
        os.kill(core, signal.SIGCONT)
    poll_ready(operated, lambda r: r.status_code == 200, timeout_s=60)
    reader.join(120)
    assert not reader.is_alive()
    assert [c for c in chunks if c][-1] == "data: [DONE]", chunks[-3:]
    messages = [e["message"] for e in json_lines(operated)]
    assert any("tiny-chat has 1 requests running" in m and "may hang" in m for m in messages)
    assert any(m.startswith("model tiny-chat makes progress again") for m in messages)


def poll_ready(server: RunningServer, wanted: Any, timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while not wanted(response := httpx.get(server.base_url + "/health/ready", timeout=10)):
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
    return response


def local_llm(server: RunningServer, *args: str, **options: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "local_llm", *args, "--url", server.base_url],
        timeout=LOAD_TIMEOUT_S,
        check=False,
        **options,
    )


def test_local_llm_load_shows_the_stages_then_a_bar_on_a_terminal(operated: RunningServer) -> None:
    # Without a terminal: a line per stage, then the card.
    plain = local_llm(operated, "load", "tiny-base", capture_output=True)
    assert plain.returncode == 0, plain.stderr.decode()
    card = json.loads(plain.stdout)
    assert card["state"] == "loaded"
    assert card["loading"] is None
    lines = plain.stderr.decode().splitlines()
    assert lines, "no progress shown"
    assert all(line.startswith("loading: ") for line in lines), lines
    assert any("vLLM" in line or "weights" in line or "KV cache" in line for line in lines), lines
    assert "\r" not in plain.stderr.decode()
    assert local_llm(operated, "unload", "tiny-base", capture_output=True).returncode == 0

    # On a terminal: the bar, filled by the time the first load took, redrawn in place.
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "local_llm", "load", "tiny-base", "--url", operated.base_url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal) as loading:
        os.close(terminal)
        drawn = read_until_closed(controller).decode(errors="replace")
        stdout = loading.stdout.read() if loading.stdout else b""
    loaded = subprocess.CompletedProcess(command, loading.wait(), stdout)
    assert loaded.returncode == 0, drawn
    assert json.loads(loaded.stdout)["state"] == "loaded"
    assert "\r\x1b[2K[" in drawn, drawn
    assert "#" in drawn, drawn
    assert f" s / {card['load_seconds']:.0f} s  " in drawn, drawn
    assert drawn.endswith("\r\x1b[2K")  # the bar is cleared before the card is printed


def read_until_closed(fd: int) -> bytes:
    """What a pty's other end wrote, read as it comes (its buffer is small) until it is closed."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer has closed it
            break
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data
