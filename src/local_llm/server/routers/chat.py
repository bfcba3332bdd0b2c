"""Routes for chat completions and legacy completions: validation by the protocol models, work by
the service; a streamed answer is sent as server-sent events."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from local_llm.engines.chat import ChatResult
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest
from local_llm.server.cancellation import with_cancellation
from local_llm.server.openapi import ERROR_RESPONSES, STREAM_RESPONSE
from local_llm.server.serving.chat import ChatService

router = APIRouter(tags=["chat"], responses=ERROR_RESPONSES)


@router.post("/v1/chat/completions", responses=STREAM_RESPONSE)
@with_cancellation
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    service: ChatService = request.app.state.chat
    return _respond(await service.chat(body))


@router.post("/v1/completions", responses=STREAM_RESPONSE)
@with_cancellation
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    service: ChatService = request.app.state.chat
    return _respond(await service.complete(body))


def _respond(result: ChatResult) -> Response:
    if isinstance(result, bytes):
        return Response(result, media_type="application/json")
    return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
