"""Generated OLTR-style splits from a balanced image folder: seeded class order, per-family
defaults, a separate test folder (as ImageNet-LT tests on ImageNet's val set), logged totals.

Real JPEGs are written in the tests; the split is drawn by ``download`` with ``data.seed``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import make_image_tree

from longtail.config import DataConfig, FramesConfig
from longtail.data import base, imagelist

CLASSES = tuple(f"n{c:02d}" for c in range(8))


def generate(tmp_path: Path, run: str, **kw) -> tuple[Path, dict]:
    root = tmp_path / "train"
    if not root.exists():
        make_image_tree(root, CLASSES, per_class=12, size=(8, 8))
    cfg = DataConfig(name="imagenet_lt", root=str(root), n_max=9, n_min=1, val_per_class=1, **kw)
    raw = tmp_path / run
    imagelist.download(cfg, raw)
    rows = {s: imagelist.parse_list(raw / f"{s}.txt") for s in ("train", "val", "test")}
    return raw, rows


def train_counts(rows: dict) -> list[int]:
    return np.bincount([label for _, label in rows["train"]], minlength=len(CLASSES)).tolist()


def test_class_order_is_seeded_and_not_monotone(tmp_path: Path) -> None:
    _, rows = generate(tmp_path, "a", test_per_class=2)
    counts = train_counts(rows)
    ranked = sorted(counts, reverse=True)
    assert ranked[0] == 9 and ranked[-1] == 1
    assert counts != ranked and counts != ranked[::-1]  # not in folder order, either way
    assert not all(a >= b for a, b in itertools.pairwise(counts))
    _, same = generate(tmp_path, "b", test_per_class=2)
    _, other = generate(tmp_path, "c", test_per_class=2, seed=1)
    assert train_counts(same) == counts
    assert train_counts(other) != counts


def test_assign_counts_is_a_seeded_permutation() -> None:
    ranked = list(range(50, 0, -1))
    order = imagelist.assign_counts(ranked, 0)
    assert sorted(order, reverse=True) == ranked
    assert order == imagelist.assign_counts(ranked, 0) != imagelist.assign_counts(ranked, 1)


def test_per_family_defaults() -> None:
    assert imagelist.SPECS["imagenet_lt"].generated == (1280, 5, 20, 50)
    assert imagelist.SPECS["places_lt"].generated == (4980, 5, 20, 100)
    ranked = imagelist.pareto_counts(365, alpha=6, n_max=4980, n_min=5, seed=0)
    assert (ranked[0], ranked[-1]) == (4980, 5)


def test_places_defaults_reach_the_generated_protocol(tmp_path: Path) -> None:
    root = tmp_path / "places"
    make_image_tree(root, ("a", "b"), per_class=3, size=(8, 8))
    with pytest.raises(ValueError, match=r"needs 100 test .* \+ 20 val .* \+ 4980 train"):
        imagelist.download(DataConfig(name="places_lt", root=str(root)), tmp_path / "raw")


def test_test_set_from_a_separate_folder(tmp_path: Path) -> None:
    val_folder = tmp_path / "val"
    make_image_tree(val_folder, CLASSES, per_class=3, size=(8, 8), seed=1)
    raw, rows = generate(tmp_path, "a", test_root=str(val_folder))
    assert len(rows["test"]) == 3 * len(CLASSES)  # the whole folder: test_per_class null
    assert all(p.startswith(f"{CLASSES[label]}/") for p, label in rows["test"])
    assert all((val_folder / p).is_file() for p, _ in rows["test"])
    train_and_val = {p for s in ("train", "val") for p, _ in rows[s]}
    assert len(rows["train"]) + len(rows["val"]) == len(train_and_val)
    source = json.loads((raw / "source.json").read_text())
    assert source["protocol"]["test_root"] == str(val_folder)
    assert source["roots"] == {"test": str(val_folder)}
    _, two = generate(tmp_path, "b", test_root=str(val_folder), test_per_class=2)
    assert np.bincount([c for _, c in two["test"]]).tolist() == [2] * len(CLASSES)
    prepared = tmp_path / "prep"
    imagelist.prepare(
        DataConfig(name="imagenet_lt", root=str(tmp_path / "train")), 0, raw, prepared
    )
    ctx = base.SourceContext(
        DataConfig(name="imagenet_lt", workers=0),
        FramesConfig(),
        raw,
        prepared,
        prepared / "frames",
        torch.device("cpu"),
    )
    test = imagelist.open_split(ctx, "test")  # reads the test images from data.test_root
    assert Path(test.root) == val_folder and len(test) == 3 * len(CLASSES)
    x, _ = next(test.batches(torch.arange(2), 2, train=False, generator=torch.Generator()))
    assert x.shape[:2] == (2, 3)


def test_test_folder_with_other_classes_is_refused(tmp_path: Path) -> None:
    val_folder = tmp_path / "val"
    make_image_tree(val_folder, CLASSES[:-1], per_class=3, size=(8, 8))
    with pytest.raises(ValueError, match=r"data.test_root: expected the class folders .*n07"):
        generate(tmp_path, "a", test_root=str(val_folder))


def test_totals_and_shots_are_logged(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, rows = generate(tmp_path, "a", test_per_class=2)
    out = capsys.readouterr().out
    total = len(rows["train"])
    assert (
        f"train {total:,} images (9 to 1 per class; 0 many / 0 medium / 8 few-shot classes)" in out
    )
    assert f"val {len(CLASSES)}, test {2 * len(CLASSES)}" in out
    splits = {"train": [("x", 0)] * 150 + [("y", 1)] * 50 + [("z", 2)] * 5, "val": [], "test": []}
    assert "1 many / 1 medium / 1 few-shot" in imagelist.split_summary(splits)
