"""/v1/embeddings over real HTTP on 127.0.0.1, with the openai SDK where it fits."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import RunningServer, assert_error

pytestmark = pytest.mark.server

MINILM = "all-MiniLM-L6-v2"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval-augmented generation grounds answers in your own documents.",
    "今天天气很好，我们去公园散步吧。",
    "向量数据库用于存储和检索文本嵌入。",
    "A short one.",
    "Embeddings map text to points where nearby points mean similar things, so search becomes geometry.",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_parity(got: list[list[float]] | np.ndarray, expected: np.ndarray) -> None:
    got_array = np.asarray(got, dtype=np.float32)
    assert got_array.shape == expected.shape
    for row, ref in zip(got_array, expected, strict=True):
        assert cosine(row, ref) >= 0.9999


# --- parity with sentence-transformers --------------------------------------------------------------------
def test_two_inputs_give_two_384_dim_vectors_equal_to_sentence_transformers(openai_client, minilm) -> None:
    result = openai_client.embeddings.create(model=MINILM, input=["a", "b"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in result.data)
    assert_parity([d.embedding for d in result.data], minilm.encode(["a", "b"]))
    assert result.model == MINILM
    assert result.object == "list"


def test_single_string_matches(openai_client, minilm) -> None:
    result = openai_client.embeddings.create(model=MINILM, input=SENTENCES[1], encoding_format="float")
    assert len(result.data) == 1
    assert_parity([result.data[0].embedding], minilm.encode([SENTENCES[1]]))


def test_batch_in_english_and_chinese_matches(openai_client, minilm) -> None:
    result = openai_client.embeddings.create(model=MINILM, input=SENTENCES, encoding_format="float")
    assert_parity([d.embedding for d in result.data], minilm.encode(SENTENCES))


def test_concurrent_requests_each_get_their_own_vectors(server: RunningServer, minilm) -> None:
    import openai

    expected = minilm.encode(SENTENCES)

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=server.api, api_key="x", max_retries=0)
        jobs = [
            client.embeddings.create(
                model=MINILM, input=[SENTENCES[i % 6], SENTENCES[(i + 1) % 6]], encoding_format="float"
            )
            for i in range(32)
        ]
        try:
            return list(await asyncio.gather(*jobs))
        finally:
            await client.close()

    for i, result in enumerate(asyncio.run(run())):
        assert_parity([d.embedding for d in result.data], expected[[i % 6, (i + 1) % 6]])


def test_sdk_default_base64_roundtrip_matches(openai_client, minilm) -> None:
    """The openai SDK asks for base64 by default and decodes it itself."""
    result = openai_client.embeddings.create(model=MINILM, input=SENTENCES[:3])
    assert_parity([d.embedding for d in result.data], minilm.encode(SENTENCES[:3]))


def test_base64_decodes_to_the_float_vectors(http: httpx.Client) -> None:
    body = {"model": MINILM, "input": SENTENCES[:2]}
    floats = http.post("/v1/embeddings", json=body).json()
    encoded = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    for as_float, as_b64 in zip(floats["data"], encoded["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(as_b64["embedding"]), dtype="<f4")
        np.testing.assert_allclose(
            decoded, np.asarray(as_float["embedding"], dtype=np.float32), rtol=0, atol=0
        )


def test_token_ids_embed_like_the_text_they_encode(http: httpx.Client, minilm) -> None:
    ids = [minilm.tokenizer(text)["input_ids"] for text in SENTENCES[:3]]
    single = http.post("/v1/embeddings", json={"model": MINILM, "input": ids[0]}).json()
    many = http.post("/v1/embeddings", json={"model": MINILM, "input": ids}).json()
    expected = minilm.encode(SENTENCES[:3])
    assert_parity([single["data"][0]["embedding"]], expected[:1])
    assert_parity([d["embedding"] for d in many["data"]], expected)
    assert many["usage"]["prompt_tokens"] == sum(len(x) for x in ids)


def test_usage_counts_real_tokens(http: httpx.Client, minilm) -> None:
    response = http.post("/v1/embeddings", json={"model": MINILM, "input": SENTENCES}).json()
    expected = sum(len(minilm.tokenizer(text)["input_ids"]) for text in SENTENCES)
    assert response["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_dimensions_truncate_and_renormalise_on_a_matryoshka_model(http: httpx.Client) -> None:
    full = http.post("/v1/embeddings", json={"model": "tiny-embed", "input": SENTENCES[:3]}).json()
    cut = http.post(
        "/v1/embeddings", json={"model": "tiny-embed", "input": SENTENCES[:3], "dimensions": 8}
    ).json()
    for whole, short in zip(full["data"], cut["data"], strict=True):
        head = np.asarray(whole["embedding"][:8])
        got = np.asarray(short["embedding"])
        assert got.shape == (8,)
        np.testing.assert_allclose(got, head / np.linalg.norm(head), atol=1e-6)
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)


def test_long_input_is_truncated_when_asked(http: httpx.Client, minilm) -> None:
    long_text = "word " * 400
    response = http.post(
        "/v1/embeddings", json={"model": MINILM, "input": [long_text, "short"], "truncate": True}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["usage"]["prompt_tokens"] == 256 + len(minilm.tokenizer("short")["input_ids"])
    assert_parity([body["data"][0]["embedding"]], minilm.encode([long_text]))


def test_aliases_and_every_layout_serve(http: httpx.Client) -> None:
    for name in (
        "sentence-transformers/all-MiniLM-L6-v2",
        "tiny-embed-alias",
        "tiny-hub-embed",
        "acme/tiny-hub-embed",
        "nested-renamed",
        "org/nested-embed",
        "Qwen3-Embedding-tiny",
    ):
        response = http.post("/v1/embeddings", json={"model": name, "input": "hello"})
        assert response.status_code == 200, (name, response.text)
        assert response.json()["model"] == name


# --- errors that need the engine (the rest: test_validation.py, in process) -------------------------------
ERROR_CASES: list[tuple[str, Any, int, str | None, str | None]] = [
    (
        "dimensions over the model's",
        {"model": "tiny-embed", "input": "x", "dimensions": 33},
        400,
        "dimensions",
        None,
    ),
    ("token id outside the vocabulary", {"model": MINILM, "input": [101, 999999]}, 400, "input", None),
    ("negative token id", {"model": MINILM, "input": [[101, -1]]}, 400, "input", None),
    (
        "over the context",
        {"model": MINILM, "input": ["word " * 400]},
        400,
        "input",
        "context_length_exceeded",
    ),
    (
        "token ids over the context",
        {"model": MINILM, "input": [101] * 300},
        400,
        "input",
        "context_length_exceeded",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "param", "code"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_bad_requests_get_openai_errors(
    http: httpx.Client, case: str, body: Any, status: int, param: str | None, code: str | None
) -> None:
    assert_error(http.post("/v1/embeddings", json=body), status, param, code)


def test_edge_errors_are_the_same_over_real_http(http: httpx.Client) -> None:
    """A sample of the in-process cases, over the real server: its edge is the one under test there."""
    from test_validation import EMBEDDING_CASES

    for _, body, status, param, code in EMBEDDING_CASES[::4]:
        assert_error(http.post("/v1/embeddings", json=body), status, param, code)
    response = http.get("/v1/embeddings")
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"
    huge = {"model": MINILM, "input": ["x" * 1000] * 1200}  # about 1.2 MiB, cap is 1 MiB
    assert_error(http.post("/v1/embeddings", json=huge), 413)


def test_model_that_fails_to_load_gets_503_and_others_keep_serving(http: httpx.Client) -> None:
    first = assert_error(
        http.post("/v1/embeddings", json={"model": "corrupt-embed", "input": "x"}),
        503,
        code="model_load_failed",
    )
    assert "corrupt-embed" in first["message"]
    assert "RuntimeError" in first["message"]  # the cause, not just "failed"
    # The next request, within the backoff, is answered at once with the cause and when to retry.
    again = http.post("/v1/embeddings", json={"model": "corrupt-embed", "input": "x"})
    assert_error(again, 503, code="model_load_failed")
    assert "next try is allowed in" in again.json()["error"]["message"]
    assert int(again.headers["retry-after"]) >= 1
    card = http.get("/v1/models/corrupt-embed").json()
    assert card["state"] == "failed"
    assert "RuntimeError" in card["error"]
    assert card["retry_after_s"] > 0
    health = http.get("/health").json()
    assert health["status"] == "degraded"
    assert "corrupt-embed" in health["failed"]
    assert http.post("/v1/embeddings", json={"model": MINILM, "input": "still here"}).status_code == 200


def test_server_still_serves_after_every_error(http: httpx.Client, minilm) -> None:
    from test_validation import EMBEDDING_CASES

    for _, body, *_ in [*ERROR_CASES, *EMBEDDING_CASES]:
        http.post("/v1/embeddings", json=body)
    # Bad requests fail no model: only the model whose weights are broken (an earlier test) may be failed.
    assert set(http.get("/health").json()["failed"]) <= {"corrupt-embed"}
    response = http.post("/v1/embeddings", json={"model": MINILM, "input": SENTENCES[0]})
    assert_parity([response.json()["data"][0]["embedding"]], minilm.encode([SENTENCES[0]]))


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_responses_match_the_documented_schema(http: httpx.Client, encoding_format: str) -> None:
    from local_llm.protocol.embeddings import EmbeddingResponse

    response = http.post(
        "/v1/embeddings", json={"model": MINILM, "input": SENTENCES[:2], "encoding_format": encoding_format}
    )
    parsed = EmbeddingResponse.model_validate_json(response.content)
    assert [d.index for d in parsed.data] == [0, 1]
    assert parsed.usage.total_tokens == parsed.usage.prompt_tokens > 0
    # The OpenAPI schema documents the same model.
    schema = http.get("/openapi.json").json()
    answers = schema["paths"]["/v1/embeddings"]["post"]["responses"]["200"]
    assert answers["content"]["application/json"]["schema"]["$ref"].endswith("/EmbeddingResponse")
