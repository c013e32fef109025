"""Image lists (classifier-balancing format): disjoint splits, labels in range, every class trained,
and whether the lists are the published ones (ImageNet-LT, Places-LT, iNaturalist 2018: the list
file's md5 where a reference ships the file, else its per-class histogram).

Real JPEGs and list files are written in the tests; ``inject_imbalance``'s ``prepare`` must refuse
a val list that is really the test list, before any training.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from fakes import make_image_tree, make_list_files

from longtail import io
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
    assert published["lists"]["train"] == {
        "checked": "histogram",  # no reference ships ImageNet_LT_train.txt
        "given": [3, 6, 3, 1],
        "published": [1000, 115_846, 1280, 5],
        "match": False,
    }
    assert published["lists"]["test"]["checked"] == "md5"
    assert published["lists"]["test"]["published"] == "5f5f97c738923e877c5c78accce6744f"
    assert "imagenet_lt: the lists are NOT the published ones" in capsys.readouterr().out
    assert info["val_source"] == "list"


@pytest.mark.parametrize(
    ("name", "lines", "classes", "by_md5"),
    [
        ("imagenet_lt", {"train": 115_846, "val": 20_000, "test": 50_000}, 1000, {"val", "test"}),
        (
            "places_lt",
            {"train": 62_500, "val": 7_300, "test": 36_500},
            365,
            {"train", "val", "test"},
        ),
        ("inat2018", {"train": 437_513, "test": 24_426}, 8_142, {"test"}),
    ],
)
def test_published_lists_record(
    name: str, lines: dict[str, int], classes: int, by_md5: set[str]
) -> None:
    """Line counts, class counts, and for every published list an md5 or a histogram summary
    that agrees with them (the md5s: the files classifier-balancing and BALMS ship)."""
    spec = imagelist.SPECS[name]
    assert (spec.lines, spec.classes) == (lines, classes)
    assert set(spec.md5) == by_md5 and set(spec.md5) | set(spec.histogram) == set(lines)
    for split, (n_classes, images, largest, smallest) in spec.histogram.items():
        assert (n_classes, images) == (classes, lines[split]) and largest >= smallest >= 1


def tiny_published(monkeypatch: pytest.MonkeyPatch, files: dict[str, Path]) -> None:
    """Make ``files`` ImageNet-LT's published lists: val and test known by md5, train by its
    histogram, as for the real dataset."""
    spec = imagelist.SPECS["imagenet_lt"]
    rows = {s: imagelist.parse_list(f) for s, f in files.items()}
    labels = np.array([label for _, label in rows["train"]])
    tiny = dataclasses.replace(
        spec,
        classes=3,
        lines={s: len(r) for s, r in rows.items()},
        md5={s: io.md5sum(files[s]) for s in ("val", "test")},
        histogram={"train": imagelist.histogram_summary(labels)},
    )
    monkeypatch.setitem(imagelist.SPECS, "imagenet_lt", tiny)


def test_a_same_length_list_with_a_foreign_line_is_not_published(
    tree: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, splits = tree
    published = lists(tmp_path, splits)
    tiny_published(monkeypatch, published)
    info = json.loads((prepare(root, published, tmp_path / "a") / "dataset.json").read_text())
    assert info["published_lists"]["match"] is True
    assert {s: c["checked"] for s, c in info["published_lists"]["lists"].items()} == {
        "train": "histogram",
        "val": "md5",
        "test": "md5",
    }
    # one test line swapped for another image of the same class: same length, same histogram
    foreign = make_image_tree(root / "more", ("cat",), per_class=1, size=(8, 8), seed=5)
    test = [(f"more/{foreign['cat'][0]}", 0), *splits["test"][1:]]
    changed = make_list_files(tmp_path / "changed", {**splits, "test": test})
    info = json.loads((prepare(root, changed, tmp_path / "b") / "dataset.json").read_text())
    record = info["published_lists"]
    assert record["match"] is False
    assert record["lines"]["test"] == {"given": 3, "published": 3}
    assert record["lists"]["test"]["match"] is False
    assert record["lists"]["test"]["given"] == io.md5sum(changed["test"])


def test_a_train_list_with_another_histogram_is_not_published(
    tree: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, splits = tree
    tiny_published(monkeypatch, lists(tmp_path, splits))
    # same length, one cat image relabelled emu: 2 / 2 / 2 images instead of 3 / 2 / 1
    (path, _), rest = splits["train"][0], splits["train"][1:]
    files = lists(tmp_path / "relabelled", {**splits, "train": [(path, 2), *rest]})
    record = json.loads((prepare(root, files, tmp_path) / "dataset.json").read_text())
    train = record["published_lists"]["lists"]["train"]
    assert train["checked"] == "histogram" and train["match"] is False
    assert (train["given"], train["published"]) == ([3, 6, 2, 2], [3, 6, 3, 1])
    assert record["published_lists"]["match"] is False


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
