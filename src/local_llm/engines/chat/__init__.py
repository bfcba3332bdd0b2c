from local_llm.engines.chat.base import ChatEngine, ChatResult

__all__ = ["ChatEngine", "ChatResult"]
