"""Every import of an engine library holds the one import lock (``local_llm.backends``).

transformers resolves names lazily and not thread-safely; an import made outside the lock while the
backends preload on another thread failed at start-up with "cannot import name 'AutoConfig'". This
reads the package's source and finds each import of those libraries: it must sit inside a
``with IMPORT_LOCK:`` block (or go through ``import_backend``), or under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).parent.parent / "src" / "local_llm"
ENGINE_LIBRARIES = {
    "torch",
    "transformers",
    "sentence_transformers",
    "vllm",
    "xgrammar",
    "gguf",
    "accelerate",
}


def _unlocked_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, locked: bool) -> None:
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Name) and item.context_expr.id == "IMPORT_LOCK"
            for item in node.items
        ):
            locked = True
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            locked = True
        if isinstance(node, ast.Import | ast.ImportFrom) and not locked:
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            )
            found.extend((node.lineno, name) for name in names if name.split(".")[0] in ENGINE_LIBRARIES)
        for child in ast.iter_child_nodes(node):
            visit(child, locked)

    visit(tree, False)
    return found


def test_no_engine_library_is_imported_outside_the_lock() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in _unlocked_imports(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == [], "import these under `with IMPORT_LOCK:` (local_llm.backends):\n" + "\n".join(
        offenders
    )


def test_the_check_finds_an_import_outside_the_lock() -> None:
    source = "def f():\n    import torch\n\ndef g():\n    with IMPORT_LOCK:\n        import torch\n"
    assert _unlocked_imports(ast.parse(source)) == [(2, "torch")]
