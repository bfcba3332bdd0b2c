"""Routes for rerank: Cohere/Jina on /v1/rerank and /v2/rerank; /rerank takes that shape or TEI's."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from local_llm.protocol.rerank import (
    AnyRerankRequest,
    RerankRequest,
    RerankResponse,
    TEIRank,
    TEIRerankRequest,
)
from local_llm.server.cancellation import with_cancellation
from local_llm.server.openapi import ERROR_RESPONSES
from local_llm.server.serving.rerank import RerankService

router = APIRouter(tags=["rerank"], responses=ERROR_RESPONSES)


@router.post("/v1/rerank", response_model=RerankResponse)
@router.post("/v2/rerank", response_model=RerankResponse)
@with_cancellation
async def rerank(body: RerankRequest, request: Request) -> Response:
    service: RerankService = request.app.state.rerank
    # The service renders the JSON itself (orjson); the models above document its shape.
    return Response(await service.cohere(body), media_type="application/json")


@router.post("/rerank", response_model=RerankResponse | list[TEIRank])
@with_cancellation
async def rerank_any_shape(body: AnyRerankRequest, request: Request) -> Response:
    """Cohere/Jina's shape, or TEI's when the body has ``texts``."""
    service: RerankService = request.app.state.rerank
    answer = await service.tei(body) if isinstance(body, TEIRerankRequest) else await service.cohere(body)
    return Response(answer, media_type="application/json")
