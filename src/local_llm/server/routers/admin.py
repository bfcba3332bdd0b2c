"""Operator routes: load, unload, pin and unpin a model, the memory ledger and the lifecycle journal
(same auth as /v1)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from local_llm.protocol.admin import EventList, MemoryReport, UnloadResult
from local_llm.protocol.models import ModelCard
from local_llm.server.cancellation import with_cancellation
from local_llm.server.openapi import (
    EVENTS_RESPONSES,
    LIST_RESPONSES,
    LOAD_RESPONSES,
    READ_RESPONSES,
    UNLOAD_RESPONSES,
)
from local_llm.server.serving.models import ModelsService

router = APIRouter(prefix="/admin", tags=["admin"])


def _service(request: Request) -> ModelsService:
    service: ModelsService = request.app.state.models
    return service


@router.post("/models/{model_id:path}/load", response_model=ModelCard, responses=LOAD_RESPONSES)
@with_cancellation
async def load_model(model_id: str, request: Request) -> ModelCard | Response:
    return await _service(request).load(model_id)


@router.post("/models/{model_id:path}/unload", response_model=UnloadResult, responses=UNLOAD_RESPONSES)
@with_cancellation
async def unload_model(model_id: str, request: Request) -> UnloadResult | Response:
    return await _service(request).unload(model_id)


@router.post("/models/{model_id:path}/pin", response_model=ModelCard, responses=READ_RESPONSES)
@with_cancellation
async def pin_model(model_id: str, request: Request) -> ModelCard | Response:
    return _service(request).pin(model_id, pinned=True)


@router.post("/models/{model_id:path}/unpin", response_model=ModelCard, responses=READ_RESPONSES)
@with_cancellation
async def unpin_model(model_id: str, request: Request) -> ModelCard | Response:
    return _service(request).pin(model_id, pinned=False)


@router.get("/memory", response_model=MemoryReport, responses=LIST_RESPONSES)
async def memory(request: Request) -> MemoryReport:
    return await _service(request).memory()


@router.get("/events", response_model=EventList, responses=EVENTS_RESPONSES)
async def events(
    request: Request,
    after: int = Query(0, ge=0, description="Only entries after this sequence number (a poller's last_seq)."),
    limit: int = Query(200, ge=1, le=1000, description="At most this many, the newest."),
) -> EventList:
    return _service(request).events(after, limit)
