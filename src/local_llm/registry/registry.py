"""The registry: the only place a served model name turns into a folder on disk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from local_llm.errors import ModelNotFoundError
from local_llm.registry.discovery import discover
from local_llm.registry.spec import ModelSpec, SkippedFolder


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
        """The model served as ``name``; unknown names (paths included) raise :class:`ModelNotFoundError`."""
        spec = self._by_name.get(name)
        if spec is None:
            raise ModelNotFoundError(name, [m.name for m in self._models])
        return spec
