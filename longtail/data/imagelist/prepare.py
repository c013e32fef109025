"""``prepare`` of the image-list families: manifests, split checks, published-list check, val carve.

Before any training: the train, val and test lists share no image (resolved paths); every label is
in range and every class trained; each list is compared with the published one (md5, else per-class
histogram: :func:`published_lines`, sources in :data:`~longtail.data.imagelist.specs.LIST_SOURCE`);
every image is decoded once (:mod:`longtail.data.verify`); iNaturalist's val can be carved off
train (``data.val_per_class``, seeded).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from longtail import io
from longtail.data import base, verify
from longtail.data.imagelist.lists import check_val_source, parse_list
from longtail.data.imagelist.specs import (
    BAD_IMAGES,
    DEFAULT_IMAGE_SIZE,
    JITTER,
    MISSING_SHOWN,
    SPECS,
    Spec,
)
from longtail.data.imbalance import hold_out_per_class

if TYPE_CHECKING:
    from longtail.config import DataConfig


def prepare(cfg: DataConfig, seed: int, raw_dir: Path, out_dir: Path) -> None:
    """Manifests (``path``, ``label``) of the pinned lists; a seeded val carve-out if asked for.

    The lists must be disjoint (resolved paths), every label in range and every class trained;
    whether they are the published lists (md5 or histogram, :func:`published_lines`) is logged
    and kept in ``dataset.json``.
    """
    spec = SPECS[cfg.name]
    source = base.read_json(raw_dir / "source.json")
    if source["mode"] == "lists":
        check_val_source(cfg, source["splits"]["val"])
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
