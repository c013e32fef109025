"""ImageNet-LT / Places-LT / iNaturalist list files: read, write, find, check and pin them.

The format of OLTR (Liu et al., CVPR 2019) and classifier-balancing (Kang et al., ICLR 2020): one
``relative/path.jpg label`` per line, paths relative to ``data.root``, labels 0-based. Unset
``data.lists.*`` mean the published names under the root
(:data:`~longtail.data.imagelist.specs.SPECS`).
``pin_lists`` checks that every listed image exists and copies the lists (and their md5s) into
``data/raw/<name>``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from longtail import io
from longtail.data import base
from longtail.data.imagelist.specs import MISSING_SHOWN, Spec

if TYPE_CHECKING:
    from longtail.config import DataConfig


def parse_list(path: Path) -> list[tuple[str, int]]:
    """``(path, label)`` rows of a list file; a leading ``/`` is dropped (paths are under root).

    A path that climbs out of the root (``..``) is refused: list files come from outside.
    """
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(
                f"{path}:{lineno}: expected 'relative/path.jpg label' with a label "
                f">= 0; got {line!r}"
            )
        rows.append((io.relative_path(parts[0].lstrip("/"), f"{path}:{lineno}"), int(parts[1])))
    return rows


def write_list(path: Path, rows: Sequence[tuple[str, int]]) -> None:
    """Write ``(path, label)`` rows as a list file, atomically."""
    io.write_text(path, "".join(f"{p} {label}\n" for p, label in rows))


def image_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise ValueError(
            f"data.root: expected the folder that holds the {cfg.name} images; got null"
        )
    root = Path(cfg.root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root: expected an existing folder of {cfg.name} images; "
            f"got {cfg.root!r} (no such folder)"
        )
    return root


def list_files(cfg: DataConfig, spec: Spec, root: Path) -> dict[str, Path | None] | None:
    """The list file of every split, or None when there are none (generate a split instead)."""
    given = {split: getattr(cfg.lists, split) for split in base.SPLITS}
    if given["train"] is None and not (root / spec.lists["train"]).is_file():
        others = [f"data.lists.{s}" for s in ("val", "test") if given[s] is not None]
        if others:
            raise ValueError(
                f"{', '.join(others)} set but data.lists.train is null and "
                f"{root / spec.lists['train']} does not exist: expected a train list"
            )
        return None
    files: dict[str, Path | None] = {}
    for split in base.SPLITS:
        if given[split] is not None:
            files[split] = Path(given[split])
            if not files[split].is_file():
                raise FileNotFoundError(
                    f"data.lists.{split}: no such file {given[split]!r} "
                    f"(relative paths are taken from the working directory)"
                )
        elif spec.lists[split] is None:
            files[split] = None
        else:
            files[split] = root / spec.lists[split]
            if not files[split].is_file():
                raise FileNotFoundError(
                    f"data.lists.{split}: expected the {spec.name} list file; "
                    f"the default {files[split]} does not exist (set "
                    f"data.lists.{split} to its path)"
                )
    return files


def check_images(root: Path, rows: Sequence[tuple[str, int]], list_file: Path) -> None:
    """Every listed image exists under ``root``, or an error showing the first missing ones."""
    missing = [p for p, _ in rows if not (root / p).is_file()]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN]) + (
            ", ..." if len(missing) > MISSING_SHOWN else ""
        )
        raise FileNotFoundError(
            f"{len(missing)} of {len(rows)} images listed in {list_file} are "
            f"missing under data.root {root}: {shown}"
        )


def check_val_source(cfg: DataConfig, val_list: object) -> None:
    if val_list is not None and cfg.val_per_class:
        raise ValueError(
            f"data.val_per_class: the val split comes from the list file {val_list}; "
            f"expected null, got {cfg.val_per_class}"
        )


def pin_lists(cfg: DataConfig, root: Path, files: dict[str, Path | None], raw_dir: Path) -> None:
    check_val_source(cfg, files["val"])
    for file in files.values():
        if file is not None:
            check_images(root, parse_list(file), file)
    splits = {s: (f"{s}.txt" if f is not None else None) for s, f in files.items()}
    with io.atomic_dir(raw_dir) as tmp:
        for split, file in files.items():
            if file is not None:
                shutil.copyfile(file, tmp / f"{split}.txt")
        lists = {s: {"file": str(f), "md5": io.md5sum(f)} for s, f in files.items() if f}
        io.write_json(
            tmp / "source.json",
            {"mode": "lists", "root": str(cfg.root), "lists": lists, "splits": splits},
        )
    print(f"{cfg.name}: list files checked against {root} and pinned in {raw_dir}")
