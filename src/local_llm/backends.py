"""The one import lock: every import of an engine library goes through it.

transformers resolves its names lazily, and not thread-safely: two threads importing from it at once
can fail with "cannot import name ..." (seen at start-up, when the GGUF import and the background
preload of the engine libraries ran side by side). Every import of torch, transformers,
sentence-transformers, vLLM or xgrammar therefore holds :data:`IMPORT_LOCK`, directly or through
:func:`import_backend`; ``tests/test_imports.py`` checks that none is made outside it.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from types import ModuleType

IMPORT_LOCK = threading.RLock()


class TorchGlobalsLock:
    """Loads exclusive, forward passes shared: transformers' ``from_pretrained`` sets process-wide
    torch state while it runs (the default dtype, a meta-device init context), so a model loading
    on one thread broke the passes and loads of others on theirs (seen on an H200: an embedder and an
    LLM reranker loading at once gave "Cannot copy out of meta tensor" and "expected mat1 and mat2 to
    have the same dtype"). A waiting load goes before passes that arrive after it, so it is not
    starved by a model that is always busy."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._passes = 0
        self._loading = False
        self._loads_waiting = 0

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        with self._changed:
            self._loads_waiting += 1
            self._changed.wait_for(lambda: not self._loading and not self._passes)
            self._loads_waiting -= 1
            self._loading = True
        try:
            yield
        finally:
            with self._changed:
                self._loading = False
                self._changed.notify_all()

    @contextlib.contextmanager
    def forward_pass(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._loading and not self._loads_waiting)
            self._passes += 1
        try:
            yield
        finally:
            with self._changed:
                self._passes -= 1
                self._changed.notify_all()


# Every in-process model's load and forward pass goes through this one.
TORCH_GLOBALS = TorchGlobalsLock()


def import_backend(name: str) -> ModuleType:
    """Import an engine library (or one of its modules) under the import lock."""
    with IMPORT_LOCK:
        return importlib.import_module(name)
