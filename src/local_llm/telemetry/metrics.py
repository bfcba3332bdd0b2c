"""Prometheus metrics: one registry per app, fed where each fact is known, read at scrape time.

Three kinds of fact, each recorded once where it happens (as TEI records its per-stage timings once
and reuses them):

* a request's route, model, status, duration, time to first byte of a stream and wait for its model
  (:class:`RequestRecord`, filled by the serving skeleton, observed by the ASGI middleware in
  :mod:`local_llm.telemetry.requests` when the answer ends);
* what engines do: forward passes of batched engines (inputs, tokens, padded tokens, seconds),
  per-stage times (tokenize, queue), tokens read and generated (:class:`ModelObserver`, one per model,
  handed to each of its engines through :class:`~local_llm.engines.base.EngineObserver`);
* lifecycle: every journal entry (loads, wakes, parks, unloads, evictions, failures by model and cause,
  with their durations) as it is written (:meth:`Metrics.lifecycle`).

State that already exists (each model's state, requests in flight and waiting, the memory ledger and
the device probe) is not counted twice: a collector reads a snapshot of it at scrape time
(:class:`StateCollector`). vLLM's own ``vllm:*`` metrics, which its engines register in
``prometheus_client``'s global registry (labelled ``model_name``), are served beside ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from local_llm import __version__
from local_llm.engines.base import EngineObserver
from local_llm.manager.journal import JournalEntry, LifecycleEvent
from local_llm.manager.scheduler import ModelState

if TYPE_CHECKING:
    from local_llm.manager import LedgerView, ModelManager, ModelStatus

# Seconds: from a 5 ms embedding to a 10-minute load wait.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Seconds a load, wake, park or unload takes: a park of a small model to a first vLLM start on a CPU.
TRANSITION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600)
BATCH_INPUT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PADDED_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

# No ``*_created`` series beside each counter and histogram (as vLLM's own /metrics): they double the
# text a scrape reads and Prometheus does not need them.
disable_created_metrics()

# The outcome entries of the journal, as the transition whose duration they carry.
_TRANSITIONS = {
    LifecycleEvent.LOADED: "load",
    LifecycleEvent.WOKEN: "wake",
    LifecycleEvent.PARKED: "park",
    LifecycleEvent.UNLOADED: "unload",
    LifecycleEvent.FAILED: "failed_load",
}


@dataclass
class RequestRecord:
    """One request's facts as the serving path learns them; observed once, when its answer ends."""

    model: str = ""
    # From asking for the model's engine to holding it: a cold model's load is in it.
    queue_wait_s: float | None = None


class Metrics:
    """Every metric of one server; ``registry`` is what ``/metrics`` serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        Info("local_llm_build", "The server's version.", registry=registry).info({"version": __version__})
        ProcessCollector(registry=registry)
        # --- requests ------------------------------------------------------------------------
        self.requests = Counter(
            "local_llm_requests",
            "Requests answered, by route, model and status.",
            ["route", "model", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "local_llm_request_duration_seconds",
            "From the request's arrival to its answer's last byte.",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_token_seconds = Histogram(
            "local_llm_time_to_first_token_seconds",
            "Streams: from the request's arrival to its first event (the first token, for chat).",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "local_llm_queue_wait_seconds",
            "From asking for the model's engine to holding it (a cold model's load included).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # --- engine work ---------------------------------------------------------------------------
        self.prompt_tokens = Counter(
            "local_llm_prompt_tokens",
            "Tokens read: chat prompts, and the inputs of embedding and rerank passes.",
            ["model"],
            registry=registry,
        )
        self.generation_tokens = Counter(
            "local_llm_generation_tokens", "Tokens generated by chat models.", ["model"], registry=registry
        )
        self.batch_inputs = Histogram(
            "local_llm_batch_inputs",
            "Inputs in one forward pass of an embedding or rerank model.",
            ["model"],
            buckets=BATCH_INPUT_BUCKETS,
            registry=registry,
        )
        self.batch_padded_tokens = Histogram(
            "local_llm_batch_padded_tokens",
            "Tokens in one forward pass once padded to its longest input (its real tokens are in "
            "local_llm_prompt_tokens).",
            ["model"],
            buckets=PADDED_TOKEN_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "local_llm_stage_duration_seconds",
            "Embedding and rerank work by stage: tokenize and queue per request, forward per pass.",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # --- lifecycle -----------------------------------------------------------------------------
        self.lifecycle_events = Counter(
            "local_llm_model_lifecycle_events",
            "Lifecycle journal entries (loading, loaded, waking, woken, parking, parked, unloading, "
            "unloaded, failed, died, pinned, unpinned); take-downs by cause (evicted, idle, operator, "
            "engine_died, over_budget).",
            ["model", "event", "cause"],
            registry=registry,
        )
        self.transition_seconds = Histogram(
            "local_llm_model_transition_duration_seconds",
            "How long a load, wake, park, unload or failed load took.",
            ["model", "transition"],
            buckets=TRANSITION_BUCKETS,
            registry=registry,
        )
        self.state = StateCollector()
        registry.register(self.state)
        registry.register(_VllmMetrics())
        self._observers: dict[str, ModelObserver] = {}

    # --- what the rest of the server calls ---------------------------------------------------------
    def observer_for(self, model: str) -> EngineObserver:
        """The observer handed to each engine of ``model`` (the same one across loads)."""
        observer = self._observers.get(model)
        if observer is None:
            observer = self._observers[model] = ModelObserver(self, model)
        return observer

    def lifecycle(self, entry: JournalEntry) -> None:
        """A journal subscriber: every entry counted, outcomes' durations observed."""
        cause = entry.cause.value if entry.cause is not None else ""
        self.lifecycle_events.labels(entry.model, entry.event.value, cause).inc()
        transition = _TRANSITIONS.get(entry.event)
        if transition is not None and entry.seconds is not None:
            self.transition_seconds.labels(entry.model, transition).observe(entry.seconds)

    def request_ended(
        self, route: str, record: RequestRecord, status: int, seconds: float, first_byte_s: float | None
    ) -> None:
        self.requests.labels(route, record.model, str(status)).inc()
        self.request_seconds.labels(route, record.model).observe(seconds)
        if first_byte_s is not None:
            self.first_token_seconds.labels(route, record.model).observe(first_byte_s)
        if record.queue_wait_s is not None:
            self.queue_wait_seconds.labels(record.model).observe(record.queue_wait_s)

    async def exposition(self, manager: ModelManager) -> bytes:
        """The text a scrape gets: the state snapshot is taken on the event loop (the scheduler's
        data is only read there), the device probe off it."""
        statuses = manager.statuses()
        waiting = {name: len(record.waiters) for name, record in manager.scheduler.records.items()}
        ledger = await asyncio.to_thread(manager.ledger)
        self.state.snapshot = _Snapshot(statuses, waiting, ledger, manager)
        return generate_latest(self.registry)


class ModelObserver:
    """What one model's engines report, into the metrics (called from engine threads too:
    prometheus_client's metrics are thread-safe). A series appears once it has something to say:
    a chat model shows no forward passes."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._metrics = metrics
        self._model = model

    def forward_pass(self, inputs: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        metrics, model = self._metrics, self._model
        metrics.batch_inputs.labels(model).observe(inputs)
        metrics.batch_padded_tokens.labels(model).observe(padded_tokens)
        metrics.prompt_tokens.labels(model).inc(tokens)
        metrics.stage_seconds.labels(model, "forward").observe(seconds)

    def stage(self, stage: str, seconds: float) -> None:
        self._metrics.stage_seconds.labels(self._model, stage).observe(seconds)

    def tokens(self, prompt: int, generated: int) -> None:
        if prompt:
            self._metrics.prompt_tokens.labels(self._model).inc(prompt)
        if generated:
            self._metrics.generation_tokens.labels(self._model).inc(generated)


# --- state read at scrape time ---------------------------------------------------------------------------
@dataclass
class _Snapshot:
    statuses: list[ModelStatus]
    waiting: dict[str, int]
    ledger: LedgerView
    manager: ModelManager


class StateCollector(Collector):
    """Gauges of what the manager already holds, from the snapshot taken for this scrape."""

    def __init__(self) -> None:
        self.snapshot: _Snapshot | None = None

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot
        if snapshot is None:
            return []
        return [*self._models(snapshot), *self._memory(snapshot)]

    @staticmethod
    def _models(snapshot: _Snapshot) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "local_llm_model_state",
            "1 for the state each model is in (available, loading, loaded, parked, failed), 0 for the "
            "others.",
            labels=["model", "state"],
        )
        in_flight = GaugeMetricFamily(
            "local_llm_requests_in_flight", "Requests holding the model's engine now.", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "local_llm_requests_waiting",
            "Requests waiting for the model to load, wake or get memory.",
            labels=["model"],
        )
        pinned = GaugeMetricFamily("local_llm_model_pinned", "1 when the model is pinned.", labels=["model"])
        estimated = GaugeMetricFamily(
            "local_llm_model_estimated_bytes",
            "The model's estimated memory need where it is (or would be) placed.",
            labels=["model"],
        )
        measured = GaugeMetricFamily(
            "local_llm_model_measured_bytes",
            "What the model's engine was measured to hold, by device, while loaded or parked.",
            labels=["model", "device"],
        )
        manager = snapshot.manager
        for status in snapshot.statuses:
            name = status.spec.name
            for each in ModelState:
                state.add_metric([name, each.value], 1.0 if status.state is each else 0.0)
            in_flight.add_metric([name], status.in_flight)
            waiting.add_metric([name], snapshot.waiting.get(name, 0))
            pinned.add_metric([name], 1.0 if status.pinned else 0.0)
            plan = status.plan
            need = manager.estimate(name)
            default = need.on_gpu if manager.budget.gpu_bytes is not None else need.on_cpu
            estimated.add_metric([name], (plan.estimate if plan else default).total_bytes)
            footprint = manager.scheduler.records[name].measured
            if footprint is not None:
                measured.add_metric([name, "ram"], footprint.ram_bytes)
                if footprint.gpu_bytes:
                    measured.add_metric([name, "gpu"], footprint.gpu_bytes)
        yield from (state, in_flight, waiting, pinned, estimated, measured)

    @staticmethod
    def _memory(snapshot: _Snapshot) -> Iterator[Metric]:
        ledger = snapshot.ledger
        budget = GaugeMetricFamily(
            "local_llm_memory_budget_bytes",
            "What models may hold, by device (RAM: less the server's own measured footprint).",
            labels=["device"],
        )
        reserved = GaugeMetricFamily(
            "local_llm_memory_reserved_bytes",
            "What the ledger holds for models, by device.",
            labels=["device"],
        )
        total = GaugeMetricFamily(
            "local_llm_device_memory_total_bytes", "The device's memory.", labels=["device"]
        )
        free = GaugeMetricFamily(
            "local_llm_device_memory_free_bytes",
            "The device's free memory, as probed now.",
            labels=["device"],
        )
        held = GaugeMetricFamily(
            "local_llm_model_reserved_bytes",
            "What the ledger holds for each model, by device (loading, loaded, parking or parked).",
            labels=["model", "device", "stage"],
        )
        overhead = GaugeMetricFamily(
            "local_llm_server_overhead_bytes", "RAM the server itself holds beyond its models (measured)."
        )
        budget.add_metric(["ram"], ledger.budget.ram_bytes)
        reserved.add_metric(["ram"], ledger.used_ram_bytes)
        total.add_metric(["ram"], ledger.device.ram_total_bytes)
        free.add_metric(["ram"], ledger.device.ram_available_bytes)
        if ledger.budget.gpu_bytes is not None:
            budget.add_metric(["gpu"], ledger.budget.gpu_bytes)
            reserved.add_metric(["gpu"], ledger.used_gpu_bytes)
        if ledger.device.gpu is not None:
            total.add_metric(["gpu"], ledger.device.gpu.total_bytes)
            free.add_metric(["gpu"], ledger.device.gpu.free_bytes)
        for holding in ledger.holdings:
            held.add_metric([holding.name, "ram", holding.stage.value], holding.ram_bytes)
            if holding.gpu_bytes:
                held.add_metric([holding.name, "gpu", holding.stage.value], holding.gpu_bytes)
        overhead.add_metric([], ledger.server_overhead_bytes)
        yield from (budget, reserved, total, free, held, overhead)


class _VllmMetrics(Collector):
    """vLLM's own metrics (``vllm:*``, labelled ``model_name``), which its engines register in the
    global registry: each chat model's engine replaces the previous one's there (vLLM unregisters them
    as an engine starts), so they describe the chat model loaded last."""

    def collect(self) -> Iterable[Metric]:
        return [family for family in REGISTRY.collect() if family.name.startswith("vllm:")]
