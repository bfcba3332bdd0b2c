"""The small interface every engine offers the manager."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

from local_llm.placement import PlacementPlan
from local_llm.registry.spec import ModelSpec

# transformers resolves its names lazily, and not thread-safely: two threads importing from it at once
# can fail with "cannot import name ...". Background preloading and every engine's load import their
# libraries under this lock.
IMPORT_LOCK = threading.Lock()


class Engine(ABC):
    """A model the manager can load and unload.

    The manager calls :meth:`start` once and :meth:`stop` once, never concurrently, and only stops
    an engine no request holds. Engines know nothing of HTTP.
    """

    #: Shown in /v1/models as the engine serving the model.
    backend: str = "unknown"

    def __init__(self, spec: ModelSpec, plan: PlacementPlan) -> None:
        self.spec = spec
        self.plan = plan
        #: What loading really took (weights and buffers), once started; checked against the estimate.
        self.memory_bytes: int | None = None

    @abstractmethod
    async def start(self) -> None:
        """Load the weights onto ``plan.device``; slow work runs off the event loop."""

    @abstractmethod
    async def stop(self) -> None:
        """Release the model and its memory."""

    @property
    def max_model_len(self) -> int | None:
        """Longest input (chat: prompt plus completion) in tokens, once started; None if unbounded."""
        return None

    @property
    def running_requests(self) -> int | None:
        """Requests being computed right now, where the backend can tell."""
        return None
