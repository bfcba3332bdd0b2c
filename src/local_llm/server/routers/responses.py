"""Routes for OpenAI's Responses API: create (a JSON response or server-sent events), and read or
delete a stored response."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from local_llm.protocol.responses import ResponsesRequest
from local_llm.server.cancellation import with_cancellation
from local_llm.server.openapi import ERROR_RESPONSES, RESPONSES_STREAM_RESPONSE, STORED_RESPONSE_RESPONSES
from local_llm.server.routers.answers import answer
from local_llm.server.serving.responses import ResponsesService

router = APIRouter(tags=["responses"])


@router.post("/v1/responses", responses={**ERROR_RESPONSES, **RESPONSES_STREAM_RESPONSE})
@with_cancellation
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    service: ResponsesService = request.app.state.responses
    return answer(await service.create(body))


@router.get("/v1/responses/{response_id}", responses=STORED_RESPONSE_RESPONSES)
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    service: ResponsesService = request.app.state.responses
    return service.get(response_id)


@router.delete("/v1/responses/{response_id}", responses=STORED_RESPONSE_RESPONSES)
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    service: ResponsesService = request.app.state.responses
    return service.delete(response_id)
