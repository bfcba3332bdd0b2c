"""``POST /v1/chat/completions`` and ``POST /v1/completions``: requests, in the order of the OpenAI spec.

These models validate at the edge, so every wrong field gets a 400 naming it before any engine
runs. Fields engines add beyond OpenAI's (vLLM's ``top_k``, ``min_p``, ``repetition_penalty``,
``chat_template_kwargs``, ...) are accepted as extras and passed through; the engine validates them.
Responses are OpenAI's ``chat.completion`` / ``text_completion`` objects as the engine renders them
(vLLM's own serving code), so they are not re-modelled here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from local_llm.protocol.keep_alive import KeepAlive

# --- Messages ------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    """One part of a message's content: ``{"type": "text", "text": ...}``, or an image etc. for
    models that take them (the engine refuses those a text model cannot read)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a content part of type 'text' needs 'text'")
        return self


class TextContentPart(BaseModel):
    """The only part OpenAI allows in system, developer and tool messages."""

    type: Literal["text"]
    text: str


Content = str | list[ContentPart]
TextContent = str | list[TextContentPart]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str | None = None


class SystemMessage(_Message):
    role: Literal["system"]
    content: TextContent


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: TextContent


class UserMessage(_Message):
    role: Literal["user"]
    content: Content


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: Content | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


ChatMessage = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


# --- Tools and response formats -------------------------------------------------------------------


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchema(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    # ``schema`` shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


# --- Sampling fields both routes share ------------------------------------------------------------


class _Sampling(BaseModel):
    """Validated here with OpenAI's ranges; engine-specific extras pass through untouched."""

    model_config = ConfigDict(extra="allow")

    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=128)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None
    keep_alive: KeepAlive = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"keys are token ids; {key!r} is not one")
        return value

    def engine_fields(self) -> dict[str, Any]:
        """The request as the client sent it (only the fields it set), for the engine."""
        return self.model_dump(exclude_unset=True, by_alias=True, exclude={"keep_alive"})


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    logprobs: bool = False
    max_completion_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tool_choice: ToolChoice | None = None
    # OpenAI refuses an empty list (as vLLM does): omit the field instead.
    tools: list[Tool] | None = Field(None, min_length=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def engine_fields(self) -> dict[str, Any]:
        """As the client sent it, less the message fields it set to null: OpenAI reads a null optional
        field as absent, vLLM's message types refuse a null ``name`` (a 400 "Input should be
        'developer'" for a valid request, found by tests/test_schema.py). ``content`` stays: null there
        is an assistant message that only calls tools."""
        fields = super().engine_fields()
        fields["messages"] = [
            {key: value for key, value in message.items() if value is not None or key == "content"}
            for message in fields["messages"]
        ]
        return fields


class CompletionRequest(_Sampling):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(
        cls, value: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if value == "" or (isinstance(value, list) and "" in value):
            raise ValueError("prompt must not be an empty string")
        if isinstance(value, list) and not value:
            raise ValueError("prompt is an empty list")
        if isinstance(value, list) and any(isinstance(item, list) and not item for item in value):
            raise ValueError("prompt holds an empty list of token ids")
        return value
