"""/v1/rerank, /v2/rerank and /rerank over real HTTP: every scorer against its reference implementation,
both request shapes, the cohere SDK, and the errors of the contract."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import RunningServer, assert_error

pytestmark = pytest.mark.server

MINILM = "all-MiniLM-L6-v2"
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Berlin is the capital of Germany.",
    "The capital of France is Paris, on the Seine.",
    "Pandas eat bamboo for most of the day.",
    "巴黎是法国的首都。",
    "A short one.",
]
# Qwen3-Reranker's published prompt (../shared/models.md), written out here independently of the server's.
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def rerank(
    http: httpx.Client, model: str, query: str = QUERY, documents: Any = DOCUMENTS, **extra: Any
) -> Any:
    response = http.post("/v1/rerank", json={"model": model, "query": query, "documents": documents, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def scores_by_index(body: dict[str, Any]) -> np.ndarray:
    """The scores in document order, from a Cohere-shaped answer."""
    scores = np.full(len(body["results"]), np.nan)
    for result in body["results"]:
        scores[result["index"]] = result["relevance_score"]
    return scores


# --- parity with the reference implementations ------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny-cross-encoder", "st-cross-encoder"])
def test_cross_encoder_scores_equal_cross_encoder_predict(http: httpx.Client, zoo: Path, model: str) -> None:
    """A plain BertForSequenceClassification (sigmoid) and an ST CrossEncoder whose config says Identity."""
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(zoo / model), device="cpu")
    documents = [
        *DOCUMENTS,
        "word " * 600,
    ]  # the last one is cut to the model's 512 tokens, as predict cuts it
    expected = reference.predict([(QUERY, doc) for doc in documents])
    got = scores_by_index(rerank(http, model, documents=documents))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # TEI's raw_scores are the logits before the model's activation.
    tei = http.post("/rerank", json={"model": model, "query": QUERY, "texts": documents, "raw_scores": True})
    raw = {item["index"]: item["score"] for item in tei.json()}
    import torch

    logits = reference.predict([(QUERY, doc) for doc in documents], activation_fn=torch.nn.Identity())
    np.testing.assert_allclose([raw[i] for i in range(len(documents))], logits, atol=1e-5, rtol=0)


def qwen3_reference_scores(folder: Path, query: str, documents: list[str], instruction: str) -> np.ndarray:
    """The QwenLM/Qwen3-Embedding README's code, run with transformers on the tiny model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    max_length = min(8192, model.config.max_position_embeddings)
    prefix_tokens = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
    pairs = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" for doc in documents]
    inputs = tokenizer(
        pairs,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt")
    with torch.no_grad():
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().numpy()


def test_llm_reranker_scores_equal_the_published_formula(http: httpx.Client, zoo: Path) -> None:
    documents = [*DOCUMENTS, "Pandas eat bamboo. " * 200]  # the last one is over the tiny model's 512 tokens
    expected = qwen3_reference_scores(zoo / "Qwen3-Reranker-tiny", QUERY, documents, QWEN3_TASK)
    body = rerank(http, "Qwen3-Reranker-tiny", documents=documents)
    np.testing.assert_allclose(scores_by_index(body), expected, atol=1e-5, rtol=0)
    assert body["usage"]["total_tokens"] > 512  # the template's tokens count too

    task = "Given a question, find the passage that answers it"
    custom = rerank(http, "Qwen3-Reranker-tiny", documents=DOCUMENTS, instruction=task)
    expected_custom = qwen3_reference_scores(zoo / "Qwen3-Reranker-tiny", QUERY, DOCUMENTS, task)
    np.testing.assert_allclose(scores_by_index(custom), expected_custom, atol=1e-5, rtol=0)
    assert not np.allclose(expected_custom, expected[: len(DOCUMENTS)])


def cosines(query_vector: np.ndarray, document_vectors: np.ndarray) -> np.ndarray:
    q = query_vector / np.linalg.norm(query_vector)
    d = document_vectors / np.linalg.norm(document_vectors, axis=1, keepdims=True)
    return d @ q


def test_bundled_minilm_reranks_as_cosine_of_its_embeddings(http: httpx.Client, minilm) -> None:
    expected = cosines(minilm.encode(QUERY), minilm.encode(DOCUMENTS))
    np.testing.assert_allclose(scores_by_index(rerank(http, MINILM)), expected, atol=1e-5, rtol=0)


def test_instruction_embedder_uses_its_query_prompt_and_the_requests_instruction(
    http: httpx.Client, zoo: Path
) -> None:
    """Qwen3-Embedding style: the query gets `Instruct: {task}\\nQuery:`, documents nothing."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(zoo / "Qwen3-Embedding-tiny"), device="cpu")
    expected = cosines(model.encode_query(QUERY), model.encode_document(DOCUMENTS))
    got = scores_by_index(rerank(http, "Qwen3-Embedding-tiny"))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    task = "Find the city"
    asked = cosines(model.encode(QUERY, prompt=f"Instruct: {task}\nQuery:"), model.encode_document(DOCUMENTS))
    got = scores_by_index(rerank(http, "Qwen3-Embedding-tiny", instruction=task))
    np.testing.assert_allclose(got, asked, atol=1e-5, rtol=0)


RELEVANCE_CASES = [
    (
        "How do I reset my password?",
        [
            "Our office is closed on public holidays.",
            "To reset your password, open Settings, choose Security and follow the emailed link.",
            "The warranty covers manufacturing defects for two years.",
            "Preheat the oven to 200 degrees before baking the bread.",
        ],
        1,
    ),
    (
        "Which animal eats bamboo?",
        [
            "Giant pandas spend most of the day eating bamboo.",
            "The train to the airport leaves every fifteen minutes.",
            "Interest rates rose sharply in 2022.",
            "Solar panels produce less electricity in winter.",
        ],
        0,
    ),
    (
        "When did the French Revolution begin?",
        [
            "Backups run every night at two o'clock.",
            "Store the medicine below 25 degrees Celsius.",
            "Kubernetes restarts a container when its liveness probe fails.",
            "The French Revolution began in 1789 and reshaped Europe.",
        ],
        3,
    ),
    # all-MiniLM-L6-v2 was trained on English; in Chinese it still finds the passage that shares the words.
    (
        "熊猫吃什么食物？",
        ["今天天气很好，我们去公园散步吧。", "熊猫的主要食物是竹子。", "开往机场的列车每十五分钟一班。"],
        1,
    ),
    ("法国的首都是哪里？", ["熊猫主要吃竹子。", "法国的首都是巴黎。", "系统每天凌晨两点自动备份数据。"], 1),
    (
        "如何重置密码？",
        ["退款将在五至七个工作日内退回。", "长城用来抵御北方的入侵。", "重置密码请打开设置，选择安全选项。"],
        2,
    ),
]


@pytest.mark.parametrize(
    ("query", "documents", "relevant"), RELEVANCE_CASES, ids=[c[0] for c in RELEVANCE_CASES]
)
def test_minilm_ranks_the_relevant_document_first(
    http: httpx.Client, query: str, documents: list[str], relevant: int
) -> None:
    body = rerank(http, MINILM, query=query, documents=documents)
    assert body["results"][0]["index"] == relevant, body


# --- the API shapes ---------------------------------------------------------------------------------------
def test_cohere_shape_sorted_top_n_documents_and_usage(http: httpx.Client, minilm) -> None:
    documents = [DOCUMENTS[0], {"text": DOCUMENTS[1]}, DOCUMENTS[2]]
    body = rerank(http, MINILM, documents=documents, top_n=2, return_documents=True)
    assert set(body) == {"id", "model", "results", "usage"}
    assert body["model"] == MINILM
    assert body["id"].startswith("rerank-")
    assert [r["index"] for r in body["results"]] == [1, 0]
    assert body["results"][0]["document"] == {"text": DOCUMENTS[1]}
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    texts = [QUERY, DOCUMENTS[0], DOCUMENTS[1], DOCUMENTS[2]]
    assert body["usage"]["total_tokens"] == sum(len(minilm.tokenizer(t)["input_ids"]) for t in texts)
    # Without return_documents, no document; top_n past the end is the whole list; top_k is its alias.
    every = rerank(http, MINILM, documents=documents, top_n=50)
    assert len(every["results"]) == 3
    assert all("document" not in r for r in every["results"])
    assert len(rerank(http, MINILM, documents=documents, top_k=1)["results"]) == 1


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_every_route_answers_the_cohere_shape_alike(http: httpx.Client, route: str) -> None:
    body = {"model": "tiny-cross-encoder", "query": QUERY, "documents": DOCUMENTS}
    answer = http.post(route, json=body).json()
    reference = rerank(http, "tiny-cross-encoder")
    assert answer["results"] == reference["results"]


def test_tei_shape_on_rerank(http: httpx.Client) -> None:
    cohere_shaped = rerank(http, "tiny-cross-encoder")
    response = http.post(
        "/rerank",
        json={"model": "tiny-cross-encoder", "query": QUERY, "texts": DOCUMENTS, "return_text": True},
    )
    assert response.status_code == 200, response.text
    ranks = response.json()
    assert isinstance(ranks, list)
    assert [set(r) for r in ranks] == [{"index", "score", "text"}] * len(DOCUMENTS)
    assert [r["index"] for r in ranks] == [r["index"] for r in cohere_shaped["results"]]
    assert [r["score"] for r in ranks] == [r["relevance_score"] for r in cohere_shaped["results"]]
    assert all(r["text"] == DOCUMENTS[r["index"]] for r in ranks)
    plain = http.post(
        "/rerank", json={"model": "tiny-cross-encoder", "query": QUERY, "texts": DOCUMENTS}
    ).json()
    assert all(set(r) == {"index", "score"} for r in plain)


def test_cohere_sdk_v2_and_v1_work_unchanged(server: RunningServer, http: httpx.Client) -> None:
    import cohere

    reference = rerank(http, MINILM)
    v2 = cohere.ClientV2(base_url=server.base_url, api_key="unused", timeout=120)
    answer = v2.rerank(model=MINILM, query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [r.index for r in answer.results] == [r["index"] for r in reference["results"][:3]]
    assert answer.results[0].relevance_score == pytest.approx(reference["results"][0]["relevance_score"])
    assert answer.id
    v1 = cohere.Client(base_url=server.base_url, api_key="unused", timeout=120)
    old = v1.rerank(model=MINILM, query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True)
    assert [r.index for r in old.results] == [r["index"] for r in reference["results"][:2]]
    assert old.results[0].document is not None
    assert old.results[0].document.text == DOCUMENTS[old.results[0].index]


def test_long_documents_are_cut_by_default_and_refused_when_asked(http: httpx.Client) -> None:
    tei = {"model": "tiny-cross-encoder", "query": QUERY, "texts": ["word " * 600], "truncate": False}
    assert_error(http.post("/rerank", json=tei), 400, "texts", "context_length_exceeded")
    long_document = "word " * 600
    cut = rerank(http, "tiny-cross-encoder", documents=[long_document, "short"])
    assert cut["usage"]["total_tokens"] <= 512 + 20
    assert_error(
        http.post(
            "/v1/rerank",
            json={
                "model": "tiny-cross-encoder",
                "query": QUERY,
                "documents": ["ok", long_document],
                "truncate": False,
            },
        ),
        400,
        "documents",
        "context_length_exceeded",
    )


@pytest.mark.parametrize("model", [MINILM, "tiny-cross-encoder", "Qwen3-Reranker-tiny"])
def test_max_tokens_per_doc_cuts_each_document_to_its_first_tokens(
    http: httpx.Client, zoo: Path, minilm_path: Path, model: str
) -> None:
    """Cohere's max_tokens_per_doc: each document scores as its text up to the end of its 3rd token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path if model == MINILM else zoo / model))
    documents = ["The capital of France is Paris, on the Seine.", "Pandas eat bamboo for most of the day."]
    offsets = tokenizer(documents, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    by_hand = rerank(
        http, model, documents=[doc[: spans[2][1]] for doc, spans in zip(documents, offsets, strict=True)]
    )
    cut = rerank(http, model, documents=documents, max_tokens_per_doc=3)
    np.testing.assert_allclose(scores_by_index(cut), scores_by_index(by_hand), atol=1e-6)
    assert cut["usage"] == by_hand["usage"]
    assert cut["usage"]["total_tokens"] < rerank(http, model, documents=documents)["usage"]["total_tokens"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_scores(
    server: RunningServer, http: httpx.Client
) -> None:
    queries = [QUERY, "Which animal eats bamboo?", "巴黎在哪里？", "capital"]
    expected = {q: rerank(http, "Qwen3-Reranker-tiny", query=q)["results"] for q in queries}

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            jobs = [
                client.post(
                    "/v1/rerank",
                    json={"model": "Qwen3-Reranker-tiny", "query": queries[i % 4], "documents": DOCUMENTS},
                )
                for i in range(16)
            ]
            return list(await asyncio.gather(*jobs))

    for i, response in enumerate(asyncio.run(scenario())):
        results = response.json()["results"]
        want = expected[queries[i % 4]]
        assert [r["index"] for r in results] == [r["index"] for r in want]
        np.testing.assert_allclose(
            [r["relevance_score"] for r in results], [r["relevance_score"] for r in want], atol=1e-5
        )


# --- errors that need the engine (the rest: test_validation.py, in process) ----------------------------
BODY = {"model": "tiny-cross-encoder", "query": QUERY, "documents": ["a", "b"]}
ERROR_CASES: list[tuple[str, str, Any, int, str | None, str | None]] = [
    ("instruction to a cross-encoder", "/v1/rerank", {**BODY, "instruction": "x"}, 400, "instruction", None),
    (
        "instruction to MiniLM",
        "/v1/rerank",
        {**BODY, "model": MINILM, "instruction": "x"},
        400,
        "instruction",
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "route", "body", "status", "param", "code"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_bad_rerank_requests_get_openai_errors(
    http: httpx.Client, case: str, route: str, body: Any, status: int, param: str | None, code: str | None
) -> None:
    assert_error(http.post(route, json=body), status, param, code)


def test_the_zoos_rerankers_refuse_embeddings(http: httpx.Client) -> None:
    """Discovery makes them rerankers (test_validation.py checks the refusal on fakes of that kind)."""
    for model in ("Qwen3-Reranker-tiny", "st-cross-encoder"):
        assert_error(
            http.post("/v1/embeddings", json={"model": model, "input": "x"}),
            400,
            "model",
            "model_type_mismatch",
        )


def test_models_list_says_how_each_model_reranks(http: httpx.Client) -> None:
    cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert cards[MINILM]["rerank_scorer"] == "bi-encoder"
    assert cards["tiny-cross-encoder"]["rerank_scorer"] == "cross-encoder"
    assert cards["Qwen3-Reranker-tiny"]["rerank_scorer"] == "llm-yes-no"
    assert cards["tiny-chat"]["rerank_scorer"] is None


def test_rerank_responses_match_the_documented_schema(http: httpx.Client) -> None:
    from local_llm.protocol.rerank import RerankResponse

    RerankResponse.model_validate(rerank(http, MINILM, return_documents=True))
    schema = http.get("/openapi.json").json()
    for route in ("/v1/rerank", "/v2/rerank", "/rerank"):
        assert "200" in schema["paths"][route]["post"]["responses"]
