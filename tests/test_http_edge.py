"""The HTTP edge as uvicorn serves it: oversized request heads, over real sockets.

In process (test_validation.py) the app's own header check is tested; here, what uvicorn's httptools
parser does before the app sees anything: a head past LLM_MAX_REQUEST_HEADER_KB reaches the app and is
answered 431, one far past it is cut while it streams in (server/http.py), and either way the server
keeps serving. Before, a 1 MB header was answered 200.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from conftest import RunningServer, assert_error, start_server, stop_server

pytestmark = pytest.mark.server

KIB = 1024


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """No models: these requests never reach one. The default header limit, 64 KiB."""
    models = tmp_path_factory.mktemp("no-models")
    running = start_server(models, tmp_path_factory.mktemp("edge") / "server.log", "--no-bundled-models")
    yield running
    stop_server(running)


def raw_get(server: RunningServer, header_bytes: int) -> bytes:
    """A GET /health with one header of ``header_bytes``, on a socket of its own; what comes back."""
    host, port = server.base_url.removeprefix("http://").split(":")
    head = f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Big: {'a' * header_bytes}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _length(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _length(response: bytes) -> int:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_headers_within_the_limit_are_served(bare_server: RunningServer) -> None:
    response = httpx.get(bare_server.base_url + "/health", headers={"x-big": "a" * 60 * KIB}, timeout=30)
    assert response.status_code == 200, response.text


def test_a_100_kb_header_gets_431_in_the_api_shape_and_the_connection_serves_on(
    bare_server: RunningServer,
) -> None:
    with httpx.Client(base_url=bare_server.base_url, timeout=30) as client:
        error = assert_error(
            client.get("/v1/models", headers={"x-big": "a" * 100 * KIB}),
            431,
            code="request_header_fields_too_large",
        )
        assert "LLM_MAX_REQUEST_HEADER_KB" in error["message"]
        assert client.get("/v1/models").status_code == 200


def test_a_head_far_past_the_limit_is_cut_with_431_and_the_server_serves_on(
    bare_server: RunningServer,
) -> None:
    response = raw_get(bare_server, 4 * 1024 * KIB)  # 4 MiB: never buffered whole
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 431 Request Header Fields Too Large", response[:300]
    head, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_header_fields_too_large"
    assert "head is larger than" in error["message"]  # cut by the protocol, not judged by the app
    assert httpx.get(bare_server.base_url + "/health", timeout=30).status_code == 200
