"""The registry: the only place a served model name turns into a folder on disk.

Names may also come in Ollama's ``model:tag`` form, where a name without a tag means ``:latest``
(its clients send ``llama3:latest`` for ``llama3``): an exact name (or alias, which may carry a tag
of its own, such as ``qwen2.5:7b``) wins, else ``name:latest`` is ``name``. A tag never makes a
name into anything but a served name, so a path stays unknown with or without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from local_llm.errors import ModelNotFoundError
from local_llm.registry.discovery import discover
from local_llm.registry.spec import ModelSpec, SkippedFolder

#: The tag of a name that carries none, in Ollama's ``model:tag`` form.
DEFAULT_TAG = "latest"


def tagged_name(name: str) -> str:
    """``name`` in Ollama's ``model:tag`` form: as it is when it has a tag, else ``name:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:{DEFAULT_TAG}"


class ModelRegistry:
    """Served names (and aliases) to :class:`ModelSpec`; immutable once built."""

    def __init__(
        self, models: Sequence[ModelSpec], skipped: Sequence[SkippedFolder] = (), notes: Sequence[str] = ()
    ) -> None:
        self._models = tuple(models)
        self._skipped = tuple(skipped)
        self._notes = tuple(notes)
        self._by_name = {name: spec for spec in self._models for name in spec.names}

    @classmethod
    def discover(cls, models_dir: Path | None, include_bundled: bool = True) -> ModelRegistry:
        found = discover(models_dir, include_bundled)
        return cls(found.models, found.skipped, found.notes)

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        return self._models

    @property
    def skipped(self) -> tuple[SkippedFolder, ...]:
        return self._skipped

    @property
    def notes(self) -> tuple[str, ...]:
        """Where a model is served differently from what models.yaml asked (e.g. an alias taken)."""
        return self._notes

    def get(self, name: str) -> ModelSpec:
        """The model served as ``name`` (or as ``name`` less its ``:latest`` tag); unknown names (paths
        included) raise :class:`ModelNotFoundError`."""
        spec = self._by_name.get(name)
        if spec is None and name.endswith(f":{DEFAULT_TAG}"):
            spec = self._by_name.get(name.removesuffix(f":{DEFAULT_TAG}"))
        if spec is None:
            raise ModelNotFoundError(name, [m.name for m in self._models])
        return spec
