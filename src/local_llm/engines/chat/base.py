"""What a chat backend offers the chat and completions services."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator

from local_llm.engines.base import Capability, Engine
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest

# A finished answer (an OpenAI JSON body), or a stream of server-sent events ending with
# ``data: [DONE]``. Streams abort their generation when closed early (the client went away).
ChatResult = bytes | AsyncIterator[bytes]


class ChatEngine(Engine):
    """A causal LM serving OpenAI chat completions and legacy completions."""

    capabilities = frozenset({Capability.CHAT, Capability.COMPLETIONS})

    @abstractmethod
    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        """Answer a chat completion; raises LocalLLMError subclasses for requests the model refuses."""

    @abstractmethod
    async def complete(self, request: CompletionRequest) -> ChatResult:
        """Answer a legacy completion."""

    @abstractmethod
    async def count_prompt_tokens(self, request: ChatCompletionRequest) -> int:
        """The tokens of the chat request's prompt, rendered by the model's chat template with its
        tools, exactly as :meth:`chat` would render it (its ``usage.prompt_tokens``); nothing is
        generated. Anthropic's count_tokens route asks this."""
