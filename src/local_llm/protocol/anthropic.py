"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API, in the
order of its reference (docs.anthropic.com/en/api/messages).

Requests validate at the edge, so a wrong field gets a 400 in Anthropic's error shape before any
engine runs. Clients (Claude Code above all) send fields this server has no use for: ``thinking``,
``cache_control`` on blocks, ``service_tier``, ``context_management``, ``output_config``,
``container``, ``mcp_servers``, ...; they are accepted as extras and ignored. The answer models are
what the route renders (server/serving/anthropic.py) and what the OpenAPI document declares.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from local_llm.protocol.keep_alive import KeepAlive

# What a tool may be called, here as in OpenAI's function names (the engine's side of a tool).
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _string_or_blocks(value: Any) -> str:
    """Content is a string or a list of blocks, told apart by the value's type, so a list's errors
    name the block that is wrong (not "Input should be a valid string")."""
    return "string" if isinstance(value, str) else "blocks"


# --- Content blocks -------------------------------------------------------------------------------


class _Block(BaseModel):
    # ``cache_control``, ``citations`` and the like ride along and are ignored.
    model_config = ConfigDict(extra="allow")


class TextBlock(_Block):
    type: Literal["text"]
    text: str


class ImageSource(_Block):
    """An image as base64 data (``media_type`` + ``data``) or by ``url``."""

    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ImageSource:
        if self.type == "base64" and not (self.media_type and self.data):
            raise ValueError("a base64 image source needs 'media_type' and 'data'")
        if self.type == "url" and not self.url:
            raise ValueError("a url image source needs 'url'")
        return self

    def as_url(self) -> str:
        """The image as a URL an OpenAI ``image_url`` part takes (a data URI for base64)."""
        if self.type == "url":
            return self.url or ""
        return f"data:{self.media_type};base64,{self.data}"


class ImageBlock(_Block):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ToolResultContent = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]
ToolResultBody = Annotated[
    Annotated[str, Tag("string")] | Annotated[list[ToolResultContent], Tag("blocks")],
    Discriminator(_string_or_blocks),
]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str
    content: ToolResultBody | None = None
    is_error: bool | None = None


class ThinkingBlock(_Block):
    """Earlier reasoning, sent back by clients in the history: dropped, as its signature means
    nothing here."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Block):
    type: Literal["redacted_thinking"]
    data: str | None = None


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


MessageContent = Annotated[
    Annotated[str, Tag("string")] | Annotated[list[ContentBlock], Tag("blocks")],
    Discriminator(_string_or_blocks),
]
SystemPrompt = Annotated[
    Annotated[str, Tag("string")] | Annotated[list[TextBlock], Tag("blocks")],
    Discriminator(_string_or_blocks),
]


class MessageParam(BaseModel):
    """A turn. ``system`` turns stand between the others in Claude Code's requests (its per-turn
    reminders, its list of agents): the service merges them into the leading system prompt."""

    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant", "system"]
    content: MessageContent


# --- Tools ----------------------------------------------------------------------------------------


class ToolParam(BaseModel):
    """A client tool (``type`` absent or ``custom``: the model calls it, the client runs it), or one of
    Anthropic's server tools (``web_search_20250305``, ``bash_20250124``, ...), which this server
    cannot run: those are left out of the request, with a warning in the log."""

    model_config = ConfigDict(extra="allow")

    type: str | None = None
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    # Calls follow input_schema exactly (constrained decoding), as OpenAI's strict functions do.
    strict: bool | None = None

    @property
    def is_custom(self) -> bool:
        return self.type in (None, "custom")

    @model_validator(mode="after")
    def _custom_tool_is_complete(self) -> ToolParam:
        if not self.is_custom:
            return self
        if self.input_schema is None:
            raise ValueError(f"tool '{self.name}' needs 'input_schema'")
        if not TOOL_NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {TOOL_NAME.pattern}")
        return self


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _tool_has_name(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs 'name'")
        return self


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    user_id: str | None = None


# --- Requests -------------------------------------------------------------------------------------


class _Prompt(BaseModel):
    """What both routes read: the conversation, its system prompt and its tools."""

    model_config = ConfigDict(extra="allow")

    messages: list[MessageParam] = Field(min_length=1)
    model: str
    system: SystemPrompt | None = None
    tool_choice: ToolChoice | None = None
    tools: list[ToolParam] | None = None
    # This server's own (as on every generating route): how long the model stays loaded after.
    keep_alive: KeepAlive = None


class MessagesRequest(_Prompt):
    max_tokens: int = Field(ge=1)
    metadata: Metadata | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)


class CountTokensRequest(_Prompt):
    pass


# --- Answers --------------------------------------------------------------------------------------


class TextOutput(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingOutput(BaseModel):
    """The model's reasoning, when its reasoning parser separates it (Qwen3, DeepSeek-R1, ...)."""

    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""


class ToolUseOutput(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


OutputBlock = Annotated[TextOutput | ThinkingOutput | ToolUseOutput, Field(discriminator="type")]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class MessageResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[OutputBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class CountTokensResponse(BaseModel):
    input_tokens: int


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Every failure under /v1/messages (server/errors.py's Anthropic shape)."""

    type: Literal["error"]
    error: AnthropicErrorDetail
