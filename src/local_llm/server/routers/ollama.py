"""Ollama's native API (``/api/...``): validation by the protocol models, work by the service; a
streamed answer is NDJSON (``application/x-ndjson``), one object a line. Errors are Ollama's
``{"error": "..."}`` (server/errors.py picks that shape for every path under /api/)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from local_llm.protocol.ollama import (
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    ModelOperationRequest,
    OllamaEmbeddingResponse,
    PsResponse,
    ShowRequest,
    ShowResponse,
    TagsResponse,
    VersionResponse,
)
from local_llm.server.cancellation import with_cancellation
from local_llm.server.openapi import (
    OLLAMA_EMBED_RESPONSES,
    OLLAMA_GENERATION_RESPONSES,
    OLLAMA_LIST_RESPONSES,
    OLLAMA_READ_RESPONSES,
    OLLAMA_REFUSED_RESPONSES,
    ollama_stream_response,
)
from local_llm.server.routers.answers import NDJSON, answer
from local_llm.server.serving.ollama import OllamaService

router = APIRouter(prefix="/api", tags=["ollama"])


def _service(request: Request) -> OllamaService:
    service: OllamaService = request.app.state.ollama
    return service


@router.get("/version", response_model=VersionResponse, responses=OLLAMA_LIST_RESPONSES)
async def version(request: Request) -> VersionResponse:
    return _service(request).version()


@router.get("/tags", response_model=TagsResponse, responses=OLLAMA_LIST_RESPONSES)
async def list_models(request: Request) -> Response:
    return Response(
        _service(request).tags().model_dump_json(exclude_none=True), media_type="application/json"
    )


@router.post("/show", response_model=ShowResponse, responses=OLLAMA_READ_RESPONSES)
async def show_model(body: ShowRequest, request: Request) -> Response:
    show = _service(request).show(body)
    return Response(show.model_dump_json(exclude_none=True), media_type="application/json")


@router.get("/ps", response_model=PsResponse, responses=OLLAMA_LIST_RESPONSES)
async def running_models(request: Request) -> Response:
    return Response(_service(request).ps().model_dump_json(exclude_none=True), media_type="application/json")


@router.post("/chat", responses={**OLLAMA_GENERATION_RESPONSES, **ollama_stream_response(ChatResponse)})
@with_cancellation
async def chat(body: ChatRequest, request: Request) -> Response:
    return answer(await _service(request).chat(body), NDJSON)


@router.post(
    "/generate", responses={**OLLAMA_GENERATION_RESPONSES, **ollama_stream_response(GenerateResponse)}
)
@with_cancellation
async def generate(body: GenerateRequest, request: Request) -> Response:
    return answer(await _service(request).generate(body), NDJSON)


@router.post("/embed", response_model=EmbedResponse, responses=OLLAMA_EMBED_RESPONSES)
@with_cancellation
async def embed(body: EmbedRequest, request: Request) -> Response:
    return Response(await _service(request).embed(body), media_type="application/json")


@router.post("/embeddings", response_model=OllamaEmbeddingResponse, responses=OLLAMA_EMBED_RESPONSES)
@with_cancellation
async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
    return Response(await _service(request).embeddings(body), media_type="application/json")


# --- managing models: not done here (the models folder is where models come from) -------------------
@router.post("/pull", responses=OLLAMA_REFUSED_RESPONSES)
async def pull(request: Request, body: ModelOperationRequest | None = None) -> Response:
    raise _service(request).refusal("pull", body)


@router.post("/push", responses=OLLAMA_REFUSED_RESPONSES)
async def push(request: Request, body: ModelOperationRequest | None = None) -> Response:
    raise _service(request).refusal("push", body)


@router.post("/create", responses=OLLAMA_REFUSED_RESPONSES)
async def create(request: Request, body: ModelOperationRequest | None = None) -> Response:
    raise _service(request).refusal("create", body)


@router.post("/copy", responses=OLLAMA_REFUSED_RESPONSES)
async def copy(request: Request, body: ModelOperationRequest | None = None) -> Response:
    raise _service(request).refusal("copy", body)


@router.delete("/delete", responses=OLLAMA_REFUSED_RESPONSES)
async def delete(request: Request, body: ModelOperationRequest | None = None) -> Response:
    raise _service(request).refusal("delete", body)
