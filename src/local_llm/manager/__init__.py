"""The one owner of model state (the scheduler), the effects that carry its decisions out, and the
pure policy it decides by."""

from local_llm.manager.manager import LedgerView, ModelManager, ModelStatus, Readiness
from local_llm.manager.scheduler import ModelState

__all__ = ["LedgerView", "ModelManager", "ModelState", "ModelStatus", "Readiness"]
