"""Does the installed torch/torchvision have every attribute the project's code names?

    python -m benchmarks.torch_api                  # longtail/, stages/, benchmarks/, tests/
    /path/to/other/python -m benchmarks.torch_api   # against that interpreter's torch

The tests run only the branches a CPU reaches; the CUDA branches (compile, bf16, nvJPEG, NCCL,
fused optimizers) run only on a GPU. This check reads every file (``ast``), resolves each dotted
name rooted in an import of ``torch`` or ``torchvision`` (``torch.cuda.amp.autocast``,
``F.cross_entropy`` after ``import torch.nn.functional as F``, ``from torchvision.io import
decode_jpeg``), and looks it up in the installed packages, whatever branch it sits in: a name the
oldest supported torch lacks (pyproject.toml) is found without a GPU. Keyword arguments and
behaviour are not checked; the tests under that torch are (docs/gpu.md). Exit 1 when a name is
missing.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("torch", "torchvision")
FOLDERS = ("longtail", "stages", "benchmarks", "tests", "tools")


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def names_used(source: str) -> list[tuple[int, str]]:
    """``(line, full dotted name)`` of every torch/torchvision name ``source`` uses."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] in ROOTS:
                    top = alias.name.partition(".")[0]
                    aliases[alias.asname or top] = alias.name if alias.asname else top
                    found.append((node.lineno, alias.name))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").partition(".")[0] in ROOTS
        ):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = full
                found.append((node.lineno, full))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = dotted(node)
            if name is None:
                continue
            root, _, rest = name.partition(".")
            if root in aliases:
                found.append((node.lineno, f"{aliases[root]}.{rest}"))
    return found


def exists(name: str) -> bool:
    """Whether ``name`` (``package.module.attr...``) resolves in the installed packages."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                try:  # a submodule not imported by its package yet
                    obj = importlib.import_module(f"{obj.__name__}.{attr}")
                    continue
                except (ImportError, AttributeError):
                    return False
            obj = getattr(obj, attr)
        return True
    return False


def missing(files: Iterable[Path]) -> list[str]:
    """``file:line name`` for every torch/torchvision name the installed packages lack."""
    out, cache = [], {}
    for path in files:
        for line, name in names_used(path.read_text()):
            if name not in cache:
                cache[name] = exists(name)
            if not cache[name]:
                out.append(f"{path.relative_to(REPO)}:{line} {name}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.torch_api", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("folders", nargs="*", default=list(FOLDERS))
    args = p.parse_args(argv)
    import torch
    import torchvision

    files = [f for d in args.folders for f in sorted((REPO / d).rglob("*.py"))]
    names = {n for f in files for _, n in names_used(f.read_text())}
    lacking = missing(files)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, python "
        f"{sys.version.split()[0]}: {len(files)} files, {len(names)} distinct torch/torchvision "
        f"names, {len(lacking)} missing"
    )
    for line in lacking:
        print(f"  missing: {line}")
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main())
