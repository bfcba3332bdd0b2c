"""The Responses dialect on its own: an engine's OpenAI chunks in, the Responses events out, read back
by the openai SDK's own stream accumulator (what ``client.responses.stream`` runs), so every event
the SDK would refuse (an item before its ``added``, an identity that changes) fails here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import omit
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from local_llm.errors import EngineFailedError
from local_llm.protocol.chat import ChatCompletionRequest
from local_llm.protocol.responses import ResponsesRequest
from local_llm.server.serving.responses import (
    ResponsesDialect,
    ResponseStore,
    to_chat_request,
)

pytestmark = pytest.mark.unit


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None
) -> bytes:
    choices = (
        []
        if delta is None and finish is None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    )
    body: dict[str, Any] = {"object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def call_delta(index: int, call_id: str | None, name: str | None, arguments: str) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    call: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        call["id"] = call_id
    return {"tool_calls": [call]}


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
ENGINE_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me "}),
    chunk({"content": "check."}),
    chunk(call_delta(0, "call_a", "get_weather", '{"city": ')),
    chunk(call_delta(0, None, None, '"Paris"}')),
    chunk(call_delta(1, "call_b", "get_time", "{}")),
    chunk({}, finish="tool_calls"),
    chunk(usage=USAGE),
    b"data: [DONE]\n\n",
]


async def _replay(events: list[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for number, event in enumerate(events):
        if fail_after is not None and number == fail_after:
            raise EngineFailedError("the engine died")
        yield event


def _events(raw: list[bytes]) -> list[Any]:
    parsed = []
    for block in b"".join(raw).decode().split("\n\n"):
        if block:
            data = block.split("\n")[1].removeprefix("data: ")
            parsed.append(construct_type_unchecked(type_=ResponseStreamEvent, value=json.loads(data)))  # type: ignore[arg-type]
    return parsed


async def _collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [event async for event in stream]


def _dialect(store: ResponseStore | None = None) -> ResponsesDialect:
    request = ResponsesRequest.model_validate({"model": "m", "input": "Weather?", "stream": True})
    return ResponsesDialect(request, (), store)


def test_text_then_two_calls_stream_as_the_sdk_assembles_them() -> None:
    store = ResponseStore(4)
    raw = asyncio.run(_collect(_dialect(store).stream(_replay(ENGINE_STREAM))))
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    events = _events(raw)
    for event in events:
        state.handle_event(event)
    final = state._completed_response
    assert final is not None
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert final.output_text == "Let me check."
    first, second = final.output[1], final.output[2]
    assert (first.call_id, first.name, first.arguments) == ("call_a", "get_weather", '{"city": "Paris"}')  # type: ignore[union-attr]
    assert (second.call_id, second.name, second.arguments) == ("call_b", "get_time", "{}")  # type: ignore[union-attr]
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 7)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    # Stored with its conversation: the question, then the answer with both calls.
    (stored,) = store._entries.values()
    assert stored.conversation[-1]["content"] == "Let me check."
    assert [call["id"] for call in stored.conversation[-1]["tool_calls"]] == ["call_a", "call_b"]


def test_a_failure_mid_stream_ends_with_response_failed() -> None:
    dialect = _dialect()

    async def run() -> list[bytes]:
        out = []
        try:
            async for event in dialect.stream(_replay(ENGINE_STREAM, fail_after=3)):
                out.append(event)
        except EngineFailedError as exc:  # the serving skeleton renders it with the dialect
            out.append(dialect.stream_error(exc))
        return out

    events = _events(asyncio.run(run()))
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.message == "the engine died"
    assert events[-1].response.id == events[0].response.id
    assert events[-1].sequence_number == len(events) - 1


def test_history_items_become_chat_messages() -> None:
    request = ResponsesRequest.model_validate(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Checking."}],
                },
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "noon"}],
                },
            ],
            "tools": [{"type": "function", "name": "get_weather"}, {"type": "function", "name": "get_time"}],
            "tool_choice": "auto",
        }
    )
    chat: ChatCompletionRequest = to_chat_request(request, history=())
    messages = [message.model_dump(exclude_none=True) for message in chat.messages]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert messages[2]["content"] == [{"type": "text", "text": "Checking."}]
    assert [call["id"] for call in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert messages[4] == {
        "role": "tool",
        "tool_call_id": "c2",
        "content": [{"type": "text", "text": "noon"}],
    }
    assert [tool.function.name for tool in chat.tools or ()] == ["get_weather", "get_time"]
    assert chat.tool_choice == "auto"
