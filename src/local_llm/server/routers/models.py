"""Routes listing the discovered models and their state."""

from __future__ import annotations

from fastapi import APIRouter, Request

from local_llm.protocol.models import ModelCard, ModelList
from local_llm.server.openapi import LIST_RESPONSES, READ_RESPONSES
from local_llm.server.serving.models import ModelsService

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, responses=LIST_RESPONSES)
async def list_models(request: Request) -> ModelList:
    service: ModelsService = request.app.state.models
    return service.list()


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=READ_RESPONSES)
async def get_model(model_id: str, request: Request) -> ModelCard:
    service: ModelsService = request.app.state.models
    return service.get(model_id)
