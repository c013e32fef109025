"""ImageNet-LT, Places-LT and iNaturalist 2018: an image root plus list files, decoded per batch.

Sources. The user provides ``data.root`` (the image folder) and list files in the format of OLTR
(Liu et al., CVPR 2019) and classifier-balancing (Kang et al., ICLR 2020): one
``relative/path.jpg label`` per line, paths relative to the root, labels 0-based. Unset
``data.lists.*`` mean the published names under the root: ``ImageNet_LT_{train,val,test}.txt``,
``Places_LT_{train,val,test}.txt``, ``iNaturalist18_{train,val}.txt``. iNaturalist 2018 has no
public test labels, so, as classifier-balancing and the papers that report on it do, its official
val list is the ``test`` split. ``download`` copies no images: it checks that every listed image
exists and pins the list files (and their md5s) in ``data/raw/<name>``.

Checks (``prepare``, i.e. ``inject_imbalance``, before any training): the train, val and test
lists share no image (paths resolved under the root, symlinks followed; the message names both
lists, the number shared and a few paths), so a val list that is really the test list cannot send
test into CDB-CE's weights, the τ sweep or the BALMS meta set; every label is below the published
class count (1,000 / 365 / 8,142; the message names the list); every class has training images
(else the message says which lists the class appears in, or that it appears in none). The class
count is the published one when the lists are the published ones, else the largest label of any
list + 1. A list is published when its file's md5 is the published file's (every list whose file a
reference ships: :data:`LIST_SOURCE`), or, for ImageNet-LT's and iNaturalist's train lists, which
no reference ships, when its per-class histogram has the published classes, images, largest and
smallest class (ImageNet-LT 1,000 / 115,846 / 1,280 / 5, iNaturalist 2018 8,142 / 437,513 /
1,000 / 2). What was checked per list, what was given and the verdict are printed and kept in
``dataset.json`` (``published_lists``; ``lines`` keeps the line counts, ImageNet-LT 115,846 /
20,000 / 50,000, Places-LT 62,500 / 7,300 / 36,500, iNaturalist 2018 437,513 / 24,426). Every
listed image is then decoded once (:mod:`longtail.data.verify`, parallel, cached): an image that
does not decode stops the stage with the list, or with ``data.skip_bad: true`` leaves train and
val; a bad test image stays listed and is scored as wrong (``bad_images.json``).

A val split on iNaturalist 2018. CDB-CE's difficulties, a τ-norm sweep and a val-sourced BALMS meta
set need one, and iNaturalist 2018 publishes none. ``data.val_per_class: k`` carves k images of
every class off the training list (seeded by ``data.seed``); the cost is k × 8,142 training
images (1.9 % of them at k = 1) and, in the tail, half of a two-image class. Its smallest classes
have 2 training images, so k = 1 is the most a carve allows; a carve that would leave a class
without training images is refused. BALMS can instead take its meta set from train
(``finetune.meta_source: train``), at no cost to training. The original BALMS ``main.py`` takes
its meta set from ``val`` there, which for iNaturalist 2018 is the official val list, i.e. the
test set; that is not reproduced.

Generated split. With no list files but a balanced ``root/<class>/<image>`` folder, ``download``
builds an LT split with OLTR's protocol: per-class training counts follow a Pareto distribution
with shape α = ``data.pareto_alpha`` (6), from ``data.n_max`` down to ``data.n_min`` —
:func:`pareto_counts` draws one Pareto value per class, sorts them and maps them affinely onto
[n_min, n_max], so the largest class has exactly n_max images and the smallest n_min — and
:func:`assign_counts` gives these counts to the classes in a seeded random order, so the head is
not simply the first folders. Defaults per family, from the published splits (``n_max → n_min``,
val and test per class): ImageNet-LT 1,280 → 5, 20, 50; Places-LT 4,980 → 5, 20, 100; iNaturalist
2018 1,000 → 2, no val, 3. Evidence that this matches the published split: for 1,000 classes the
median over 200 seeds is 110K training images, 367 classes with more than 100 and 152 with fewer
than 20, against ImageNet-LT's 115.8K, 385 and 136. The balanced test (``data.test_per_class``) and
val (``data.val_per_class``) images are taken from each class first; or, with ``data.test_root``, a
second balanced folder with the same classes, the test set is that folder (all of it, or
``data.test_per_class`` per class), as ImageNet-LT tests on ImageNet's val set. The split is part of
the dataset, not of an experiment: it is drawn with ``data.seed`` (never the training seed),
written as list files into ``data/raw/<name>``, and its totals and many/medium/few-shot class
counts (> 100, 20-100, < 20 training images) are printed.

Loading (``open``): a ``DataLoader`` with ``data.workers`` processes reads the files in the order
the training loop gives, decodes them with ``torchvision.io.decode_image`` (no PIL) and applies the
papers' transforms to uint8 tensors with ``torchvision.transforms.v2.functional``: training
RandomResizedCrop(size) + RandomHorizontalFlip + ColorJitter(0.4, 0.4, 0.4, 0) (iNaturalist: no
jitter, as classifier-balancing; ``pretrain.color_jitter`` / ``finetune.color_jitter`` set another
strength, 0 none as FBL); evaluation Resize(size * 256 / 224) + CenterCrop(size). The
random parameters are drawn with torchvision's algorithms from a per-sample ``torch.Generator``
whose seed is drawn from the ``generator`` passed to ``batches`` (one per position of the order),
so an epoch's augmentation depends only on that generator, not on the number of workers, and no
process-wide RNG is touched. Given the same seed, the output is bit-identical to torchvision's
``v2.Compose`` of the same transforms drawing from the global RNG (tested). Normalisation:
ImageNet mean/std, and iNaturalist's own (classifier-balancing's) for inat2018.

Backbones (``default_arch``): ResNet-10 for ImageNet-LT, ResNet-50 for iNaturalist 2018 (both from
scratch), ResNet-152 for Places-LT, initialised from an ImageNet checkpoint the user provides
through ``model.weights`` (the training stage loads it).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from longtail import io
from longtail.config import DataConfig
from longtail.data import base, verify
from longtail.data.augment import normalize
from longtail.data.imbalance import hold_out_per_class

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)  # classifier-balancing's
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
BAD_IMAGES = "bad_images.json"  # in data/prepared: split -> {path: why it does not decode}
MANY_SHOT, FEW_SHOT = 100, 20  # OLTR's many (> 100 train images) and few (< 20) shot classes
DEFAULT_IMAGE_SIZE = 224
JITTER = 0.4  # brightness, contrast and saturation of ColorJitter; hue 0
MISSING_SHOWN = 5
# Where the published lists' md5s and histograms come from: the list files that
# facebookresearch/classifier-balancing (commit f162ade, data/ImageNet_LT, data/Places_LT,
# data/iNaturalist18) and jiawei-ren/BalancedMetaSoftmax-Classification (commit 34a61e4, the same
# paths) ship, byte-identical in both; ImageNet_LT_train.txt and iNaturalist18_train.txt are not
# in either repository, so those two are checked by their histogram summary (OLTR's 1,000 classes,
# 115,846 images, 1,280 to 5 per class; iNaturalist 2018's 8,142 classes, 437,513 images, 1,000 to
# 2 per class).
LIST_SOURCE = "classifier-balancing f162ade / BalancedMetaSoftmax-Classification 34a61e4"


@dataclass(frozen=True)
class Spec:
    """One list-file dataset: its published list names, backbone and input statistics."""

    name: str
    lists: dict[str, str | None]  # split -> default list file under the root (None: none)
    default_arch: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color_jitter: bool
    classes: int = 0  # published class count
    lines: dict[str, int] | None = None  # split -> line count of the published list file
    # split -> md5 of the published list file, where a reference ships it (:data:`LIST_SOURCE`)
    md5: dict[str, str] = field(default_factory=dict)
    # split -> (classes, images, largest class, smallest class) of the published list
    histogram: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    # A generated split: n_max, n_min, val and test images per class of the published one.
    generated: tuple[int, int, int, int] = (1280, 5, 20, 50)


SPECS = {
    s.name: s
    for s in (
        Spec(
            "imagenet_lt",
            {sp: f"ImageNet_LT_{sp}.txt" for sp in base.SPLITS},
            "resnet10",
            IMAGENET_MEAN,
            IMAGENET_STD,
            color_jitter=True,
            classes=1000,
            lines={"train": 115_846, "val": 20_000, "test": 50_000},
            md5={
                "val": "ef44f8e43fbc904809a77216042e7498",
                "test": "5f5f97c738923e877c5c78accce6744f",
            },
            histogram={
                "train": (1000, 115_846, 1280, 5),  # OLTR (Liu et al., CVPR 2019), Sec. 4
                "val": (1000, 20_000, 20, 20),
                "test": (1000, 50_000, 50, 50),
            },
            generated=(1280, 5, 20, 50),
        ),
        Spec(
            "places_lt",
            {sp: f"Places_LT_{sp}.txt" for sp in base.SPLITS},
            "resnet152",
            IMAGENET_MEAN,
            IMAGENET_STD,
            color_jitter=True,
            classes=365,
            lines={"train": 62_500, "val": 7_300, "test": 36_500},
            md5={
                "train": "e7795ab1bf428a89f900854127b1e556",
                "val": "2f6e727cd6c99c7b7fdecc9876875b1b",
                "test": "1347af35b053bd31cf782256306affe7",
            },
            histogram={
                "train": (365, 62_500, 4980, 5),
                "val": (365, 7_300, 20, 20),
                "test": (365, 36_500, 100, 100),
            },
            generated=(4980, 5, 20, 100),
        ),
        Spec(
            "inat2018",
            {"train": "iNaturalist18_train.txt", "val": None, "test": "iNaturalist18_val.txt"},
            "resnet50",
            INAT_MEAN,
            INAT_STD,
            color_jitter=False,
            classes=8_142,
            lines={"train": 437_513, "test": 24_426},  # test: the official iNaturalist18_val.txt
            md5={"test": "b7ed52f3854c157c487cc3be9deb8abf"},
            histogram={
                "train": (8_142, 437_513, 1000, 2),  # iNaturalist 2018 (Van Horn et al.)
                "test": (8_142, 24_426, 3, 3),
            },
            generated=(1000, 2, 0, 3),
        ),
    )
}


# ------------------------------------------------------------------------------------- list files
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


def _image_root(cfg: DataConfig) -> Path:
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


def _list_files(cfg: DataConfig, spec: Spec, root: Path) -> dict[str, Path | None] | None:
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


def _check_images(root: Path, rows: Sequence[tuple[str, int]], list_file: Path) -> None:
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


def _check_val_source(cfg: DataConfig, val_list: object) -> None:
    if val_list is not None and cfg.val_per_class:
        raise ValueError(
            f"data.val_per_class: the val split comes from the list file {val_list}; "
            f"expected null, got {cfg.val_per_class}"
        )


# ----------------------------------------------------------------------------- generated LT split
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


def _class_folders(root: Path, spec: Spec) -> tuple[list[str], list[list[str]]]:
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


# ----------------------------------------------------------------------------------------- download
def download(cfg: DataConfig, raw_dir: Path) -> None:
    """Check the images of the list files (or generate an LT split) and pin the lists in raw_dir."""
    spec = SPECS[cfg.name]
    root = _image_root(cfg)
    files = _list_files(cfg, spec, root)
    if files is None:
        _generate(cfg, spec, root, raw_dir)
    else:
        _pin_lists(cfg, root, files, raw_dir)


def _pin_lists(cfg: DataConfig, root: Path, files: dict[str, Path | None], raw_dir: Path) -> None:
    _check_val_source(cfg, files["val"])
    for file in files.values():
        if file is not None:
            _check_images(root, parse_list(file), file)
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


def _generate(cfg: DataConfig, spec: Spec, root: Path, raw_dir: Path) -> None:
    classes, paths = _class_folders(root, spec)
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
        splits["test"] = _test_folder(test_root, classes, spec, cfg.test_per_class, cfg.seed)
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


def _test_folder(
    test_root: Path, classes: list[str], spec: Spec, per_class: int | None, seed: int
) -> list[tuple[str, int]]:
    """Test rows from a separate balanced folder with the same classes (ImageNet's val set).

    Paths are relative to ``test_root``; ``per_class`` None takes every image, else a seeded
    choice of that many per class.
    """
    test_classes, test_paths = _class_folders(test_root, spec)
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


# ----------------------------------------------------------------------------------------- prepare
def prepare(cfg: DataConfig, seed: int, raw_dir: Path, out_dir: Path) -> None:
    """Manifests (``path``, ``label``) of the pinned lists; a seeded val carve-out if asked for.

    The lists must be disjoint (resolved paths), every label in range and every class trained;
    whether they are the published lists (md5 or histogram, :func:`published_lines`) is logged
    and kept in ``dataset.json``.
    """
    spec = SPECS[cfg.name]
    source = base.read_json(raw_dir / "source.json")
    if source["mode"] == "lists":
        _check_val_source(cfg, source["splits"]["val"])
    frames = {s: _frame(parse_list(raw_dir / f) if f else []) for s, f in source["splits"].items()}
    names = {s: source["lists"].get(s, {}).get("file", f"{s}.txt") for s in base.SPLITS}
    roots = {s: source.get("roots", {}).get(s, source["root"]) for s in base.SPLITS}
    check_disjoint(frames, roots, names)
    md5s = {s: v["md5"] for s, v in source.get("lists", {}).items()}
    published = published_lines(spec, frames, md5s) if source["mode"] == "lists" else None
    num_classes = _num_classes(spec, frames, names, published)
    bad = _verify(frames, roots, cfg)
    if source["splits"]["val"] is None and cfg.val_per_class:
        frames["train"], frames["val"] = _carve_val(frames["train"], cfg.val_per_class, seed)
    _check_classes(frames, num_classes, names)
    class_list = source.get("classes") or class_names(frames["train"], num_classes)
    info = {
        "kind": "image",
        "in_channels": 3,
        "root": source["root"],
        "roots": roots,  # the folder each split's paths are relative to
        "mean": list(spec.mean),
        "std": list(spec.std),
        "image_size": cfg.image_size or DEFAULT_IMAGE_SIZE,
        "color_jitter": JITTER if spec.color_jitter else 0.0,  # the family's default strength
        "has_val": len(frames["val"]) > 0,
        "val_source": _val_source(source, cfg),
        "published_lists": published,
        "bad_images": {split: len(paths) for split, paths in bad.items()},
        "data_seed": seed,
    }
    io.write_json(out_dir / BAD_IMAGES, bad)
    if published is not None:
        print(published["summary"])
    base.write_prepared(out_dir, frames, class_list, info)


def _verify(
    frames: dict[str, pd.DataFrame], roots: dict[str, str], cfg: DataConfig
) -> dict[str, dict[str, str]]:
    """Decode every listed image once (cached); stop on bad ones, or drop them from train/val.

    Bad test images stay in ``test.csv`` (they are listed, and count as wrong in ``evaluate``);
    ``bad_images.json`` names them so that the test source leaves them out of the scored batches.
    """
    bad = {
        split: verify.verify(roots[split], frame["path"], cfg.workers)
        for split, frame in frames.items()
    }
    found = [(split, path, why) for split, paths in bad.items() for path, why in paths.items()]
    if not found:
        return bad
    shown = "; ".join(f"{split} {path}: {why}" for split, path, why in found[:MISSING_SHOWN])
    if not cfg.skip_bad:
        raise ValueError(
            f"data.skip_bad: expected every listed image to decode; {len(found)} do not ({shown}"
            f"{'; ...' if len(found) > MISSING_SHOWN else ''}). Set data.skip_bad: true to drop "
            f"them from train and val (a bad test image is kept and scored as wrong)"
        )
    for split in ("train", "val"):
        keep = ~frames[split]["path"].isin(bad[split])
        frames[split] = frames[split][keep].reset_index(drop=True)
        frames[split]["index"] = np.arange(len(frames[split]))
    print(f"data.skip_bad: {len(found)} images do not decode and are skipped ({shown})")
    return bad


def _val_source(source: dict, cfg: DataConfig) -> str:
    if source["splits"]["val"] is not None:
        return "list" if source["mode"] == "lists" else "generated"
    return f"carved off train ({cfg.val_per_class} per class)" if cfg.val_per_class else "none"


def _frame(rows: Sequence[tuple[str, int]]) -> pd.DataFrame:
    paths = [p for p, _ in rows]
    labels = np.array([label for _, label in rows], dtype=np.int64)
    return pd.DataFrame(
        {
            "index": np.arange(len(rows)),
            "source_index": np.arange(len(rows)),
            "path": paths,
            "label": labels,
        }
    )


def check_disjoint(
    frames: dict[str, pd.DataFrame], roots: dict[str, str], names: dict[str, str]
) -> None:
    """Refuse splits that share an image (paths resolved under their root, symlinks followed).

    A val list that is really the test list would send test into model selection (CDB-CE's
    weights, the τ sweep, the BALMS meta set); this stops it before any training.
    """
    resolved = {
        split: {os.path.realpath(os.path.join(roots[split], p)): p for p in frame["path"]}
        for split, frame in frames.items()
    }
    for a, b in itertools.combinations(base.SPLITS, 2):
        shared = sorted(resolved[a].keys() & resolved[b].keys())
        if shared:
            shown = ", ".join(resolved[a][p] for p in shared[:MISSING_SHOWN])
            raise ValueError(
                f"data.lists: expected disjoint train, val and test lists; the {a} list {names[a]} "
                f"and the {b} list {names[b]} share {len(shared)} images (e.g. {shown})"
            )


def histogram_summary(labels: np.ndarray) -> tuple[int, int, int, int]:
    """``(classes, images, largest class, smallest class)`` of a list's per-class histogram."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if not len(counts):
        return (0, 0, 0, 0)
    return (len(counts), int(counts.sum()), int(counts.max()), int(counts.min()))


def published_lines(
    spec: Spec, frames: dict[str, pd.DataFrame], md5s: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """Whether the lists are ``spec``'s published ones (None: the dataset has none).

    Each published list is checked by the strongest evidence known for it: the md5 of the file
    (``md5s``: split -> md5 of the given file) where a reference ships the published file
    (:data:`LIST_SOURCE`), else its per-class histogram (classes, images, largest and smallest
    class) against the published one. ``lists`` records, per split, what was checked, what was
    given and what is published; ``match`` is true when every list passes.
    """
    if spec.lines is None:
        return None
    md5s = md5s or {}
    checks, lines = {}, {}
    for split, n in spec.lines.items():
        lines[split] = {"given": len(frames[split]), "published": n}
        if split in spec.md5:
            given, published, checked = md5s.get(split), spec.md5[split], "md5"
        else:
            labels = frames[split]["label"].to_numpy(np.int64)
            given, published = list(histogram_summary(labels)), list(spec.histogram[split])
            checked = "histogram"
        checks[split] = {
            "checked": checked,
            "given": given,
            "published": published,
            "match": given == published,
        }
    match = all(c["match"] for c in checks.values())
    parts = ", ".join(
        f"{s} {lines[s]['given']:,} lines, {c['checked']} {'ok' if c['match'] else 'differs'}"
        for s, c in checks.items()
    )
    verdict = "are" if match else "are NOT"
    return {
        "match": match,
        "lists": checks,
        "lines": lines,
        "summary": f"{spec.name}: the lists {verdict} the published ones: {parts}",
    }


def _num_classes(
    spec: Spec, frames: dict[str, pd.DataFrame], names: dict[str, str], published: dict | None
) -> int:
    """Classes from every list, or the published count for the published lists."""
    known = spec.classes or None
    for split, frame in frames.items():
        if known is not None and len(frame) and int(frame["label"].max()) >= known:
            bad = frame[frame["label"] >= known].iloc[0]
            raise ValueError(
                f"{names[split]}: label {int(bad['label'])} of {bad['path']} is out of range: "
                f"expected 0..{known - 1} ({spec.name} has {known} classes)"
            )
    observed = max(int(f["label"].max()) + 1 for f in frames.values() if len(f))
    return known if published is not None and published["match"] else observed


def _carve_val(train: pd.DataFrame, per_class: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold ``per_class`` images of every class out of ``train`` (seeded) as a balanced val set."""
    labels = train["label"].to_numpy()
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if per_class >= smallest:
        raise ValueError(
            f"data.val_per_class: the smallest class has {smallest} training images; a carve of "
            f"{per_class} would leave class {int(np.flatnonzero(counts == smallest)[0])} with "
            f"none: expected fewer than {smallest}, got {per_class}"
        )
    val, rest = hold_out_per_class(labels, per_class, np.random.default_rng(seed))
    parts = [train.iloc[idx].reset_index(drop=True) for idx in (rest, val)]
    for part in parts:
        part["index"] = np.arange(len(part))  # source_index keeps the row of the train list
    return parts[0], parts[1]


def _check_classes(
    frames: dict[str, pd.DataFrame], num_classes: int, names: dict[str, str]
) -> None:
    """Every class has training images; a class missing from train says where it does appear."""
    counts = np.bincount(frames["train"]["label"], minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        where = [names[s] for s in ("val", "test") if frames[s]["label"].isin(empty[:10]).any()]
        seen = f"they appear only in {', '.join(where)}" if where else "they appear in no list"
        raise ValueError(
            f"{names['train']}: expected every class 0..{num_classes - 1} to have training "
            f"images; classes {empty[:10].tolist()} have none ({seen})"
        )


def class_names(train: pd.DataFrame, num_classes: int) -> list[str]:
    """A name per class from the folder of its first training image, else its label.

    The top folder shared by every path (``train/`` in ImageNet-LT) is left out.
    """
    first = train.groupby("label")["path"].first()
    folders = [PurePosixPath(first[c]).parent.parts for c in range(num_classes)]
    if len({f[:1] for f in folders}) == 1 and all(len(f) > 1 for f in folders):
        folders = [f[1:] for f in folders]
    names = ["/".join(f) for f in folders]
    return (
        names
        if len(set(names)) == num_classes and all(names)
        else [str(c) for c in range(num_classes)]
    )


# -------------------------------------------------------------------------------------- transforms
def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high, generator=gen))  # float32, as torchvision


def resized_crop_box(
    height: int,
    width: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of RandomResizedCrop, torchvision's algorithm, drawn from ``gen``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return top, left, h, w
    # No box fitted in ten tries: the centre crop at the nearest allowed aspect ratio.
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(
    image: torch.Tensor, size: int, color_jitter: float, gen: torch.Generator
) -> torch.Tensor:
    """RandomResizedCrop + RandomHorizontalFlip + ColorJitter(s, s, s, 0) of (3, H, W) uint8.

    ``color_jitter`` is the strength s (0: no jitter, and no draws for it).
    """
    top, left, h, w = resized_crop_box(image.shape[-2], image.shape[-1], gen)
    image = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if float(torch.rand((), generator=gen)) < 0.5:
        image = F.horizontal_flip(image)
    if color_jitter > 0:
        # ColorJitter's draws: the order of its four operations, then the three factors (hue 0 is
        # never applied and draws nothing), each uniform in [max(0, 1 - s), 1 + s].
        order = torch.randperm(4, generator=gen).tolist()
        ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
        low, high = max(0.0, 1 - color_jitter), 1 + color_jitter
        factors = [_uniform(gen, low, high) for _ in ops]
        for k in order:
            if k < len(ops):
                image = ops[k](image, factors[k])
    return image


def eval_transform(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size * 256 / 224``, then CenterCrop(size): (3, size, size)."""
    image = F.resize(image, [int(size * 256 / 224)], antialias=True)
    return F.center_crop(image, [size, size])


# ------------------------------------------------------------------------------------------- source
class _Files(Dataset):
    """Items are ``(row, seed)``: the image of manifest row ``row``, augmented with ``seed``."""

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        labels: Sequence[int],
        size: int,
        train: bool,
        color_jitter: float,
    ) -> None:
        self.root, self.paths, self.labels = root, paths, labels
        self.size, self.train, self.color_jitter = size, train, color_jitter

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        row, seed = item
        path = self.root / self.paths[row]
        try:
            image = decode_image(str(path), mode=ImageReadMode.RGB)  # (3, H, W) uint8
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{path}: cannot read or decode the image ({err})") from None
        if self.train:
            gen = torch.Generator().manual_seed(seed)
            image = train_transform(image, self.size, self.color_jitter, gen)
        else:
            image = eval_transform(image, self.size)
        return image, self.labels[row]


class FileSource:
    """A split read from image files by a DataLoader, normalised on the training device.

    Args:
        root: the image root the paths are relative to.
        paths: image path of every row of the manifest.
        labels: (N,) labels.
        size: side of the square network input.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        color_jitter: strength s of ColorJitter(s, s, s, 0) in training (0: none); the family's
            default is in ``dataset.json``, ``pretrain.color_jitter`` / ``finetune.color_jitter``
            override it through :meth:`set_color_jitter`.
        workers: DataLoader worker processes (0: decode in this process).
        device: where batches are produced.
    """

    in_channels = 3

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        labels: torch.Tensor,
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        color_jitter: float,
        workers: int,
        device: torch.device,
    ) -> None:
        self.root, self.paths = Path(root), list(paths)
        self.labels = labels.to(torch.int64).cpu()
        self.size, self.color_jitter, self.workers = size, float(color_jitter), workers
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = device

    def set_color_jitter(self, strength: float) -> None:
        """Train with ColorJitter(s, s, s, 0) of strength ``strength`` (0: none)."""
        if not 0 <= strength < float("inf"):
            raise ValueError(f"color_jitter: expected a number >= 0; got {strength!r}")
        self.color_jitter = float(strength)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: torch.Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = order.cpu().tolist()
        if train:  # one augmentation seed per position; a host sync once per epoch on CUDA
            seeds = torch.randint(
                0, 2**62, (len(rows),), generator=generator, device=generator.device
            ).tolist()
        else:
            seeds = [0] * len(rows)
        files = _Files(
            self.root, self.paths, self.labels.tolist(), self.size, train, self.color_jitter
        )
        loader = DataLoader(
            files,
            batch_size=batch_size,
            sampler=list(zip(rows, seeds, strict=True)),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:  # (B, 3, size, size) uint8, (B,) int64
            x = x.to(self.device, non_blocking=True)
            yield normalize(x, self.mean, self.std), y.to(self.device, non_blocking=True)


def open_split(ctx: base.SourceContext, split: str) -> FileSource:
    """A :class:`FileSource` over the split's manifest, as ``dataset.json`` describes it.

    Test images that the verify pass found undecodable are left out of the batches; their labels
    are the source's ``unscored_labels`` (``evaluate`` counts them as wrong).
    """
    info = base.read_json(ctx.prepared_dir / "dataset.json")
    frame = base.read_manifest(ctx.prepared_dir, split)
    bad_file = ctx.prepared_dir / BAD_IMAGES
    bad = base.read_json(bad_file).get(split, {}) if bad_file.exists() else {}
    unscored = frame["path"].isin(bad)
    unscored_labels = torch.tensor(frame["label"][unscored].to_numpy(dtype=np.int64))
    frame = frame[~unscored].reset_index(drop=True)
    source = FileSource(
        Path(info.get("roots", {}).get(split, info["root"])),
        frame["path"].astype(str).tolist(),
        torch.tensor(frame["label"].to_numpy(dtype=np.int64)),  # int64 even when empty
        size=info["image_size"],
        mean=info["mean"],
        std=info["std"],
        color_jitter=info["color_jitter"],
        workers=ctx.data.workers,
        device=ctx.device,
    )
    if split == "test":
        source.unscored_labels = unscored_labels
    return source


def _extractor(name: str) -> Callable[[object, Path, Path, Path], None]:
    def extract(frames_cfg: object, raw_dir: Path, prepared_dir: Path, frames_dir: Path) -> None:
        """Images need no frame extraction; record that explicitly."""
        base.write_nothing_to_extract(frames_dir, name)

    return extract


for _spec in SPECS.values():
    base.register(
        base.Family(
            name=_spec.name,
            kind="image",
            default_arch=_spec.default_arch,
            download=download,
            prepare=prepare,
            extract=_extractor(_spec.name),
            open=open_split,
        )
    )
