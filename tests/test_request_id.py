"""The request id and the log formats, in process on fake engines (milliseconds each).

Every answer carries ``X-Request-ID`` (the client's, when it is acceptable, else a new one), whatever
answers it: a route, an error handler, the size limits, an unhandled error. Every line logged on the
request's behalf names it, also from the threads and tasks the request starts. The real server's JSON
lines are read in test_operator.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fake_engines import MINILM, serving
from local_llm.logs import REQUEST_ID, JsonFormatter, RequestIdFilter, configure_logging

pytestmark = pytest.mark.unit

probe = logging.getLogger("local_llm.test_request_id")


class Kept(logging.Handler):
    """The records the root logger writes, with the request id filter a configured server has."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def ids_of(self, text: str) -> list[str | None]:
        return [getattr(r, "request_id", None) for r in self.records if text in r.getMessage()]


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def requests(data_dir: Path, *calls: tuple[str, str, dict], **settings: object) -> list[httpx.Response]:
    async def send() -> list[httpx.Response]:
        async with serving(data_dir, **settings) as (_, app):

            async def boom() -> None:
                raise RuntimeError("a bug")

            async def logs_everywhere() -> dict[str, str]:
                probe.info("in the handler")
                await asyncio.to_thread(probe.info, "in a worker thread")
                await asyncio.get_running_loop().create_task(_log_in_a_task())
                return {"ok": "yes"}

            app.add_api_route("/test/boom", boom)
            app.add_api_route("/test/logs", logs_everywhere)
            # Starlette re-raises an unhandled error once it has answered 500 (for the server to log).
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://fake") as tolerant:
                return [await tolerant.request(method, route, **options) for method, route, options in calls]

    return asyncio.run(send())


async def _log_in_a_task() -> None:
    probe.info("in a task the request started")


def test_a_given_id_is_echoed_and_a_missing_one_is_made(tmp_path: Path) -> None:
    given, made, other = requests(
        tmp_path,
        ("GET", "/health", {"headers": {"X-Request-ID": "trace-42/a.b"}}),
        ("GET", "/health", {}),
        ("GET", "/health", {}),
    )
    assert given.headers["x-request-id"] == "trace-42/a.b"
    assert len(made.headers["x-request-id"]) == 32
    assert made.headers["x-request-id"].isalnum()
    assert made.headers["x-request-id"] != other.headers["x-request-id"]


@pytest.mark.parametrize("bad", ["has space", "a" * 129, "tab\there", "ünïcode"])
def test_an_unacceptable_id_is_replaced(tmp_path: Path, bad: str) -> None:
    (response,) = requests(tmp_path, ("GET", "/health", {"headers": {"X-Request-ID": bad.encode()}}))
    assert response.headers["x-request-id"] != bad
    assert len(response.headers["x-request-id"]) == 32


def test_every_kind_of_error_answer_carries_the_id(tmp_path: Path, kept: Kept) -> None:
    headers = {"X-Request-ID": "err-1"}
    missing, bad, too_large, too_long, unhandled = requests(
        tmp_path,
        ("GET", "/v1/nothing-here", {"headers": headers}),
        ("POST", "/v1/embeddings", {"headers": headers, "json": {"model": MINILM}}),
        ("POST", "/v1/embeddings", {"headers": headers, "content": b"x" * (2 * 2**20)}),
        ("GET", "/health", {"headers": {**headers, "X-Big": "a" * 9000}}),
        ("GET", "/test/boom", {"headers": headers}),
        max_request_header_kb=8,
    )
    for response, status in ((missing, 404), (bad, 400), (too_large, 413), (too_long, 431), (unhandled, 500)):
        assert response.status_code == status, response.text
        assert response.headers["x-request-id"] == "err-1"
    # The unhandled error's traceback line names the request.
    assert kept.ids_of("unhandled error on GET /test/boom") == ["err-1"]


def test_lines_from_the_handler_its_threads_and_tasks_name_the_request(tmp_path: Path, kept: Kept) -> None:
    (response,) = requests(tmp_path, ("GET", "/test/logs", {"headers": {"X-Request-ID": "ctx-7"}}))
    assert response.status_code == 200
    for text in ("in the handler", "in a worker thread", "in a task the request started"):
        assert kept.ids_of(text) == ["ctx-7"], text
    probe.info("outside any request")
    assert kept.ids_of("outside any request") == [None]


def test_a_line_the_server_writes_for_a_request_names_it(tmp_path: Path, kept: Kept) -> None:
    body = {"model": MINILM, "input": "hello", "options": {"num_ctx": 8, "mirostat": 1}}
    call = ("POST", "/api/embed", {"json": body, "headers": {"X-Request-ID": "ol-1"}})
    (response,) = requests(tmp_path, call)
    assert response.status_code == 200, response.text
    assert kept.ids_of("options ignored for embeddings") == ["ol-1"]


def test_the_text_format_tags_lines_of_a_request(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("info", "text")
        token = REQUEST_ID.set("abc123")
        probe.info("with an id")
        REQUEST_ID.reset(token)
        probe.info("without one")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    first, second = capsys.readouterr().err.strip().splitlines()
    assert first.endswith("local_llm.test_request_id: [req=abc123] with an id")
    assert second.endswith("local_llm.test_request_id: without one")


def test_the_json_format_is_one_object_a_line_with_the_traceback_as_text() -> None:
    formatter = JsonFormatter()
    token = REQUEST_ID.set("j-1")
    try:
        try:
            raise ValueError("broken")
        except ValueError:
            record = probe.makeRecord(probe.name, logging.ERROR, __file__, 1, "failed %s", ("x",), None)
            record.exc_info = sys.exc_info()
        RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("ERROR", probe.name, "failed x")
    assert entry["request_id"] == "j-1"
    assert entry["time"].endswith("+00:00")
    assert "ValueError: broken" in entry["exc_info"]
