"""digits-LT: hold-outs first, then the exponential profile, all seeded."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longtail.config import DataConfig
from longtail.data import digits
from longtail.data.base import class_counts
from longtail.data.imbalance import exp_counts, step_counts


def build(tmp_path: Path, seed: int = 0, **data) -> Path:
    cfg = DataConfig(**data)
    raw, out = tmp_path / "raw", tmp_path / f"prepared{seed}"
    if not raw.exists():
        digits.download(cfg, raw)
    digits.prepare(cfg, seed, raw, out)
    return out


def test_exp_formula_by_hand() -> None:
    assert exp_counts(100, 3, 100) == [100, 10, 1]
    assert exp_counts(500, 100, 100)[-1] == 5
    assert step_counts(100, 4, 10) == [100, 100, 10, 10]


@pytest.mark.parametrize("imbalance", [1, 10, 50])
def test_train_counts_equal_the_formula(tmp_path: Path, imbalance: float) -> None:
    out = build(tmp_path, imbalance=imbalance)
    counts = class_counts(out, "train")
    n_max = 174 - digits.TEST_PER_CLASS - digits.VAL_PER_CLASS  # smallest class has 174 images
    assert counts == exp_counts(n_max, 10, imbalance)
    if imbalance == 1:
        assert len(set(counts)) == 1


def test_step_profile(tmp_path: Path) -> None:
    counts = class_counts(build(tmp_path, imbalance=10, profile="step", n_max=100), "train")
    assert counts == [100] * 5 + [10] * 5


def test_val_and_test_balanced_and_disjoint(tmp_path: Path) -> None:
    out = build(tmp_path)
    frames = {s: pd.read_csv(out / f"{s}.csv") for s in ("train", "val", "test")}
    assert class_counts(out, "test") == [digits.TEST_PER_CLASS] * 10
    assert class_counts(out, "val") == [digits.VAL_PER_CLASS] * 10
    ids = {s: set(f["source_index"]) for s, f in frames.items()}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    images = np.load(out / "train_images.npy")
    assert images.shape == (len(frames["train"]), 1, 8, 8) and images.dtype == np.uint8


def test_seeded(tmp_path: Path) -> None:
    a = pd.read_csv(build(tmp_path, seed=0) / "train.csv")
    b = pd.read_csv(build(tmp_path, seed=0) / "train.csv")
    c = pd.read_csv(build(tmp_path, seed=1) / "train.csv")
    assert a.equals(b)
    assert not a["source_index"].equals(c["source_index"])


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"checksum mismatch.*data\.md5"):
        digits.download(DataConfig(md5="0" * 32), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
