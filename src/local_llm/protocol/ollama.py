"""Ollama's native API (``/api/...``): requests and answers, in the order of Ollama's docs/api.md.

Requests validate as Ollama's server reads them (Go's ``encoding/json`` into ``api/types.go``), so a
wrong type is a 400 before any engine runs: ``stream`` and ``raw`` are booleans, not strings; an
option's value has its option's type, where a JSON number fills an integer option truncated, as Go
does. Fields clients send that Ollama ignores are accepted (``extra="allow"``): Open WebUI adds
``metadata`` and puts ``num_predict`` beside ``options``, langchain-ollama sends ``tool_call_id``.

Answers are Ollama's objects; the service renders them (``model_dump(exclude_none=True)``), so a
field Ollama leaves out when empty is left out here too.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

from local_llm.protocol.chat import Tool
from local_llm.protocol.keep_alive import KeepAlive

# --- options: Ollama's Modelfile parameters, typed as its server reads them ----------------------


def _integer(value: object) -> object:
    """An integer option: a JSON integer, or a number Go truncates (``int64(float64)``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be of type integer")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return math.trunc(value)
    return value


def _number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be of type float32")
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


def _stop(value: object) -> object:
    """Ollama takes an array of strings; a single string is taken as one stop sequence."""
    if isinstance(value, str):
        return [value]
    return value


OptionInt = Annotated[int, BeforeValidator(_integer)]
OptionFloat = Annotated[float, BeforeValidator(_number)]
OptionStop = Annotated[list[StrictStr], BeforeValidator(_stop)]


class OllamaOptions(BaseModel):
    """``options``: what the engine takes is mapped to our sampling fields (the service says how);
    the runner's settings (threads, GPU layers, batch, mmap, ...) have no meaning here and are ignored
    with a log line, as are options Ollama itself does not know."""

    model_config = ConfigDict(extra="allow")

    num_keep: OptionInt | None = None
    seed: OptionInt | None = None
    num_predict: OptionInt | None = None
    top_k: OptionInt | None = None
    top_p: OptionFloat | None = None
    min_p: OptionFloat | None = None
    typical_p: OptionFloat | None = None
    repeat_last_n: OptionInt | None = None
    temperature: OptionFloat | None = None
    repeat_penalty: OptionFloat | None = None
    presence_penalty: OptionFloat | None = None
    frequency_penalty: OptionFloat | None = None
    mirostat: OptionInt | None = None
    mirostat_tau: OptionFloat | None = None
    mirostat_eta: OptionFloat | None = None
    penalize_newline: StrictBool | None = None
    stop: OptionStop | None = None
    tfs_z: OptionFloat | None = None
    numa: StrictBool | None = None
    num_ctx: OptionInt | None = None
    num_batch: OptionInt | None = None
    num_gpu: OptionInt | None = None
    main_gpu: OptionInt | None = None
    low_vram: StrictBool | None = None
    f16_kv: StrictBool | None = None
    logits_all: StrictBool | None = None
    vocab_only: StrictBool | None = None
    use_mmap: StrictBool | None = None
    use_mlock: StrictBool | None = None
    embedding_only: StrictBool | None = None
    num_thread: OptionInt | None = None


#: ``format``: ``"json"`` (any JSON object), a JSON schema the answer must follow, or none.
Format = Literal["", "json"] | dict[str, Any] | None
#: ``think``: on or off, or a level for models that take one.
Think = StrictBool | Literal["low", "medium", "high"] | None


def _base64_images(value: list[str] | None) -> list[str] | None:
    """Images are base64 (Go decodes them into bytes); anything else is refused as Ollama refuses it."""
    for index, image in enumerate(value or ()):
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"image {index} is not base64") from None
    return value


def _model_named(value: str) -> str:
    if not value:
        raise ValueError("model is required")
    return value


ModelName = Annotated[
    StrictStr, Field(description="The model's served name or alias; `name:latest` is `name`.")
]


# --- /api/chat -----------------------------------------------------------------------------------


class OllamaToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: StrictStr
    # An object (Ollama's form); a JSON text in a string is taken as clients of OpenAI's form send it.
    arguments: dict[str, Any] | StrictStr = Field(default_factory=dict)


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: StrictStr | None = None
    function: OllamaToolCallFunction


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr | None = ""
    thinking: StrictStr | None = None
    images: list[StrictStr] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    # A tool message: the tool that answered (Ollama's), or the call it answers (OpenAI's name for it,
    # which langchain-ollama and Open WebUI send).
    tool_name: StrictStr | None = None
    tool_call_id: StrictStr | None = None

    validate_images = field_validator("images")(_base64_images)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: ModelName
    messages: list[OllamaMessage] = Field(
        default_factory=list, description="An empty list loads the model (with `keep_alive: 0`, unloads it)."
    )
    tools: list[Tool] | None = None
    format: Format = None
    options: OllamaOptions | None = None
    stream: StrictBool | None = Field(None, description="Default true: NDJSON, one object a line.")
    keep_alive: KeepAlive = None
    think: Think = None

    validate_model = field_validator("model")(_model_named)


# --- /api/generate -------------------------------------------------------------------------------


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: ModelName
    prompt: StrictStr | None = Field(
        None, description="Empty: loads the model (with `keep_alive: 0`, unloads it)."
    )
    suffix: StrictStr | None = None
    images: list[StrictStr] | None = None
    format: Format = None
    options: OllamaOptions | None = None
    system: StrictStr | None = None
    template: StrictStr | None = Field(
        None, description="Not supported: the model's own chat template is used (or none, with `raw`)."
    )
    stream: StrictBool | None = Field(None, description="Default true: NDJSON, one object a line.")
    raw: StrictBool | None = False
    keep_alive: KeepAlive = None
    context: list[StrictInt] | None = Field(
        None, description="Deprecated by Ollama; not supported here (no token context is kept)."
    )
    think: Think = None

    validate_model = field_validator("model")(_model_named)
    validate_images = field_validator("images")(_base64_images)


# --- /api/embed, /api/embeddings -------------------------------------------------------------------


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: ModelName
    input: StrictStr | list[StrictStr] | None = Field(
        None, description="A text or a list of texts; empty loads the model and answers no embeddings."
    )
    truncate: StrictBool | None = Field(True, description="Cut inputs longer than the model reads (default).")
    dimensions: StrictInt | None = Field(
        None, ge=0, description="Truncate to this many dimensions and renormalise (Matryoshka models)."
    )
    options: OllamaOptions | None = None
    keep_alive: KeepAlive = None

    validate_model = field_validator("model")(_model_named)


class EmbeddingsRequest(BaseModel):
    """The older ``/api/embeddings``: one prompt, one vector."""

    model_config = ConfigDict(extra="allow")

    model: ModelName
    prompt: StrictStr | None = Field(None, description="Empty: loads the model and answers an empty vector.")
    options: OllamaOptions | None = None
    keep_alive: KeepAlive = None

    validate_model = field_validator("model")(_model_named)


# --- /api/show, and what this server does not do --------------------------------------------------


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    # The older name of ``model``.
    name: StrictStr | None = None
    verbose: StrictBool | None = False


class ModelOperationRequest(BaseModel):
    """``/api/pull``, ``/api/push``, ``/api/create``, ``/api/delete``, ``/api/copy``: read only to name
    the model in the refusal."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    name: StrictStr | None = None
    source: StrictStr | None = None


# --- answers -----------------------------------------------------------------------------------------


class VersionResponse(BaseModel):
    version: str


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str
    family: str
    families: list[str] | None = None
    parameter_size: str
    quantization_level: str


class ListedModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(BaseModel):
    models: list[ListedModel]


class ShowResponse(BaseModel):
    modelfile: str
    parameters: str | None = None
    template: str | None = None
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class RunningModel(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int | None = None


class PsResponse(BaseModel):
    models: list[RunningModel]


class AnswerFunction(BaseModel):
    index: int
    name: str
    arguments: dict[str, Any]


class AnswerToolCall(BaseModel):
    id: str
    function: AnswerFunction


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    thinking: str | None = None
    tool_calls: list[AnswerToolCall] | None = None


class ChatResponse(BaseModel):
    """One object of a chat's stream, or the whole answer; the last is ``done``, with the counts and
    the measured durations (nanoseconds)."""

    model: str
    created_at: str
    message: AnswerMessage
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class GenerateResponse(BaseModel):
    """As :class:`ChatResponse`, the text in ``response``. No ``context`` is sent: no token context
    is kept between requests (Ollama has deprecated it)."""

    model: str
    created_at: str
    response: str
    thinking: str | None = None
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class OllamaEmbeddingResponse(BaseModel):
    embedding: list[float]


class OllamaError(BaseModel):
    """How Ollama answers every failure; a stream that fails after it began ends with one such line."""

    error: str
