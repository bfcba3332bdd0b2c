"""The chat and completions service: checks a request against its model, holds the model's lease for
as long as the answer streams, and hands the request to the model's chat engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

from local_llm.engines.chat import ChatEngine, ChatResult
from local_llm.errors import InvalidRequestError, ModelTypeMismatchError
from local_llm.manager import ModelManager
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest, NamedToolChoice
from local_llm.registry import ModelKind, ModelSpec

CHAT_ROUTE = "/v1/chat/completions"
# What a route asks of the model's engine once the lease is held.
EngineCall = Callable[[ChatEngine], Awaitable[ChatResult]]
COMPLETIONS_ROUTE = "/v1/completions"


class ChatService:
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        spec = self._chat_model(request.model, CHAT_ROUTE)
        if not spec.chat_template:
            raise InvalidRequestError(
                f"Model '{spec.name}' has no chat template, so it cannot be chatted with; "
                f"send a prompt to {COMPLETIONS_ROUTE} instead.",
                param="model",
            )
        check_chat_request(request)
        return await self._answer(spec, request.keep_alive, lambda engine: engine.chat(request))

    async def complete(self, request: CompletionRequest) -> ChatResult:
        spec = self._chat_model(request.model, COMPLETIONS_ROUTE)
        check_sampling(request)
        return await self._answer(spec, request.keep_alive, lambda engine: engine.complete(request))

    def _chat_model(self, name: str, route: str) -> ModelSpec:
        spec = self._manager.registry.get(name)
        if spec.kind is not ModelKind.CHAT:
            raise ModelTypeMismatchError(name, spec.kind.value, route)
        return spec

    async def _answer(self, spec: ModelSpec, keep_alive: float | None, run: EngineCall) -> ChatResult:
        """Run ``run(engine)`` under a lease; a stream keeps the lease until it ends or is closed."""
        stack = AsyncExitStack()
        engine = await stack.enter_async_context(self._manager.lease(spec.name, keep_alive_s=keep_alive))
        try:
            if not isinstance(engine, ChatEngine):
                raise ModelTypeMismatchError(spec.name, spec.kind.value, CHAT_ROUTE)
            result: ChatResult = await run(engine)
        except BaseException:
            await stack.aclose()
            raise
        if isinstance(result, bytes):
            await stack.aclose()
            return result
        return _released_when_done(result, stack)


async def _released_when_done(events: AsyncIterator[bytes], stack: AsyncExitStack) -> AsyncIterator[bytes]:
    """Stream ``events``; closing (the client went away) or finishing closes the engine's stream
    first, which aborts generation, and then releases the lease."""
    async with stack:
        try:
            async for event in events:
                yield event
        finally:
            aclose = getattr(events, "aclose", None)
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
