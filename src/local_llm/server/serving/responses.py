"""OpenAI's Responses API on top of the chat service: what Codex CLI and the Agents SDK speak.

A Responses request becomes a chat request (:func:`to_chat_request`): ``instructions`` the system
message, input items the messages (function calls and their outputs as tool calls and tool
messages), function tools the chat tools, ``text.format`` the ``response_format``. It is then served
as chat is (ChatService: permit, lease, engine), and :class:`ResponsesDialect` turns the engine's
``chat.completion`` (or its stream of chunks) into a ``response`` object (or the Responses event
sequence, ``response.created`` ... ``response.completed``).

Why not vLLM's own ``OpenAIServingResponses``, as the chat route reuses vLLM's chat serving: it
renders and generates through the engine client itself, so the transformers engine would need a
second implementation of the same API; its store is unbounded (its own FIXME) and off unless an
environment variable is set; its output parsing is the chat parsers' anyway. One translation over the
chat path serves both engines, with our admission, leases and errors, and a store that is bounded.

``store`` (OpenAI's default: true) keeps the response and its conversation in :class:`ResponseStore`,
at most LLM_RESPONSES_STORE_SIZE of them, least recently used out first; ``previous_response_id``
continues a stored conversation (its ``instructions`` are not carried over, as OpenAI defines it), and
``GET``/``DELETE /v1/responses/{id}`` read and remove one.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from local_llm.errors import InvalidRequestError, LocalLLMError, ResponseNotFoundError, Subject
from local_llm.protocol.chat import ChatCompletionRequest
from local_llm.protocol.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    FunctionToolChoice,
    InputContentPart,
    MessageItem,
    OtherItem,
    ResponsesRequest,
    TextFormatJsonObject,
    TextFormatJsonSchema,
)
from local_llm.server.errors import Failure
from local_llm.server.serving.base import FieldNames
from local_llm.server.serving.chat import ChatResult, ChatService, Dialect, openai_chunks

logger = logging.getLogger(__name__)

RESPONSES_ROUTE = "/v1/responses"
RESPONSES_FIELDS = FieldNames(
    {Subject.PROMPT: "input"},
    options={"max_tokens": "max_output_tokens", "response_format": "text", "messages": "input"},
)
# Input item types that carry nothing a chat model reads again: dropped from the history.
_DROPPED_ITEMS = frozenset({"reasoning"})
# Fields beyond OpenAI's Responses that a request may carry (the SDK's ``extra_body``) and the chat
# engines take: passed on. Other unknown fields (OpenAI's ``include``, ``service_tier``, ...) change
# nothing here and are not handed to an engine that might read them differently.
CHAT_EXTRAS = (
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "chat_template_kwargs",
)
# A chat field the translation filled, by the Responses field it came from.
_CHAT_TO_RESPONSES = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text"}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- the store -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    # The conversation up to and with this response's output, as chat messages, without instructions.
    conversation: tuple[dict[str, Any], ...]


class ResponseStore:
    """The last ``capacity`` stored responses, least recently used out first (0: none are kept)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, entry: StoredResponse) -> None:
        if self.capacity <= 0:
            return
        self._entries[entry.response["id"]] = entry
        self._entries.move_to_end(entry.response["id"])
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        return self._entries.pop(response_id, None) is not None


# --- request translation ----------------------------------------------------------------------------
def _text_content(parts: str | Sequence[InputContentPart], where: str) -> str | list[dict[str, Any]]:
    """Text-only content (system, developer, assistant, a function's output) in chat's terms: text
    parts stay parts, so the engine joins them as it joins a chat message's."""
    if isinstance(parts, str):
        return parts
    content = []
    for part in parts:
        if part.type in ("input_text", "output_text", "text"):
            content.append({"type": "text", "text": part.text or ""})
        elif part.type == "refusal":
            content.append({"type": "text", "text": str(getattr(part, "refusal", "") or "")})
        else:
            raise InvalidRequestError(
                f"{where}: a content part of type '{part.type}' cannot be read here; send text.",
                param="input",
            )
    return content


def _user_content(parts: str | Sequence[InputContentPart]) -> str | list[dict[str, Any]]:
    """A user message's content in chat's terms: text parts, and images as ``image_url`` parts."""
    if isinstance(parts, str):
        return parts
    content: list[dict[str, Any]] = []
    for part in parts:
        if part.type in ("input_text", "output_text"):
            content.append({"type": "text", "text": part.text})
        elif part.type == "input_image":
            url = getattr(part, "image_url", None)
            if not isinstance(url, str) or not url:
                raise InvalidRequestError(
                    "an input_image part needs an 'image_url' (file_id is not supported)", param="input"
                )
            content.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise InvalidRequestError(
                f"a content part of type '{part.type}' cannot be read here; send input_text or input_image.",
                param="input",
            )
    return content


def input_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as chat messages (no instructions). Consecutive function calls become one
    assistant message with several tool calls, joined to the assistant text just before them."""
    if isinstance(request.input, str):
        return [{"role": "user", "content": request.input}]
    messages: list[dict[str, Any]] = []
    for item in request.input:
        if isinstance(item, MessageItem):
            if item.role == "user":
                messages.append({"role": "user", "content": _user_content(item.content)})
            else:
                messages.append(
                    {"role": item.role, "content": _text_content(item.content, f"a {item.role} message")}
                )
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            output = _text_content(item.output, "a function_call_output")
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        elif isinstance(item, OtherItem) and item.type in _DROPPED_ITEMS:
            continue
        else:
            raise InvalidRequestError(
                f"Input items of type '{item.type}' are not supported here; send messages, function_call "
                "and function_call_output items.",
                param="input",
            )
    return messages


def _function_tools(request: ResponsesRequest) -> list[FunctionTool]:
    tools = [tool for tool in request.tools or () if isinstance(tool, FunctionTool)]
    ignored = sorted({tool.type for tool in request.tools or () if not isinstance(tool, FunctionTool)})
    if ignored:
        logger.warning(
            "responses: ignoring tools this server cannot run (%s); the model sees only function tools",
            ", ".join(ignored),
        )
    return tools


def _tool_choice(request: ResponsesRequest, tools: Sequence[FunctionTool]) -> Any:
    choice = request.tool_choice
    if choice is None:
        return None
    if isinstance(choice, FunctionToolChoice):
        if choice.name not in {tool.name for tool in tools}:
            raise InvalidRequestError(
                f"tool_choice names the function '{choice.name}', which is not among tools",
                param="tool_choice",
            )
        return {"type": "function", "function": {"name": choice.name}}
    if not isinstance(choice, str):
        raise InvalidRequestError(
            f"tool_choice of type '{choice.type}' needs a tool this server cannot run; use 'auto', "
            "'required', 'none' or a function.",
            param="tool_choice",
        )
    if choice == "required" and not tools:
        raise InvalidRequestError("tool_choice 'required' needs function tools", param="tool_choice")
    if choice == "auto" and not tools:
        return None  # the hosted tools it could have chosen were ignored
    return choice


def _response_format(request: ResponsesRequest) -> dict[str, Any] | None:
    text_format = request.text.format if request.text is not None else None
    if isinstance(text_format, TextFormatJsonSchema):
        schema = text_format.model_dump(by_alias=True, exclude_none=True, exclude={"type"})
        return {"type": "json_schema", "json_schema": schema}
    if isinstance(text_format, TextFormatJsonObject):
        return {"type": "json_object"}
    return None


def to_chat_request(request: ResponsesRequest, history: Sequence[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request that answers ``request``, after the stored conversation ``history``."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages += [*history, *input_messages(request)]
    tools = _function_tools(request)
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
        "response_format": _response_format(request),
        "user": request.user,
        "stream": request.stream,
        "stream_options": {"include_usage": True} if request.stream else None,
        "keep_alive": request.keep_alive,
    }
    if tools:
        fields["tools"] = [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in tools
        ]
    fields["tool_choice"] = _tool_choice(request, tools)
    extras = request.model_extra or {}
    fields.update({key: extras[key] for key in CHAT_EXTRAS if key in extras})
    try:
        return ChatCompletionRequest.model_validate(
            {key: value for key, value in fields.items() if value is not None}
        )
    except ValidationError as exc:
        # What the items said cannot be a chat request (only reasoning items, a bad extra): a 400.
        first = exc.errors()[0]
        location = first.get("loc", ())
        field = str(location[0]) if location else "input"
        detail = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InvalidRequestError(
            f"The request cannot be answered as sent: {detail} (in '{field}').",
            param=_CHAT_TO_RESPONSES.get(field, field),
        ) from None


# --- answer translation ---------------------------------------------------------------------------
def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    details = usage.get("prompt_tokens_details") or {}
    return {
        "input_tokens": usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0},
        "output_tokens": usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens", 0),
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": "completed",
    }


def _function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


class ResponsesDialect(Dialect):
    """One request's answer as a ``response`` object or its event stream; stores it when asked."""

    fields = RESPONSES_FIELDS
    route = RESPONSES_ROUTE
    stream_end = b""  # the stream's last event (completed, incomplete or failed) is its end

    def __init__(
        self, request: ResponsesRequest, history: Sequence[dict[str, Any]], store: ResponseStore | None
    ) -> None:
        self._request = request
        self._history = tuple(history)
        self._store = store
        self._id = _new_id("resp")
        self._created_at = int(time.time())
        self._sequence = 0
        self._output: list[dict[str, Any]] = []

    # The response object, as OpenAI's SDK reads it (every required field present).
    def _response(
        self,
        status: str,
        usage: dict[str, Any] | None = None,
        *,
        incomplete: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        request = self._request
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "metadata": request.metadata or {},
            "model": request.model,
            "output": list(self._output),
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": request.previous_response_id,
            "reasoning": request.reasoning.model_dump(exclude_none=True) if request.reasoning else None,
            "store": self._store is not None,
            "temperature": request.temperature,
            "text": {
                "format": (
                    request.text.format.model_dump(by_alias=True, exclude_none=True)
                    if request.text and request.text.format
                    else {"type": "text"}
                )
            },
            "tool_choice": _shown_tool_choice(request),
            "tools": [tool.model_dump(exclude_none=True) for tool in request.tools or ()],
            "top_p": request.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": request.user,
        }

    def _finish(self, finish_reason: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
        """The final response object; kept in the store when the request asked for it."""
        incomplete = "max_output_tokens" if finish_reason == "length" else None
        response = self._response(
            "incomplete" if incomplete else "completed", _usage(usage), incomplete=incomplete
        )
        if self._store is not None:
            self._store.put(
                StoredResponse(
                    response, (*self._history, *input_messages(self._request), *self._as_messages())
                )
            )
        return response

    def _as_messages(self) -> list[dict[str, Any]]:
        """This response's output as chat history for the next turn."""
        text = "".join(
            part["text"] for item in self._output if item["type"] == "message" for part in item["content"]
        )
        calls = [
            {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            for item in self._output
            if item["type"] == "function_call"
        ]
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = calls
        return [message]

    # --- finished answers -------------------------------------------------------------------------
    def answer(self, body: bytes) -> bytes:
        completion = json.loads(body)
        choice = completion["choices"][0]
        message = choice.get("message") or {}
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if reasoning:
            self._output.append(_reasoning_item(_new_id("rs"), reasoning))
        if message.get("content"):
            self._output.append(_message_item(_new_id("msg"), message["content"]))
        for call in message.get("tool_calls") or ():
            function = call["function"]
            self._output.append(
                _function_call_item(
                    _new_id("fc"), call["id"], function["name"], function["arguments"], "completed"
                )
            )
        return json.dumps(self._finish(choice.get("finish_reason"), completion.get("usage"))).encode()

    # --- streams ----------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n".encode()

    async def stream(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        yield self._event("response.created", response=self._response("in_progress"))
        yield self._event("response.in_progress", response=self._response("in_progress"))
        open_item: _OpenItem | None = None
        calls: dict[int, _OpenItem] = {}
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        async for chunk in openai_chunks(events):
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                finish_reason = choice.get("finish_reason") or finish_reason
                for kind, text in (
                    ("reasoning", delta.get("reasoning") or delta.get("reasoning_content")),
                    ("message", delta.get("content")),
                ):
                    if not text:
                        continue
                    if open_item is None or open_item.kind != kind:
                        for event in self._close(open_item):
                            yield event
                        open_item = _OpenItem(
                            kind, len(self._output), _new_id("rs" if kind == "reasoning" else "msg")
                        )
                        for event in self._open(open_item):
                            yield event
                    open_item.text += text
                    yield self._text_delta(open_item, text)
                for call in delta.get("tool_calls") or ():
                    index = call.get("index", 0)
                    function = call.get("function") or {}
                    item = calls.get(index)
                    if item is None:
                        for event in self._close(open_item):
                            yield event
                        item = _OpenItem("function_call", len(self._output), _new_id("fc"))
                        item.call_id = call.get("id") or _new_id("call")
                        item.name = function.get("name") or ""
                        calls[index] = open_item = item
                        for event in self._open(item):
                            yield event
                    elif open_item is not item:
                        # Parallel calls arrive one after another; a return to an earlier one would
                        # interleave items, which the Responses stream cannot say.
                        for event in self._close(open_item):
                            yield event
                        open_item = item
                    arguments = function.get("arguments") or ""
                    if arguments:
                        item.text += arguments
                        yield self._event(
                            "response.function_call_arguments.delta",
                            item_id=item.item_id,
                            output_index=item.output_index,
                            delta=arguments,
                        )
        for event in self._close(open_item):
            yield event
        final = self._finish(finish_reason, usage)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield self._event(kind, response=final)

    def _open(self, item: _OpenItem) -> list[bytes]:
        placeholder = item.rendered("in_progress", text="")
        self._output.append(placeholder)
        events = [self._event("response.output_item.added", output_index=item.output_index, item=placeholder)]
        if item.kind in ("message", "reasoning"):  # a function call has no content parts
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.item_id,
                    output_index=item.output_index,
                    content_index=0,
                    part=placeholder["content"][0],
                )
            )
        return events

    def _text_delta(self, item: _OpenItem, text: str) -> bytes:
        if item.kind == "reasoning":
            return self._event(
                "response.reasoning_text.delta",
                item_id=item.item_id,
                output_index=item.output_index,
                content_index=0,
                delta=text,
            )
        return self._event(
            "response.output_text.delta",
            item_id=item.item_id,
            output_index=item.output_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _close(self, item: _OpenItem | None) -> list[bytes]:
        if item is None or item.closed:
            return []
        item.closed = True
        done = item.rendered("completed")
        self._output[item.output_index] = done
        where = {"item_id": item.item_id, "output_index": item.output_index}
        events = []
        if item.kind == "message":
            events.append(
                self._event(
                    "response.output_text.done", **where, content_index=0, text=item.text, logprobs=[]
                )
            )
            events.append(
                self._event("response.content_part.done", **where, content_index=0, part=done["content"][0])
            )
        elif item.kind == "reasoning":
            events.append(
                self._event("response.reasoning_text.done", **where, content_index=0, text=item.text)
            )
            events.append(
                self._event("response.content_part.done", **where, content_index=0, part=done["content"][0])
            )
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done", **where, name=item.name, arguments=item.text
                )
            )
        events.append(self._event("response.output_item.done", output_index=item.output_index, item=done))
        return events

    def stream_error(self, error: LocalLLMError) -> bytes:
        """``response.failed``, with the error as OpenAI's error object names it."""
        failure = Failure.of(error)
        detail = {"code": failure.code or failure.error_type, "message": failure.message}
        return self._event("response.failed", response=self._response("failed", error=detail))


@dataclass
class _OpenItem:
    """An output item being streamed: a message, a reasoning text, or a function call."""

    kind: str
    output_index: int
    item_id: str
    text: str = ""
    call_id: str = ""
    name: str = ""
    closed: bool = False

    def rendered(self, status: str, text: str | None = None) -> dict[str, Any]:
        shown = self.text if text is None else text
        if self.kind == "message":
            return _message_item(self.item_id, shown, status)
        if self.kind == "reasoning":
            return _reasoning_item(self.item_id, shown)
        return _function_call_item(self.item_id, self.call_id, self.name, shown, status)


def _shown_tool_choice(request: ResponsesRequest) -> Any:
    choice = request.tool_choice
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else choice.model_dump(exclude_none=True)


# --- the service ------------------------------------------------------------------------------------
class ResponsesService:
    def __init__(self, chat: ChatService, store: ResponseStore) -> None:
        self._chat = chat
        self._store = store

    async def create(self, request: ResponsesRequest) -> ChatResult:
        if request.background:
            raise InvalidRequestError(
                "background responses are not supported here; send the request and wait (or stream).",
                param="background",
            )
        history: tuple[dict[str, Any], ...] = ()
        if request.previous_response_id is not None:
            previous = self._store.get(request.previous_response_id)
            if previous is None:
                raise InvalidRequestError(
                    f"Previous response with id '{request.previous_response_id}' not found (it was not "
                    "stored, was deleted, or was pushed out of the store: LLM_RESPONSES_STORE_SIZE).",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            history = previous.conversation
        wants_store = request.store is not False
        if request.store and self._store.capacity <= 0:
            raise InvalidRequestError(
                "This server keeps no responses (LLM_RESPONSES_STORE_SIZE=0); send store: false.",
                param="store",
            )
        dialect = ResponsesDialect(
            request, history, self._store if wants_store and self._store.capacity else None
        )
        return await self._chat.chat(to_chat_request(request, history), dialect)

    def get(self, response_id: str) -> dict[str, Any]:
        entry = self._store.get(response_id)
        if entry is None:
            raise _not_stored(response_id)
        return entry.response

    def delete(self, response_id: str) -> dict[str, Any]:
        if not self._store.delete(response_id):
            raise _not_stored(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}


def _not_stored(response_id: str) -> ResponseNotFoundError:
    return ResponseNotFoundError(
        f"No stored response has the id '{response_id}': it was sent with store: false, deleted, or "
        "pushed out of the store (LLM_RESPONSES_STORE_SIZE keeps the most recent ones)."
    )
