"""Anthropic's Messages API on the chat service: a request becomes a :class:`ChatCompletionRequest`,
and the engine's OpenAI answer (or stream) is spoken back in Anthropic's words by
:class:`AnthropicDialect`, as vLLM's own ``AnthropicServingMessages`` does on top of its chat serving.

So a Messages request is admitted, leased, cancelled and kept alive exactly as a chat completion
is, on either engine. What the translation decides:

* ``system`` (a string or text blocks) is the first message; ``tool_use`` blocks are the assistant's
  ``tool_calls`` (arguments as a JSON string); each ``tool_result`` is a ``tool`` message in the place
  it had, so a user turn's text after its tool results becomes a user message after them; images
  are ``image_url`` parts (a text-only model refuses them: a 400); earlier ``thinking`` blocks are
  dropped.
* Server tools (web search, code execution, ...) cannot run here: they are left out, with a warning
  in the log, and a ``tool_choice`` naming one is refused.
* ``tool_choice`` any / tool / none are OpenAI's "required" / a named function / "none";
  ``disable_parallel_tool_use`` is ``parallel_tool_calls: false``.
* ``stop_reason`` comes from the finish reason: ``tool_use`` whenever a tool was called (also for a
  forced tool, where OpenAI says "stop"), ``stop_sequence`` with the string that matched (vLLM
  reports it as the choice's ``stop_reason``), ``max_tokens``, else ``end_turn``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError

from local_llm.engines.chat import ChatResult
from local_llm.errors import InvalidRequestError, LocalLLMError, Subject
from local_llm.protocol.anthropic import (
    CountTokensRequest,
    CountTokensResponse,
    ImageBlock,
    MessageParam,
    MessageResponse,
    MessagesRequest,
    OutputBlock,
    StopReason,
    TextBlock,
    TextOutput,
    ThinkingOutput,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseOutput,
    Usage,
)
from local_llm.protocol.chat import ChatCompletionRequest
from local_llm.server.errors import ANTHROPIC_SHAPE, Failure
from local_llm.server.serving.base import FieldNames
from local_llm.server.serving.chat import ChatService, Dialect, openai_chunks

logger = logging.getLogger(__name__)

MESSAGES_ROUTE = "/v1/messages"
# Engine options by the names a Messages request gives them.
MESSAGES_FIELDS = FieldNames(
    {Subject.PROMPT: "messages"}, options={"stop": "stop_sequences", "parallel_tool_calls": "tool_choice"}
)
# Claude Code's first system block: a per-request hash that would change the prompt's prefix every
# time (vLLM's Anthropic serving leaves it out too, so prefix caching works).
_BILLING_HEADER = "x-anthropic-billing-header"


class AnthropicService:
    """``/v1/messages`` and ``/v1/messages/count_tokens`` through the one chat serving path."""

    def __init__(self, chat: ChatService) -> None:
        self._chat = chat

    async def create(self, request: MessagesRequest) -> ChatResult:
        """The answer as an Anthropic ``message`` body, or its stream of events."""
        return await self._chat.chat(chat_request(request), AnthropicDialect())

    async def count_tokens(self, request: CountTokensRequest) -> CountTokensResponse:
        """The prompt's tokens as the model's chat template renders it (tools included): what
        ``usage.input_tokens`` of the same request's answer says."""
        tokens = await self._chat.count_prompt_tokens(chat_request(request), AnthropicDialect())
        return CountTokensResponse(input_tokens=tokens)


# --- request: Anthropic -> chat completions ---------------------------------------------------------
def chat_request(request: MessagesRequest | CountTokensRequest) -> ChatCompletionRequest:
    """The chat completion ``request`` asks for; a 400 naming the field for what cannot be one."""
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": [
            *_system_messages(request.system, _inline_system(request.messages)),
            *_conversation(request.messages),
        ],
    }
    fields.update(_tool_fields(request))
    if request.keep_alive is not None:
        fields["keep_alive"] = request.keep_alive
    if isinstance(request, MessagesRequest):
        fields["max_tokens"] = request.max_tokens
        sampling = {"temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k}
        fields.update({key: value for key, value in sampling.items() if value is not None})
        if request.stop_sequences:
            fields["stop"] = request.stop_sequences
        if request.stream:
            # Usage on every chunk: the prompt's tokens are known at message_start (vLLM gives them).
            fields["stream"] = True
            fields["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:
        # What the protocol model let through and chat completions refuse (none known): still a 400.
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        where = ".".join(location) or "the request"
        raise InvalidRequestError(
            f"Invalid value for '{where}' as a chat completion: {message}.",
            param=location[0] if location else None,
        ) from None


def _system_messages(system: str | list[TextBlock] | None, inline: list[str]) -> list[dict[str, Any]]:
    """The system prompt, then the text of the system turns among the messages, as one leading system
    message: many chat templates (Qwen's) refuse a system message anywhere but first. Why not kept in
    place where a template allows it: one rule for every template; the price is that a new reminder
    changes the prompt's prefix, so a long conversation gets fewer prefix-cache hits."""
    if isinstance(system, list):
        texts = [block.text for block in system if block.text and not block.text.startswith(_BILLING_HEADER)]
    else:
        texts = [system] if system else []
    merged = "\n\n".join([*texts, *inline])
    return [{"role": "system", "content": merged}] if merged else []


def _inline_system(messages: list[MessageParam]) -> list[str]:
    """The text of the ``system`` turns among ``messages`` (text blocks only: a 400 otherwise)."""
    texts = []
    for index, message in enumerate(messages):
        if message.role != "system":
            continue
        if isinstance(message.content, str):
            texts.append(message.content)
            continue
        for block in message.content:
            if not isinstance(block, TextBlock):
                raise InvalidRequestError(
                    f"messages.{index}: a system turn may hold only text blocks, not '{block.type}'",
                    param="messages",
                )
            texts.append(block.text)
    return [text for text in texts if text]


def _conversation(messages: list[MessageParam]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        if message.role == "system":
            continue  # merged into the leading system prompt (_inline_system)
        if isinstance(message.content, str):
            converted.append({"role": message.role, "content": message.content})
        elif not message.content and not (index == last and message.role == "assistant"):
            raise InvalidRequestError(
                f"messages.{index}: content must not be empty (only a final assistant message may be)",
                param="messages",
            )
        elif message.role == "user":
            converted.extend(_user_turn(message, index))
        else:
            converted.extend(_assistant_turn(message, index))
    return converted


def _user_turn(message: MessageParam, index: int) -> list[dict[str, Any]]:
    """A user turn in order: its tool results as tool messages where they stand, and its text and
    images as user messages between them."""
    turn: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []

    def flush() -> None:
        if parts:
            turn.append({"role": "user", "content": _content(parts)})
            parts.clear()

    for block in message.content:
        if isinstance(block, TextBlock):
            if block.text:
                parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, ToolResultBlock):
            flush()
            turn.append(_tool_message(block))
            images = [_image_part(item) for item in block.content or () if isinstance(item, ImageBlock)]
            if images:
                turn.append({"role": "user", "content": images})
        elif isinstance(block, ToolUseBlock):
            raise InvalidRequestError(
                f"messages.{index}: tool_use blocks belong in assistant messages", param="messages"
            )
        # thinking / redacted_thinking: dropped
    flush()
    return turn


def _assistant_turn(message: MessageParam, index: int) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            if block.text:
                parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(
                {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}
            )
        elif isinstance(block, ImageBlock | ToolResultBlock):
            raise InvalidRequestError(
                f"messages.{index}: {block.type} blocks belong in user messages", param="messages"
            )
        # thinking / redacted_thinking: dropped
    if not parts and not calls:
        return []  # only reasoning: nothing the template can show
    turn: dict[str, Any] = {"role": "assistant", "content": _content(parts) if parts else None}
    if calls:
        turn["tool_calls"] = calls
    return [turn]


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (what every chat template reads); more parts as they are."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return list(parts)


def _image_part(block: ImageBlock) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": block.source.as_url()}}


def _tool_message(block: ToolResultBlock) -> dict[str, Any]:
    """A tool result as the tool's message; one that failed (``is_error``) says so to the model."""
    content = block.content
    if isinstance(content, list):
        content = "\n".join(item.text for item in content if isinstance(item, TextBlock))
    text = content or ""
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _tool_fields(request: MessagesRequest | CountTokensRequest) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` as OpenAI's; server tools left out."""
    tools = [tool for tool in request.tools or () if tool.is_custom]
    skipped = {tool.name: tool.type for tool in request.tools or () if not tool.is_custom}
    if skipped:
        logger.warning(
            "/v1/messages: left out tools this server cannot run: %s",
            ", ".join(f"{name} ({kind})" for name, kind in skipped.items()),
        )
    fields: dict[str, Any] = {}
    if tools:
        fields["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description is not None else {}),
                    "parameters": tool.input_schema,
                    **({"strict": tool.strict} if tool.strict is not None else {}),
                },
            }
            for tool in tools
        ]
    choice = request.tool_choice
    if choice is None:
        return fields
    if choice.type == "tool" and choice.name in skipped:
        raise InvalidRequestError(
            f"tool_choice names the tool '{choice.name}', a server tool, which this server cannot run",
            param="tool_choice",
        )
    if choice.type in ("any", "tool") and not tools:
        raise InvalidRequestError(f"tool_choice '{choice.type}' needs tools", param="tool_choice")
    if choice.type == "tool" and choice.name not in {tool.name for tool in tools}:
        raise InvalidRequestError(
            f"tool_choice names the tool '{choice.name}', which is not among tools", param="tool_choice"
        )
    if choice.type == "auto" and not tools:
        return fields  # nothing to choose from: as if absent
    fields["tool_choice"] = {
        "auto": "auto",
        "any": "required",
        "none": "none",
        "tool": {"type": "function", "function": {"name": choice.name}},
    }[choice.type]
    if choice.disable_parallel_tool_use and tools:
        fields["parallel_tool_calls"] = False
    return fields


# --- answer: chat completions -> Anthropic ----------------------------------------------------------
class AnthropicDialect(Dialect):
    """Anthropic's ``message`` body and its stream of named events, from the engine's OpenAI answer."""

    fields = MESSAGES_FIELDS
    route = MESSAGES_ROUTE
    # Anthropic's stream has no end marker: message_stop (or an error event) is its last event.
    stream_end = b""

    def answer(self, body: bytes) -> bytes:
        completion = json.loads(body)
        choice = completion["choices"][0]
        message = choice.get("message") or {}
        content: list[OutputBlock] = []
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if reasoning:
            content.append(ThinkingOutput(thinking=reasoning))
        if message.get("content"):
            content.append(TextOutput(text=message["content"]))
        calls = message.get("tool_calls") or []
        content.extend(
            ToolUseOutput(
                id=call["id"], name=call["function"]["name"], input=_input(call["function"]["arguments"])
            )
            for call in calls
        )
        if not content:
            content.append(TextOutput(text=""))  # Anthropic's shape of an empty answer
        stop_reason, stop_sequence = _stop_reason(
            choice.get("finish_reason"), choice.get("stop_reason"), bool(calls)
        )
        usage = completion.get("usage") or {}
        answer = MessageResponse(
            id=_message_id(completion.get("id")),
            model=completion.get("model", ""),
            content=content,
            stop_reason=stop_reason,
            stop_sequence=stop_sequence,
            usage=Usage(
                input_tokens=usage.get("prompt_tokens", 0), output_tokens=usage.get("completion_tokens", 0)
            ),
        )
        return answer.model_dump_json().encode()

    def stream(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return _AnthropicStream().events(events)

    def stream_error(self, error: LocalLLMError) -> bytes:
        return _event("error", ANTHROPIC_SHAPE.body(Failure.of(error)))


def _message_id(completion_id: str | None) -> str:
    """``msg_...`` as Anthropic names messages; the engine's id kept in it, for the logs."""
    if not completion_id:
        return f"msg_{uuid.uuid4().hex}"
    return "msg_" + completion_id.removeprefix("chatcmpl-")


def _input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's ``input`` is; ``{}`` for arguments cut short
    (the answer then says max_tokens)."""
    try:
        parsed = json.loads(arguments)
    except (json.JSONDecodeError, TypeError):
        logger.info("/v1/messages: tool call arguments are not complete JSON: %.200s", arguments)
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _stop_reason(finish: str | None, matched: Any, tool_used: bool) -> tuple[StopReason | None, str | None]:
    if finish == "length":
        return "max_tokens", None
    if tool_used:
        return "tool_use", None
    if isinstance(matched, str):  # vLLM: the stop string that matched (an int is a stop token)
        return "stop_sequence", matched
    if finish is None:
        return None, None
    return "end_turn", None


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _AnthropicStream:
    """One answer's stream: OpenAI chunks in, Anthropic events out. Content blocks are numbered in
    the order they open; one is open at a time (text, thinking or a tool call), closed before the
    next opens, so every block's events lie between its content_block_start and content_block_stop."""

    def __init__(self) -> None:
        self._started = False
        self._blocks = 0
        self._open: tuple[str, int] | None = None  # (kind, index); kind is "text", "thinking" or a call's key
        self._calls: dict[int, int] = {}  # OpenAI tool call index -> content block index
        self._tool_used = False
        self._finish: str | None = None
        self._matched: Any = None
        self._usage: dict[str, Any] = {}

    async def events(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Closing this closes the engine's stream, which aborts its generation."""
        chunks = openai_chunks(source)
        try:
            async for chunk in chunks:
                for event in self._translate(chunk):
                    yield event
            for event in self._finished():
                yield event
        finally:
            for stream in (chunks, source):
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

    def _translate(self, chunk: dict[str, Any]) -> list[bytes]:
        events = [] if self._started else [self._start(chunk)]
        self._usage = chunk.get("usage") or self._usage
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                events += self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            if delta.get("content"):
                events += self._open_block("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or ():
                events += self._tool_call(call)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                self._matched = choice.get("stop_reason")
        return events

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        usage = chunk.get("usage") or {}
        message = MessageResponse(
            id=_message_id(chunk.get("id")),
            model=chunk.get("model", ""),
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=Usage(input_tokens=usage.get("prompt_tokens", 0), output_tokens=0),
        )
        return _event("message_start", {"type": "message_start", "message": message.model_dump()}) + _event(
            "ping", {"type": "ping"}
        )

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        """Open a block of ``kind`` unless it is the one open; the one open before is closed first."""
        if self._open is not None and self._open[0] == kind:
            return []
        events = self._close_block()
        self._open = (kind, self._blocks)
        self._blocks += 1
        events.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": self._open[1], "content_block": block},
            )
        )
        return events

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open = self._open[1], None
        return [_event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        if index is None:
            assert self._open is not None
            index = self._open[1]
        return _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        """A call's first delta (with its id and name) opens its tool_use block; its arguments come
        as input_json_delta pieces."""
        events: list[bytes] = []
        position = call.get("index", 0)
        function = call.get("function") or {}
        if call.get("id") and position not in self._calls:
            self._tool_used = True
            block = {"type": "tool_use", "id": call["id"], "name": function.get("name") or "", "input": {}}
            events += self._open_block(f"tool:{position}", block)
            assert self._open is not None
            self._calls[position] = self._open[1]
        arguments = function.get("arguments")
        if arguments and position in self._calls:
            events.append(
                self._delta({"type": "input_json_delta", "partial_json": arguments}, self._calls[position])
            )
        return events

    def _finished(self) -> list[bytes]:
        events = [] if self._started else [self._start({})]
        if self._blocks == 0:  # an empty answer is one empty text block, as in the full answer
            events += self._open_block("text", {"type": "text", "text": ""})
        events += self._close_block()
        stop_reason, stop_sequence = _stop_reason(self._finish or "stop", self._matched, self._tool_used)
        usage = {
            "input_tokens": self._usage.get("prompt_tokens", 0),
            "output_tokens": self._usage.get("completion_tokens", 0),
        }
        events.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": usage,
                },
            )
        )
        events.append(_event("message_stop", {"type": "message_stop"}))
        return events
