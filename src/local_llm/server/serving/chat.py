"""The chat and completions service: checks a request against its model, and hands it to the model's
chat engine through the serving skeleton (which holds the lease for as long as an answer streams)."""

from __future__ import annotations

from local_llm.config import Settings
from local_llm.engines.base import Capability
from local_llm.engines.chat import ChatEngine, ChatResult
from local_llm.errors import InvalidRequestError, Subject
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
        self._completions: Serving[ChatEngine] = Serving(
            manager, admission, settings, Capability.COMPLETIONS, COMPLETIONS_ROUTE
        )

    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        spec = self._chat.resolve(request.model)
        check_chat_request(request)
        return await self._chat.call_streaming(
            spec,
            lambda engine: engine.chat(request),
            fields=CHAT_FIELDS,
            render_error=openai_stream_error,
            end=STREAM_END,
            keep_alive_s=request.keep_alive,
        )

    async def complete(self, request: CompletionRequest) -> ChatResult:
        spec = self._completions.resolve(request.model)
        check_sampling(request)
        return await self._completions.call_streaming(
            spec,
            lambda engine: engine.complete(request),
            fields=COMPLETION_FIELDS,
            render_error=openai_stream_error,
            end=STREAM_END,
            keep_alive_s=request.keep_alive,
        )


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
