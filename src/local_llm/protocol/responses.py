"""``POST /v1/responses``: OpenAI's Responses request, in the order of the spec.

What Codex CLI and the OpenAI Agents SDK speak. The request is validated here, so a wrong field gets a
400 naming it before any engine runs; the service (``server/serving/responses.py``) turns it into a
chat request. Input items and tools of kinds this server cannot run are kept as sent (``type`` and
whatever else) so the service can name them in its refusal, or log that it ignored them: a client
sending a hosted tool never meets a 500. Fields OpenAI defines that change nothing here (``include``,
``prompt_cache_key``, ``service_tier``, ``truncation``, ...) are accepted and ignored, as extras.
Responses are built by the service as OpenAI's ``response`` objects, not re-modelled here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from local_llm.protocol.chat import JsonSchema
from local_llm.protocol.keep_alive import KeepAlive

# --- input ---------------------------------------------------------------------------------------


class InputContentPart(BaseModel):
    """One part of a message: ``input_text`` / ``output_text`` (``text``), ``input_image``
    (``image_url``), ``refusal``; others (``input_file``, ``input_audio``) are refused by the service."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_parts_have_text(self) -> InputContentPart:
        if self.type in ("input_text", "output_text") and self.text is None:
            raise ValueError(f"a content part of type '{self.type}' needs 'text'")
        return self


class MessageItem(BaseModel):
    """A message, with or without ``"type": "message"`` (the SDK's EasyInputMessage)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputContentPart]


class FunctionCallItem(BaseModel):
    """A function call the model made earlier, sent back as history."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(BaseModel):
    """The client's result for a function call."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputContentPart]


class OtherItem(BaseModel):
    """Any other item type (reasoning, item_reference, local_shell_call, ...): the service drops
    reasoning (the model reasons afresh) and refuses the rest, naming the type."""

    model_config = ConfigDict(extra="allow")

    type: str


def _item_kind(value: Any) -> str:
    """Which model reads an input item: by its ``type`` (a message may omit it)."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind is None or kind == "message":
        return "message"
    return kind if kind in ("function_call", "function_call_output") else "other"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_kind),
]


# --- tools and text format --------------------------------------------------------------------------


class FunctionTool(BaseModel):
    """``{"type": "function", "name", "description", "parameters", "strict"}`` (flat, unlike chat's)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class HostedTool(BaseModel):
    """A tool OpenAI runs itself (web_search, file_search, local_shell, mcp, custom, ...): nothing here
    can run it; the service ignores it with a warning in the log."""

    model_config = ConfigDict(extra="allow")

    type: str


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "function" if kind == "function" else "hosted"


ResponsesTool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[HostedTool, Tag("hosted")],
    Discriminator(_tool_kind),
]


class FunctionToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    name: str


class OtherToolChoice(BaseModel):
    """``{"type": "web_search_preview"}``, ``{"type": "allowed_tools", ...}``, ``{"type": "mcp"}`` ..."""

    model_config = ConfigDict(extra="allow")

    type: str


def _tool_choice_kind(value: Any) -> str:
    if isinstance(value, str):
        return "mode"
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "function" if kind == "function" else "other"


ResponsesToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("mode")]
    | Annotated[FunctionToolChoice, Tag("function")]
    | Annotated[OtherToolChoice, Tag("other")],
    Discriminator(_tool_choice_kind),
]


class TextFormatText(BaseModel):
    type: Literal["text"]


class TextFormatJsonObject(BaseModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(JsonSchema):
    """Flat, unlike chat's ``response_format``: ``{"type": "json_schema", "name", "schema", "strict"}``."""

    type: Literal["json_schema"]


TextFormat = Annotated[
    TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")
]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormat | None = None


class Reasoning(BaseModel):
    """Accepted so clients that always send it work; models here reason (or not) as their template
    makes them, and what they reason comes back as a ``reasoning`` output item."""

    model_config = ConfigDict(extra="allow")

    effort: str | None = None
    summary: str | None = None


# --- the request -----------------------------------------------------------------------------------


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    background: bool | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    metadata: dict[str, str] | None = None
    model: str
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    reasoning: Reasoning | None = None
    store: bool | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    text: TextConfig | None = None
    tool_choice: ResponsesToolChoice | None = None
    tools: list[ResponsesTool] | None = None
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None
    keep_alive: KeepAlive = None

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        if value == "" or value == []:
            raise ValueError("input is empty: send a string or at least one item")
        return value
