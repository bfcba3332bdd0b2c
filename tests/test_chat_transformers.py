"""The transformers chat engine (models.yaml `engine: transformers`) over real HTTP with the openai SDK:
the same OpenAI shapes as the vLLM engine, on a copy of the same tiny model."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from conftest import RunningServer, assert_error
from test_chat_api import HELLO, PERSON_SCHEMA, WEATHER_TOOL

pytestmark = pytest.mark.server

HF = "tiny-chat-hf"


def test_models_card_names_the_engine(openai_client: openai.OpenAI, http: httpx.Client) -> None:
    openai_client.chat.completions.create(model=HF, messages=HELLO, max_tokens=1)
    card = http.get(f"/v1/models/{HF}").json()
    assert (card["backend"], card["state"], card["max_model_len"]) == ("transformers", "loaded", 1024)


def test_answer_shape_usage_and_length(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=HF, messages=HELLO, max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert answer.object == "chat.completion"
    assert answer.model == HF
    (choice,) = answer.choices
    assert (choice.message.role, choice.finish_reason) == ("assistant", "length")
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 6


def test_greedy_is_deterministic_and_seed_repeats_sampling(openai_client: openai.OpenAI) -> None:
    def text(**fields: Any) -> str:
        answer = openai_client.chat.completions.create(model=HF, messages=HELLO, max_tokens=10, **fields)
        return answer.choices[0].message.content or ""

    assert text(temperature=0) == text(temperature=0)
    assert text(temperature=1, seed=5) == text(temperature=1, seed=5)


def test_n_and_stop(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(model=HF, messages=HELLO, n=2, max_tokens=4, seed=1)
    assert [c.index for c in answer.choices] == [0, 1]
    free = openai_client.chat.completions.create(
        model=HF, messages=HELLO, max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    text = free.choices[0].message.content or ""
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = openai_client.chat.completions.create(
        model=HF, messages=HELLO, max_tokens=20, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in (stopped.choices[0].message.content or "")
    assert text.startswith(stopped.choices[0].message.content or "")


def test_stream_equals_the_whole_answer_and_reports_usage(openai_client: openai.OpenAI) -> None:
    fields: dict[str, Any] = {"model": HF, "messages": HELLO, "max_tokens": 8, "temperature": 0}
    whole = openai_client.chat.completions.create(**fields, extra_body={"ignore_eos": True})
    chunks = list(
        openai_client.chat.completions.create(
            **fields, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_logprobs(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=HF, messages=HELLO, max_tokens=3, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True}
    )
    content = answer.choices[0].logprobs.content if answer.choices[0].logprobs else None
    assert content is not None
    assert len(content) == 3
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_json_schema_through_xgrammar(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=HF,
        messages=[{"role": "user", "content": "A person as JSON."}],
        max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), PERSON_SCHEMA)


@pytest.mark.parametrize(
    "tool_choice",
    [{"type": "function", "function": {"name": "get_weather"}}, "required"],
    ids=["named", "required"],
)
def test_forced_tool_call(openai_client: openai.OpenAI, tool_choice: Any) -> None:
    answer = openai_client.chat.completions.create(
        model=HF,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
        max_tokens=200,
    )
    calls = answer.choices[0].message.tool_calls or []
    assert calls  # "required" may give several calls; each must follow the schema
    for call in calls:
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    assert answer.choices[0].finish_reason == ("tool_calls" if tool_choice == "required" else "stop")


def test_completions_and_their_stream(openai_client: openai.OpenAI) -> None:
    two = openai_client.completions.create(model=HF, prompt=["One", "Two"], max_tokens=3)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.usage is not None
    chunks = list(openai_client.completions.create(model=HF, prompt="Once", max_tokens=3, stream=True))
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_what_this_engine_cannot_do_is_a_clear_400(http: httpx.Client) -> None:
    body = {"model": HF, "messages": HELLO, "presence_penalty": 1.0}
    error = assert_error(http.post("/v1/chat/completions", json=body), 400, param="presence_penalty")
    assert "transformers" in error["message"]
    long = {"model": HF, "messages": [{"role": "user", "content": "word " * 3000}]}
    assert_error(http.post("/v1/chat/completions", json=long), 400, code="context_length_exceeded")
    too_many = {"model": HF, "messages": HELLO, "max_tokens": 5000}
    assert_error(http.post("/v1/chat/completions", json=too_many), 400, param="max_tokens")


def test_client_leaving_mid_stream_stops_generation(server: RunningServer, http: httpx.Client) -> None:
    body = {"model": HF, "messages": HELLO, "max_tokens": 900, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as leaving,
        leaving.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert http.get(f"/v1/models/{HF}").json()["running_requests"] == 1
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        card = http.get(f"/v1/models/{HF}").json()
        if (card["in_flight"], card["running_requests"]) == (0, 0):
            break
        time.sleep(0.05)
    assert (card["in_flight"], card["running_requests"]) == (0, 0)
