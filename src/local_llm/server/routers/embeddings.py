"""Routes for embeddings: validation by the protocol model, work by the service."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from local_llm.protocol.embeddings import EmbeddingRequest, EmbeddingResponse
from local_llm.server.cancellation import with_cancellation
from local_llm.server.openapi import ERROR_RESPONSES
from local_llm.server.serving.embeddings import EmbeddingsService

router = APIRouter(tags=["embeddings"], responses=ERROR_RESPONSES)


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
@with_cancellation
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    service: EmbeddingsService = request.app.state.embeddings
    # The service renders the JSON itself (see render_response); the model above documents its shape.
    return Response(await service.create(body), media_type="application/json")
