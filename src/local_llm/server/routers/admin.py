"""Operator routes: load, unload, pin and unpin a model, and the memory ledger (same auth as /v1)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from local_llm.protocol.admin import MemoryReport, UnloadResult
from local_llm.protocol.models import ModelCard
from local_llm.server.serving.models import ModelsService

router = APIRouter(prefix="/admin", tags=["admin"])


def _service(request: Request) -> ModelsService:
    service: ModelsService = request.app.state.models
    return service


@router.post("/models/{model_id:path}/load", response_model=ModelCard)
async def load_model(model_id: str, request: Request) -> ModelCard:
    return await _service(request).load(model_id)


@router.post("/models/{model_id:path}/unload", response_model=UnloadResult)
async def unload_model(model_id: str, request: Request) -> UnloadResult:
    return await _service(request).unload(model_id)


@router.post("/models/{model_id:path}/pin", response_model=ModelCard)
async def pin_model(model_id: str, request: Request) -> ModelCard:
    return _service(request).pin(model_id, pinned=True)


@router.post("/models/{model_id:path}/unpin", response_model=ModelCard)
async def unpin_model(model_id: str, request: Request) -> ModelCard:
    return _service(request).pin(model_id, pinned=False)


@router.get("/memory", response_model=MemoryReport)
async def memory(request: Request) -> MemoryReport:
    return await _service(request).memory()
