"""Routes for chat completions and legacy completions: validation by the protocol models, work by
the service; a streamed answer is sent as server-sent events."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest
from local_llm.server.cancellation import with_cancellation
from local_llm.server.openapi import ERROR_RESPONSES, STREAM_RESPONSE
from local_llm.server.routers.answers import answer
from local_llm.server.serving.chat import ChatService

router = APIRouter(tags=["chat"], responses=ERROR_RESPONSES)


@router.post("/v1/chat/completions", responses=STREAM_RESPONSE)
@with_cancellation
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    service: ChatService = request.app.state.chat
    return answer(await service.chat(body))


@router.post("/v1/completions", responses=STREAM_RESPONSE)
@with_cancellation
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    service: ChatService = request.app.state.chat
    return answer(await service.complete(body))
