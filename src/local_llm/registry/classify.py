"""Tell chat, embedding and reranker models apart from the files in their folder.

Evidence is read in order of how much it can be trusted: what sentence-transformers wrote
(``config_sentence_transformers.json``, ``modules.json``), then the ``architectures`` in
``config.json`` and its labels, then the chat template. The folder name is only a last hint,
because names mislead: Qwen3-Embedding is a ``Qwen3ForCausalLM`` with sentence-transformers files,
and a name-based guess files it as chat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_llm.registry.spec import ModelKind, RerankScorer, RerankScoring, WeightFormat

_CAUSAL_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
_EMBEDDING_NAME_HINTS = ("embed", "bge", "e5-", "gte", "minilm", "mpnet", "sentence")
_RERANKER_NAME_HINTS = ("rerank",)


class UnservableFolder(Exception):
    """The folder is not a model we can serve; the message says why, for the user."""


@dataclass(frozen=True)
class Classification:
    kind: ModelKind
    reason: str


@dataclass(frozen=True)
class Weights:
    weight_format: WeightFormat
    size_bytes: int


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning any problem into :class:`UnservableFolder`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnservableFolder(f"{path.name} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise UnservableFolder(f"{path.name} is not a JSON object")
    return data


def find_weights(folder: Path) -> Weights:
    """Which weight files the folder has, and their total size (symlinks into an HF cache followed)."""
    for weight_format, patterns in (
        (WeightFormat.SAFETENSORS, ("*.safetensors",)),
        (WeightFormat.PYTORCH, ("pytorch_model*.bin",)),
        (WeightFormat.GGUF, ("*.gguf",)),
    ):
        files = [f for pattern in patterns for f in folder.glob(pattern) if f.is_file()]
        if files:
            return Weights(weight_format, sum(f.stat().st_size for f in files))
    raise UnservableFolder("no weight files (*.safetensors, pytorch_model*.bin or *.gguf)")


def verify_weights(folder: Path) -> None:
    """Check that every safetensors file's header reads and that the file holds all the tensor data the
    header describes (a truncated download or a disk that filled up), as the safetensors library
    itself checks before a load; raise :class:`UnservableFolder` with its verdict otherwise.

    Headers only (the data is memory-mapped, never read): milliseconds for any model size.
    """
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), "np"):
                pass
        except Exception as exc:  # the library raises SafetensorError, OSError, ...
            raise UnservableFolder(f"{file.name}: {type(exc).__name__}: {exc}") from exc
    for file in sorted(folder.glob("pytorch_model*.bin")):
        if file.stat().st_size == 0:
            raise UnservableFolder(f"{file.name} is empty")


# Files a tokenizer is saved as: fast (tokenizers), SentencePiece, BPE, WordPiece, tiktoken.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "*.tiktoken",
)


def check_tokenizer(folder: Path) -> None:
    """Raise :class:`UnservableFolder` unless the folder has a tokenizer its model can be loaded with
    (its own files, or one defined by remote code, which models.yaml must then allow)."""
    if any(next(folder.glob(pattern), None) is not None for pattern in _TOKENIZER_FILES):
        return
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            if "auto_map" in read_json(config):
                return
        except UnservableFolder:
            pass
    raise UnservableFolder(
        "no tokenizer (tokenizer.json, tokenizer.model, vocab.json, vocab.txt, ...): copy the "
        "tokenizer files of the model into the folder"
    )


def read_chat_template(folder: Path) -> str | None:
    """The model's chat template (``chat_template.jinja`` or tokenizer_config.json), if it has one."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8", errors="replace")
    for name, key in (("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")):
        path = folder / name
        if not path.is_file():
            continue
        try:
            template = read_json(path).get(key)
        except UnservableFolder:
            continue
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            template = next((t.get("template") for t in template if isinstance(t, dict)), None)
        if isinstance(template, str) and template:
            return template
    return None


def has_chat_template(folder: Path) -> bool:
    return read_chat_template(folder) is not None


def quantization_of(config: dict[str, Any]) -> str | None:
    """The quantization method a config declares (awq, gptq, compressed-tensors, ...), if any."""
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict):
        method = quantization.get("quant_method")
        return str(method) if method else None
    return None


def _label_count(config: dict[str, Any]) -> int:
    if isinstance(config.get("num_labels"), int):
        return int(config["num_labels"])
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, dict) else 2


def _name_hint(name: str) -> ModelKind | None:
    lowered = name.lower()
    if any(hint in lowered for hint in _RERANKER_NAME_HINTS):
        return ModelKind.RERANKER
    if any(hint in lowered for hint in _EMBEDDING_NAME_HINTS):
        return ModelKind.EMBEDDING
    return None


def classify(folder: Path, name: str) -> Classification:
    """Decide what kind of model ``folder`` holds, or raise :class:`UnservableFolder` with the reason.

    ``name`` is the model's served name; it is consulted only where the files cannot decide.
    """
    config_path = folder / "config.json"
    st_config_path = folder / "config_sentence_transformers.json"
    has_modules = (folder / "modules.json").is_file()
    config = read_json(config_path) if config_path.is_file() else None
    st_config = read_json(st_config_path) if st_config_path.is_file() else None

    if st_config is not None:
        st_type = st_config.get("model_type")
        if st_type == "CrossEncoder":
            return Classification(ModelKind.RERANKER, "sentence-transformers CrossEncoder")
        if st_type == "SparseEncoder":
            raise UnservableFolder("sentence-transformers SparseEncoder: sparse embeddings are not served")

    architectures: list[str] = []
    if config is not None:
        raw = config.get("architectures") or []
        architectures = [str(a) for a in raw] if isinstance(raw, list) else []
    architecture = architectures[0] if architectures else None

    if architecture and architecture.endswith("ForSequenceClassification"):
        labels = _label_count(config or {})
        if labels == 1:
            return Classification(ModelKind.RERANKER, f"{architecture} with one label (cross-encoder)")
        raise UnservableFolder(f"{architecture} with {labels} labels is a classifier, not a reranker")

    if has_modules or st_config is not None:
        found = "modules.json" if has_modules else "config_sentence_transformers.json"
        return Classification(ModelKind.EMBEDDING, f"sentence-transformers model ({found})")

    if architecture and architecture.endswith(_CAUSAL_SUFFIXES):
        if _name_hint(name) is ModelKind.RERANKER:
            return Classification(
                ModelKind.RERANKER, f"{architecture} named as a reranker (yes/no LLM reranker)"
            )
        template = "with a chat template" if has_chat_template(folder) else "without a chat template"
        return Classification(ModelKind.CHAT, f"{architecture} {template}")

    if architecture and architecture.endswith("Model"):
        return Classification(
            ModelKind.EMBEDDING, f"{architecture} without a task head (mean-pooled encoder)"
        )

    if architecture:
        raise UnservableFolder(f"architecture {architecture} is not a chat, embedding or reranker model")

    if config is not None and has_chat_template(folder):
        return Classification(ModelKind.CHAT, "no architecture in config.json, but a chat template")
    hinted = _name_hint(name)
    if hinted is not None:
        return Classification(hinted, f"no architecture in config.json; the name suggests {hinted.value}")
    if config is None:
        raise UnservableFolder("no config.json, modules.json or *.gguf: not a Hugging Face model folder")
    raise UnservableFolder("config.json names no architecture and the name gives no hint")


def rerank_scoring(folder: Path, kind: ModelKind) -> RerankScoring | None:
    """How a model of ``kind`` in ``folder`` scores rerank pairs, read from its files; None for chat.

    An embedding model ranks by cosine (one loaded copy serves both APIs). A reranker is scored the
    way its files say its authors score it: a classification head (cross-encoder) or, for a causal
    LM, the yes/no logits of its last position. models.yaml's ``scorer`` overrides this.
    """
    if kind is ModelKind.CHAT:
        return None
    if kind is ModelKind.EMBEDDING:
        return RerankScoring(RerankScorer.BI_ENCODER, "embedding model: cosine of query and document vectors")
    st_config_path = folder / "config_sentence_transformers.json"
    st_config = read_json(st_config_path) if st_config_path.is_file() else {}
    if st_config.get("model_type") == "CrossEncoder":
        return RerankScoring(RerankScorer.CROSS_ENCODER, "sentence-transformers CrossEncoder")
    config_path = folder / "config.json"
    raw = (read_json(config_path) if config_path.is_file() else {}).get("architectures") or []
    architecture = str(raw[0]) if isinstance(raw, list) and raw else ""
    if architecture.endswith("ForSequenceClassification"):
        return RerankScoring(
            RerankScorer.CROSS_ENCODER, f"{architecture}: the model's own classification head"
        )
    if architecture.endswith(_CAUSAL_SUFFIXES):
        return RerankScoring(RerankScorer.LLM_YES_NO, f"{architecture}: yes/no logits at the last position")
    if st_config or (folder / "modules.json").is_file() or architecture.endswith("Model"):
        return RerankScoring(RerankScorer.BI_ENCODER, "an embedder marked reranker: cosine of embeddings")
    return RerankScoring(RerankScorer.CROSS_ENCODER, "no architecture to tell by: assumed a cross-encoder")
