"""The chat and completions service: checks a request against its model, and hands it to the model's
chat engine through the serving skeleton (which holds the lease for as long as an answer streams).

Every API family that generates text (OpenAI chat and completions, OpenAI Responses, Anthropic
Messages, Ollama's chat and generate) comes through here, as vLLM's own Anthropic serving does on
top of its chat serving: the family's route turns its request into a :class:`ChatCompletionRequest`
(or a :class:`CompletionRequest`) and passes a :class:`Dialect`, which turns the engine's OpenAI
answer (a ``chat.completion`` body, or its stream of chunks) into the family's own, and says how the
family names the prompt and ends a stream that failed. So admission, leases, keep-alive, cancellation
and engine errors behave the same whichever API a client speaks, on every engine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from local_llm.config import Settings
from local_llm.engines.base import Capability
from local_llm.engines.chat import ChatEngine, ChatResult
from local_llm.errors import InvalidRequestError, LocalLLMError, Subject
from local_llm.manager import ModelManager
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest, NamedToolChoice
from local_llm.registry import ModelKind, ModelSpec
from local_llm.server.errors import openai_stream_error
from local_llm.server.serving.base import Admission, FieldNames, Serving

CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"
# How an OpenAI stream ends, failed or not.
STREAM_END = b"data: [DONE]\n\n"

CHAT_FIELDS = FieldNames({Subject.PROMPT: "messages"})
COMPLETION_FIELDS = FieldNames({Subject.PROMPT: "prompt"})


class Dialect:
    """How an API family speaks on top of chat completions; this base speaks OpenAI's own (the
    identity). A family's dialect is built per request, so it may keep what the request asked
    (the model's name, the tools) to render its answer."""

    #: How the family names what an engine may complain about (the prompt, an option).
    fields: FieldNames = CHAT_FIELDS
    #: The family's end-of-stream marker, written after a failure's event too (``b""``: none).
    stream_end: bytes = STREAM_END
    #: The route the family's requests come to: what a model that cannot chat is told it cannot serve.
    route: str = CHAT_ROUTE

    def answer(self, body: bytes) -> bytes:
        """The engine's finished OpenAI answer (a ``chat.completion`` / ``text_completion`` JSON
        body) as the family's body."""
        return body

    def stream(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The engine's OpenAI server-sent events (ending with ``data: [DONE]``) as the family's
        stream. Engine errors raised while iterating pass through: the skeleton writes them with
        :meth:`stream_error`."""
        return events

    def stream_error(self, error: LocalLLMError) -> bytes:
        """The event a stream of this family ends with when it fails after it began."""
        return openai_stream_error(error)


OPENAI = Dialect()


async def openai_chunks(events: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an engine's OpenAI stream (``data: {...}`` events), ``[DONE]`` left out:
    what a dialect translates from."""
    async for event in events:
        for line in event.split(b"\n"):
            if not line.startswith(b"data: "):
                continue
            data = line.removeprefix(b"data: ").strip()
            if data and data != b"[DONE]":
                yield json.loads(data)


class _ChatServing(Serving[ChatEngine]):
    def mismatch(self, spec: ModelSpec) -> InvalidRequestError:
        if spec.kind is ModelKind.CHAT:  # a chat model without a chat template
            return InvalidRequestError(
                f"Model '{spec.name}' has no chat template, so it cannot be chatted with; "
                f"send a prompt to {COMPLETIONS_ROUTE} instead.",
                param="model",
            )
        return super().mismatch(spec)


class ChatService:
    def __init__(self, manager: ModelManager, admission: Admission, settings: Settings) -> None:
        self._chat = _ChatServing(manager, admission, settings, Capability.CHAT, CHAT_ROUTE)
        # The same serving under each family's route, made on first use (it only names the route).
        self._chat_by_route: dict[str, _ChatServing] = {CHAT_ROUTE: self._chat}
        self._completions: Serving[ChatEngine] = Serving(
            manager, admission, settings, Capability.COMPLETIONS, COMPLETIONS_ROUTE
        )

    async def chat(self, request: ChatCompletionRequest, dialect: Dialect = OPENAI) -> ChatResult:
        """Answer a chat request, in ``dialect``'s words (OpenAI's unless told)."""
        serving = self._serving(dialect)
        spec = serving.resolve(request.model)
        check_chat_request(request)

        async def work(engine: ChatEngine) -> ChatResult:
            return _spoken(await engine.chat(request), dialect)

        return await serving.call_streaming(
            spec,
            work,
            fields=dialect.fields,
            render_error=dialect.stream_error,
            end=dialect.stream_end,
            keep_alive_s=request.keep_alive,
        )

    async def count_prompt_tokens(self, request: ChatCompletionRequest, dialect: Dialect = OPENAI) -> int:
        """The tokens of ``request``'s prompt as its model's chat template renders it, tools included
        (what its answer's ``usage.prompt_tokens`` would say), errors in ``dialect``'s names; the model
        is leased as for an answer."""
        serving = self._serving(dialect)
        spec = serving.resolve(request.model)
        check_chat_request(request)

        async def work(engine: ChatEngine) -> int:
            return await engine.count_prompt_tokens(request)

        return await serving.call(spec, work, fields=dialect.fields, keep_alive_s=request.keep_alive)

    def _serving(self, dialect: Dialect) -> _ChatServing:
        serving = self._chat_by_route.get(dialect.route)
        if serving is None:
            chat = self._chat
            serving = _ChatServing(
                chat.manager, chat.admission, chat.settings, Capability.CHAT, dialect.route
            )
            self._chat_by_route[dialect.route] = serving
        return serving

    async def complete(self, request: CompletionRequest, dialect: Dialect | None = None) -> ChatResult:
        """Answer a legacy completion, in ``dialect``'s words (OpenAI's unless told)."""
        dialect = dialect or _OPENAI_COMPLETION
        spec = self._completions.resolve(request.model)
        check_sampling(request)

        async def work(engine: ChatEngine) -> ChatResult:
            return _spoken(await engine.complete(request), dialect)

        return await self._completions.call_streaming(
            spec,
            work,
            fields=dialect.fields,
            render_error=dialect.stream_error,
            end=dialect.stream_end,
            keep_alive_s=request.keep_alive,
        )


class _OpenAICompletion(Dialect):
    fields = COMPLETION_FIELDS


_OPENAI_COMPLETION = _OpenAICompletion()


def _spoken(result: ChatResult, dialect: Dialect) -> ChatResult:
    if isinstance(result, bytes):
        return dialect.answer(result)
    return result if type(dialect).stream is Dialect.stream else _translated(result, dialect)


async def _translated(events: AsyncIterator[bytes], dialect: Dialect) -> AsyncIterator[bytes]:
    """``dialect``'s stream of the engine's ``events``. Closed early (its client left, shutdown), it
    closes the engine's stream at once, which aborts the generation before the lease is released: an
    async generator left inside another is only closed when the garbage collector gets to it."""
    translated = dialect.stream(events)
    try:
        async for event in translated:
            yield event
    finally:
        for stream in (translated, events):
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


def check_sampling(request: ChatCompletionRequest | CompletionRequest) -> None:
    if request.stream_options is not None and not request.stream:
        raise InvalidRequestError("stream_options is only allowed with stream: true", param="stream_options")


def check_chat_request(request: ChatCompletionRequest) -> None:
    """What the fields' own types cannot say: combinations OpenAI refuses."""
    check_sampling(request)
    if request.top_logprobs and not request.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
    tools = {tool.function.name for tool in request.tools or ()}
    choice = request.tool_choice
    if choice in ("auto", "required") and not tools:
        raise InvalidRequestError(f"tool_choice '{choice}' needs tools", param="tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in tools:
        raise InvalidRequestError(
            f"tool_choice names the function '{choice.function.name}', which is not among tools",
            param="tool_choice",
        )
