"""/v1/responses over real HTTP, through the openai SDK's ``responses`` client, on vLLM.

The bundled SmolLM2 answers a real question (plain, streamed, and continued with
previous_response_id); the tiny random-weight model, whose text is nonsense, shows the structure:
forced function calls (constrained decoding), JSON schema output, history items, the stored
responses and every refusal in OpenAI's error shape.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jsonschema
import openai
import psutil
import pytest

from conftest import RunningServer, assert_error, engine_cores

pytestmark = pytest.mark.server

CHAT = "tiny-chat"
SMOLLM2 = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"
GREEDY: dict[str, Any] = {"temperature": 0, "max_output_tokens": 30}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
    # The arguments follow the schema exactly (the random model would write a string without end).
    "strict": True,
}
FORCED = {"type": "function", "name": "get_weather"}


def create(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post(
        "/v1/responses", json={"model": CHAT, "input": "Hello", "max_output_tokens": 4, **fields}
    )


# --- answers ---------------------------------------------------------------------------------------


def test_a_plain_response_answers_the_question(openai_client: openai.OpenAI) -> None:
    response = openai_client.responses.create(model=SMOLLM2, input=QUESTION, **GREEDY)
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == SMOLLM2
    assert "Paris" in response.output_text
    (message,) = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "output_text"
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens > 5
    assert 1 <= usage.output_tokens <= 30
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_instructions_and_message_items_reach_the_model(openai_client: openai.OpenAI) -> None:
    items: Any = [
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
    ]
    response = openai_client.responses.create(
        model=SMOLLM2, instructions="Answer in one short sentence.", input=items, **GREEDY
    )
    assert "Paris" in response.output_text
    alone = openai_client.responses.create(
        model=SMOLLM2, instructions="Answer in one short sentence.", input=QUESTION, **GREEDY
    )
    # The earlier turns are in the prompt: more input tokens than the question alone.
    assert response.usage is not None
    assert alone.usage is not None
    assert response.usage.input_tokens >= alone.usage.input_tokens + 8


def test_max_output_tokens_ends_incomplete(openai_client: openai.OpenAI) -> None:
    response = openai_client.responses.create(
        model=CHAT, input="Hello", max_output_tokens=3, extra_body={"ignore_eos": True}
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 3


# --- streams ---------------------------------------------------------------------------------------


def test_a_stream_has_the_full_event_sequence(openai_client: openai.OpenAI) -> None:
    events = list(openai_client.responses.create(model=SMOLLM2, input=QUESTION, stream=True, **GREEDY))
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert "Paris" in text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text
    assert final.id == events[0].response.id  # type: ignore[union-attr]
    assert final.usage is not None
    assert final.usage.output_tokens >= 1


def test_the_sdk_stream_helper_assembles_the_response(openai_client: openai.OpenAI) -> None:
    with openai_client.responses.stream(model=SMOLLM2, input=QUESTION, **GREEDY) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)
    assert "Paris" in final.output_text


def test_the_wire_format_is_named_server_sent_events(http: httpx.Client) -> None:
    with http.stream(
        "POST", "/v1/responses", json={"model": CHAT, "input": "Hi", "max_output_tokens": 3, "stream": True}
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        body = answer.read().decode()
    blocks = [block for block in body.split("\n\n") if block]
    for block in blocks:
        event_line, data_line = block.split("\n")
        kind = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == kind
    assert "[DONE]" not in body


# --- tools -----------------------------------------------------------------------------------------


def test_a_forced_function_call_is_a_function_call_item(openai_client: openai.OpenAI) -> None:
    response = openai_client.responses.create(
        model=CHAT,
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice=FORCED,
        max_output_tokens=100,  # type: ignore[list-item,arg-type]
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])  # type: ignore[arg-type]


def test_a_streamed_function_call_assembles_from_argument_deltas(openai_client: openai.OpenAI) -> None:
    with openai_client.responses.stream(
        model=CHAT,
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice=FORCED,
        max_output_tokens=100,  # type: ignore[list-item,arg-type]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == deltas
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.arguments == deltas
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])  # type: ignore[arg-type]


def test_a_function_call_output_round_trip_is_accepted(openai_client: openai.OpenAI) -> None:
    items: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"},
    ]
    response = openai_client.responses.create(model=CHAT, input=items, tools=[WEATHER], max_output_tokens=4)  # type: ignore[list-item]
    assert response.status in {"completed", "incomplete"}
    short = openai_client.responses.create(
        model=CHAT, input="Weather in Paris?", tools=[WEATHER], max_output_tokens=4
    )  # type: ignore[list-item]
    assert response.usage is not None
    assert short.usage is not None
    assert response.usage.input_tokens > short.usage.input_tokens  # the call and its output were rendered


def test_tools_this_server_cannot_run_are_ignored_with_a_warning(
    openai_client: openai.OpenAI, server: RunningServer
) -> None:
    response = openai_client.responses.create(
        model=CHAT,
        input="Hello",
        tools=[{"type": "web_search"}, {"type": "local_shell"}, WEATHER],  # type: ignore[list-item]
        max_output_tokens=4,
    )
    assert response.status in {"completed", "incomplete"}
    assert "ignoring tools this server cannot run (local_shell, web_search)" in server.log()


def test_text_format_json_schema_constrains_the_output(openai_client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 8}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = openai_client.responses.create(
        model=CHAT,
        input="Reply in JSON.",
        text={"format": {"type": "json_schema", "name": "reply", "schema": schema, "strict": True}},
        max_output_tokens=100,
    )
    jsonschema.validate(json.loads(response.output_text), schema)


# --- stored responses ------------------------------------------------------------------------------


def test_a_stored_response_can_be_read_continued_and_deleted(openai_client: openai.OpenAI) -> None:
    first = openai_client.responses.create(model=SMOLLM2, input=QUESTION, **GREEDY)
    read = openai_client.responses.retrieve(first.id)
    assert read.id == first.id
    assert read.output_text == first.output_text
    follow_up = openai_client.responses.create(
        model=SMOLLM2, input="And of Germany?", previous_response_id=first.id, **GREEDY
    )
    assert follow_up.previous_response_id == first.id
    alone = openai_client.responses.create(model=SMOLLM2, input="And of Germany?", **GREEDY)
    assert follow_up.usage is not None
    assert alone.usage is not None
    assert first.usage is not None
    # The first question and its answer were in the prompt of the follow-up.
    assert follow_up.usage.input_tokens >= alone.usage.input_tokens + first.usage.output_tokens
    openai_client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError, match="not found"):
        openai_client.responses.create(model=SMOLLM2, input="Hi", previous_response_id=first.id, **GREEDY)


def test_store_false_keeps_nothing(openai_client: openai.OpenAI, http: httpx.Client) -> None:
    response = openai_client.responses.create(model=CHAT, input="Hello", store=False, max_output_tokens=2)
    assert response.store is False
    assert_error(http.get(f"/v1/responses/{response.id}"), 404, code="not_found")
    assert_error(http.delete("/v1/responses/resp_unknown"), 404, code="not_found")


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": None}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"type": "local_shell_call", "id": "x"}]}, "input"),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
        ({"tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tools": [{"type": "web_search"}], "tool_choice": "required"}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text"),
        ({"background": True}, "background"),
        ({"previous_response_id": "resp_never"}, "previous_response_id"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(
    http: httpx.Client, fields: dict[str, Any], param: str
) -> None:
    assert_error(create(http, **fields), 400, param=param)


def test_unknown_and_wrong_kind_models_are_refused(http: httpx.Client) -> None:
    assert_error(create(http, model="../../etc/passwd"), 404, code="model_not_found")
    error = assert_error(create(http, model="tiny-embed"), 400, code="model_type_mismatch")
    assert "/v1/responses" in error["message"]


def test_the_sdk_raises_its_own_errors_and_the_server_keeps_serving(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.responses.create(model=CHAT, input="Hi", temperature=5)
    assert refused.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.create(model="no-such-model", input="Hi")
    assert openai_client.responses.create(model=CHAT, input="Hi", max_output_tokens=2).status != "failed"


# --- a client that leaves ------------------------------------------------------------------------


def running(http: httpx.Client) -> tuple[int, int | None]:
    card = http.get(f"/v1/models/{CHAT}").json()
    return card["in_flight"], card["running_requests"]


def test_a_client_leaving_mid_stream_aborts_the_generation(server: RunningServer, http: httpx.Client) -> None:
    # 1,000 tokens: tens of seconds of work, so idle within 3 s can only be an abort.
    body = {"model": CHAT, "input": "Hello", "max_output_tokens": 1000, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as leaving,
        leaving.stream("POST", "/v1/responses", json=body) as response,
    ):
        lines = response.iter_lines()
        while "response.output_text.delta" not in next(lines):
            pass
        assert running(http)[0] == 1
    deadline = time.monotonic() + 3
    while running(http) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(http) == (0, 0)


# --- a failure after the stream began --------------------------------------------------------------


def test_an_engine_killed_mid_stream_ends_it_with_response_failed(
    server: RunningServer, http: httpx.Client, openai_client: openai.OpenAI
) -> None:
    """The stream ends with ``response.failed`` naming the death (not a cut connection); the next
    request loads the model again. Last in this module: the model's next load costs seconds."""
    http.post(f"/admin/models/{CHAT}/unload")
    before = engine_cores(server)
    assert http.post(f"/admin/models/{CHAT}/load").status_code == 200
    (core,) = engine_cores(server) - before
    stream = openai_client.responses.create(
        model=CHAT,
        input="Tell me a long story.",
        max_output_tokens=900,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    kinds: list[str] = []
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta" and kinds.count(event.type) == 1:
            psutil.Process(core).kill()
    assert kinds[0] == "response.created"
    assert "response.completed" not in kinds
    assert kinds[-1] == "response.failed"
    failed = event.response  # type: ignore[union-attr]
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.code == "engine_failed"
    assert "SIGKILL" in failed.error.message
    # The model comes back on the next request.
    assert openai_client.responses.create(model=CHAT, input="Hi", max_output_tokens=2).status != "failed"
