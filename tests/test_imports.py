"""The package's import graph: ``longtail.config`` is a leaf, and no two package modules import
each other at module level (no import circle), read from the source with ``ast``.

Imports under ``if TYPE_CHECKING:`` and inside functions are not module-level imports: they run
at first use, after both modules exist, and are how a registry reaches the modules it lists.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "longtail"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """The ``longtail`` modules ``path`` imports at module level (not under TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("longtail")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("longtail"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                exists = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py")
                is_package = PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                names.add(candidate if exists.exists() or is_package.exists() else node.module)
    return names


def graph() -> dict[str, set[str]]:
    return {module_name(p): top_level_imports(p) for p in PACKAGE.rglob("*.py")}


def test_config_imports_nothing_from_the_package() -> None:
    tree = ast.parse((PACKAGE / "config.py").read_text())
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in (n.names if isinstance(n, ast.Import) else [n])
    ]
    assert not [m for m in imported if (m or "").startswith("longtail")], imported


def test_no_import_circle_in_the_package() -> None:
    edges = graph()
    assert "longtail.config" in edges and "longtail.modes" in edges
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            # ``longtail/__init__.py`` runs before any submodule: an edge into the bare package
            # is the package's own initialisation, not a circle.
            if nxt == "longtail":
                continue
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif len(path) < 30:
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert not cycles, cycles[:3]
