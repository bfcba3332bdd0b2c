"""The small interface every engine offers the manager, and what engines declare about themselves."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Protocol

from local_llm.backends import import_backend
from local_llm.errors import EngineFailedError
from local_llm.placement import Footprint, Placement, PlacementPlan
from local_llm.registry.spec import ModelSpec

logger = logging.getLogger(__name__)


class Capability(str, Enum):
    """What a model can be asked to do; each engine class declares the ones it serves."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RERANK = "rerank"


# Told once, with the cause, when an engine dies; may be called from any thread.
DeathCallback = Callable[[str], None]
# Told what a load is doing now ("loading weights"), as it moves on; may be called from any thread.
StageCallback = Callable[[str], None]


@dataclass(frozen=True)
class Progress:
    """What tells a hung engine from a busy one: work done so far, and work waiting for it.

    ``done`` only grows, by steps that only a working engine takes (tokens generated, forward passes
    finished); ``pending`` counts the work queued or running on it now (requests; a batched engine's
    inputs). An engine with work pending whose ``done`` stays put is stalled (``/health/ready``).
    """

    done: int
    pending: int


class EngineObserver(Protocol):
    """What an engine tells of its work as it goes, for the metrics: plain numbers, from any thread.

    Engines report facts only they see (a forward pass's padded tokens, the tokens vLLM generated in
    a step); they do not know who listens. The effects hand each engine its model's observer.
    """

    def forward_pass(self, inputs: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        """A batched engine ran one forward pass over ``inputs`` inputs (``tokens`` real tokens,
        ``padded_tokens`` once padded to the longest)."""

    def stage(self, stage: str, seconds: float) -> None:
        """A request spent ``seconds`` in ``stage`` (``tokenize``, ``queue``) before its forward pass."""

    def tokens(self, prompt: int, generated: int) -> None:
        """A chat engine read ``prompt`` prompt tokens and generated ``generated`` tokens."""


class _Unobserved:
    def forward_pass(self, inputs: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        pass

    def stage(self, stage: str, seconds: float) -> None:
        pass

    def tokens(self, prompt: int, generated: int) -> None:
        pass


#: The observer of an engine nobody observes (tests, the CLI).
UNOBSERVED: EngineObserver = _Unobserved()


class Engine(ABC):
    """A model the manager can load and unload.

    The manager calls :meth:`start` once and :meth:`stop` once, never concurrently, and only stops an
    engine no request holds (or one that died). Engines know nothing of HTTP: they raise the domain
    errors of :mod:`local_llm.errors`.
    """

    #: Shown in /v1/models as the engine serving the model.
    backend: ClassVar[str] = "unknown"
    #: What this engine class serves: the serving layer resolves models by it.
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: Whether the model lives in the server's own process (False: in processes of its own).
    in_process: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, plan: PlacementPlan) -> None:
        self.spec = spec
        self.plan = plan
        #: Bytes of the loaded tensors (in-process engines), once started.
        self.memory_bytes: int | None = None
        #: Who hears of the engine's work (set by the effects before ``start``).
        self.observer: EngineObserver = UNOBSERVED
        self._on_death: DeathCallback | None = None
        self._death: str | None = None
        self._on_stage: StageCallback | None = None

    @abstractmethod
    async def start(self) -> None:
        """Load the weights onto ``plan.device``; slow work runs off the event loop."""

    @abstractmethod
    async def stop(self) -> None:
        """Release the model and its memory."""

    # --- progress: what the operator sees of a load, and of the work after it ---------------------
    def report_stages(self, listener: StageCallback | None) -> None:
        """Before :meth:`start`: ``listener`` hears each stage the load enters (None: stop telling)."""
        self._on_stage = listener

    def stage(self, what: str) -> None:
        """Say what :meth:`start` is doing now, so a load of a minute shows where it is (any thread)."""
        if self._on_stage is not None:
            self._on_stage(what)

    def progress(self) -> Progress | None:
        """Work done and pending, once started; None where the engine cannot tell (never stalled)."""
        return None

    # --- death: an engine that cannot serve any more says so, once ------------------------------
    def watch(self, on_death: DeathCallback) -> None:
        """Called once the engine has started: ``on_death(cause)`` is called at most once, when the
        engine dies (its process exits, or a fatal device error)."""
        self._on_death = on_death

    def unwatch(self) -> None:
        """Before an intended stop: what follows is not a death."""
        self._on_death = None

    def died(self, cause: str) -> None:
        """Record the engine's death and tell the watcher (first cause wins)."""
        if self._death is not None:
            return
        self._death = cause
        logger.error("the engine of %s died: %s", self.spec.name, cause)
        if self._on_death is not None:
            self._on_death(cause)

    @property
    def death(self) -> str | None:
        """Why the engine died, or None while it lives."""
        return self._death

    def check_alive(self) -> None:
        """Refuse work on a dead engine at once."""
        if self._death is not None:
            raise EngineFailedError(
                f"The engine of model '{self.spec.name}' died ({self._death}); the next request "
                "loads it again.",
                retry_after_s=1,
            )

    # --- memory ------------------------------------------------------------------------------------
    @property
    def process_ids(self) -> frozenset[int]:
        """Processes of the engine's own (vLLM's engine core and workers); none for in-process ones."""
        return frozenset()

    def footprint(self) -> Footprint:
        """What the engine holds now on each device (blocking; the effects call it off the loop).

        In-process engines count their tensors; the effects add what the server's RSS grew by.
        """
        held = self.memory_bytes or 0
        on_gpu = self.plan.placement is not Placement.CPU
        offloaded = self.plan.offload_bytes if self.plan.placement is Placement.GPU_OFFLOAD else 0
        return Footprint(gpu_bytes=held if on_gpu else 0, ram_bytes=offloaded if on_gpu else held)

    # --- parking: optional ---------------------------------------------------------------------------
    @property
    def parked_footprint(self) -> Footprint | None:
        """What the engine would hold parked; None when it cannot park (it is only ever unloaded)."""
        return None

    async def prepare_parking(self) -> None:
        """Make ready, as part of the load, what the first park would otherwise set up while a request
        waits for the memory (nothing, unless the engine says otherwise)."""
        return

    async def park(self) -> None:
        """Move the weights to CPU RAM and free the GPU memory; called only when no request holds it."""
        raise NotImplementedError(f"{type(self).__name__} cannot park")

    async def wake(self) -> None:
        """Bring parked weights back onto ``plan.device``."""
        raise NotImplementedError(f"{type(self).__name__} cannot park")

    # --- what /v1/models shows -------------------------------------------------------------------
    @property
    def max_model_len(self) -> int | None:
        """Longest input (chat: prompt plus completion) in tokens, once started; None if unbounded."""
        return None

    @property
    def running_requests(self) -> int | None:
        """Requests being computed right now, where the backend can tell."""
        return None


def fatal_cause(exc: BaseException) -> str | None:
    """The cause, when ``exc`` leaves an in-process engine unable to serve (a CUDA error corrupts the
    context for good); None for errors that fail one request only (out of memory included)."""
    name = type(exc).__name__
    if name == "OutOfMemoryError":
        return None
    text = str(exc)
    markers = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS", "cuDNN error")
    if name == "AcceleratorError" or any(marker in text for marker in markers):
        return f"{name}: {text.splitlines()[0] if text else ''}".rstrip(": ")
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

    Parking copies every GPU tensor of the module into one page-locked (pinned) host buffer and points
    the tensors there, then empties torch's CUDA cache, so the GPU memory is free for another model
    while the weights stay in RAM; waking copies them back. The buffer is allocated as the model
    loads (:meth:`prepare_parking`, where parking is on) and kept until the engine stops:
    page-locking 1.1 GB took 1.7-2.0 s, the copy into a kept buffer 0.03-0.06 s (Qwen3-Embedding-0.6B's
    shape on an H200, docs/benchmarks.md); allocated at the first park instead, that 2 s fell on the
    request that needed the memory. Kept, it is RAM the model holds awake too, so :meth:`footprint`
    counts it and the ledger sees it from the load on. All of it runs off the event loop; the manager
    parks only an engine no request holds, so no forward pass runs meanwhile.
    """

    plan: PlacementPlan
    memory_bytes: int | None
    _model: Any
    # The pinned host buffer the weights are parked in, kept from the load until the engine stops.
    _host_copy: Any = None

    @property
    def parked_footprint(self) -> Footprint | None:
        if self.plan.placement is not Placement.GPU:
            return None
        return Footprint(ram_bytes=self.memory_bytes or self.plan.estimate.weights_bytes)

    def footprint(self) -> Footprint:
        """Awake on the GPU: its tensors there, and the kept buffer in RAM; parked: the buffer alone
        (counting its GPU bytes still had the ledger unload what it had just parked, on an H200)."""
        held = super().footprint()  # type: ignore[misc]
        if self.plan.placement is not Placement.GPU or self._model is None:
            return held
        kept = int(self._host_copy.numel()) if self._host_copy is not None else 0
        if self._awake():
            return Footprint(held.gpu_bytes, held.ram_bytes + kept)
        return Footprint(0, held.ram_bytes + kept)

    async def prepare_parking(self) -> None:
        if self.plan.placement is Placement.GPU and self._model is not None:
            await asyncio.to_thread(self._pin_host_copy)

    async def park(self) -> None:
        await asyncio.to_thread(self._to_host)

    async def wake(self) -> None:
        await asyncio.to_thread(self._to_device)

    def release_host_copy(self) -> None:
        """Drop the pinned buffer (the engine stops) and have torch give its pages back."""
        if self._host_copy is None:
            return
        self._host_copy = None
        torch = import_backend("torch")
        # torch keeps freed pinned blocks for reuse; a stopped engine's go back to the system.
        empty_host_cache = getattr(torch._C, "_accelerator_emptyHostCache", None) or getattr(
            torch._C, "_host_emptyCache", None
        )
        if empty_host_cache is not None:
            empty_host_cache()

    def _awake(self) -> bool:
        return any(t.device.type == "cuda" for t in self._model.parameters())

    def _module_tensors(self, device_type: str) -> list[Any]:
        tensors = (*self._model.parameters(), *self._model.buffers())
        return [tensor for tensor in tensors if tensor.device.type == device_type]

    def _pin_host_copy(self) -> None:
        self._kept_buffer(_host_layout(self._module_tensors("cuda"))[1])

    def _kept_buffer(self, size: int) -> Any:
        """The kept buffer, allocated and page-locked unless it already has ``size`` bytes."""
        if self._host_copy is None or int(self._host_copy.numel()) != size:
            torch = import_backend("torch")
            self._host_copy = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return self._host_copy

    def _to_host(self) -> None:
        torch = import_backend("torch")
        tensors = self._module_tensors("cuda")
        offsets, total = _host_layout(tensors)
        buffer = self._kept_buffer(total)
        copies = []
        for tensor, offset in zip(tensors, offsets, strict=True):
            size = tensor.numel() * tensor.element_size()
            host = buffer[offset : offset + size].view(tensor.dtype).view(tensor.shape)
            host.copy_(tensor, non_blocking=True)
            copies.append(host)
        torch.cuda.synchronize()
        for tensor, host in zip(tensors, copies, strict=True):
            tensor.data = host
        torch.cuda.empty_cache()

    def _to_device(self) -> None:
        torch = import_backend("torch")
        tensors = self._module_tensors("cpu")
        on_device = [tensor.to(self.plan.device, non_blocking=True) for tensor in tensors]
        torch.cuda.synchronize()
        for tensor, moved in zip(tensors, on_device, strict=True):
            tensor.data = moved


def _host_layout(tensors: list[Any]) -> tuple[list[int], int]:
    """Where each tensor goes in the parking buffer, and the buffer's size: each starts on a 64-byte
    boundary, so every dtype's view of the buffer is aligned."""
    offsets, total = [], 0
    for tensor in tensors:
        offsets.append(total)
        total += -(-tensor.numel() * tensor.element_size() // 64) * 64
    return offsets, total
