"""The owner of loaded engines and the pure policy it follows."""

from local_llm.manager.manager import ModelManager, ModelState, ModelStatus

__all__ = ["ModelManager", "ModelState", "ModelStatus"]
