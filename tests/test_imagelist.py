"""Tests of the image-list families (ImageNet-LT, Places-LT, iNaturalist 2018) on tiny JPEG trees.

List files in classifier-balancing's format point into a folder of real JPEGs; the tests run
download (checks) -> prepare -> open and pull batches on the CPU, and check the Pareto split
generator on a balanced folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fakes import make_image_tree, make_list_files
from torchvision.io import decode_image

from longtail.config import DataConfig, FramesConfig, ListsConfig
from longtail.data import base, imagelist
from longtail.data.augment import normalize, use_color_jitter

CLASSES = ("cat", "dog", "emu")
SIZE = 32


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[str, int]]]]:
    """An image root with ImageNet-LT list files: train 3/2/1 images, val and test 1 per class."""
    root = tmp_path / "images"
    paths = make_image_tree(root, CLASSES, per_class=5, size=(40, 48))
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CLASSES):
        files = paths[name]
        splits["train"] += [(p, label) for p in files[: 3 - label]]
        splits["val"].append((files[3], label))
        splits["test"].append((files[4], label))
    make_list_files(root, splits, prefix="ImageNet_LT")
    return root, splits


def context(prepared: Path, workers: int = 0) -> base.SourceContext:
    return base.SourceContext(
        data=DataConfig(name="imagenet_lt", workers=workers),
        frames=FramesConfig(),
        raw_dir=prepared,
        prepared_dir=prepared,
        frames_dir=prepared / "frames",
        device=torch.device("cpu"),
    )


def download_and_prepare(cfg: DataConfig, tmp_path: Path, seed: int = 0) -> Path:
    raw, prepared = tmp_path / "raw" / cfg.name, tmp_path / "prepared"
    imagelist.download(cfg, raw)
    imagelist.prepare(cfg, seed, raw, prepared)
    return prepared


# ------------------------------------------------------------------------------------------ lists
def test_download_pins_the_list_files(tree: tuple, tmp_path: Path) -> None:
    root, _ = tree
    raw = tmp_path / "raw" / "imagenet_lt"
    imagelist.download(DataConfig(name="imagenet_lt", root=str(root)), raw)
    assert sorted(p.name for p in raw.iterdir()) == [
        "source.json",
        "test.txt",
        "train.txt",
        "val.txt",
    ]
    source = json.loads((raw / "source.json").read_text())
    assert source["mode"] == "lists" and source["root"] == str(root)
    original = root / "ImageNet_LT_train.txt"
    assert (raw / "train.txt").read_bytes() == original.read_bytes()
    assert source["lists"]["train"]["file"] == str(original)
    assert source["lists"]["train"]["md5"] == hashlib.md5(original.read_bytes()).hexdigest()


def test_prepare_writes_manifests(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    prepared = download_and_prepare(
        DataConfig(name="imagenet_lt", root=str(root), image_size=SIZE), tmp_path
    )
    for split, rows in splits.items():
        frame = pd.read_csv(prepared / f"{split}.csv")
        assert list(zip(frame["path"], frame["label"], strict=True)) == rows
    counts = json.loads((prepared / "class_counts.json").read_text())
    assert counts["train"] == [3, 2, 1] and counts["names"] == list(CLASSES)
    info = json.loads((prepared / "dataset.json").read_text())
    assert info["kind"] == "image" and info["in_channels"] == 3 and info["image_size"] == SIZE
    assert info["root"] == str(root) and info["has_val"] is True
    assert info["mean"] == list(imagelist.IMAGENET_MEAN)


def test_open_gives_train_and_test_batches(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    prepared = download_and_prepare(
        DataConfig(name="imagenet_lt", root=str(root), image_size=SIZE), tmp_path
    )
    family = base.get("imagenet_lt")
    train = family.open(context(prepared), "train")
    assert len(train) == 6 and train.in_channels == 3
    order = torch.tensor([5, 0, 3, 1, 4, 2])
    batches = list(train.batches(order, 4, train=True, generator=torch.Generator().manual_seed(0)))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)]
    assert batches[0][0].dtype == torch.float32
    labels = torch.tensor([label for _, label in splits["train"]])
    assert torch.equal(torch.cat([y for _, y in batches]), labels[order])

    test = family.open(context(prepared), "test")
    x, y = next(test.batches(torch.arange(3), 8, train=False, generator=torch.Generator()))
    assert torch.equal(y, torch.tensor([0, 1, 2]))
    # Evaluation: Resize(32 * 256 / 224 = 36) of the 40x48 image to 36x43, then CenterCrop(32)
    # at torchvision's offsets round((36 - 32) / 2) = 2 and round((43 - 32) / 2) = 6.
    image = decode_image(str(root / splits["test"][1][0]))
    resized = torch.nn.functional.interpolate(
        image[None].float(), size=(36, 43), mode="bilinear", antialias=True, align_corners=False
    )
    top, left = 2, 6
    expected = resized.round().clamp(0, 255).to(torch.uint8)[..., top : top + 32, left : left + 32]
    want = normalize(expected, imagelist.IMAGENET_MEAN, imagelist.IMAGENET_STD)
    torch.testing.assert_close(x[1:2], want, atol=2 / 255 / 0.224, rtol=0)


def test_augmentation_follows_the_generator_not_the_workers(tree: tuple, tmp_path: Path) -> None:
    root, _ = tree
    prepared = download_and_prepare(
        DataConfig(name="imagenet_lt", root=str(root), image_size=SIZE), tmp_path
    )

    def epoch(seed: int, workers: int) -> torch.Tensor:
        source = base.get("imagenet_lt").open(context(prepared, workers), "train")
        gen = torch.Generator().manual_seed(seed)
        return torch.cat(
            [x for x, _ in source.batches(torch.arange(6), 4, train=True, generator=gen)]
        )

    first = epoch(0, 0)
    assert torch.equal(first, epoch(0, 2))
    assert not torch.equal(first, epoch(1, 0))


def test_color_jitter_policy(tree: tuple, tmp_path: Path) -> None:
    """ImageNet-LT jitters colour by default; ``color_jitter: 0`` (FBL) is the pipeline without
    the jitter step, draw for draw; a strength changes the colour statistics of the batches."""
    root, _ = tree
    prepared = download_and_prepare(
        DataConfig(name="imagenet_lt", root=str(root), image_size=SIZE), tmp_path
    )
    assert json.loads((prepared / "dataset.json").read_text())["color_jitter"] == 0.4

    def epoch(strength: float | None) -> torch.Tensor:
        source = base.get("imagenet_lt").open(context(prepared), "train")
        use_color_jitter(source, strength, "pretrain.color_jitter")
        gen = torch.Generator().manual_seed(0)
        return torch.cat(
            [x for x, _ in source.batches(torch.arange(6), 6, train=True, generator=gen)]
        )

    # the same epoch without jitter: crop and flip only, with the generator's same draws (one
    # augmentation seed per position, as FileSource.batches draws them)
    source = base.get("imagenet_lt").open(context(prepared), "train")
    seeds = torch.randint(0, 2**62, (6,), generator=torch.Generator().manual_seed(0)).tolist()
    plain = torch.stack(
        [
            imagelist.train_transform(
                decode_image(str(root / p)), SIZE, 0.0, torch.Generator().manual_seed(seed)
            )
            for p, seed in zip(source.paths, seeds, strict=True)
        ]
    )
    plain = normalize(plain, imagelist.IMAGENET_MEAN, imagelist.IMAGENET_STD)
    off, default, weak = epoch(0), epoch(None), epoch(0.4)
    assert torch.equal(off, plain)
    assert torch.equal(default, weak)  # null: the family's 0.4
    per_image = (0, 2, 3)  # the colour statistics: per-image, per-channel means and spreads
    assert not torch.allclose(default.mean(per_image), off.mean(per_image), atol=1e-3)
    assert not torch.allclose(default.std(per_image), off.std(per_image), atol=1e-3)


def test_color_jitter_needs_a_jitter_step() -> None:
    from longtail.data.base import TensorSource

    source = TensorSource(
        torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
        torch.tensor([0, 1]),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        padding=1,
        flip=True,
        device=torch.device("cpu"),
    )
    use_color_jitter(source, None, "finetune.color_jitter")  # the family's: nothing to change
    use_color_jitter(source, 0.0, "finetune.color_jitter")  # none: what it does already
    with pytest.raises(ValueError, match=r"finetune\.color_jitter: expected null or 0 for "):
        use_color_jitter(source, 0.4, "finetune.color_jitter")


def test_missing_image_is_reported(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    (root / splits["train"][1][0]).unlink()
    raw = tmp_path / "raw" / "imagenet_lt"
    with pytest.raises(FileNotFoundError, match=r"1 of 6 images listed in .*ImageNet_LT_train.txt"):
        imagelist.download(DataConfig(name="imagenet_lt", root=str(root)), raw)
    assert not (tmp_path / "raw").exists()


def test_missing_root_and_list_files_name_the_key(tree: tuple, tmp_path: Path) -> None:
    root, _ = tree
    raw = tmp_path / "raw" / "x"
    with pytest.raises(ValueError, match=r"data\.root: expected the folder .*got null"):
        imagelist.download(DataConfig(name="imagenet_lt"), raw)
    with pytest.raises(FileNotFoundError, match=r"data\.root: .*no such folder"):
        imagelist.download(DataConfig(name="imagenet_lt", root=str(tmp_path / "nope")), raw)
    lists = ListsConfig(val=str(tmp_path / "missing_val.txt"))
    with pytest.raises(FileNotFoundError, match=r"data\.lists\.val: no such file .*missing_val"):
        imagelist.download(DataConfig(name="imagenet_lt", root=str(root), lists=lists), raw)
    (root / "ImageNet_LT_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"data\.lists\.test: .*ImageNet_LT_test.txt"):
        imagelist.download(DataConfig(name="imagenet_lt", root=str(root)), raw)


def test_explicit_list_paths(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    files = make_list_files(tmp_path / "lists", splits, prefix="Places_LT")
    lists = ListsConfig(**{s: str(f) for s, f in files.items()})
    prepared = download_and_prepare(
        DataConfig(name="places_lt", root=str(root), lists=lists), tmp_path
    )
    assert len(pd.read_csv(prepared / "test.csv")) == 3
    assert json.loads((prepared / "dataset.json").read_text())["image_size"] == 224


def test_bad_list_line(tree: tuple, tmp_path: Path) -> None:
    root, _ = tree
    with open(root / "ImageNet_LT_val.txt", "a") as f:
        f.write("no_label_here.jpg\n")
    with pytest.raises(ValueError, match=r"ImageNet_LT_val.txt:4: expected 'relative/path.jpg"):
        imagelist.download(DataConfig(name="imagenet_lt", root=str(root)), tmp_path / "raw")


def test_val_per_class_with_a_val_list_is_refused(tree: tuple, tmp_path: Path) -> None:
    root, _ = tree
    cfg = DataConfig(name="imagenet_lt", root=str(root), val_per_class=1)
    with pytest.raises(ValueError, match=r"data\.val_per_class: .*ImageNet_LT_val.txt"):
        imagelist.download(cfg, tmp_path / "raw")


def inat_tree(tree: tuple) -> Path:
    """iNaturalist's layout: a train list (3 per class) and the official val list, used as test."""
    root, splits = tree
    train = [(f"{name}/{k:04d}.jpg", label) for label, name in enumerate(CLASSES) for k in range(3)]
    make_list_files(root, {"train": train, "val": splits["test"]}, "iNaturalist18")
    return root


def test_inat_uses_official_val_as_test_and_has_no_val(tree: tuple, tmp_path: Path) -> None:
    root = inat_tree(tree)
    prepared = download_and_prepare(DataConfig(name="inat2018", root=str(root)), tmp_path)
    assert len(pd.read_csv(prepared / "val.csv")) == 0
    assert pd.read_csv(prepared / "test.csv")["path"].tolist() == [p for p, _ in tree[1]["test"]]
    info = json.loads((prepared / "dataset.json").read_text())
    assert info["has_val"] is False and info["mean"] == list(imagelist.INAT_MEAN)
    assert info["color_jitter"] == 0.0
    source = base.get("inat2018").open(context(prepared), "val")
    batches = source.batches(torch.arange(0), 4, train=False, generator=torch.Generator())
    assert len(source) == 0 and list(batches) == []


def test_inat_val_carved_off_train_is_balanced_disjoint_seeded(tree: tuple, tmp_path: Path) -> None:
    root = inat_tree(tree)
    cfg = DataConfig(name="inat2018", root=str(root), val_per_class=1)
    vals = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        prepared = download_and_prepare(cfg, tmp_path / run, seed)
        train, val = (pd.read_csv(prepared / f"{s}.csv") for s in ("train", "val"))
        counts = json.loads((prepared / "class_counts.json").read_text())
        assert counts["val"] == [1, 1, 1] and counts["train"] == [2, 2, 2]
        assert not set(train["path"]) & set(val["path"])
        assert sorted([*train["source_index"], *val["source_index"]]) == list(range(9))
        vals.append(val["path"].tolist())
    assert vals[0] == vals[1] and vals[0] != vals[2]
    with pytest.raises(ValueError, match=r"data\.val_per_class: the smallest class has 3"):
        imagelist.prepare(
            cfg.__class__(name="inat2018", root=str(root), val_per_class=3),
            0,
            tmp_path / "a" / "raw" / "inat2018",
            tmp_path / "bad",
        )


def test_class_names_from_paths() -> None:
    frame = pd.DataFrame(
        {"path": ["train/n01/a.JPEG", "train/n02/b.JPEG", "train/n01/c.JPEG"], "label": [0, 1, 0]}
    )
    assert imagelist.class_names(frame, 2) == ["n01", "n02"]
    frame["path"] = ["a.jpg", "b.jpg", "c.jpg"]
    assert imagelist.class_names(frame, 2) == ["0", "1"]


def test_corrupt_image_names_the_file(tree: tuple, tmp_path: Path) -> None:
    root, splits = tree
    prepared = download_and_prepare(DataConfig(name="imagenet_lt", root=str(root)), tmp_path)
    (root / splits["test"][0][0]).write_bytes(b"not a jpeg")
    source = base.get("imagenet_lt").open(context(prepared), "test")
    with pytest.raises(ValueError, match=r"cat/0004.jpg: cannot read or decode"):
        next(source.batches(torch.arange(3), 3, train=False, generator=torch.Generator()))


def test_families_registered() -> None:
    arches = {
        name: base.get(name).default_arch for name in ("imagenet_lt", "places_lt", "inat2018")
    }
    assert arches == {"imagenet_lt": "resnet10", "places_lt": "resnet152", "inat2018": "resnet50"}


# ------------------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("shape", [(40, 48), (300, 20), (20, 300)])
def test_resized_crop_box_is_torchvisions(shape: tuple[int, int]) -> None:
    """The box of RandomResizedCrop.get_params for the same seed, fallback cases included."""
    from torchvision.transforms import RandomResizedCrop

    image = torch.zeros(3, *shape)
    for seed in range(50):
        with torch.random.fork_rng():  # the global RNG is restored afterwards
            torch.manual_seed(seed)
            expected = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        assert imagelist.resized_crop_box(*shape, torch.Generator().manual_seed(seed)) == expected


@pytest.mark.parametrize("jitter", [0.0, 0.4, 0.2, 1.5])
def test_train_transform_is_torchvisions(jitter: float) -> None:
    """Same seed, same output as torchvision's v2 transforms drawing from the global RNG."""
    from torchvision.transforms import v2

    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    reference = v2.Compose(
        [v2.RandomResizedCrop(24), v2.RandomHorizontalFlip()]
        + ([v2.ColorJitter(jitter, jitter, jitter, 0)] if jitter else [])
    )
    for seed in range(20):
        with torch.random.fork_rng():  # the global RNG is restored afterwards
            torch.manual_seed(seed)
            expected = reference(image)
        got = imagelist.train_transform(image, 24, jitter, torch.Generator().manual_seed(seed))
        assert torch.equal(got, expected)


def test_resized_crop_box_falls_back_to_a_centre_crop() -> None:
    # A 1x100 strip: no box of ratio 3/4..4/3 fits, so the centre crop of ratio 4/3 (1x1).
    assert imagelist.resized_crop_box(1, 100, torch.Generator().manual_seed(0)) == (0, 49, 1, 1)


def test_train_transform_shape() -> None:
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    out = imagelist.train_transform(image, 24, 0.4, torch.Generator().manual_seed(0))
    assert out.shape == (3, 24, 24) and out.dtype == torch.uint8


# --------------------------------------------------------------------------------- pareto split
def test_pareto_counts() -> None:
    counts = imagelist.pareto_counts(50, alpha=6, n_max=1280, n_min=5, seed=0)
    assert counts == imagelist.pareto_counts(50, alpha=6, n_max=1280, n_min=5, seed=0)
    assert counts != imagelist.pareto_counts(50, alpha=6, n_max=1280, n_min=5, seed=1)
    assert len(counts) == 50 and counts[0] == 1280 and counts[-1] == 5
    assert counts[0] / counts[-1] == 1280 / 5
    assert all(a >= b for a, b in itertools.pairwise(counts))
    assert np.median(counts) < (1280 + 5) / 2  # a long tail: most classes are small


def test_pareto_counts_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError, match=r"data\.n_min, data\.n_max: .*got 10, 5"):
        imagelist.pareto_counts(5, alpha=6, n_max=5, n_min=10, seed=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        imagelist.pareto_counts(1, alpha=6, n_max=5, n_min=1, seed=0)


BALANCED = tuple(f"class_{c}" for c in range(6))


def generated(tmp_path: Path, run: str) -> tuple[Path, Path, DataConfig]:
    root = tmp_path / "balanced"
    if not root.exists():
        make_image_tree(root, BALANCED, per_class=10, size=(8, 8))
    cfg = DataConfig(
        name="imagenet_lt", root=str(root), n_max=7, n_min=1, val_per_class=1, test_per_class=2
    )
    raw = tmp_path / run / "raw"
    imagelist.download(cfg, raw)
    return root, raw, cfg


def test_generated_split_round_trips(tmp_path: Path) -> None:
    _, raw, cfg = generated(tmp_path, "a")
    ranked = imagelist.pareto_counts(6, alpha=6, n_max=7, n_min=1, seed=cfg.seed)
    counts = imagelist.assign_counts(ranked, cfg.seed)
    assert sorted(counts, reverse=True) == ranked
    rows = {s: imagelist.parse_list(raw / f"{s}.txt") for s in ("train", "val", "test")}
    assert np.bincount([label for _, label in rows["train"]]).tolist() == counts
    assert np.bincount([label for _, label in rows["val"]]).tolist() == [1] * 6
    assert np.bincount([label for _, label in rows["test"]]).tolist() == [2] * 6
    paths = [p for split in rows.values() for p, _ in split]
    assert len(paths) == len(set(paths))
    assert all(p.startswith(f"{BALANCED[label]}/") for split in rows.values() for p, label in split)
    _, raw_again, _ = generated(tmp_path, "b")
    for split in rows:
        assert (raw / f"{split}.txt").read_bytes() == (raw_again / f"{split}.txt").read_bytes()
    imagelist.prepare(cfg, 0, raw, tmp_path / "prepared")
    class_counts = json.loads((tmp_path / "prepared" / "class_counts.json").read_text())
    assert class_counts["train"] == counts and class_counts["names"] == list(BALANCED)
    source = json.loads((raw / "source.json").read_text())
    assert source["mode"] == "generated" and source["protocol"]["pareto_alpha"] == 6


def test_generated_split_needs_enough_images(tmp_path: Path) -> None:
    root = tmp_path / "small"
    make_image_tree(root, ("a", "b"), per_class=3, size=(8, 8))
    cfg = DataConfig(name="places_lt", root=str(root), n_max=5, n_min=1)
    with pytest.raises(ValueError, match=r"class 0 \(a\) has 3 images; .*data\.test_per_class"):
        imagelist.download(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_root_with_neither_lists_nor_class_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected the list files .* found neither"):
        imagelist.download(DataConfig(name="imagenet_lt", root=str(tmp_path / "empty")), tmp_path)
