"""An OLTR-protocol long-tailed split generated from a balanced image folder (no list files).

OLTR (Liu et al., CVPR 2019) built ImageNet-LT and Places-LT by drawing per-class training counts
from a Pareto distribution (α = 6) between n_max and n_min; ``generate`` does the same from a
balanced ``root/<class>/<image>`` folder, seeded by ``data.seed``, holds out val and test per class
first (or takes test from ``data.test_root``), and writes the split as list files into
``data/raw/<name>``. The module docstring of :mod:`longtail.data.imagelist` states the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from longtail import io
from longtail.data import base
from longtail.data.imagelist.lists import write_list
from longtail.data.imagelist.specs import (
    FEW_SHOT,
    IMAGE_EXTENSIONS,
    MANY_SHOT,
    MISSING_SHOWN,
    Spec,
)

if TYPE_CHECKING:
    from longtail.config import DataConfig


def pareto_counts(
    num_classes: int, *, alpha: float, n_max: int, n_min: int, seed: int
) -> list[int]:
    """Per-class counts of OLTR's protocol, largest first, from ``n_max`` down to ``n_min``.

    One value per class is drawn from a Pareto distribution of shape ``alpha`` (seeded), sorted in
    decreasing order and mapped affinely onto ``[n_min, n_max]``, then rounded: the ends are exact.
    """
    if num_classes < 2:
        raise ValueError(f"a Pareto split needs at least 2 classes; got {num_classes}")
    if not 0 < n_min <= n_max:
        raise ValueError(
            f"data.n_min, data.n_max: expected 0 < n_min <= n_max; got {n_min}, {n_max}"
        )
    draws = np.sort(np.random.default_rng(seed).pareto(alpha, num_classes))[::-1]  # (C,)
    scaled = (draws - draws[-1]) / (draws[0] - draws[-1])  # in [0, 1]; 1 for the largest class
    return np.rint(n_min + scaled * (n_max - n_min)).astype(int).tolist()


def split_balanced_folder(
    paths: Sequence[Sequence[str]],
    counts: Sequence[int],
    *,
    val_per_class: int,
    test_per_class: int,
    seed: int,
) -> dict[str, list[tuple[str, int]]]:
    """Per class (seeded): ``test_per_class`` test, ``val_per_class`` val, ``counts[c]`` train.

    Args:
        paths: for every class, its image paths.
        counts: training images per class.

    Returns:
        ``(path, label)`` rows of every split, in class and then file order.
    """
    rng = np.random.default_rng(seed)
    splits: dict[str, list[tuple[str, int]]] = {split: [] for split in base.SPLITS}
    for label, (class_paths, count) in enumerate(zip(paths, counts, strict=True)):
        sizes = {"test": test_per_class, "val": val_per_class, "train": count}
        if len(class_paths) < sum(sizes.values()):
            raise ValueError(
                f"class {label} ({PurePosixPath(class_paths[0]).parent if class_paths else '?'}) "
                f"has {len(class_paths)} images; the split needs {test_per_class} test "
                f"(data.test_per_class) + {val_per_class} val (data.val_per_class) + "
                f"{count} train (data.n_max, data.n_min)"
            )
        perm, start = rng.permutation(len(class_paths)), 0
        for split, size in sizes.items():
            chosen = np.sort(perm[start : start + size])
            splits[split] += [(class_paths[i], label) for i in chosen]
            start += size
    return splits


def class_folders(root: Path, spec: Spec) -> tuple[list[str], list[list[str]]]:
    """Class folder names of a balanced ``root/<class>/<image>`` tree and their image paths."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths = [
        sorted(
            f"{c}/{f.name}" for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS
        )
        for c in classes
    ]
    if len(classes) < 2 or not all(paths):
        raise FileNotFoundError(
            f"data.root {root}: expected the list files ({spec.lists['train']} ..., or "
            f"data.lists.*) or a balanced folder root/<class>/<image.jpg> with at least 2 classes "
            f"to draw an LT split from; found neither"
        )
    return classes, paths


def generate(cfg: DataConfig, spec: Spec, root: Path, raw_dir: Path) -> None:
    classes, paths = class_folders(root, spec)
    test_root = Path(cfg.test_root) if cfg.test_root is not None else None
    n_max, n_min, val_pc, test_pc = spec.generated
    protocol = {
        "pareto_alpha": cfg.pareto_alpha,
        "n_max": cfg.n_max if cfg.n_max is not None else n_max,
        "n_min": cfg.n_min if cfg.n_min is not None else n_min,
        "val_per_class": cfg.val_per_class if cfg.val_per_class is not None else val_pc,
        "test_per_class": cfg.test_per_class if cfg.test_per_class is not None else test_pc,
        "test_root": str(test_root) if test_root is not None else None,
        "seed": cfg.seed,
    }
    ranked = pareto_counts(
        len(classes),
        alpha=protocol["pareto_alpha"],
        n_max=protocol["n_max"],
        n_min=protocol["n_min"],
        seed=cfg.seed,
    )
    counts = assign_counts(ranked, cfg.seed)
    splits = split_balanced_folder(
        paths,
        counts,
        val_per_class=protocol["val_per_class"],
        test_per_class=0 if test_root is not None else protocol["test_per_class"],
        seed=cfg.seed,
    )
    roots = {}
    if (
        test_root is not None
    ):  # its paths are relative to test_root, as list paths stay under a root
        splits["test"] = test_folder(test_root, classes, spec, cfg.test_per_class, cfg.seed)
        roots["test"] = str(test_root)
    with io.atomic_dir(raw_dir) as tmp:
        for split, rows in splits.items():
            write_list(tmp / f"{split}.txt", rows)
        lists = {s: {"file": f"{s}.txt", "md5": io.md5sum(tmp / f"{s}.txt")} for s in splits}
        io.write_json(
            tmp / "source.json",
            {
                "mode": "generated",
                "root": str(cfg.root),
                "roots": roots,
                "classes": classes,
                "protocol": protocol,
                "counts": counts,
                "lists": lists,
                "splits": {s: f"{s}.txt" for s in splits},
            },
        )
    print(f"{cfg.name}: generated an LT split of {root} in {raw_dir}: {split_summary(splits)}")


def assign_counts(ranked: Sequence[int], seed: int) -> list[int]:
    """The ranked counts given to the classes in a seeded random order (not folder order).

    Drawn from its own stream (``default_rng([seed, 1])``), so the counts and their order are
    independent draws of one seed.
    """
    order = np.random.default_rng([seed, 1]).permutation(len(ranked))
    return [int(ranked[r]) for r in order]


def test_folder(
    test_root: Path, classes: list[str], spec: Spec, per_class: int | None, seed: int
) -> list[tuple[str, int]]:
    """Test rows from a separate balanced folder with the same classes (ImageNet's val set).

    Paths are relative to ``test_root``; ``per_class`` None takes every image, else a seeded
    choice of that many per class.
    """
    test_classes, test_paths = class_folders(test_root, spec)
    if test_classes != classes:
        missing = sorted(set(classes) ^ set(test_classes))[:MISSING_SHOWN]
        raise ValueError(
            f"data.test_root: expected the class folders of data.root ({len(classes)}); "
            f"got {len(test_classes)} in {test_root}, differing in {', '.join(missing)}"
        )
    rng = np.random.default_rng([seed, 2])
    rows = []
    for label, files in enumerate(test_paths):
        if per_class is not None:
            if per_class > len(files):
                raise ValueError(
                    f"data.test_per_class: class {classes[label]} has {len(files)} images in "
                    f"data.test_root; expected at most that, got {per_class}"
                )
            files = [files[i] for i in np.sort(rng.choice(len(files), per_class, replace=False))]
        rows += [(f, label) for f in files]
    return rows


def split_summary(splits: dict[str, list[tuple[str, int]]]) -> str:
    """Totals of every split and the many/medium/few class counts (> 100, 20-100, < 20 train)."""
    counts = np.bincount([label for _, label in splits["train"]])
    many, few = int((counts > MANY_SHOT).sum()), int((counts < FEW_SHOT).sum())
    return (
        f"train {len(splits['train']):,} images ({counts.max()} to {counts.min()} per class; "
        f"{many} many / {len(counts) - many - few} medium / {few} few-shot classes), "
        f"val {len(splits['val']):,}, test {len(splits['test']):,}"
    )
