"""Image lists (classifier-balancing format): disjoint splits, labels in range, every class trained,
and whether the lists are the published ones (ImageNet-LT, Places-LT, iNaturalist 2018 line counts).

Real JPEGs and list files are written in the tests; ``inject_imbalance``'s ``prepare`` must refuse
a val list that is really the test list, before any training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import make_image_tree, make_list_files

from longtail.config import DataConfig, ListsConfig
from longtail.data import imagelist

CLASSES = ("cat", "dog", "emu")


def lists(tmp_path: Path, splits: dict, prefix: str = "ImageNet_LT") -> dict[str, Path]:
    return make_list_files(tmp_path / "lists", splits, prefix=prefix)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[str, int]]]]:
    """An image root and disjoint splits: train 3/2/1, val and test one image per class."""
    root = tmp_path / "images"
    paths = make_image_tree(root, CLASSES, per_class=5, size=(8, 8))
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CLASSES):
        splits["train"] += [(p, label) for p in paths[name][: 3 - label]]
        splits["val"].append((paths[name][3], label))
        splits["test"].append((paths[name][4], label))
    return root, splits


def prepare(root: Path, files: dict[str, Path], tmp_path: Path, name: str = "imagenet_lt") -> Path:
    given = {s: str(files[s]) if s in files else None for s in ("train", "val", "test")}
    cfg = DataConfig(name=name, root=str(root), lists=ListsConfig(**given))
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    imagelist.download(cfg, raw)
    imagelist.prepare(cfg, 0, raw, out)
    return out


def test_val_list_that_is_the_test_list_is_refused(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    files = lists(tmp_path, {**splits, "val": splits["test"]})
    with pytest.raises(ValueError) as err:
        prepare(root, files, tmp_path)
    message = str(err.value)
    assert "expected disjoint train, val and test lists" in message
    assert (
        f"the val list {files['val']} and the test list {files['test']} share 3 images" in message
    )
    assert "cat/0004.jpg" in message


def test_overlap_is_found_through_symlinks(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    os.symlink(root / "cat", root / "alias")  # the same files under another folder name
    train = [*splits["train"], ("alias/0004.jpg", 0)]  # = cat/0004.jpg, a test image
    files = lists(tmp_path, {**splits, "train": train})
    with pytest.raises(ValueError, match=r"the train list .* and the test list .* share 1 images"):
        prepare(root, files, tmp_path)


def test_disjoint_lists_pass_and_are_not_the_published_ones(
    tree: tuple, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, splits = tree
    out = prepare(root, lists(tmp_path, splits), tmp_path)
    info = json.loads((out / "dataset.json").read_text())
    published = info["published_lists"]
    assert published["match"] is False
    assert published["lines"]["train"] == {"given": 6, "published": 115_846}
    assert published["lines"]["test"] == {"given": 3, "published": 50_000}
    assert (
        "imagenet_lt: the lists do NOT match the published line counts" in capsys.readouterr().out
    )
    assert info["val_source"] == "list"


@pytest.mark.parametrize(
    ("name", "lines", "classes"),
    [
        ("imagenet_lt", {"train": 115_846, "val": 20_000, "test": 50_000}, 1000),
        ("places_lt", {"train": 62_500, "val": 7_300, "test": 36_500}, 365),
        ("inat2018", {"train": 437_513, "test": 24_426}, 8_142),
    ],
)
def test_published_line_counts(name: str, lines: dict[str, int], classes: int) -> None:
    spec = imagelist.SPECS[name]
    assert (spec.lines, spec.classes) == (lines, classes)
    frames = {s: pd.DataFrame({"label": np.zeros(n, dtype=np.int64)}) for s, n in lines.items()}
    assert imagelist.published_lines(spec, frames)["match"] is True
    frames["train"] = frames["train"].iloc[:-1]
    result = imagelist.published_lines(spec, frames)
    assert result["match"] is False
    assert f"train {lines['train'] - 1:,} (published {lines['train']:,})" in result["summary"]


def test_label_out_of_range_names_its_list(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    test = [*splits["test"][:2], (splits["test"][2][0], 1000)]  # ImageNet-LT has 1000 classes
    files = lists(tmp_path, {**splits, "test": test})
    with pytest.raises(
        ValueError,
        match=rf"{files['test']}: label 1000 of emu/0004.jpg is out of range: expected 0..999",
    ):
        prepare(root, files, tmp_path)


def test_a_class_with_no_training_image_says_where_it_appears(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    train = [row for row in splits["train"] if row[1] != 2]  # emu only in val and test
    files = lists(tmp_path, {**splits, "train": train})
    with pytest.raises(
        ValueError, match=r"classes \[2\] have none \(they appear only in .*_val.txt, .*_test.txt\)"
    ):
        prepare(root, files, tmp_path)


def test_a_class_in_no_list_is_caught(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    relabel = {0: 0, 1: 2, 2: 3}  # class 1 appears in no list
    files = lists(tmp_path, {s: [(p, relabel[c]) for p, c in rows] for s, rows in splits.items()})
    with pytest.raises(ValueError, match=r"classes \[1\] have none \(they appear in no list\)"):
        prepare(root, files, tmp_path)


def test_inat_carve_that_would_empty_a_class_is_refused(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    make_list_files(root, {"train": splits["train"], "val": splits["test"]}, "iNaturalist18")
    cfg = DataConfig(name="inat2018", root=str(root), val_per_class=1)
    raw = tmp_path / "raw"
    imagelist.download(cfg, raw)
    with pytest.raises(
        ValueError, match=r"smallest class has 1 training images; a carve of 1 would leave class 2"
    ):
        imagelist.prepare(cfg, 0, raw, tmp_path / "out")
