"""Routes for Anthropic's Messages API (what Claude Code and the ``anthropic`` SDK speak): validation
by the protocol models, work by the service; a streamed answer is sent as server-sent events with
``event:`` names. Clients add ``?beta=true`` and ``anthropic-version`` / ``anthropic-beta`` headers;
nothing here depends on them."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from local_llm.protocol.anthropic import CountTokensRequest, CountTokensResponse, MessagesRequest
from local_llm.server.cancellation import with_cancellation
from local_llm.server.openapi import ANTHROPIC_ERROR_RESPONSES, ANTHROPIC_STREAM_RESPONSE
from local_llm.server.routers.answers import answer
from local_llm.server.serving.anthropic import AnthropicService

router = APIRouter(tags=["anthropic"], responses=ANTHROPIC_ERROR_RESPONSES)


@router.post("/v1/messages", responses=ANTHROPIC_STREAM_RESPONSE)
@with_cancellation
async def create_message(body: MessagesRequest, request: Request) -> Response:
    service: AnthropicService = request.app.state.anthropic
    return answer(await service.create(body))


@router.post("/v1/messages/count_tokens")
@with_cancellation
async def count_message_tokens(body: CountTokensRequest, request: Request) -> CountTokensResponse:
    service: AnthropicService = request.app.state.anthropic
    return await service.count_tokens(body)
