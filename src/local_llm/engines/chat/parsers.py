"""Which of vLLM's tool-call and reasoning parsers fits a model, from its chat template.

vLLM ships a parser per model family but needs to be told which; a chat template says which
format the model was trained to emit, so it decides. models.yaml's ``tool_call_parser`` /
``reasoning_parser`` win over this guess.
"""

from __future__ import annotations

from local_llm.registry.spec import ModelSpec

# (marker in the chat template, vLLM tool parser), first match wins.
_TOOL_PARSERS = (
    ("[TOOL_CALLS]", "mistral"),
    ("<|python_start|>", "llama4_pythonic"),
    ("<|python_tag|>", "llama3_json"),
    ("<tool_call>", "hermes"),
    ("<|tool_call_start|>", "lfm2"),
    ("<start_function_call>", "functiongemma"),
)


# vLLM needs a parser even for tool_choice "required" or a named function, where it constrains the
# output to JSON itself; Hermes' is the generic one (and the most common tool format).
FALLBACK_TOOL_PARSER = "hermes"


def tool_call_parser(spec: ModelSpec, chat_template: str | None) -> str | None:
    """The vLLM tool parser the model's template shows it was trained for; None when it shows none."""
    if spec.options.tool_call_parser:
        return spec.options.tool_call_parser
    template = chat_template or ""
    return next((parser for marker, parser in _TOOL_PARSERS if marker in template), None)


def reasoning_parser(spec: ModelSpec, chat_template: str | None, model_type: str) -> str | None:
    """vLLM's reasoning parser for thinking models (``<think>`` in the template)."""
    if spec.options.reasoning_parser:
        return spec.options.reasoning_parser
    if "<think>" not in (chat_template or ""):
        return None
    if model_type.startswith("qwen3"):
        return "qwen3"
    if model_type.startswith("deepseek"):
        return "deepseek_r1"
    return None
