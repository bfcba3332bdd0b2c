"""The Ollama dialect's translations, in this process: what the real server cannot show reliably with
tiny random models (a streamed tool call, a model's thinking), and Ollama's names in the registry.

The chunks are vLLM's OpenAI stream as its Hermes tool parser and reasoning parsers send it: a tool
call's id and name first, then its arguments' JSON in pieces; reasoning in ``delta.reasoning``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from local_llm.errors import ModelNotFoundError
from local_llm.protocol.ollama import OllamaMessage, OllamaOptions
from local_llm.registry import ModelKind, ModelRegistry, ModelSpec, WeightFormat, tagged_name
from local_llm.server.serving.chat import STREAM_END
from local_llm.server.serving.ollama import (
    _CHAT_FIELDS,
    OllamaDialect,
    _chat_messages,
    _sampling,
)

pytestmark = pytest.mark.unit

TOOL_CALL_STREAM: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"reasoning": "The user wants weather."}}]},
    {"choices": [{"index": 0, "delta": {"content": "Checking."}}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "chatcmpl-tool-1",
                            "type": "function",
                            "function": {"name": "get_weather"},
                        }
                    ]
                },
            }
        ]
    },
    {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}}
        ]
    },
    {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}
        ]
    },
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}},
]


async def _events(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    yield STREAM_END


def _spoken(chunks: list[dict[str, Any]], *, streaming: bool) -> list[dict[str, Any]]:
    async def run() -> list[bytes]:
        dialect = OllamaDialect(
            "m:latest", streaming=streaming, started_ns=time.perf_counter_ns(), fields=_CHAT_FIELDS
        )
        return [part async for part in dialect.stream(_events(chunks))]

    body = b"".join(asyncio.run(run()))
    return [json.loads(line) for line in body.decode().splitlines()]


def test_a_streamed_tool_call_is_sent_whole_with_object_arguments() -> None:
    *pieces, calls, final = _spoken(TOOL_CALL_STREAM, streaming=True)
    assert [piece["message"].get("thinking") for piece in pieces] == ["The user wants weather.", None]
    assert [piece["message"]["content"] for piece in pieces] == ["", "Checking."]
    assert calls["done"] is False
    assert calls["message"]["tool_calls"] == [
        {
            "id": "chatcmpl-tool-1",
            "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
        }
    ]
    assert final["done"] is True
    assert final["done_reason"] == "stop"  # Ollama's reason for a tool call
    assert (final["prompt_eval_count"], final["eval_count"]) == (12, 9)


def test_unstreamed_the_same_objects_fold_into_one() -> None:
    (whole,) = _spoken(TOOL_CALL_STREAM, streaming=False)
    assert whole["done"] is True
    assert whole["message"]["content"] == "Checking."
    assert whole["message"]["thinking"] == "The user wants weather."
    assert whole["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert whole["total_duration"] >= whole["eval_duration"] > 0


def test_a_length_finish_is_ollamas_length() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
    ]
    assert _spoken(chunks, streaming=True)[-1]["done_reason"] == "length"


def test_tool_calls_and_their_results_become_openai_messages() -> None:
    messages = [
        OllamaMessage(role="user", content="Weather and time in Paris?"),
        OllamaMessage.model_validate(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"id": "t2", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
                ],
            }
        ),
        OllamaMessage(role="tool", content="12:00", tool_name="get_time"),  # answers the second call by name
        OllamaMessage(role="tool", content="sunny"),  # the one left
        OllamaMessage(
            role="user", content="look", images=["iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"]
        ),
    ]
    converted = _chat_messages(messages)
    calls = converted[1]["tool_calls"]
    assert [call["function"]["arguments"] for call in calls] == ['{"city": "Paris"}', '{"tz": "CET"}']
    assert calls[1]["id"] == "t2"
    assert converted[2] == {"role": "tool", "content": "12:00", "tool_call_id": "t2"}
    assert converted[3]["tool_call_id"] == calls[0]["id"]
    image = converted[4]["content"][1]
    assert image["image_url"]["url"].startswith("data:image/png;base64,iVBOR")


def test_options_become_sampling_fields() -> None:
    options = OllamaOptions.model_validate(
        {
            "temperature": 0.2,
            "top_k": 40.9,
            "repeat_penalty": 1.1,
            "num_predict": -1,
            "num_thread": 8,
            "shiny": 1,
        }
    )
    assert _sampling(options, "m", context=1024) == {
        "temperature": 0.2,
        "top_k": 40,  # a JSON number in an integer option is truncated, as Go does
        "repetition_penalty": 1.1,
        "max_tokens": None,  # -1: no cap
    }
    assert _sampling(OllamaOptions(num_predict=7), "m", context=None) == {"max_tokens": 7}


def _spec(name: str, *aliases: str) -> ModelSpec:
    return ModelSpec(
        name, ModelKind.CHAT, Path("/models") / name, WeightFormat.SAFETENSORS, 1, "", "", aliases
    )


def test_ollama_tags_resolve_to_served_names_and_aliases() -> None:
    registry = ModelRegistry([_spec("llama3"), _spec("qwen-7b", "qwen2.5:7b"), _spec("org/model")])
    assert registry.get("llama3:latest").name == "llama3"
    assert registry.get("qwen2.5:7b").name == "qwen-7b"  # an alias may carry its own tag
    assert registry.get("org/model:latest").name == "org/model"
    for unknown in ("llama3:8b", "qwen2.5", "../llama3:latest", "/models/llama3:latest"):
        with pytest.raises(ModelNotFoundError):
            registry.get(unknown)
    assert tagged_name("llama3") == "llama3:latest"
    assert tagged_name("qwen2.5:7b") == "qwen2.5:7b"
    assert tagged_name("org/model") == "org/model:latest"
