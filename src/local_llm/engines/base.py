"""The small interface every engine offers the manager."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from typing import Any

from local_llm.placement import Placement, PlacementPlan
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

    # --- parking: optional; the manager parks only engines whose ``can_park`` is True -------------
    @property
    def can_park(self) -> bool:
        """Whether :meth:`park` can move the weights to RAM and :meth:`wake` bring them back."""
        return False

    @property
    def parked_gpu_bytes(self) -> int:
        """GPU memory the engine keeps while parked (vLLM: its engine process's CUDA context)."""
        return 0

    async def park(self) -> None:
        """Move the weights to CPU RAM and free the GPU memory; called only when no request holds it."""
        raise NotImplementedError(f"{type(self).__name__} cannot park")

    async def wake(self) -> None:
        """Bring parked weights back onto ``plan.device``."""
        raise NotImplementedError(f"{type(self).__name__} cannot park")

    @property
    def max_model_len(self) -> int | None:
        """Longest input (chat: prompt plus completion) in tokens, once started; None if unbounded."""
        return None

    @property
    def running_requests(self) -> int | None:
        """Requests being computed right now, where the backend can tell."""
        return None


def offload_options(plan: PlacementPlan) -> dict[str, Any]:
    """``from_pretrained`` arguments that split a model as a ``gpu+offload`` plan says (accelerate's
    device map: what does not fit ``max_memory`` on the GPU stays in CPU RAM); none otherwise."""
    if plan.placement is not Placement.GPU_OFFLOAD:
        return {}
    on_gpu = max(plan.estimate.weights_bytes - plan.offload_bytes, 0)
    return {"device_map": "auto", "max_memory": {0: on_gpu, "cpu": plan.offload_bytes + 2**30}}


class TorchModuleParking:
    """Parking for engines that hold one torch module in this process (``self._model``).

    Parking moves the module to the CPU and empties torch's CUDA cache, so the GPU memory is free
    for another model while the weights stay in RAM; waking moves it back. Both run off the event
    loop; the manager parks only an engine no request holds, so no forward pass runs meanwhile.
    """

    plan: PlacementPlan
    _model: Any

    @property
    def can_park(self) -> bool:
        return self.plan.placement is Placement.GPU

    async def park(self) -> None:
        await asyncio.to_thread(self._move_module, "cpu")

    async def wake(self) -> None:
        await asyncio.to_thread(self._move_module, self.plan.device)

    def _move_module(self, device: str) -> None:
        import torch

        self._model.to(device)
        if device == "cpu":
            torch.cuda.empty_cache()
