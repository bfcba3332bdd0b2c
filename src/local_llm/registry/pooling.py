"""Whether an embedder or LLM reranker can run on vLLM's pooling runner, read once from its files.

vLLM computes what the model's own pipeline computes only for some layouts: a causal-LM body (vLLM's
pooling runner is built for those; BERT-like encoders gain little there and stay in process) whose
sentence-transformers modules are a Transformer, a Pooling of a kind vLLM has, and optionally a
Normalize (a Dense head or a truncating dimension it would not apply); and, for yes/no rerankers, a
family whose published ``hf_overrides`` turn the LM head into the yes-minus-no classifier (Qwen3's).
Anything else answers with the reason, which the log and a forced ``engine: vllm`` show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from local_llm.registry.classify import UnservableFolder, read_json
from local_llm.registry.spec import ModelKind, ModelSpec, RerankScorer

# The longest input a pooling model is served with on vLLM, unless its own limit is lower: its KV
# cache holds one input of this length (Qwen3-0.6B: 112 KiB a token, 896 MiB for 8,192).
POOLING_CONTEXT_TOKENS = 8192

# sentence-transformers' pooling modes (1_Pooling/config.json: a ``pooling_mode`` name, or older
# ``pooling_mode_*`` flags) and vLLM's pooler that computes each alike.
_VLLM_POOLING = {"lasttoken": "LAST", "mean": "MEAN", "mean_tokens": "MEAN"}
# The causal-LM architectures vLLM's pooling runner serves as embedders.
_CAUSAL_EMBEDDERS = ("Qwen3ForCausalLM", "Qwen2ForCausalLM")
# Yes/no rerankers vLLM turns into one-logit classifiers, with the overrides its authors publish.
_YES_NO_OVERRIDES: dict[str, dict[str, Any]] = {
    "Qwen3ForCausalLM": {
        "architectures": ["Qwen3ForSequenceClassification"],
        "classifier_from_token": ["no", "yes"],
        "is_original_qwen3_reranker": True,
    },
}


@dataclass(frozen=True)
class PoolingRunner:
    """How vLLM's pooling runner serves the model: what it pools, and what the model's folder says."""

    task: Literal["embed", "classify"]
    # Engine arguments beyond the common ones (``convert``, ``hf_overrides``).
    engine_args: dict[str, Any] = field(default_factory=dict)
    # Embedders: whether vectors are normalised (a Normalize module), the prompts and default prompt.
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    # The longest input the model's own pipeline reads (sentence-transformers' max_seq_length).
    max_seq_length: int | None = None


def vllm_pooling(spec: ModelSpec) -> PoolingRunner | str:
    """The pooling runner that serves ``spec`` as its own pipeline does, or why none does."""
    return _read(spec.path, spec.kind, spec.rerank.scorer if spec.rerank else None)


@lru_cache(maxsize=256)
def _read(folder: Path, kind: ModelKind, scorer: RerankScorer | None) -> PoolingRunner | str:
    try:
        architecture = _architecture(folder)
        if scorer is RerankScorer.LLM_YES_NO:
            overrides = _YES_NO_OVERRIDES.get(architecture)
            if overrides is None:
                return f"{architecture or 'this architecture'} has no published yes/no classifier for vLLM"
            return PoolingRunner("classify", {"hf_overrides": overrides})
        if kind is not ModelKind.EMBEDDING or scorer not in (None, RerankScorer.BI_ENCODER):
            return "only embedders and yes/no LLM rerankers run on vLLM's pooling runner here"
        if architecture not in _CAUSAL_EMBEDDERS:
            return f"{architecture or 'an unknown architecture'} is not a causal-LM embedder vLLM pools"
        return _embedder(folder)
    except (UnservableFolder, OSError) as exc:
        return f"its files are unreadable: {exc}"


def _architecture(folder: Path) -> str:
    config = folder / "config.json"
    raw = (read_json(config) if config.is_file() else {}).get("architectures") or []
    return str(raw[0]) if isinstance(raw, list) and raw else ""


def _embedder(folder: Path) -> PoolingRunner | str:
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "no sentence-transformers modules.json says how it pools"
    modules = read_json_list(modules_file)
    # Module types by class name: sentence-transformers 5 writes `sentence_transformers.models.Pooling`,
    # 6 `sentence_transformers.sentence_transformer.modules.pooling.Pooling`.
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        return f"its modules ({', '.join(kinds)}) are more than Transformer, Pooling and Normalize"
    pooling = read_json(folder / str(modules[1].get("path", "1_Pooling")) / "config.json")
    named = pooling.get("pooling_mode")
    flagged = [
        m.removeprefix("pooling_mode_") for m, on in pooling.items() if m.startswith("pooling_mode_") and on
    ]
    modes = [str(named)] if isinstance(named, str) else flagged
    if len(modes) != 1 or modes[0] not in _VLLM_POOLING:
        return f"its pooling ({', '.join(modes) or 'none'}) is not one vLLM computes alike"
    if _VLLM_POOLING[modes[0]] == "MEAN" and pooling.get("include_prompt") is False:
        return "its mean pooling leaves the prompt out, which vLLM's would not"
    st_config_file = folder / "config_sentence_transformers.json"
    st_config = read_json(st_config_file) if st_config_file.is_file() else {}
    if st_config.get("truncate_dim"):
        return "it truncates its vectors (truncate_dim), which vLLM would not"
    bert_file = folder / "sentence_bert_config.json"
    max_seq_length = (read_json(bert_file) if bert_file.is_file() else {}).get("max_seq_length")
    prompts = st_config.get("prompts") or {}
    return PoolingRunner(
        "embed",
        {"convert": "embed", "pooler_config": {"seq_pooling_type": _VLLM_POOLING[modes[0]]}},
        normalize=kinds[2:] == ["Normalize"],
        prompts={str(k): str(v) for k, v in prompts.items()},
        default_prompt_name=st_config.get("default_prompt_name"),
        max_seq_length=int(max_seq_length) if max_seq_length else None,
    )


def read_json_list(path: Path) -> list[dict[str, Any]]:
    """modules.json: a JSON list of objects (anything else is unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnservableFolder(f"{path.name} is unreadable: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise UnservableFolder(f"{path.name} is not a list of modules")
    return data


def pooling_context(runner: PoolingRunner, max_positions: int | None, cap: int | None) -> int:
    """The context a pooling model is served with on vLLM: its own limits, POOLING_CONTEXT_TOKENS and
    LLM_VLLM_MAX_MODEL_LEN, whichever is least."""
    limits = [POOLING_CONTEXT_TOKENS, runner.max_seq_length, max_positions, cap]
    return min(limit for limit in limits if limit)
