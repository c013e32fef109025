"""CIFAR-LT subsets: the exact images of LDAM-DRW / FBL (``ldam``), CDB-CE (``cdb``) and ``random``.

Each reference rule is transcribed here as the original code writes it (kaidic/LDAM-DRW
``imbalance_cifar.py``: ``np.random.seed(rand_number)``, then per class in label order
``np.random.shuffle`` of ``np.where(targets == c)[0]`` and the first n_c; hitachi-rd-cv/CDB-loss
``CIFAR-LT/data/data_preprocessing.py``: ``sep_train_val`` then ``create_imbalance``) and compared,
as sets of ``source_index``, with what ``inject_imbalance`` writes, on tiny archives in the
published layout whose labels are shuffled as in the published files.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import downloaded_cifar

from longtail.config import DataConfig
from longtail.data import cifar, imbalance


@pytest.fixture(scope="module")
def raws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Downloaded CIFAR-10 (60 per class) and CIFAR-100 (12 per class) fakes."""
    return downloaded_cifar(tmp_path_factory.mktemp("subsets"), test_per_class=1)


def published_labels(raw: Path, kind: str) -> np.ndarray:
    """Training labels in file order, read with plain pickle as the references read them."""
    files = (
        [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
        if kind == "cifar10"
        else ["cifar-100-python/train"]
    )
    labels = []
    for file in files:
        with open(raw / file, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        labels += batch[b"labels" if kind == "cifar10" else b"fine_labels"]
    return np.array(labels, dtype=np.int64)


def ldam_reference(labels: np.ndarray, imb_factor: float, rand_number: int) -> set[int]:
    """LDAM-DRW's IMBALANCECIFAR10: the global legacy RNG, shuffled per class, first n_c kept."""
    cls_num = int(labels.max()) + 1
    img_max = int(len(labels) / cls_num)
    img_num = [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
    state = np.random.get_state()
    try:
        np.random.seed(rand_number)
        kept = []
        for the_class, the_img_num in zip(np.unique(labels), img_num, strict=True):
            idx = np.where(labels == the_class)[0]
            np.random.shuffle(idx)
            kept.append(idx[:the_img_num])
    finally:
        np.random.set_state(state)
    return set(np.concatenate(kept).tolist())


def cdb_reference(labels: np.ndarray, imbalance_factor: float, val: int) -> tuple[set, set]:
    """CDB-CE's sep_train_val (last ``val`` per class) then create_imbalance (first n_c)."""
    class_num = int(labels.max()) + 1
    train_idx, val_idx = np.zeros(0), np.zeros(0)
    for cls in range(class_num):
        loc = np.where(labels == cls)[0]
        train_idx = np.concatenate((train_idx, loc[:-val]), 0)
        val_idx = np.concatenate((val_idx, loc[-val:]), 0)
    train_idx, val_idx = train_idx.astype(int), val_idx.astype(int)
    rest = labels[train_idx]
    imb = 1 / imbalance_factor
    per_class = int(rest.size / class_num)
    selected = np.zeros(0)
    for cls in range(class_num):
        loc = np.where(rest == cls)[0]
        selected = np.concatenate(
            (selected, loc[: int(per_class * (imb ** (cls / (class_num - 1))))])
        )
    return set(train_idx[selected.astype(int)].tolist()), set(val_idx.tolist())


def selected(cfg: DataConfig, raw: Path, out: Path) -> tuple[set[int], set[int]]:
    cifar.prepare(cfg, cfg.seed, raw, out)
    return tuple(
        set(pd.read_csv(out / f"{s}.csv")["source_index"].tolist()) for s in ("train", "val")
    )


def test_fake_labels_are_shuffled_like_the_published_files(raws: dict[str, Path]) -> None:
    for kind, raw in raws.items():
        labels = published_labels(raw, kind)
        assert np.any(np.diff(labels) < 0)  # not grouped by class
        assert len(set(np.bincount(labels).tolist())) == 1  # balanced


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
@pytest.mark.parametrize(("imbalance_factor", "seed"), [(10, 0), (10, 3), (5, 0)])
def test_ldam_subset_is_ldam_drw_images(
    raws: dict[str, Path], tmp_path: Path, kind: str, imbalance_factor: int, seed: int
) -> None:
    raw = raws[kind]
    cfg = DataConfig(name=kind, imbalance=imbalance_factor, seed=seed)  # subset: ldam by default
    train, val = selected(cfg, raw, tmp_path)
    reference = ldam_reference(published_labels(raw, kind), 1 / imbalance_factor, seed)
    assert train == reference
    assert val == set()


def test_ldam_subset_differs_from_file_order_and_across_seeds(
    raws: dict[str, Path], tmp_path: Path
) -> None:
    raw = raws["cifar10"]
    labels = published_labels(raw, "cifar10")
    train0, _ = selected(DataConfig(name="cifar10", imbalance=10, seed=0), raw, tmp_path / "a")
    train1, _ = selected(DataConfig(name="cifar10", imbalance=10, seed=1), raw, tmp_path / "b")
    first = cdb_reference(labels, 10, 1)  # file order, one val image: not LDAM-DRW's images
    assert train0 != train1
    assert train0 != first[0]


def test_ldam_subset_with_val_keeps_a_prefix_of_the_shuffled_order(
    raws: dict[str, Path], tmp_path: Path
) -> None:
    raw = raws["cifar100"]
    labels = published_labels(raw, "cifar100")
    train, val = selected(DataConfig(name="cifar100", imbalance=5, val_per_class=2), raw, tmp_path)
    state = np.random.get_state()
    np.random.seed(0)
    orders = []
    for c in range(100):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        orders.append(idx)
    np.random.set_state(state)
    counts = [int(10 * (1 / 5) ** (c / 99)) for c in range(100)]  # n_max = 12 - 2
    assert train == {int(i) for c, o in enumerate(orders) for i in o[: counts[c]]}
    assert val == {int(i) for o in orders for i in o[-2:]}
    assert not train & val


@pytest.mark.parametrize(
    ("kind", "val", "imbalance_factor"), [("cifar100", 2, 10), ("cifar10", 25, 10)]
)
def test_cdb_subset_is_cdb_ce_images(
    raws: dict[str, Path], tmp_path: Path, kind: str, val: int, imbalance_factor: int
) -> None:
    raw = raws[kind]
    cfg = DataConfig(name=kind, imbalance=imbalance_factor, subset="cdb", val_per_class=val)
    train, held = selected(cfg, raw, tmp_path)
    ref_train, ref_val = cdb_reference(published_labels(raw, kind), imbalance_factor, val)
    assert train == ref_train
    assert held == ref_val
    # the seed plays no part in CDB-CE's rule
    again, _ = selected(DataConfig(**{**cfg.__dict__, "seed": 7}), raw, tmp_path / "seed7")
    assert again == train


def test_random_subset_is_the_seeded_choice(raws: dict[str, Path], tmp_path: Path) -> None:
    raw = raws["cifar10"]
    labels = published_labels(raw, "cifar10")
    train, val = selected(
        DataConfig(name="cifar10", imbalance=10, subset="random", seed=4), raw, tmp_path
    )
    rng = np.random.default_rng(4)
    counts = [int(60 * 0.1 ** (c / 9)) for c in range(10)]
    expected = {
        int(i)
        for c, k in enumerate(counts)
        for i in rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
    }
    assert train == expected and val == set()


def test_subset_rules_registry() -> None:
    assert tuple(imbalance.SUBSETS) == ("ldam", "cdb", "random")
    with pytest.raises(ValueError, match=r"data\.subset: expected one of ldam, cdb, random"):
        imbalance.subset("nope", np.zeros(3, dtype=np.int64), [1], 0, 0)
    with pytest.raises(ValueError, match=r"class 0: asked for 3 train \+ 1 val images, only 3"):
        imbalance.subset("ldam", np.zeros(3, dtype=np.int64), [3], 1, 0)


def test_val_per_class_too_large_is_refused(raws: dict[str, Path], tmp_path: Path) -> None:
    cfg = DataConfig(name="cifar100", subset="cdb", val_per_class=12)
    with pytest.raises(ValueError, match=r"data\.val_per_class: expected fewer than the 12"):
        cifar.prepare(cfg, 0, raws["cifar100"], tmp_path)
