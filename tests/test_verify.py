"""The verify pass of image-list datasets on real JPEGs: a corrupt file is found before training.

``data.skip_bad: false`` stops ``inject_imbalance`` with the list of bad files; ``true`` drops them
from train and val and keeps them in test, where they are scored as wrong. Results are cached per
file (size and modification time), so a rerun decodes only what changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from fakes import make_image_tree, make_list_files

from longtail.config import DataConfig, FramesConfig
from longtail.data import base, imagelist, verify

CLASSES = ("cat", "dog", "emu")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """ImageNet-LT lists over real JPEGs: train 4/3/2, val and test one image per class."""
    root = tmp_path / "images"
    paths = make_image_tree(root, CLASSES, per_class=6, size=(16, 16))
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CLASSES):
        splits["train"] += [(p, label) for p in paths[name][: 4 - label]]
        splits["val"].append((paths[name][4], label))
        splits["test"].append((paths[name][5], label))
    make_list_files(root, splits, prefix="ImageNet_LT")
    return root


def corrupt(path: Path) -> None:
    """Truncate a JPEG to half its bytes (a partial download)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def prepare(root: Path, tmp_path: Path, run: str, **kw) -> Path:
    cfg = DataConfig(name="imagenet_lt", root=str(root), workers=0, **kw)
    raw, out = tmp_path / run / "raw", tmp_path / run / "prepared"
    imagelist.download(cfg, raw)
    imagelist.prepare(cfg, 0, raw, out)
    return out


def test_a_corrupt_jpeg_is_found_before_training(root: Path, tmp_path: Path) -> None:
    corrupt(root / "dog" / "0001.jpg")
    with pytest.raises(ValueError) as err:
        prepare(root, tmp_path, "a")
    message = str(err.value)
    assert "data.skip_bad: expected every listed image to decode; 1 do not" in message
    assert "train dog/0001.jpg:" in message
    assert not (tmp_path / "a" / "prepared").exists()


def test_verify_finds_every_kind_of_damage(root: Path) -> None:
    corrupt(root / "cat" / "0000.jpg")
    (root / "cat" / "0001.jpg").write_bytes(b"not a jpeg")
    (root / "cat" / "0002.jpg").unlink()
    paths = [f"cat/{k:04d}.jpg" for k in range(4)]
    bad = verify.verify(root, paths, workers=0)
    assert sorted(bad) == ["cat/0000.jpg", "cat/0001.jpg", "cat/0002.jpg"]
    assert bad["cat/0002.jpg"] == "file not found"
    assert verify.verify(root, paths, workers=2) == bad  # the parallel pass agrees


def test_skip_bad_drops_from_train_and_val_but_scores_test_as_wrong(
    root: Path, tmp_path: Path
) -> None:
    for name in ("cat/0000.jpg", "emu/0004.jpg", "dog/0005.jpg"):  # train, val, test
        corrupt(root / name)
    out = prepare(root, tmp_path, "a", skip_bad=True)
    train, val, test = (pd.read_csv(out / f"{s}.csv") for s in ("train", "val", "test"))
    assert "cat/0000.jpg" not in set(train["path"]) and len(train) == 8
    assert list(train["index"]) == list(range(8))
    assert "emu/0004.jpg" not in set(val["path"]) and len(val) == 2
    assert "dog/0005.jpg" in set(test["path"]) and len(test) == 3  # listed, never dropped
    counts = json.loads((out / "class_counts.json").read_text())
    assert counts["train"] == [3, 3, 2] and counts["test"] == [1, 1, 1]
    info = json.loads((out / "dataset.json").read_text())
    assert info["bad_images"] == {"train": 1, "val": 1, "test": 1}
    bad = json.loads((out / imagelist.BAD_IMAGES).read_text())
    assert list(bad["test"]) == ["dog/0005.jpg"]
    ctx = base.SourceContext(
        DataConfig(name="imagenet_lt", workers=0),
        FramesConfig(),
        out,
        out,
        out / "frames",
        torch.device("cpu"),
    )
    source = imagelist.open_split(ctx, "test")
    assert len(source) == 2 and source.unscored_labels.tolist() == [1]
    batches = list(source.batches(torch.arange(2), 2, train=False, generator=torch.Generator()))
    assert batches[0][1].tolist() == [0, 2]  # the bad image is not decoded at evaluation
    assert not hasattr(imagelist.open_split(ctx, "train"), "unscored_labels")


def test_the_verify_result_is_cached(
    root: Path, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    real = verify.decode_error

    def counting(path: str) -> str | None:
        decoded.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(verify, "decode_error", counting)
    prepare(root, tmp_path, "a")
    assert len(decoded) == 15  # every listed image once
    assert verify.cache_file(root).is_file() and verify.cache_file(root).parent.parent == cache
    decoded.clear()
    prepare(root, tmp_path, "b", seed=1)
    assert decoded == []
    corrupt(root / "emu" / "0000.jpg")  # a changed file is decoded again, and now fails
    with pytest.raises(ValueError, match=r"train emu/0000.jpg"):
        prepare(root, tmp_path, "c")
    assert decoded == ["0000.jpg"]
