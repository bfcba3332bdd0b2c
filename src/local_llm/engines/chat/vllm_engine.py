"""Chat on vLLM: an ``AsyncLLM`` per model, answered through vLLM's own OpenAI serving classes.

vLLM's ``OpenAIServingChat`` / ``OpenAIServingCompletion`` render chat templates, turn every
sampling field into ``SamplingParams``, constrain output for ``response_format`` and
``tool_choice`` (xgrammar), parse tool calls with the model family's parser and stream OpenAI
chunks. Reusing them, rather than re-implementing them, keeps every field behaving exactly as in
``vllm serve``; this class adds what a multi-model server needs around them: engine arguments
from Settings and the placement plan, GGUF import, errors in our categories, and shutdown that
ends vLLM's engine process so its memory comes back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from local_llm.backends import IMPORT_LOCK
from local_llm.config import Settings
from local_llm.engines.chat.base import ChatEngine, ChatResult
from local_llm.engines.chat.parsers import FALLBACK_TOOL_PARSER, reasoning_parser, tool_call_parser
from local_llm.engines.gguf_import import ensure_imported
from local_llm.engines.vllm_base import VllmEngine, vllm_error_types
from local_llm.errors import EngineError, EngineRequestError, InputTooLongError, Subject
from local_llm.placement import PlacementPlan
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest
from local_llm.registry.classify import read_chat_template
from local_llm.registry.spec import ModelSpec, WeightFormat

logger = logging.getLogger(__name__)

# vLLM's "auto" backend failed on the CPU build; xgrammar works on both. Compact JSON: with any
# whitespace allowed, small models often pad JSON with blanks until max_tokens runs out.
STRUCTURED_OUTPUTS_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}


class VllmChatEngine(VllmEngine, ChatEngine):
    backend = "vllm"
    in_process = False

    def __init__(self, spec: ModelSpec, plan: PlacementPlan, settings: Settings) -> None:
        super().__init__(spec, plan, settings)
        self._chat: Any = None
        self._completion: Any = None
        self._chat_request_type: Any = None
        self._completion_request_type: Any = None
        self._tool_parser: str | None = None

    async def _model_folder(self) -> Path:
        if self.spec.weight_format is not WeightFormat.GGUF:
            return self.spec.path
        self.stage("importing the GGUF file")
        return await ensure_imported(self.spec.path, self._settings.data_dir)

    def _runner_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"structured_outputs_config": STRUCTURED_OUTPUTS_CONFIG}
        if self._settings.vllm_max_num_seqs:
            args["max_num_seqs"] = self._settings.vllm_max_num_seqs
        return args

    def _describe(self) -> str:
        return f"chat model, context {self.max_model_len} tokens, tool parser {self._tool_parser}"

    def _serve(self, folder: Path) -> None:
        self.stage("building the chat serving (template, tool and reasoning parsers)")
        self._build_serving(folder)

    async def stop(self) -> None:
        self._chat = self._completion = None
        await super().stop()

    def _build_serving(self, folder: Path) -> None:
        with IMPORT_LOCK:
            from vllm.entrypoints.openai.chat_completion.protocol import (
                ChatCompletionRequest as VllmChatRequest,
            )
            from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
            from vllm.entrypoints.openai.completion.protocol import (
                CompletionRequest as VllmCompletionRequest,
            )
            from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
            from vllm.entrypoints.openai.models.protocol import BaseModelPath
            from vllm.entrypoints.openai.models.serving import OpenAIServingModels
            from vllm.renderers.online_renderer import OnlineRenderer

        engine = self.engine
        template = read_chat_template(folder)
        model_type = self.plan.facts.model_type or ""
        # vLLM parses tool calls only with a parser enabled, even for "required" and named functions
        # (whose output it constrains to JSON itself); a model whose template shows no tool format
        # gets the generic Hermes parser for those.
        self._tool_parser = tool_call_parser(self.spec, template) or FALLBACK_TOOL_PARSER
        thinking = reasoning_parser(self.spec, template, model_type)
        models = OpenAIServingModels(engine, [BaseModelPath(name=self.spec.name, model_path=str(folder))])
        renderer = OnlineRenderer(
            engine.model_config,
            engine.renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
            enable_auto_tools=True,
            tool_parser=self._tool_parser,
            reasoning_parser=thinking,
        )
        self._chat = OpenAIServingChat(
            engine,
            models,
            "assistant",
            online_renderer=renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
            enable_auto_tools=True,
            tool_parser=self._tool_parser,
            reasoning_parser=thinking or "",
        )
        self._completion = OpenAIServingCompletion(
            engine, models, online_renderer=renderer, request_logger=None
        )
        self._chat_request_type = VllmChatRequest
        self._completion_request_type = VllmCompletionRequest

    # --- requests ------------------------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        vllm_request = self._to_vllm(self._chat_request_type, request)
        return await self._run(lambda: self._chat.create_chat_completion(vllm_request))

    async def complete(self, request: CompletionRequest) -> ChatResult:
        vllm_request = self._to_vllm(self._completion_request_type, request)
        return await self._run(lambda: self._completion.create_completion(vllm_request))

    def _to_vllm(self, request_type: Any, request: ChatCompletionRequest | CompletionRequest) -> Any:
        """vLLM's request object for ours (already validated; vLLM checks its own extras).

        vLLM's model validators raise its own client errors (VLLMValidationError), which pydantic lets
        through unwrapped: they are the client's mistake as much as a field's type is (a 400, not 500).
        """
        fields = {**request.engine_fields(), "model": self.spec.name}
        _, client_errors, _ = vllm_error_types()
        try:
            return request_type.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            location = first.get("loc", ())
            option = str(location[0]) if location else None
            message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
            raise EngineRequestError(message, option=option) from None
        except client_errors as exc:
            logger.info("vLLM refused a request for %s: %s", self.spec.name, exc)
            raise _client_error(str(exc), getattr(exc, "parameter", None)) from None

    async def count_prompt_tokens(self, request: ChatCompletionRequest) -> int:
        """Rendered by vLLM's own chat serving (``render_chat_request``: the same template, tools and
        tokenizer as an answer's prompt), as vLLM's Anthropic count_tokens does; nothing is scheduled."""
        vllm_request = self._to_vllm(self._chat_request_type, request)
        _, engine_inputs = await self._call(lambda: self._chat.render_chat_request(vllm_request))
        return sum(len(item["prompt_token_ids"]) for item in engine_inputs if "prompt_token_ids" in item)

    async def _run(self, call: Any) -> ChatResult:
        result = await self._call(call)
        if isinstance(result, AsyncIterator):
            return self._events(result)
        return result.model_dump_json(exclude_none=True).encode()

    async def _call(self, call: Any) -> Any:
        """``call()`` into vLLM's serving code, its refusals and failures as our domain errors."""
        error_response, client_errors, _ = vllm_error_types()
        try:
            result = await self._guarded(call)
        except client_errors as exc:
            # vLLM's own API server answers these with 400 (bad template input, token ids, lengths, ...).
            logger.info("vLLM refused a request for %s: %s", self.spec.name, exc)
            if isinstance(exc, ValidationError):
                raise _prompt_refused(exc) from None
            raise _client_error(str(exc), getattr(exc, "parameter", None)) from None
        if isinstance(result, error_response):
            error = result.error
            if error.code < 500:
                raise _client_error(error.message, error.param)
            if self._dead_cause() is not None:
                raise self._failed()
            raise EngineError(f"vLLM failed on the request: {error.message}")
        return result

    async def _events(self, events: AsyncIterator[str]) -> AsyncIterator[bytes]:
        """vLLM's SSE strings as bytes, ended by ``data: [DONE]``. vLLM reports a failure mid-stream as
        an error event of its own shape; that becomes a domain error raised here (the serving layer
        writes the event in the API's shape). Closing this closes vLLM's generator, which aborts the
        request."""
        try:
            # The request reaches vLLM's engine on the first step: until then its death may pass it by.
            try:
                event = await self._unless_dead(anext(events))
            except StopAsyncIteration:
                return
            while True:
                if event.startswith('data: {"error"'):
                    raise self._stream_error(event)
                yield event.encode()
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _stream_error(self, event: str) -> Exception:
        if self._dead_cause() is not None:
            return self._failed()
        try:
            error = json.loads(event.removeprefix("data: ")).get("error", {})
        except json.JSONDecodeError:
            error = {}
        message, code = str(error.get("message", event)), error.get("code")
        if isinstance(code, int) and code < 500:
            return _client_error(message, error.get("param"))
        return EngineError(f"vLLM failed on the request: {message}")


def _prompt_refused(exc: ValidationError) -> EngineRequestError:
    """vLLM validates the messages (or prompt) as it renders them: a part it cannot read (an unknown
    content part type) raises pydantic's error, whose text is a page of every union member tried.
    The client gets its first line, about the prompt."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    message = f"The model cannot read the prompt as sent: {first.get('msg')} at {where or 'its root'}{more}."
    return EngineRequestError(message, subject=Subject.PROMPT)


def _client_error(message: str, option: str | None) -> EngineRequestError:
    if "maximum context length" in message or ("context length" in message and "exceed" in message):
        return InputTooLongError(message, subject=Subject.PROMPT)
    return EngineRequestError(message, option=option)
