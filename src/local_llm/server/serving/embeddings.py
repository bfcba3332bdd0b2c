"""The embeddings service: validates a request against its model, runs the engine, shapes the answer."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import orjson

from local_llm.config import Settings
from local_llm.engines import EmbeddingEngine, TokenIds
from local_llm.engines.base import Capability
from local_llm.errors import ContextLengthExceededError, InvalidRequestError, Subject
from local_llm.manager import ModelManager
from local_llm.protocol.embeddings import EmbeddingRequest
from local_llm.server.serving.base import Admission, FieldNames, Serving

ROUTE = "/v1/embeddings"
FIELDS = FieldNames({Subject.INPUT: "input"})


class EmbeddingsService:
    def __init__(self, manager: ModelManager, admission: Admission, settings: Settings) -> None:
        self._serving: Serving[EmbeddingEngine] = Serving(
            manager, admission, settings, Capability.EMBEDDINGS, ROUTE
        )
        self._settings = settings

    async def create(self, request: EmbeddingRequest) -> bytes:
        """The JSON body of the answer, shaped as :class:`EmbeddingResponse`."""
        spec = self._serving.resolve(request.model)
        inputs = _as_input_list(request.input)
        if len(inputs) > self._settings.max_inputs_per_request:
            raise InvalidRequestError(
                f"{len(inputs)} inputs in one request; at most {self._settings.max_inputs_per_request} "
                "are accepted (LLM_MAX_INPUTS_PER_REQUEST).",
                param="input",
            )
        if request.dimensions is not None and not spec.options.matryoshka:
            raise InvalidRequestError(
                f"Model '{spec.name}' is not Matryoshka-trained, so truncated embeddings would lose meaning. "
                "An operator who wants it anyway sets `matryoshka: true` for the model in models.yaml.",
                param="dimensions",
            )

        async def embed(engine: EmbeddingEngine) -> tuple[np.ndarray, int]:
            if request.dimensions is not None and request.dimensions > engine.dimension:
                raise InvalidRequestError(
                    f"dimensions is {request.dimensions}, but model '{spec.name}' has {engine.dimension}.",
                    param="dimensions",
                )
            token_lists = await _fit_to_context(engine, inputs, request.truncate)
            return await engine.embed(token_lists), sum(len(ids) for ids in token_lists)

        vectors, tokens = await self._serving.call(
            spec, embed, fields=FIELDS, inputs=len(inputs), keep_alive_s=request.keep_alive
        )
        if request.dimensions is not None:
            vectors = truncate_and_renormalise(vectors, request.dimensions)
        return render_response(vectors, request.encoding_format, request.model, tokens)


# One input as the API accepts it: a text, or token ids of the model's own vocabulary.
EmbeddingInput = str | TokenIds


def _as_input_list(value: str | list[str] | list[int] | list[list[int]]) -> list[EmbeddingInput]:
    """One shape for the four the API accepts: a list of strings or of token-id lists."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [list(value)]  # a single list of token ids
    return list(value)  # type: ignore[arg-type]  # pydantic validated: all strings or all id lists


async def _fit_to_context(
    engine: EmbeddingEngine, inputs: list[EmbeddingInput], truncate: bool
) -> list[TokenIds]:
    """Every input as token ids; over-long ones refused, or cut when the client asked to."""
    limit = engine.max_input_tokens
    texts = [item for item in inputs if isinstance(item, str)]
    if texts and len(texts) != len(inputs):
        raise InvalidRequestError("input mixes strings and token ids", param="input")
    if texts:
        token_lists = await engine.tokenize(texts, truncate)
    else:
        token_lists = [item for item in inputs if isinstance(item, list)]
        _check_token_ids(token_lists, engine.vocab_size)
        if truncate:
            token_lists = [ids[:limit] for ids in token_lists]
    too_long = [i for i, ids in enumerate(token_lists) if len(ids) > limit]
    if too_long:
        first = too_long[0]
        raise ContextLengthExceededError(
            f"Input {first} has {len(token_lists[first])} tokens, but model '{engine.spec.name}' reads at "
            f"most {limit} ({len(too_long)} input(s) too long). Shorten them, or send "
            '"truncate": true to cut them.',
            param="input",
        )
    return token_lists


def _check_token_ids(token_lists: Sequence[list[int]], vocab_size: int) -> None:
    for index, ids in enumerate(token_lists):
        bad = next((t for t in ids if t < 0 or t >= vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(
                f"Input {index} has token id {bad}, outside the model's vocabulary [0, {vocab_size}).",
                param="input",
            )


def truncate_and_renormalise(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dimensions`` and scale back to unit length."""
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return np.divide(cut, norms, out=np.zeros_like(cut), where=norms > 0)


def render_response(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> bytes:
    """Serialise an :class:`EmbeddingResponse` straight from the float32 rows.

    orjson writes each float32 in its shortest exact form: the body is about half the size of
    Python floats' repr and five times faster to produce, and clients parse it twice as fast.
    base64 is float32 little-endian bytes, as OpenAI sends it.
    """
    rows: list[np.ndarray] | list[str] = (
        [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
        if encoding_format == "base64"
        else list(np.ascontiguousarray(vectors, dtype=np.float32))
    )
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
