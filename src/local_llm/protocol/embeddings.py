"""``POST /v1/embeddings``: request and response, in the order of the OpenAI reference."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from local_llm.protocol.keep_alive import KeepAlive

TokenIds = list[StrictInt]


class EmbeddingRequest(BaseModel):
    # Unknown fields are ignored (as vLLM does), so clients that send extras keep working.
    model_config = ConfigDict(extra="ignore")

    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds] = Field(
        description="A string, a list of strings, a list of token ids, or a list of lists of token ids "
        "(ids of the model's own tokenizer, used as given)."
    )
    model: StrictStr
    keep_alive: KeepAlive = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(
        None, gt=0, description="Truncate to this many dimensions and renormalise (Matryoshka models)."
    )
    user: str | None = None
    # Extension (TEI's name): cut inputs longer than the model's limit instead of answering 400.
    truncate: StrictBool = False

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[str] | list[int] | list[list[int]]) -> object:
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
            return value
        if not value:
            raise ValueError("input must not be an empty list")
        first = value[0]
        if isinstance(first, str) and any(not text for text in value):
            raise ValueError("input must not contain empty strings")
        if isinstance(first, list) and any(not ids for ids in value):
            raise ValueError("input must not contain empty token lists")
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    # A list of floats, or with encoding_format=base64 the float32 little-endian bytes in base64.
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
