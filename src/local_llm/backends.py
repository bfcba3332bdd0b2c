"""The one import lock: every import of an engine library goes through it.

transformers resolves its names lazily, and not thread-safely: two threads importing from it at once
can fail with "cannot import name ..." (seen at start-up, when the GGUF import and the background
preload of the engine libraries ran side by side). Every import of torch, transformers,
sentence-transformers, vLLM or xgrammar therefore holds :data:`IMPORT_LOCK`, directly or through
:func:`import_backend`; ``tests/test_imports.py`` checks that none is made outside it.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

IMPORT_LOCK = threading.RLock()


def import_backend(name: str) -> ModuleType:
    """Import an engine library (or one of its modules) under the import lock."""
    with IMPORT_LOCK:
        return importlib.import_module(name)
