"""Routes for embeddings: validation by the protocol model, work by the service."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from local_llm.protocol.embeddings import EmbeddingRequest, EmbeddingResponse
from local_llm.server.serving.embeddings import EmbeddingsService

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    service: EmbeddingsService = request.app.state.embeddings
    result = await service.create(body)
    # Serialised by pydantic-core directly: the vectors skip FastAPI's generic encoder.
    return Response(result.model_dump_json(), media_type="application/json")
