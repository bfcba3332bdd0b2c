"""Routes for chat completions and legacy completions: validation by the protocol models, work by
the service; a streamed answer is sent as server-sent events."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from local_llm.engines.chat import ChatResult
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest
from local_llm.server.disconnect import cancel_on_disconnect
from local_llm.server.serving.chat import ChatService

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    service: ChatService = request.app.state.chat
    return _respond(await cancel_on_disconnect(request, service.chat(body)))


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    service: ChatService = request.app.state.chat
    return _respond(await cancel_on_disconnect(request, service.complete(body)))


# nginx's "client closed request": logged, never seen by the client that left.
CLIENT_CLOSED_REQUEST = 499


def _respond(result: ChatResult | None) -> Response:
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if isinstance(result, bytes):
        return Response(result, media_type="application/json")
    return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
