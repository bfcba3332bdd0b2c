"""Chat on Hugging Face transformers: the engine that runs where vLLM does not.

It serves machines without vLLM (macOS, Windows, a GPU box without the CUDA build) and models whose
models.yaml entry says ``engine: transformers``. It answers the same OpenAI shapes as the vLLM
engine, with the model's own chat template (tools included), tool calls parsed by vLLM's parser for
the model family when vLLM is importable, and structured output through xgrammar's transformers
logits processor. It generates for one request at a time per model: continuous batching is what
vLLM is for, and this engine's job is to work everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from local_llm.backends import IMPORT_LOCK, TORCH_GLOBALS, import_backend
from local_llm.config import Settings
from local_llm.engines.base import Progress, TorchModuleParking, fatal_cause, offload_options
from local_llm.engines.batched import module_bytes
from local_llm.engines.chat.base import ChatEngine, ChatResult
from local_llm.engines.chat.parsers import tool_call_parser
from local_llm.engines.gguf_import import ensure_imported
from local_llm.errors import (
    EngineFailedError,
    EngineRequestError,
    InputTooLongError,
    Subject,
    UnsupportedOptionError,
)
from local_llm.placement import PlacementPlan
from local_llm.protocol.chat import ChatCompletionRequest, CompletionRequest, NamedToolChoice
from local_llm.registry.spec import ModelSpec, WeightFormat

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_DEFAULT_CONTEXT = 2048


@dataclass
class Sampling:
    """The request's sampling fields, as transformers' ``generate`` takes them."""

    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] = field(default_factory=dict)
    ignore_eos: bool = False
    repetition_penalty: float | None = None
    top_logprobs: int | None = None  # None: no logprobs
    json_schema: dict[str, Any] | None = None  # constrain the output to this schema (xgrammar)


@dataclass
class Generated:
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[dict[str, Any]] | None = None
    # The stop string the text was cut at, as vLLM reports it (the choice's ``stop_reason``).
    stop_reason: str | None = None


class TransformersChatEngine(TorchModuleParking, ChatEngine):
    backend = "transformers"

    def __init__(self, spec: ModelSpec, plan: PlacementPlan, settings: Settings) -> None:
        super().__init__(spec, plan)
        self._settings = settings
        self._model: Any = None
        self._tokenizer: Any = None
        self._context = _DEFAULT_CONTEXT
        self._tool_parser: str | None = None
        # One generation at a time: requests queue on the asyncio lock (their leases keep the model
        # loaded); the thread lock holds while ``generate`` runs, so a cancelled request's thread,
        # still finishing its last token, never overlaps the next one.
        self._turn = asyncio.Lock()
        self._generating = threading.Lock()
        self._running = 0
        # Requests waiting for their turn or generating, and the tokens generated so far (progress).
        self._pending = 0
        self._steps = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        started = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        folder = self.spec.path
        if self.spec.weight_format is WeightFormat.GGUF:
            self.stage("importing the GGUF file")
            folder = await ensure_imported(self.spec.path, self._settings.data_dir)
        await asyncio.to_thread(self._load_alone, folder)
        logger.info(
            "chat model %s ready on transformers (%s) in %.1fs: context %d tokens, tool parser %s",
            self.spec.name,
            self.plan.device,
            time.perf_counter() - started,
            self._context,
            self._tool_parser or "none",
        )

    def _load_alone(self, folder: Path) -> None:
        with TORCH_GLOBALS.loading():
            self._load(folder)

    def _load(self, folder: Path) -> None:
        with IMPORT_LOCK:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

        trust = self.spec.options.trust_remote_code
        self.stage("reading the weights")
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust)
        options = {**offload_options(self.plan), **self.spec.options.engine_options}
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype="auto", trust_remote_code=trust, **options
        )
        if "device_map" not in options:
            self.stage(f"moving the weights to {self.plan.device}")
            model = model.to(self.plan.device)  # type: ignore[arg-type]
        self._model = model.eval()
        self._context = self.plan.facts.context_tokens or _DEFAULT_CONTEXT
        self._tool_parser = tool_call_parser(self.spec, self._tokenizer.chat_template)
        self.memory_bytes = module_bytes(model, self.plan.device)
        torch.set_grad_enabled(False)

    async def stop(self) -> None:
        self.unwatch()
        model, self._model = self._model, None
        del model
        self.release_host_copy()
        gc.collect()
        if self.plan.device.startswith("cuda"):
            import_backend("torch").cuda.empty_cache()

    @property
    def max_model_len(self) -> int:
        return self._context

    @property
    def running_requests(self) -> int:
        return self._running

    def progress(self) -> Progress:
        """Tokens generated (every sequence's step counts), and requests waiting or generating."""
        return Progress(self._steps, self._pending)

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    # --- chat ----------------------------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        self.check_alive()
        tools = _tool_dicts(request)
        prompt = self._render(request, tools)
        choice = request.tool_choice
        schema = _response_schema(request)
        if isinstance(choice, NamedToolChoice):
            function = next(t for t in request.tools or () if t.function.name == choice.function.name)
            schema = function.function.parameters or {"type": "object"}
        elif choice == "required":
            schema = _required_tools_schema(request)
        sampling = self._sampling(request, len(prompt), request.max_completion_tokens or request.max_tokens)
        sampling.top_logprobs = (request.top_logprobs or 0) if request.logprobs else None
        sampling.json_schema = schema
        parse_tools = bool(tools) and choice not in ("none",)
        if request.stream and not parse_tools and sampling.n == 1:
            return self._stream_chat(request, prompt, sampling)
        generated = await self._generate(prompt, sampling)
        body = self._chat_body(request, prompt, generated)
        if not request.stream:
            return orjson.dumps(body)
        return _as_chat_stream(body, request)

    async def count_prompt_tokens(self, request: ChatCompletionRequest) -> int:
        self.check_alive()
        return len(self._render(request, _tool_dicts(request)))

    def _render(self, request: ChatCompletionRequest, tools: list[dict[str, Any]]) -> list[int]:
        messages = [_message_dict(message.model_dump(exclude_none=True)) for message in request.messages]
        extra = request.model_extra or {}
        try:
            ids = self._tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                add_generation_prompt=True,
                tokenize=True,
                **(extra.get("chat_template_kwargs") or {}),
            )
        except Exception as exc:  # jinja raises what the template author chose; all mean a bad request
            raise EngineRequestError(
                f"The chat template refused the messages: {exc}", subject=Subject.PROMPT
            ) from None
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def _chat_body(
        self, request: ChatCompletionRequest, prompt: list[int], generated: list[Generated]
    ) -> dict:
        choices = []
        for index, result in enumerate(generated):
            message: dict[str, Any] = {"role": "assistant", "content": result.text}
            finish = result.finish_reason
            calls = self._tool_calls(request, result.text)
            if calls:
                message = {"role": "assistant", "content": calls[1] or None, "tool_calls": calls[0]}
                if not isinstance(request.tool_choice, NamedToolChoice):  # vLLM's (and OpenAI's) rule
                    finish = "tool_calls"
            choice: dict[str, Any] = {
                "index": index,
                "message": message,
                "finish_reason": finish,
                "stop_reason": result.stop_reason,
            }
            choice["logprobs"] = {"content": result.logprobs} if result.logprobs is not None else None
            choices.append(choice)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.spec.name,
            "choices": choices,
            "usage": _usage(len(prompt), generated),
        }

    def _tool_calls(self, request: ChatCompletionRequest, text: str) -> tuple[list[dict], str] | None:
        """Tool calls in ``text`` and the text around them, or None: JSON for required/named choices
        (the output was constrained to it), vLLM's parser for the model family for "auto"."""
        if not request.tools or request.tool_choice == "none":
            return None
        choice = request.tool_choice
        if isinstance(choice, NamedToolChoice):
            return [_call(choice.function.name, text)], ""
        if choice == "required":
            try:
                calls = json.loads(text)
            except json.JSONDecodeError:
                return None
            return [_call(c["name"], json.dumps(c["parameters"], ensure_ascii=False)) for c in calls], ""
        return self._parse_auto_tool_calls(request, text)

    def _parse_auto_tool_calls(
        self, request: ChatCompletionRequest, text: str
    ) -> tuple[list[dict], str] | None:
        if self._tool_parser is None:
            return None
        try:
            with IMPORT_LOCK:
                from vllm.entrypoints.openai.chat_completion.protocol import (
                    ChatCompletionRequest as VllmChatRequest,
                )
                from vllm.tool_parsers import ToolParserManager
        except ImportError:
            logger.warning("tool_choice auto on %s: vLLM's tool parsers are not installed", self.spec.name)
            return None
        vllm_request = VllmChatRequest.model_validate({**request.engine_fields(), "model": self.spec.name})
        parser_type = ToolParserManager.get_tool_parser(self._tool_parser)
        parser = parser_type(self._tokenizer, vllm_request.tools)  # type: ignore[arg-type]
        extracted = parser.extract_tool_calls(text, vllm_request)
        if not extracted.tools_called:
            return None
        calls = [_call(c.function.name, c.function.arguments) for c in extracted.tool_calls]
        return calls, extracted.content or ""

    async def _stream_chat(
        self, request: ChatCompletionRequest, prompt: list[int], sampling: Sampling
    ) -> AsyncIterator[bytes]:
        stream_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(
            delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, stop: str | None = None
        ) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            if finish is not None:
                choice["stop_reason"] = stop
            return _event(
                {
                    "id": stream_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": self.spec.name,
                    "choices": [choice],
                }
            )

        yield chunk({"role": "assistant", "content": ""})
        result: Generated | None = None
        # aclosing: a client that leaves closes this stream, which must stop the generation now.
        async with contextlib.aclosing(self._generate_stream(prompt, sampling)) as pieces:
            async for piece in pieces:
                if isinstance(piece, str):
                    yield chunk({"content": piece})
                else:
                    result = piece
        assert result is not None
        yield chunk({}, result.finish_reason, stop=result.stop_reason)
        if request.stream_options and request.stream_options.include_usage:
            usage = _usage(len(prompt), [result])
            yield _event(
                {
                    "id": stream_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": self.spec.name,
                    "choices": [],
                    "usage": usage,
                }
            )
        yield b"data: [DONE]\n\n"

    # --- completions ---------------------------------------------------------------------------
    async def complete(self, request: CompletionRequest) -> ChatResult:
        self.check_alive()
        if request.suffix is not None:
            raise UnsupportedOptionError(
                "suffix is not supported by the transformers engine", option="suffix"
            )
        if request.logprobs is not None:
            raise UnsupportedOptionError(
                "logprobs on completions is not supported by the transformers engine", option="logprobs"
            )
        prompts = self._prompts(request.prompt)
        choices: list[dict[str, Any]] = []
        results: list[Generated] = []
        prompt_tokens = 0
        for prompt in prompts:
            sampling = self._sampling(request, len(prompt), request.max_tokens or 16)
            generated = await self._generate(prompt, sampling)
            prefix = self._tokenizer.decode(prompt, skip_special_tokens=True) if request.echo else ""
            for result in generated:
                choices.append(
                    {
                        "index": len(choices),
                        "text": prefix + result.text,
                        "logprobs": None,
                        "finish_reason": result.finish_reason,
                    }
                )
            prompt_tokens += len(prompt)
            results.extend(generated)
        usage = _usage(prompt_tokens, results)
        body = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.spec.name,
            "choices": choices,
            "usage": usage,
        }
        if not request.stream:
            return orjson.dumps(body)
        return _as_completion_stream(body, request)

    def _prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        """Each prompt as token ids: a text, a list of texts, token ids, or lists of token ids."""
        if isinstance(prompt, str):
            return [self._tokenizer.encode(prompt)]
        if all(isinstance(item, int) for item in prompt):
            return [[int(item) for item in prompt]]  # type: ignore[arg-type]
        return [
            self._tokenizer.encode(item) if isinstance(item, str) else list(item)  # type: ignore[arg-type]
            for item in prompt
        ]

    # --- generation ----------------------------------------------------------------------------
    def _sampling(
        self, request: ChatCompletionRequest | CompletionRequest, prompt_tokens: int, max_tokens: int | None
    ) -> Sampling:
        if prompt_tokens >= self._context:
            raise InputTooLongError(
                f"This model's maximum context length is {self._context} tokens; "
                f"the prompt has {prompt_tokens}.",
                subject=Subject.PROMPT,
            )
        room = self._context - prompt_tokens
        if max_tokens is not None and max_tokens > room:
            raise EngineRequestError(
                f"max_tokens is {max_tokens}, but this model's maximum context length is {self._context} "
                f"tokens and the prompt has {prompt_tokens}: at most {room} can be generated.",
                option="max_tokens",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(request, name):
                raise UnsupportedOptionError(
                    f"{name} is not supported by the transformers engine (vLLM supports it)", option=name
                )
        extra = request.model_extra or {}
        stop = request.stop
        return Sampling(
            max_tokens=max_tokens or room,
            n=request.n,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            logit_bias={int(k): v for k, v in (request.logit_bias or {}).items()},
            ignore_eos=bool(extra.get("ignore_eos")),
            repetition_penalty=extra.get("repetition_penalty"),
        )

    async def _generate(self, prompt: list[int], sampling: Sampling) -> list[Generated]:
        cancel = threading.Event()
        with self._counted():
            async with self._turn:
                try:
                    return await asyncio.shield(asyncio.to_thread(self._run, prompt, sampling, cancel, None))
                except asyncio.CancelledError:
                    cancel.set()  # the client went away: stop the generation at its next token
                    raise

    async def _generate_stream(
        self, prompt: list[int], sampling: Sampling
    ) -> AsyncGenerator[str | Generated]:
        """Text pieces as tokens come, then the finished :class:`Generated`; closing it stops generation."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[int | None] = asyncio.Queue()
        cancel = threading.Event()

        def on_token(token: int | None) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, token)

        with self._counted():
            async with self._turn:
                job = asyncio.ensure_future(asyncio.to_thread(self._run, prompt, sampling, cancel, on_token))
                try:
                    ids: list[int] = []
                    sent = ""
                    hold = max((len(s) for s in sampling.stop), default=1) - 1
                    while (token := await tokens.get()) is not None:
                        ids.append(token)
                        text = self._tokenizer.decode(ids, skip_special_tokens=True)
                        ready = sent if text.endswith("\ufffd") else text[: max(len(sent), len(text) - hold)]
                        if len(ready) > len(sent) and not any(s in ready for s in sampling.stop):
                            yield ready[len(sent) :]
                            sent = ready
                    (result,) = await job
                    if len(result.text) > len(sent):
                        yield result.text[len(sent) :]
                    yield result
                finally:
                    cancel.set()  # first: awaiting below may be cancelled again (the client is gone)
                    await asyncio.gather(job, return_exceptions=True)

    def _run(
        self,
        prompt: list[int],
        sampling: Sampling,
        cancel: threading.Event,
        on_token: Callable[[int | None], None] | None,
    ) -> list[Generated]:
        """Blocking: one ``generate`` call for ``sampling.n`` sequences, counted while it runs."""
        with self._generating, TORCH_GLOBALS.forward_pass():
            self._running += 1
            try:
                results = self._generate_now(prompt, sampling, cancel, on_token)
            except Exception as exc:
                cause = fatal_cause(exc)
                if cause is None:
                    raise
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self.died, cause)
                raise EngineFailedError(
                    f"The engine of model '{self.spec.name}' failed ({cause}); the next request loads "
                    "it again.",
                    retry_after_s=1,
                ) from exc
            finally:
                self._running -= 1
        self.observer.tokens(len(prompt), sum(len(result.token_ids) for result in results))
        return results

    def _generate_now(
        self,
        prompt: list[int],
        sampling: Sampling,
        cancel: threading.Event,
        on_token: Callable[[int | None], None] | None,
    ) -> list[Generated]:
        with IMPORT_LOCK:
            import torch
            from transformers import StoppingCriteria, StoppingCriteriaList

        engine = self

        class Cancelled(StoppingCriteria):
            """Asked after every step of ``generate``: stops it once the client is gone, and counts the
            step as the engine's progress (streamed or not)."""

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                engine._steps += 1
                return torch.full(
                    (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
                )

        model, tokenizer = self._model, self._tokenizer
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        input_ids = torch.tensor([prompt], device=model.device)
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "num_return_sequences": sampling.n,
            "do_sample": sampling.temperature > 0,
            "stopping_criteria": StoppingCriteriaList([Cancelled()]),
            "pad_token_id": tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        }
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            options.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
        if sampling.logit_bias:
            options["sequence_bias"] = {(token,): bias for token, bias in sampling.logit_bias.items()}
        if sampling.ignore_eos:
            options["min_new_tokens"] = sampling.max_tokens
        if sampling.repetition_penalty:
            options["repetition_penalty"] = float(sampling.repetition_penalty)
        if sampling.json_schema is not None:
            options["logits_processor"] = [self._json_processor(sampling.json_schema)]
        if sampling.top_logprobs is not None:
            options.update(output_logits=True, return_dict_in_generate=True)
        if on_token is not None:
            options["streamer"] = _TokenStreamer(on_token)
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
        sequences = output.sequences if sampling.top_logprobs is not None else output
        logits = output.logits if sampling.top_logprobs is not None else None
        return [
            self._finish(sequences[row, len(prompt) :].tolist(), sampling, logits, row)
            for row in range(sequences.shape[0])
        ]

    def _finish(self, ids: list[int], sampling: Sampling, logits: Any, row: int) -> Generated:
        tokenizer = self._tokenizer
        eos = set(_as_list(self._model.generation_config.eos_token_id)) | {tokenizer.eos_token_id}
        pad = tokenizer.pad_token_id
        ended = next((i for i, token in enumerate(ids) if token in eos), None)
        if ended is not None and not sampling.ignore_eos:
            ids, finish = ids[:ended], "stop"
        else:
            # A row that stopped (stop string, client gone) while others went on is padded.
            while ids and pad is not None and ids[-1] == pad:
                ids.pop()
            finish = "length" if len(ids) >= sampling.max_tokens else "stop"
        text = tokenizer.decode(ids, skip_special_tokens=True)
        matched = min((s for s in sampling.stop if s in text), key=text.find, default=None)
        if matched is not None:
            text, finish = text[: text.find(matched)], "stop"
        logprobs = self._logprobs(ids, logits, row, sampling.top_logprobs) if logits is not None else None
        return Generated(ids, text, finish, logprobs, matched)

    def _logprobs(
        self, ids: list[int], logits: Sequence[Any], row: int, top: int | None
    ) -> list[dict[str, Any]]:
        torch = import_backend("torch")
        entries = []
        for step, token in enumerate(ids):
            logprobs = torch.log_softmax(logits[step][row].float(), dim=-1)
            best = torch.topk(logprobs, top or 0) if top else None
            entries.append(
                {
                    **self._token_entry(token, float(logprobs[token])),
                    "top_logprobs": [self._token_entry(int(t), float(v)) for v, t in zip(*best, strict=True)]
                    if best is not None
                    else [],
                }
            )
        return entries

    def _token_entry(self, token: int, logprob: float) -> dict[str, Any]:
        text = self._tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def _json_processor(self, schema: dict[str, Any]) -> Any:
        try:
            with IMPORT_LOCK:
                import xgrammar as xgr
                from xgrammar.contrib.hf import LogitsProcessor
        except ImportError:
            raise UnsupportedOptionError(
                "Structured output on the transformers engine needs the xgrammar package.",
                option="response_format",
            ) from None
        info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._model.config.vocab_size)
        try:
            compiled = xgr.GrammarCompiler(info).compile_json_schema(
                json.dumps(schema), any_whitespace=False, separators=(",", ":")
            )
        except Exception as exc:
            raise EngineRequestError(
                f"The JSON schema cannot be used: {exc}", option="response_format"
            ) from None
        return LogitsProcessor(compiled)


class _TokenStreamer:
    """transformers' streamer protocol: ``put`` gets the prompt first, then each new token."""

    def __init__(self, on_token: Callable[[int | None], None]) -> None:
        self._on_token = on_token
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._on_token(int(token))

    def end(self) -> None:
        self._on_token(None)


def _tool_dicts(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The request's tools as the chat template reads them."""
    return [tool.model_dump(exclude_none=True) for tool in request.tools or ()]


def _message_dict(message: dict[str, Any]) -> dict[str, Any]:
    """Content parts joined into text (what text-only chat templates read); tool-call arguments as
    objects, as most templates expect them."""
    content = message.get("content")
    if isinstance(content, list):
        if any(part.get("type") != "text" for part in content):
            raise EngineRequestError(
                "Only text content parts are supported by this model.", subject=Subject.PROMPT
            )
        message["content"] = "".join(part["text"] for part in content)
    for call in message.get("tool_calls") or ():
        arguments = call["function"].get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):
                call["function"]["arguments"] = json.loads(arguments)
    return message


def _response_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    return fmt.json_schema.json_schema


def _required_tools_schema(request: ChatCompletionRequest) -> dict[str, Any]:
    """What vLLM constrains tool_choice "required" to: a non-empty list of {name, parameters}."""
    return {
        "type": "array",
        "minItems": 1,
        "items": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": [tool.function.name]},
                        "parameters": tool.function.parameters or {"type": "object"},
                    },
                    "required": ["name", "parameters"],
                }
                for tool in request.tools or ()
            ]
        },
    }


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _usage(prompt_tokens: int, generated: Sequence[Generated]) -> dict[str, int]:
    completion = sum(len(g.token_ids) for g in generated)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _as_chat_stream(body: dict[str, Any], request: ChatCompletionRequest) -> AsyncIterator[bytes]:
    """A finished chat answer as stream chunks (n > 1 or tool calls: generated whole, then sent)."""
    head = {k: body[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    for choice in body["choices"]:
        message, index = choice["message"], choice["index"]
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if "tool_calls" in message:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        content = {"index": index, "delta": delta, "logprobs": choice["logprobs"], "finish_reason": None}
        finish = {
            "index": index,
            "delta": {},
            "logprobs": None,
            "finish_reason": choice["finish_reason"],
            "stop_reason": choice.get("stop_reason"),
        }
        yield _event({**head, "choices": [content]})
        yield _event({**head, "choices": [finish]})
    if request.stream_options and request.stream_options.include_usage:
        yield _event({**head, "choices": [], "usage": body["usage"]})
    yield b"data: [DONE]\n\n"


async def _as_completion_stream(body: dict[str, Any], request: CompletionRequest) -> AsyncIterator[bytes]:
    for choice in body["choices"]:
        yield _event({**body, "choices": [choice], "usage": None})
    if request.stream_options and request.stream_options.include_usage:
        yield _event({**body, "choices": [], "usage": body["usage"]})
    yield b"data: [DONE]\n\n"
