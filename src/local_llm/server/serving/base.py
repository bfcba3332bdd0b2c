"""One serving skeleton for every API family: resolve the model → permit → lease → engine call → answer.

After vLLM's entrypoint serving classes and TEI's router:

* The model is resolved by capability: what its engine class declares it serves
  (:func:`~local_llm.engines.factory.capabilities_of`), so no service checks engine types by hand.
* A permit is taken at the edge, before any work (:class:`Admission`): back-pressure is decided there
  alone, per model (requests, and inputs to embed or rank) and for all models together (requests
  waiting for a load), and answered 429 or 503 with Retry-After. At shutdown the same permits are
  what is drained, and cut when the grace period ends.
* The lease is held for the engine call, and for a stream until it ends or its client leaves.
* Engines raise domain errors; each service says how its API names their subjects (:class:`FieldNames`).
* A stream that fails after it began ends with an error event in the family's shape, then its end
  marker: the client is never left with a cut connection and no word why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, TypeVar

from local_llm.config import Settings
from local_llm.engines.base import Capability, Engine
from local_llm.engines.factory import capabilities_of
from local_llm.errors import (
    EngineRequestError,
    InputTooLongError,
    InternalError,
    InvalidRequestError,
    LoadQueueFullError,
    LocalLLMError,
    ModelTypeMismatchError,
    QueueFullError,
    ShuttingDownError,
)
from local_llm.manager import ModelManager
from local_llm.registry import ModelSpec
from local_llm.telemetry import current_request

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Engine)
T = TypeVar("T")


# --- back-pressure ---------------------------------------------------------------------------------
class Permit:
    """One request's place: counted from the edge until its answer (or stream) ends."""

    def __init__(self, admission: Admission, model: str, inputs: int) -> None:
        self._admission = admission
        self.model = model
        self.inputs = inputs
        self._task = asyncio.current_task()
        # Set when shutdown cut the request short: what it ends with.
        self.cut_error: LocalLLMError | None = None

    def follow(self) -> None:
        """The request goes on in the current task (a stream's body): that is the one to cut."""
        self._task = asyncio.current_task()

    def cut(self, error: LocalLLMError) -> None:
        self.cut_error = error
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def release(self) -> None:
        self._admission._release(self)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


class Admission:
    """Who may come in, decided once at the edge; and the drain when the server stops."""

    def __init__(self, settings: Settings, manager: ModelManager) -> None:
        self._settings = settings
        self._manager = manager
        self._requests: Counter[str] = Counter()
        self._inputs: Counter[str] = Counter()
        self._active: set[Permit] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing = False

    def permit(self, model: str, inputs: int = 1) -> Permit:
        """A place for a request to ``model`` carrying ``inputs`` inputs, or the reason there is none."""
        if self.closing:
            raise ShuttingDownError(
                "The server is shutting down; no new requests are taken.", retry_after_s=5
            )
        settings = self._settings
        if self._requests[model] >= settings.max_requests_per_model:
            raise QueueFullError(
                f"Model '{model}' has {self._requests[model]} requests in progress "
                "(LLM_MAX_REQUESTS_PER_MODEL); try again shortly.",
                retry_after_s=1,
            )
        if self._inputs[model] + inputs > settings.max_queued_inputs:
            raise QueueFullError(
                f"Model '{model}' has {self._inputs[model]} inputs in progress (LLM_MAX_QUEUED_INPUTS); "
                "try again shortly.",
                retry_after_s=1,
            )
        if not self._manager.ready(model) and self._manager.waiting() >= settings.max_waiting_requests:
            raise LoadQueueFullError(
                f"{self._manager.waiting()} requests are already waiting for models to load "
                "(LLM_MAX_WAITING_REQUESTS); try again shortly.",
                retry_after_s=5,
            )
        permit = Permit(self, model, inputs)
        self._requests[model] += 1
        self._inputs[model] += inputs
        self._active.add(permit)
        self._idle.clear()
        return permit

    def _release(self, permit: Permit) -> None:
        if permit not in self._active:
            return
        self._active.discard(permit)
        self._requests[permit.model] -= 1
        self._inputs[permit.model] -= permit.inputs
        if not self._active:
            self._idle.set()

    @property
    def in_progress(self) -> int:
        return len(self._active)

    async def drain(self, grace_s: float) -> None:
        """Shutdown: refuse new requests; let those in progress finish for up to ``grace_s``; then end
        each with an error (a stream with a final error event) and wait for them to go."""
        self.closing = True
        if self._active:
            logger.info(
                "shutting down: %d requests in progress, waiting up to %gs", len(self._active), grace_s
            )
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except asyncio.TimeoutError:
            error = ShuttingDownError(
                f"The server is shutting down and this request ran past its grace period of {grace_s:g}s "
                "(LLM_SHUTDOWN_GRACE_S)."
            )
            logger.warning("shutting down: ending %d requests still in progress", len(self._active))
            for permit in list(self._active):
                permit.cut(error)
            try:
                await asyncio.wait_for(self._idle.wait(), 5)
            except asyncio.TimeoutError:
                logger.error("%d requests did not end when asked", len(self._active))
        logger.info("requests drained in %.1fs", time.monotonic() - started)


# --- engine errors in a route's own names ----------------------------------------------------------------
@dataclass(frozen=True)
class FieldNames:
    """How a route names what an engine may complain about: subjects (the input, a document, ...) and
    engine options (by the engine's name for them; the same name when absent)."""

    subjects: Mapping[object, str]
    options: Mapping[str, str] = field(default_factory=dict)
    # Appended to an input-too-long message: how this route lets a client cut inputs instead.
    too_long_hint: str = ""

    def error(self, exc: EngineRequestError) -> InvalidRequestError:
        param = self.subjects.get(exc.subject) if exc.subject is not None else None
        if param is None and exc.option is not None:
            param = self.options.get(exc.option, exc.option)
        hint = f" {self.too_long_hint}" if isinstance(exc, InputTooLongError) and self.too_long_hint else ""
        return InvalidRequestError(exc.message + hint, param=param, code=exc.code)


# --- the skeleton ------------------------------------------------------------------------------------
StreamErrorRenderer = Callable[[LocalLLMError], bytes]


class Serving(Generic[E]):
    """The path of one request on one capability; a service per API family builds on it."""

    def __init__(
        self,
        manager: ModelManager,
        admission: Admission,
        settings: Settings,
        capability: Capability,
        route: str,
    ) -> None:
        self.manager = manager
        self.admission = admission
        self.settings = settings
        self.capability = capability
        self.route = route

    def resolve(self, name: str) -> ModelSpec:
        """The model served as ``name``, if it can serve this route (404 / 400 otherwise)."""
        spec = self.manager.registry.get(name)
        current_request().model = spec.name
        if self.capability not in capabilities_of(spec, self.settings):
            raise self.mismatch(spec)
        return spec

    def mismatch(self, spec: ModelSpec) -> InvalidRequestError:
        """The error for a model that cannot serve this route; services may say more."""
        return ModelTypeMismatchError(spec.name, spec.kind.value, self.route)

    async def call(
        self,
        spec: ModelSpec,
        work: Callable[[E], Awaitable[T]],
        *,
        fields: FieldNames,
        inputs: int = 1,
        keep_alive_s: float | None = None,
    ) -> T:
        """Run ``work(engine)`` under a permit and a lease; engine errors in the route's names."""
        with self.admission.permit(spec.name, inputs) as permit:
            try:
                asked = time.perf_counter()
                async with self.manager.lease(spec.name, keep_alive_s=keep_alive_s) as engine:
                    current_request().queue_wait_s = time.perf_counter() - asked
                    return await work(engine)  # type: ignore[arg-type]
            except EngineRequestError as exc:
                raise fields.error(exc) from None
            except asyncio.CancelledError:
                if permit.cut_error is not None:
                    raise permit.cut_error from None
                raise

    async def call_streaming(
        self,
        spec: ModelSpec,
        work: Callable[[E], Awaitable[bytes | AsyncIterator[bytes]]],
        *,
        fields: FieldNames,
        render_error: StreamErrorRenderer,
        end: bytes,
        keep_alive_s: float | None = None,
    ) -> bytes | AsyncIterator[bytes]:
        """As :meth:`call`, for work that may answer with a stream: the permit and the lease are then
        held until the stream ends or is closed (its client left); a failure after the stream began is
        answered with ``render_error(error)`` and then ``end``, which the engine's own end replaces
        (``b""``: the family has no end marker of its own, its last event says it is the last)."""
        stack = AsyncExitStack()
        permit = stack.enter_context(self.admission.permit(spec.name))
        try:
            asked = time.perf_counter()
            engine = await stack.enter_async_context(self.manager.lease(spec.name, keep_alive_s=keep_alive_s))
            current_request().queue_wait_s = time.perf_counter() - asked
            result = await work(engine)  # type: ignore[arg-type]
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, EngineRequestError):
                raise fields.error(exc) from None
            if isinstance(exc, asyncio.CancelledError) and permit.cut_error is not None:
                raise permit.cut_error from None
            raise
        if isinstance(result, bytes):
            await stack.aclose()
            return result
        return _guarded_stream(result, stack, permit, fields, render_error, end)


async def _guarded_stream(
    events: AsyncIterator[bytes],
    stack: AsyncExitStack,
    permit: Permit,
    fields: FieldNames,
    render_error: StreamErrorRenderer,
    end: bytes,
) -> AsyncIterator[bytes]:
    """Stream ``events``, ended by ``end``. Closing (the client went away) or finishing closes the
    engine's stream first, which aborts its generation, and then releases the lease and the permit."""
    async with stack:
        permit.follow()
        failure: LocalLLMError | None = None
        try:
            async for event in events:
                if end and event == end:
                    continue  # written below, once, whatever happened
                yield event
        except EngineRequestError as exc:
            failure = fields.error(exc)
        except LocalLLMError as exc:
            failure = exc
        except asyncio.CancelledError:
            if permit.cut_error is None:
                raise
            failure = permit.cut_error
        except Exception as exc:  # our own bug: still an error event in the family's shape, not a cut
            logger.exception("a stream on %s failed", permit.model)
            failure = InternalError(f"Internal error: {type(exc).__name__}.")
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        if failure is not None:
            logger.info("a stream on %s ended early: %s", permit.model, failure.message)
            yield render_error(failure)
        if end:
            yield end
