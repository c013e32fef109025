"""digits-LT: the embedded default dataset, built from scikit-learn's bundled UCI optical digits.

1,797 grayscale 8×8 images of 10 classes (Alpaydin & Kaynak, UCI 1998) ship inside scikit-learn, so
the whole pipeline runs with no network. Protocol: per class, a balanced test set and then a
balanced
val set are carved out first (seeded); the exponential or step profile of LDAM-DRW / BALMS / CDB-CE
is then applied to the rest, with ``n_max`` defaulting to the smallest remaining class so that every
class can reach its count. ``data.draws: per_phase``: ``finetune`` and ``meta`` each draw their own
long-tailed subset (same counts, own seed, :mod:`longtail.data.imbalance`) from the images left
after the test and val hold-outs. Pixel values 0..16 are stored as uint8 0..255 (one array per
split).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from longtail import io
from longtail.data import base, imbalance
from longtail.data.imbalance import hold_out_per_class, profile_counts, select_per_class

if TYPE_CHECKING:
    from longtail.config import DataConfig

# md5 of the uint8 image array and labels as scikit-learn 1.9 ships them: a different copy of the
# data (another release that changed the file) is refused rather than silently giving new numbers.
DIGITS_MD5 = "717a258403283d25fecfadab063a2716"
TEST_PER_CLASS = 30
VAL_PER_CLASS = 20
RAW_FILE = "digits.npz"


def _load_sklearn() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``sklearn.datasets.load_digits`` reads them, without importing scikit-learn.

    ``load_digits`` parses the bundled ``sklearn/datasets/data/digits.csv.gz`` (64 pixel columns,
    then the label) with ``np.loadtxt``; importing ``sklearn.datasets`` to do that costs seconds
    of CPU on every run of the stage, so the file is located without importing the package and
    read the same way. :data:`DIGITS_MD5` checks that the content is the one the project expects.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "scikit-learn is not installed: expected its bundled digits (pip install -r "
            "requirements.txt)"
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"expected scikit-learn's bundled digits at {path}; not found")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    pixels = data[:, :-1].reshape(-1, 8, 8)
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return images, data[:, -1].astype(np.int64)


def content_md5(images: np.ndarray, labels: np.ndarray) -> str:
    """md5 of the images' and labels' bytes (independent of the file container)."""
    digest = hashlib.md5(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def download(cfg: DataConfig, raw_dir: Path) -> None:
    """Copy the bundled digits into ``raw_dir/digits.npz`` after checking their content md5."""
    images, labels = _load_sklearn()
    expected = DIGITS_MD5 if cfg.md5 == "auto" else cfg.md5
    actual = content_md5(images, labels)
    if expected is not None and actual != expected:
        raise io.ChecksumError(
            f"checksum mismatch for scikit-learn's bundled digits: expected md5 {expected}, got "
            f"{actual}. Install the pinned scikit-learn (requirements.txt), or set data.md5 to "
            f"{actual} (or null) to accept this copy."
        )
    with io.atomic_dir(raw_dir) as tmp:
        np.savez(tmp / RAW_FILE, images=images, labels=labels)
        io.write_json(
            tmp / "source.json",
            {
                "source": "sklearn/datasets/data/digits.csv.gz (load_digits)",
                "md5": actual,
                "verified": expected is not None,
            },
        )


def prepare(cfg: DataConfig, seed: int, raw_dir: Path, out_dir: Path) -> None:
    """Hold out balanced test and val sets, then inject the imbalance into the rest."""
    with np.load(raw_dir / RAW_FILE) as raw:
        images, labels = raw["images"], raw["labels"]
    rng = np.random.default_rng(seed)
    test_pc = cfg.test_per_class if cfg.test_per_class is not None else TEST_PER_CLASS
    val_pc = cfg.val_per_class if cfg.val_per_class is not None else VAL_PER_CLASS
    test, rest = hold_out_per_class(labels, test_pc, rng)
    val, rest = hold_out_per_class(labels, val_pc, rng, pool=rest)
    num_classes = int(labels.max()) + 1
    available = np.bincount(labels[rest], minlength=num_classes)
    n_max = cfg.n_max if cfg.n_max is not None else int(available.min())
    counts = profile_counts(cfg.profile, n_max, num_classes, cfg.imbalance)
    train = rest[select_per_class(labels[rest], counts, rng)]
    phases = imbalance.phase_draws(
        lambda s: rest[select_per_class(labels[rest], counts, np.random.default_rng(s))],
        seed,
        cfg.draws,
    )
    splits = {"train": train, "val": val, "test": test}
    manifests = {
        s: pd.DataFrame({"index": np.arange(len(idx)), "source_index": idx, "label": labels[idx]})
        for s, idx in splits.items()
    }
    pixels = images[train].astype(np.float64) / 255.0
    info = {
        "kind": "image",
        "in_channels": 1,
        "size": [8, 8],
        "mean": [float(pixels.mean())],
        "std": [float(pixels.std())],
        "data_seed": seed,
        "draws": imbalance.draws_info(cfg.draws, train, phases),
    }
    base.write_prepared(
        out_dir,
        manifests,
        [str(c) for c in range(num_classes)],
        info,
        images={s: images[idx] for s, idx in splits.items()},
    )
    imbalance.write_phase_splits(out_dir, phases, labels, images)


def extract(frames_cfg: object, raw_dir: Path, prepared_dir: Path, frames_dir: Path) -> None:
    """Images need no frame extraction; record that explicitly."""
    base.write_nothing_to_extract(frames_dir, "digits")


def open_split(ctx: base.SourceContext, split: str) -> base.TensorSource:
    """The split on the device; training adds a 1-pixel random crop (no flip: digits are chiral)."""
    return base.open_arrays(ctx, split, padding=1, flip=False)


FAMILY = base.register(
    base.Family(
        name="digits",
        kind="image",
        default_arch="resnet32",
        download=download,
        prepare=prepare,
        extract=extract,
        open=open_split,
    )
)
