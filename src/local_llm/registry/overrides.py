"""``models.yaml``: the operator's per-model overrides, validated at the edge.

Example (keys are folders relative to the models folder)::

    models:
      Qwen3-Embedding-0.6B:
        name: qwen3-embed
        aliases: [text-embedding-3-small]
        matryoshka: true
        engine: transformers  # sentence-transformers even on a GPU (default there: vLLM's pooling runner)
      models--BAAI--bge-reranker-base:
        type: reranker
      my-qwen3-reranker-finetune:   # a causal LM whose name does not say reranker
        scorer: llm-yes-no          # cross-encoder | llm-yes-no | bi-encoder
      my-custom-arch:
        trust_remote_code: true
      old-model:
        enabled: false
      BAAI/bge-m3:          # an HF cache entry (models--BAAI--bge-m3) by its repo id
        matryoshka: true
      Qwen2.5-7B-Instruct-AWQ:
        engine: transformers    # instead of vLLM
        tool_call_parser: hermes
      qwen2.5-0.5b-instruct-q4_k_m.gguf:   # a GGUF file, imported as a safetensors folder
        name: qwen-small
      Qwen2.5-7B-Instruct:
        placement: gpu+offload  # gpu | gpu+offload | cpu; planned from memory when unset
        pinned: true            # loaded at start, never evicted
      bge-m3:
        idle_ttl_s: 300         # unloaded after 5 idle minutes (LLM_MODEL_IDLE_TTL_S for all)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from local_llm.registry.spec import ModelKind, ModelOptions, RerankScorer

OVERRIDES_FILE = "models.yaml"
# A served name is an identifier, never a path: no "..", no leading "/", no backslashes.
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*(/[A-Za-z0-9][A-Za-z0-9._:@+-]*)?$")


class _KeysAsWrittenLoader(yaml.SafeLoader):
    """YAML 1.1 reads a folder named ``off``, ``no`` or ``on`` as a boolean; keys here are folder names."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key_node.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep)


class InvalidOverrides(Exception):
    """models.yaml cannot be used; the message says where and why."""


def check_served_name(name: str) -> str:
    if not SERVED_NAME.match(name) or ".." in name:
        raise ValueError(f"{name!r} is not a valid model name (letters, digits, . _ - : @ +, one optional /)")
    return name


class ModelOverride(ModelOptions):
    """One model's entry in models.yaml: the model's options, and how its folder is served."""

    model_config = ConfigDict(frozen=False, extra="forbid")

    enabled: bool = True
    name: str | None = None
    type: ModelKind | None = None
    # How rerank scores with this model; a scorer other than bi-encoder makes the model a reranker.
    scorer: RerankScorer | None = None
    aliases: list[str] = Field(default_factory=list)

    def options(self) -> ModelOptions:
        """The entry's model options alone."""
        return ModelOptions.model_validate(self.model_dump(include=set(ModelOptions.model_fields)))

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        return check_served_name(value) if value is not None else None

    @field_validator("aliases")
    @classmethod
    def _valid_aliases(cls, value: list[str]) -> list[str]:
        return [check_served_name(alias) for alias in value]


@dataclass(frozen=True)
class Overrides:
    """The valid entries of models.yaml, and the invalid ones with what is wrong in each.

    Entries are validated one by one, so a typo in one model's entry affects that model alone.
    """

    entries: dict[str, ModelOverride] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'entry'}: {error['msg']}" for error in exc.errors()
    )


def load_overrides(models_dir: Path) -> Overrides:
    """Read ``models_dir/models.yaml``; an absent file means no overrides.

    Raises :class:`InvalidOverrides` only when the file as a whole is unusable (not YAML, or not
    ``models:`` mapping folders to settings).
    """
    path = models_dir / OVERRIDES_FILE
    if not path.is_file():
        return Overrides()
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_KeysAsWrittenLoader) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidOverrides(f"{path}: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) - {"models"}:
        raise InvalidOverrides(f"{path}: the top level must be a mapping with the one key 'models'")
    models = raw.get("models") or {}
    if not isinstance(models, dict):
        raise InvalidOverrides(f"{path}: 'models' must map model folders to their settings")
    overrides = Overrides()
    for key, value in models.items():
        folder = str(key).strip("/")
        try:
            overrides.entries[folder] = ModelOverride.model_validate(value or {})
        except ValidationError as exc:
            overrides.invalid[folder] = _problems(exc)
    return overrides
