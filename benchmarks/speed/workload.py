"""What both paths train: ResNet-32 with CE on CIFAR-100-LT (IF 100), LDAM-DRW's CIFAR schedule.

The data is the CIFAR-100 python archive prepared by the project's own ``cifar100`` download and
prepare (:func:`from_archive`), or random uint8 images with the CIFAR-100-LT class counts
(:func:`synthetic`): speed does not depend on pixel content, so random pixels time the same work.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from longtail import nets
from longtail.config import DataConfig, OptimConfig
from longtail.data import base, cifar
from longtail.data.imbalance import profile_counts

NUM_CLASSES = 100
IMBALANCE = 100.0  # the default of --imbalance, the setting the papers report most
N_MAX = 500  # CIFAR-100 head class
PROJECTED_EPOCHS = 200  # the CIFAR-LT schedule of LDAM-DRW, BALMS and CDB-CE
TEST_PER_CLASS = 100  # the published CIFAR-100 test set: 10,000 images


def recipe(epochs: int, batch_size: int) -> OptimConfig:
    """LDAM-DRW's CIFAR schedule: SGD 0.1, momentum 0.9, wd 2e-4, warmup 5, x0.01 at 160 and 180.

    The schedule does not change the speed; it is here so that the timed run is a real recipe.
    """
    return OptimConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=0.1,
        momentum=0.9,
        weight_decay=2e-4,
        schedule="step",
        milestones=(160, 180),
        lr_decay=0.01,
        warmup_epochs=5,
    )


def progress(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result tables."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class CifarLT:
    """Images (N, 3, 32, 32) uint8 with (N,) int64 labels, and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    origin: str

    def train_counts(self) -> list[int]:
        return np.bincount(self.train_labels, minlength=NUM_CLASSES).tolist()


def lt_labels(imbalance: float = IMBALANCE) -> np.ndarray:
    """Labels with the CIFAR-100-LT counts (IF 100: 10,847 labels, 500 of class 0 down to 5)."""
    counts = profile_counts("exp", N_MAX, NUM_CLASSES, imbalance)
    return np.repeat(np.arange(NUM_CLASSES), counts)


def synthetic(
    train_images: int | None, test_images: int, seed: int, imbalance: float = IMBALANCE
) -> CifarLT:
    """Random pixels with the CIFAR-100-LT labels (``train_images`` evenly thinned)."""
    labels = lt_labels(imbalance)
    if train_images is not None:
        if not 1 <= train_images <= len(labels):
            raise ValueError(f"--train-images: expected 1..{len(labels)}, got {train_images}")
        keep = np.linspace(0, len(labels) - 1, train_images).round().astype(np.int64)
        labels = labels[keep]  # same head-to-tail shape, fewer images
    rng = np.random.default_rng(seed)
    pixels = (len(labels), 3, 32, 32)
    test_labels = np.arange(test_images) % NUM_CLASSES
    origin = (
        f"synthetic: {len(labels):,} random uint8 images 3×32×32 with CIFAR-100-LT IF "
        f"{imbalance:g} class "
        f"counts, {test_images:,} test images; speed does not depend on pixel content"
    )
    return CifarLT(
        rng.integers(0, 256, pixels, dtype=np.uint8),
        labels,
        rng.integers(0, 256, (test_images, 3, 32, 32), dtype=np.uint8),
        test_labels,
        origin,
    )


def from_archive(
    archive: Path, md5: str | None, seed: int, imbalance: float = IMBALANCE
) -> CifarLT:
    """CIFAR-100-LT through the project's own ``cifar100`` download and prepare."""
    cfg = DataConfig(name="cifar100", archive=str(archive), md5=md5, imbalance=imbalance)
    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "raw", Path(tmp) / "prepared"
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the tables
            cifar.download(cfg, raw)
            cifar.prepare(cfg, seed, raw, prepared)
        images = {s: np.load(prepared / f"{s}_images.npy") for s in ("train", "test")}
        labels = {s: base.read_manifest(prepared, s)["label"].to_numpy() for s in images}
    origin = (
        f"{archive} (CIFAR-100 python archive) prepared as CIFAR-100-LT IF {imbalance:g}, "
        f"seed {seed}: "
        f"{len(labels['train']):,} train / {len(labels['test']):,} test images"
    )
    return CifarLT(images["train"], labels["train"], images["test"], labels["test"], origin)


def seeded_resnet32(seed: int, num_classes: int = NUM_CLASSES, in_channels: int = 3) -> nn.Module:
    """ResNet-32 initialised from ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nets.create("resnet32", num_classes, in_channels=in_channels)
