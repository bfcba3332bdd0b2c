"""Ollama's native API on the one serving path: its requests become ours, our answers become its.

What Ollama's clients (the ``ollama`` Python library, langchain-ollama, Open WebUI, VS Code's Ollama
provider) send is translated here and handed to the services every API family shares, so admission,
leases, keep-alive, cancellation and engine errors behave exactly as on ``/v1``:

* ``/api/chat`` and ``/api/generate`` become a :class:`ChatCompletionRequest` (or, with ``raw`` or a
  model without a chat template, a :class:`CompletionRequest`) for :class:`ChatService`, spoken through
  an :class:`OllamaDialect`. The engine is always asked for a stream with its usage at the end: the
  dialect turns its chunks into Ollama's objects as they come, so the first token's time is measured
  (``prompt_eval_duration``) and tool calls are whole when they are sent; a request with ``stream:
  false`` gets the same objects folded into one, as Ollama's own server folds its channel.
* ``/api/embed`` and ``/api/embeddings`` go through :class:`EmbeddingsService`; ``/api/embed``'s
  vectors have unit length, as Ollama's do.
* ``/api/tags``, ``/api/show`` and ``/api/ps`` are views of :class:`ModelsService`'s cards and the
  manager's facts (the served context is the one the placement planner decided, or the live engine's).
* An empty ``messages`` (or ``prompt``, or ``input``) loads the model through the serving skeleton,
  as a request that does no work; with ``keep_alive: 0`` it is unloaded through the models service.

Ollama's words are kept where its clients show them: ``model 'x' not found`` (404), ``"x" does not
support chat`` (400). Its names may carry a tag: the registry reads ``name:latest`` as ``name``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from local_llm.config import Settings
from local_llm.engines.base import Capability, Engine
from local_llm.engines.chat.parsers import reasoning_parser
from local_llm.engines.factory import capabilities_of
from local_llm.engines.gguf_import import imported_folder, is_imported
from local_llm.errors import (
    InvalidRequestError,
    LocalLLMError,
    ModelNotFoundError,
    OperationNotSupportedError,
    Subject,
)
from local_llm.manager import ModelManager, ModelState, ModelStatus
from local_llm.placement.checkpoint import read_checkpoint
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest
from local_llm.protocol.embeddings import EmbeddingRequest
from local_llm.protocol.models import ModelCard
from local_llm.protocol.ollama import (
    AnswerFunction,
    AnswerMessage,
    AnswerToolCall,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbedRequest,
    Format,
    GenerateRequest,
    GenerateResponse,
    ListedModel,
    ModelDetails,
    ModelOperationRequest,
    OllamaError,
    OllamaMessage,
    OllamaOptions,
    PsResponse,
    RunningModel,
    ShowRequest,
    ShowResponse,
    TagsResponse,
    Think,
    VersionResponse,
)
from local_llm.registry import ModelKind, ModelSpec, WeightFormat, tagged_name
from local_llm.registry.classify import UnservableFolder, read_chat_template
from local_llm.server.serving.base import Admission, FieldNames, Serving
from local_llm.server.serving.chat import ChatService, Dialect, openai_chunks
from local_llm.server.serving.embeddings import EmbeddingsService, truncate_and_renormalise
from local_llm.server.serving.models import ModelsService

logger = logging.getLogger(__name__)

#: What ``/api/version`` answers: the Ollama release that added the last field this server serves
#: (``dimensions`` on ``/api/embed``, 0.11.11). Clients check a minimum: VS Code's Ollama provider
#: needs 0.6.4 (``capabilities`` in ``/api/show``); ``think`` came with 0.9.0.
OLLAMA_VERSION = "0.11.11"

# How long Ollama says a model stays that never expires (keep_alive < 0): Go's longest duration.
_FOREVER = timedelta(microseconds=2**63 // 1000)
# Options this server applies, by Ollama's name: the sampling field each becomes.
_SAMPLING_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
}
# Our request's fields by the Ollama field they came from (for a refused value's message).
_OLLAMA_FIELD = {
    **{ours: f"options.{theirs}" for theirs, ours in _SAMPLING_OPTIONS.items()},
    "max_tokens": "options.num_predict",
    "response_format": "format",
    "chat_template_kwargs": "think",
    "reasoning_effort": "think",
}
_CHAT_FIELDS = FieldNames({Subject.PROMPT: "messages"}, options=_OLLAMA_FIELD)
_GENERATE_FIELDS = FieldNames({Subject.PROMPT: "prompt"}, options=_OLLAMA_FIELD)
_EMBED_FIELDS = FieldNames({Subject.INPUT: "input"})
# What a model can be asked, in /api/show's words, by our capability.
_WHAT = {Capability.CHAT: "chat", Capability.COMPLETIONS: "generate", Capability.EMBEDDINGS: "embeddings"}
# The first bytes of the image formats a vision model reads, for the data URL of an Ollama image.
_IMAGE_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)

M = TypeVar("M", bound=BaseModel)


class OllamaModelNotFoundError(ModelNotFoundError):
    """A 404 in Ollama's words (its CLI and apps look for "not found")."""

    def __init__(self, name: str) -> None:
        LocalLLMError.__init__(self, f"model '{name}' not found")


def _now() -> str:
    """``created_at``: RFC 3339 in UTC, as Ollama's Go server writes it."""
    return _iso(datetime.now(timezone.utc))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(exclude_none=True))


def _line(model: BaseModel) -> bytes:
    return _json(model) + b"\n"


def _validated(model_type: type[M], fields: dict[str, Any]) -> M:
    """Our request built from Ollama's: a value our request refuses (a temperature above 2) is the
    client's, named by its Ollama field."""
    try:
        return model_type.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        ours = location[0] if location else ""
        param = _OLLAMA_FIELD.get(ours, ours) or None
        detail = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InvalidRequestError(
            f"Invalid value for {param or 'the request'}: {detail}.", param=param
        ) from None


# --- the answers: an engine's OpenAI stream as Ollama's objects -----------------------------------


@dataclass
class _ToolCallParts:
    """One tool call as its stream chunks build it (name, then the arguments' JSON in pieces)."""

    id: str | None = None
    name: str = ""
    arguments: str = ""


@dataclass
class _Generation:
    """What the chunks said so far, and when (``time.perf_counter_ns``)."""

    started_ns: int
    ready_ns: int = 0
    first_ns: int | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tool_calls: dict[int, _ToolCallParts] = field(default_factory=dict)

    def timings(self) -> dict[str, int | None]:
        end = time.perf_counter_ns()
        first = self.first_ns if self.first_ns is not None else end
        return {
            "total_duration": end - self.started_ns,
            "load_duration": self.ready_ns - self.started_ns,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": first - self.ready_ns,
            "eval_count": self.completion_tokens,
            "eval_duration": end - first,
        }

    @property
    def done_reason(self) -> str:
        """Ollama's: ``length`` when the token cap ended it, ``stop`` otherwise (tool calls too)."""
        return "length" if self.finish_reason == "length" else "stop"

    def answered_tool_calls(self) -> list[AnswerToolCall] | None:
        calls = [_answered(index, parts) for index, parts in sorted(self.tool_calls.items())]
        return calls or None


def _answered(index: int, parts: _ToolCallParts) -> AnswerToolCall:
    try:
        arguments = json.loads(parts.arguments) if parts.arguments else {}
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        logger.warning(
            "tool call %s had arguments that are not a JSON object: %r", parts.name, parts.arguments
        )
        arguments = {}
    return AnswerToolCall(
        id=parts.id or f"call_{index}",
        function=AnswerFunction(index=index, name=parts.name, arguments=arguments),
    )


@dataclass(frozen=True)
class _Piece:
    """Text that came in one chunk: the answer's, and the model's thinking."""

    content: str = ""
    thinking: str = ""


class OllamaDialect(Dialect):
    """Ollama's NDJSON on top of the engine's OpenAI stream: one object a line, the last ``done`` with
    the counts and durations; with ``stream: false``, those objects folded into one body. A failure
    after the stream began ends it with an ``{"error": ...}`` line; unstreamed, it is kept for the
    service to answer with its own status."""

    stream_end = b""

    def __init__(self, model: str, *, streaming: bool, started_ns: int, fields: FieldNames) -> None:
        self.model = model
        self.streaming = streaming
        self.fields = fields
        self.generation = _Generation(started_ns)
        self.failure: LocalLLMError | None = None

    def stream_error(self, error: LocalLLMError) -> bytes:
        if self.streaming:
            return _line(OllamaError(error=error.message))
        self.failure = error
        return b""

    async def stream(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        self.generation.ready_ns = time.perf_counter_ns()
        if self.streaming:
            async for piece in self._pieces(events):
                yield _line(self.render(piece, done=False))
            calls = self.generation.answered_tool_calls()
            if calls:
                yield _line(self.render(_Piece(), done=False, tool_calls=calls))
            yield _line(self.render(_Piece(), done=True))
            return
        content: list[str] = []
        thinking: list[str] = []
        async for piece in self._pieces(events):
            content.append(piece.content)
            thinking.append(piece.thinking)
        whole = _Piece("".join(content), "".join(thinking))
        yield _json(self.render(whole, done=True, tool_calls=self.generation.answered_tool_calls()))

    async def _pieces(self, events: AsyncIterator[bytes]) -> AsyncIterator[_Piece]:
        generation = self.generation
        async for chunk in openai_chunks(events):
            if generation.first_ns is None:
                generation.first_ns = time.perf_counter_ns()
            usage = chunk.get("usage")
            if usage:
                generation.prompt_tokens = usage.get("prompt_tokens")
                generation.completion_tokens = usage.get("completion_tokens")
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    generation.finish_reason = choice["finish_reason"]
                piece = self.piece(choice)
                if piece.content or piece.thinking:
                    yield piece

    def piece(self, choice: dict[str, Any]) -> _Piece:
        """A chat chunk's choice: content, reasoning and tool-call deltas."""
        delta = choice.get("delta") or {}
        for call in delta.get("tool_calls") or ():
            parts = self.generation.tool_calls.setdefault(int(call.get("index", 0)), _ToolCallParts())
            parts.id = parts.id or call.get("id")
            function = call.get("function") or {}
            parts.name += function.get("name") or ""
            parts.arguments += function.get("arguments") or ""
        thinking = delta.get("reasoning") or delta.get("reasoning_content") or ""
        return _Piece(delta.get("content") or "", thinking)

    def render(
        self, piece: _Piece, *, done: bool, tool_calls: list[AnswerToolCall] | None = None
    ) -> BaseModel:
        message = AnswerMessage(content=piece.content, thinking=piece.thinking or None, tool_calls=tool_calls)
        if not done:
            return ChatResponse(model=self.model, created_at=_now(), message=message, done=False)
        return ChatResponse(
            model=self.model,
            created_at=_now(),
            message=message,
            done=True,
            done_reason=self.generation.done_reason,
            **self.generation.timings(),
        )


class OllamaGenerateDialect(OllamaDialect):
    """``/api/generate``'s objects (``response``), from a chat stream or a completion stream."""

    def piece(self, choice: dict[str, Any]) -> _Piece:
        if "text" in choice:  # a completion's chunk
            return _Piece(choice.get("text") or "")
        return super().piece(choice)

    def render(
        self, piece: _Piece, *, done: bool, tool_calls: list[AnswerToolCall] | None = None
    ) -> BaseModel:
        thinking = piece.thinking or None
        if not done:
            return GenerateResponse(
                model=self.model, created_at=_now(), response=piece.content, thinking=thinking, done=False
            )
        return GenerateResponse(
            model=self.model,
            created_at=_now(),
            response=piece.content,
            thinking=thinking,
            done=True,
            done_reason=self.generation.done_reason,
            **self.generation.timings(),
        )


# --- requests: Ollama's fields as ours --------------------------------------------------------------


def _sampling(options: OllamaOptions | None, model: str, context: int | None) -> dict[str, Any]:
    """Ollama's ``options`` as our sampling fields. ``num_predict`` is the token cap (negative, or 0:
    none, as in Ollama: the context's room). ``num_ctx`` cannot change a loaded model's context: one
    within it is accepted, one beyond it is served with the model's own (logged). What the engine has
    no use for (runner settings, mirostat, ...) and options Ollama does not know are logged and ignored."""
    if options is None:
        return {}
    fields: dict[str, Any] = {}
    for theirs, ours in _SAMPLING_OPTIONS.items():
        value = getattr(options, theirs)
        if value is not None:
            fields[ours] = value
    if options.num_predict is not None:
        fields["max_tokens"] = options.num_predict if options.num_predict > 0 else None
    if options.num_ctx is not None and context is not None and options.num_ctx > context:
        logger.warning(
            "num_ctx %d asked for %s, whose context is %d tokens (LLM_VLLM_MAX_MODEL_LEN caps it): served "
            "with %d",
            options.num_ctx,
            model,
            context,
            context,
        )
    applied = {*_SAMPLING_OPTIONS, "num_predict", "num_ctx"}
    ignored = sorted((options.model_fields_set - applied) | set(options.model_extra or {}))
    if ignored:
        logger.info("options ignored for %s (no use on this server): %s", model, ", ".join(ignored))
    return fields


def _response_format(value: Format) -> dict[str, Any] | None:
    """``"json"``: any JSON object; a schema: output that follows it (both by constrained decoding)."""
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    return None


def _image_url(image: str) -> dict[str, Any]:
    """An Ollama image (base64, validated) as an OpenAI image part, its type told by its first bytes."""
    try:
        head = base64.b64decode(image[:24])
    except ValueError:
        head = b""
    media = next((kind for magic, kind in _IMAGE_MAGIC if head.startswith(magic)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{image}"}}


def _user_content(text: str, images: Sequence[str] | None) -> str | list[dict[str, Any]]:
    if not images:
        return text
    return [{"type": "text", "text": text}, *(_image_url(image) for image in images)]


def _chat_messages(messages: Iterable[OllamaMessage]) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI's. Tool calls get ids (Ollama's may have none) and each tool answer
    is matched to its call: by ``tool_call_id`` when the client sent one, else the first unanswered
    call of the ``tool_name``, else the first unanswered call."""
    converted: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, function name)
    for position, message in enumerate(messages):
        content = message.content or ""
        if message.images and message.role != "user":
            raise InvalidRequestError(
                f"messages[{position}] has images: only user messages may carry them.", param="messages"
            )
        if message.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": content}
            calls = []
            for index, call in enumerate(message.tool_calls or ()):
                call_id = call.id or f"call_{position}_{index}"
                arguments = call.function.arguments
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                        },
                    }
                )
                unanswered.append((call_id, call.function.name))
            if calls:
                entry["tool_calls"] = calls
        elif message.role == "tool":
            entry = {"role": "tool", "content": content, "tool_call_id": _answered_call(message, unanswered)}
        elif message.role == "user":
            entry = {"role": "user", "content": _user_content(content, message.images)}
        else:
            entry = {"role": message.role, "content": content}
        converted.append(entry)
    return converted


def _answered_call(message: OllamaMessage, unanswered: list[tuple[str, str]]) -> str:
    matches = [
        i
        for i, (call_id, name) in enumerate(unanswered)
        if call_id == message.tool_call_id or (message.tool_call_id is None and name == message.tool_name)
    ]
    if matches:
        return unanswered.pop(matches[0])[0]
    if message.tool_call_id is not None:
        return message.tool_call_id
    if unanswered:
        return unanswered.pop(0)[0]
    return f"call_{message.tool_name or 'tool'}"


def _thinking_fields(think: Think, model: str, thinks: bool) -> dict[str, Any]:
    """``think`` as the chat template's ``enable_thinking`` (and a level as ``reasoning_effort``);
    refused for a model that does not think, as Ollama refuses it."""
    if think is None or (think is False and not thinks):
        return {}
    if not thinks:
        raise InvalidRequestError(f'"{model}" does not support thinking', param="think")
    fields: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": bool(think)}}
    if isinstance(think, str):
        fields["reasoning_effort"] = think
    return fields


def _stream_fields() -> dict[str, Any]:
    """Every Ollama answer is read from the engine's stream, with its usage at the end."""
    return {"stream": True, "stream_options": {"include_usage": True}}


# --- the models' facts, as Ollama shows them ----------------------------------------------------------


def _human_count(count: int) -> str:
    """A parameter count as Ollama writes it: 135M, 1.5B, 7B."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            value = count / scale
            return f"{value:.0f}{unit}" if value >= 100 or value == int(value) else f"{value:.1f}{unit}"
    return str(count)


@dataclass(frozen=True)
class _Facts:
    """What Ollama's listings say of a model, read once: its family, size and identity."""

    family: str
    parameters: int | None
    digest: str
    modified_at: str


class OllamaService:
    def __init__(
        self,
        manager: ModelManager,
        admission: Admission,
        settings: Settings,
        chat: ChatService,
        embeddings: EmbeddingsService,
        models: ModelsService,
    ) -> None:
        self._manager = manager
        self._settings = settings
        self._chat = chat
        self._embeddings = embeddings
        self._models = models
        # Loading a model for Ollama's empty requests: the serving path with no engine work.
        self._loaders: dict[Capability, Serving[Engine]] = {
            capability: Serving(manager, admission, settings, capability, f"/api ({what})")
            for capability, what in _WHAT.items()
        }
        self._facts: dict[str, _Facts] = {}

    # --- models ----------------------------------------------------------------------------------
    def version(self) -> VersionResponse:
        return VersionResponse(version=OLLAMA_VERSION)

    def tags(self) -> TagsResponse:
        """Chat and embedding models (rerankers have no Ollama use), each by its served name with
        Ollama's tag; ``size`` is the weights' on disk."""
        listed = []
        for card in self._models.list().data:
            if card.type is ModelKind.RERANKER:
                continue
            spec = self._manager.registry.get(card.id)
            facts = self._facts_of(spec, card)
            listed.append(
                ListedModel(
                    name=tagged_name(spec.name),
                    model=tagged_name(spec.name),
                    modified_at=facts.modified_at,
                    size=card.size_bytes,
                    digest=facts.digest,
                    details=self._details(spec, facts),
                )
            )
        return TagsResponse(models=listed)

    def show(self, request: ShowRequest) -> ShowResponse:
        name = request.model or request.name
        if not name:
            raise InvalidRequestError("model is required", param="model")
        spec = self._spec(name)
        status = self._manager.status(spec.name)
        facts = self._facts_of(spec, self._models.get(spec.name))
        context = self.context_length(status)
        template = self._chat_template(spec) if spec.kind is ModelKind.CHAT else None
        architecture = facts.family or "unknown"
        model_info: dict[str, Any] = {"general.architecture": architecture, "general.basename": name}
        if facts.parameters is not None:
            model_info["general.parameter_count"] = facts.parameters
        if context is not None:
            model_info[f"{architecture}.context_length"] = context
        parameters = f"{'num_ctx':<30} {context}" if context is not None else None
        modelfile = (
            "# Modelfile generated by local-llm-interface. Models come from its models folder\n"
            "# (LLM_MODELS_DIR), not from Modelfiles; TEMPLATE is the model's own Jinja chat template.\n"
            f"FROM {spec.name}\n" + (f"PARAMETER num_ctx {context}\n" if context is not None else "")
        )
        return ShowResponse(
            modelfile=modelfile,
            parameters=parameters,
            template=template,
            details=self._details(spec, facts),
            model_info=model_info,
            capabilities=self.capabilities(spec, template),
            modified_at=facts.modified_at,
        )

    def ps(self) -> PsResponse:
        """The loaded models, with what they hold (measured once loaded) and when they go idle-out."""
        running = []
        for card in self._models.list().data:
            if card.state is not ModelState.LOADED:
                continue
            spec = self._manager.registry.get(card.id)
            facts = self._facts_of(spec, card)
            size, on_gpu = _held_bytes(card)
            running.append(
                RunningModel(
                    name=tagged_name(spec.name),
                    model=tagged_name(spec.name),
                    size=size,
                    digest=facts.digest,
                    details=self._details(spec, facts),
                    expires_at=_expires_at(card),
                    size_vram=on_gpu,
                    context_length=card.max_model_len,
                )
            )
        return PsResponse(models=running)

    def capabilities(self, spec: ModelSpec, template: str | None) -> list[str]:
        """Ollama's capabilities: ``completion`` for chat models (``tools`` when the chat template takes
        tools, ``thinking`` when a reasoning parser reads its output), ``embedding`` for embedders."""
        served = capabilities_of(spec, self._settings)
        found = []
        if served & {Capability.CHAT, Capability.COMPLETIONS}:
            found.append("completion")
        if Capability.CHAT in served and template is not None:
            if "tools" in template:
                found.append("tools")
            if reasoning_parser(spec, template, self._model_type(spec) or "") is not None:
                found.append("thinking")
        if Capability.EMBEDDINGS in served:
            found.append("embedding")
        return found

    def context_length(self, status: ModelStatus) -> int | None:
        """The model's context: the live engine's, else what its placement plan (or, before one, its
        estimate for the likely device) starts the engine with. Decided by the planner, not here."""
        if status.max_model_len is not None:
            return status.max_model_len
        if status.plan is not None:
            return status.plan.facts.context_tokens
        need = self._manager.estimate(status.spec.name)
        facts = need.facts_on_gpu if self._manager.budget.gpu_bytes is not None else need.facts_on_cpu
        return facts.context_tokens

    # --- chat and generate ------------------------------------------------------------------------
    async def chat(self, request: ChatRequest) -> bytes | AsyncIterator[bytes]:
        started = time.perf_counter_ns()
        spec = self._resolve(request.model, Capability.CHAT)
        if not request.messages:
            reason = await self._load_or_unload(spec, Capability.CHAT, request.keep_alive)
            empty = AnswerMessage(content="")
            return _json(
                ChatResponse(
                    model=request.model, created_at=_now(), message=empty, done=True, done_reason=reason
                )
            )
        capabilities = self.capabilities(spec, self._chat_template(spec))
        if request.tools and "tools" not in capabilities:
            raise InvalidRequestError(f'"{request.model}" does not support tools', param="tools")
        fields: dict[str, Any] = {
            "model": request.model,
            "messages": _chat_messages(request.messages),
            **_stream_fields(),
            **_sampling(request.options, request.model, self.context_length(self._manager.status(spec.name))),
            **_thinking_fields(request.think, request.model, "thinking" in capabilities),
            "keep_alive": request.keep_alive,
        }
        if request.tools:
            fields["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools]
        if (response_format := _response_format(request.format)) is not None:
            fields["response_format"] = response_format
        dialect = OllamaDialect(
            request.model, streaming=request.stream is not False, started_ns=started, fields=_CHAT_FIELDS
        )
        result = await self._chat.chat(_validated(ChatCompletionRequest, fields), dialect)
        return await _answer(result, dialect)

    async def generate(self, request: GenerateRequest) -> bytes | AsyncIterator[bytes]:
        started = time.perf_counter_ns()
        spec = self._resolve(request.model, Capability.COMPLETIONS)
        if not request.prompt:
            reason = await self._load_or_unload(spec, Capability.COMPLETIONS, request.keep_alive)
            return _json(
                GenerateResponse(
                    model=request.model, created_at=_now(), response="", done=True, done_reason=reason
                )
            )
        _check_generate(request)
        templated = not request.raw and Capability.CHAT in capabilities_of(spec, self._settings)
        if request.suffix is None and templated:
            return await self._generate_chat(request, spec, started)
        if request.system:
            raise InvalidRequestError(
                "raw mode does not support template, system, or context"
                if request.raw
                else f'"{request.model}" has no chat template to apply system to; put it in the prompt',
                param="system",
            )
        if request.images:
            raise InvalidRequestError("images need the model's chat template (raw: false)", param="images")
        fields = {
            "model": request.model,
            "prompt": request.prompt,
            "suffix": request.suffix,
            "max_tokens": None,  # as Ollama: no cap unless num_predict says one (a completion's is 16)
            **_stream_fields(),
            **_sampling(request.options, request.model, self.context_length(self._manager.status(spec.name))),
            "keep_alive": request.keep_alive,
        }
        if (response_format := _response_format(request.format)) is not None:
            fields["response_format"] = response_format
        dialect = OllamaGenerateDialect(
            request.model, streaming=request.stream is not False, started_ns=started, fields=_GENERATE_FIELDS
        )
        result = await self._chat.complete(_validated(CompletionRequest, fields), dialect)
        return await _answer(result, dialect)

    async def _generate_chat(
        self, request: GenerateRequest, spec: ModelSpec, started: int
    ) -> bytes | AsyncIterator[bytes]:
        """A prompt (and system prompt) for a chat model: one user turn, in its chat template."""
        capabilities = self.capabilities(spec, self._chat_template(spec))
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": _user_content(request.prompt or "", request.images)})
        fields: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            **_stream_fields(),
            **_sampling(request.options, request.model, self.context_length(self._manager.status(spec.name))),
            **_thinking_fields(request.think, request.model, "thinking" in capabilities),
            "keep_alive": request.keep_alive,
        }
        if (response_format := _response_format(request.format)) is not None:
            fields["response_format"] = response_format
        dialect = OllamaGenerateDialect(
            request.model, streaming=request.stream is not False, started_ns=started, fields=_GENERATE_FIELDS
        )
        result = await self._chat.chat(_validated(ChatCompletionRequest, fields), dialect)
        return await _answer(result, dialect)

    # --- embeddings --------------------------------------------------------------------------------
    async def embed(self, request: EmbedRequest) -> bytes:
        """Vectors of unit length (as Ollama's), inputs cut to the model's limit unless ``truncate`` is
        false; ``dimensions`` as on /v1/embeddings (Matryoshka models)."""
        started = time.perf_counter_ns()
        spec = self._resolve(request.model, Capability.EMBEDDINGS)
        _ignore_options(request.options, request.model)
        texts = [request.input] if isinstance(request.input, str) else list(request.input or ())
        if not any(texts):
            await self._load(spec, Capability.EMBEDDINGS, request.keep_alive)
            return orjson.dumps({"model": request.model, "embeddings": []})
        was_ready = self._manager.ready(spec.name)
        vectors, tokens = await self._embed(
            request.model,
            texts,
            request.truncate is not False,
            request.dimensions or None,
            request.keep_alive,
        )
        vectors = truncate_and_renormalise(vectors, vectors.shape[1])
        total = time.perf_counter_ns() - started
        body = {
            "model": request.model,
            "embeddings": vectors,
            "total_duration": total,
            "load_duration": 0 if was_ready else self._load_duration(spec, total),
            "prompt_eval_count": tokens,
        }
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    async def embeddings(self, request: EmbeddingsRequest) -> bytes:
        """The older route: one prompt, the model's own vector (Ollama does not normalise it here)."""
        spec = self._resolve(request.model, Capability.EMBEDDINGS)
        _ignore_options(request.options, request.model)
        if not request.prompt:
            await self._load(spec, Capability.EMBEDDINGS, request.keep_alive)
            return orjson.dumps({"embedding": []})
        vectors, _ = await self._embed(request.model, [request.prompt], True, None, request.keep_alive)
        return orjson.dumps({"embedding": vectors[0]}, option=orjson.OPT_SERIALIZE_NUMPY)

    async def _embed(
        self, model: str, texts: list[str], truncate: bool, dimensions: int | None, keep_alive: float | None
    ) -> tuple[np.ndarray, int]:
        request = _validated(
            EmbeddingRequest,
            {
                "model": model,
                "input": texts,
                "truncate": truncate,
                "dimensions": dimensions,
                "keep_alive": keep_alive,
            },
        )
        answer = orjson.loads(await self._embeddings.create(request))
        vectors = np.array([row["embedding"] for row in answer["data"]], dtype=np.float32)
        return vectors, int(answer["usage"]["prompt_tokens"])

    def _load_duration(self, spec: ModelSpec, total_ns: int) -> int:
        """A request that found its model unloaded waited for the load: the load's measured time."""
        seconds = self._manager.status(spec.name).load_seconds
        return min(int(seconds * 1e9), total_ns) if seconds is not None else 0

    # --- what this server does not do ------------------------------------------------------------
    def refusal(self, operation: str, request: ModelOperationRequest | None) -> OperationNotSupportedError:
        """``/api/pull`` and the others that manage models: the models folder is where models come from."""
        named = request and (request.model or request.name or request.source)
        return OperationNotSupportedError(
            f"{operation} is not supported{f' (model {named!r})' if named else ''}: this server serves the "
            "models in its models folder (LLM_MODELS_DIR) and never downloads, uploads, creates, copies or "
            "deletes one. Put a Hugging Face model folder or a .gguf file there (or change models.yaml) and "
            "restart the server; `local-llm models` lists what it finds."
        )

    # --- resolving, loading --------------------------------------------------------------------------
    def _spec(self, name: str) -> ModelSpec:
        try:
            return self._manager.registry.get(name)
        except ModelNotFoundError:
            raise OllamaModelNotFoundError(name) from None

    def _resolve(self, name: str, capability: Capability) -> ModelSpec:
        """The model served as ``name``, if it can do what the route asks (Ollama's 404 and 400)."""
        spec = self._spec(name)
        served = capabilities_of(spec, self._settings)
        if capability not in served:
            why = ""
            if capability is Capability.CHAT and Capability.COMPLETIONS in served:
                why = ": it has no chat template; send a prompt to /api/generate with raw: true"
            raise InvalidRequestError(
                f'"{name}" does not support {_WHAT[capability]}{why}',
                param="model",
                code="model_type_mismatch",
            )
        return spec

    async def _load(self, spec: ModelSpec, capability: Capability, keep_alive: float | None) -> None:
        """Load (or keep) the model as a request would, through admission and a lease, doing no work."""

        async def nothing(engine: Engine) -> None:
            return None

        await self._loaders[capability].call(spec, nothing, fields=_CHAT_FIELDS, keep_alive_s=keep_alive)

    async def _load_or_unload(self, spec: ModelSpec, capability: Capability, keep_alive: float | None) -> str:
        """Ollama's empty request: loads the model, or with ``keep_alive: 0`` unloads it through the
        models service (refused while requests hold it or it is pinned: 409). Its ``done_reason``."""
        if keep_alive == 0:
            await self._models.unload(spec.name)
            return "unload"
        await self._load(spec, capability, keep_alive)
        return "load"

    # --- facts ---------------------------------------------------------------------------------------
    def _chat_template(self, spec: ModelSpec) -> str | None:
        """The model's chat template, as its engine reads it (a GGUF's from its imported folder)."""
        folder = spec.path
        if spec.weight_format is WeightFormat.GGUF:
            try:
                folder = imported_folder(spec.path, self._settings.data_dir)
            except OSError:
                return None
            if not is_imported(folder):
                return None
        return read_chat_template(folder)

    def _model_type(self, spec: ModelSpec) -> str | None:
        return self._manager.estimate(spec.name).facts_on_cpu.model_type

    def _facts_of(self, spec: ModelSpec, card: ModelCard) -> _Facts:
        facts = self._facts.get(spec.name)
        if facts is None:
            identity = f"{spec.name}|{spec.path}|{spec.size_bytes}|{card.created}"
            facts = self._facts[spec.name] = _Facts(
                family=self._model_type(spec) or "",
                parameters=_parameter_count(spec),
                digest=hashlib.sha256(identity.encode()).hexdigest(),
                modified_at=_iso(datetime.fromtimestamp(card.created, timezone.utc)),
            )
        return facts

    def _details(self, spec: ModelSpec, facts: _Facts) -> ModelDetails:
        return ModelDetails(
            format=spec.weight_format.value,
            family=facts.family,
            families=[facts.family] if facts.family else None,
            parameter_size=_human_count(facts.parameters) if facts.parameters is not None else "",
            quantization_level=(spec.quantization or "").upper(),
        )


def _check_generate(request: GenerateRequest) -> None:
    """What this server cannot do for /api/generate, said before any work."""
    if request.template:
        raise InvalidRequestError(
            "template is not supported: the model's own chat template is applied (or none, with raw: true, "
            "to a prompt you formatted yourself)",
            param="template",
        )
    if request.context:
        raise InvalidRequestError(
            "context is not supported: this server keeps no token context between requests (Ollama has "
            "deprecated it); send the conversation to /api/chat",
            param="context",
        )


def _ignore_options(options: OllamaOptions | None, model: str) -> None:
    if options is not None and (options.model_fields_set or options.model_extra):
        named = sorted(options.model_fields_set | set(options.model_extra or {}))
        logger.info("options ignored for embeddings with %s: %s", model, ", ".join(named))


async def _answer(
    result: bytes | AsyncIterator[bytes], dialect: OllamaDialect
) -> bytes | AsyncIterator[bytes]:
    """The stream as it comes, or (``stream: false``) its one body, read here: a failure on the way is
    answered with its own status, not inside a 200."""
    if isinstance(result, bytes) or dialect.streaming:
        return result
    body = b"".join([part async for part in result])
    if dialect.failure is not None:
        raise dialect.failure
    return body


def _parameter_count(spec: ModelSpec) -> int | None:
    """Parameters of an unquantized checkpoint, from its headers (read once, by the memory planner's
    reader); None where the headers do not count them (quantized weights)."""
    try:
        checkpoint = read_checkpoint(spec)
    except (UnservableFolder, OSError, ValueError):
        return None
    return checkpoint.float_elements if checkpoint.float_elements > 0 and not checkpoint.fixed_bytes else None


def _held_bytes(card: ModelCard) -> tuple[int, int]:
    """A loaded model's memory (measured, else its plan's), and how much of it is on the GPU."""
    held = card.measured_bytes or card.estimated_bytes or 0
    offload = card.offload_bytes or 0
    if card.placement == "cpu":
        return held, 0
    return held + offload, held


def _expires_at(card: ModelCard) -> str:
    """When an idle model goes: its last use (now, while requests hold it) plus its time to live."""
    now = datetime.now(timezone.utc)
    if card.idle_ttl_s is None or not math.isfinite(card.idle_ttl_s):
        return _iso(now + _FOREVER)
    since = (
        now
        if card.in_flight or card.last_used is None
        else datetime.fromtimestamp(card.last_used, timezone.utc)
    )
    return _iso(since + timedelta(seconds=card.idle_ttl_s))


__all__ = ["OLLAMA_VERSION", "OllamaDialect", "OllamaGenerateDialect", "OllamaService"]
