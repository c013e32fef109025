"""What every dataset family provides, the prepared-data layout, and the in-memory source.

A family (``digits``, ``cifar100``, ``imagenet_lt``, ``egtea``, ...) is four functions the stages
call
in order — ``download`` into ``data/raw/<name>``, ``prepare`` the long-tailed manifests into
``data/prepared``, ``extract`` frames into ``data/frames`` (or record that there is nothing to
extract) — plus ``open``, which gives the training loop a :class:`Source` for one split.

Prepared layout (``data/prepared``): ``train.csv``, ``val.csv``, ``test.csv`` (one row per sample, a
``label`` column, 0-based), ``class_counts.json`` (per-class counts of every split and the class
names) and ``dataset.json`` (kind, input channels, normalisation). In-memory families also store one
uint8 array per split, ``<split>_images.npy`` (N, C, H, W), row ``i`` matching CSV row ``i``.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from longtail import io
from longtail.registry import Registry

if TYPE_CHECKING:  # torch is imported where a source is built: the data stages never load it
    import torch

    from longtail.config import DataConfig, FramesConfig

SPLITS = ("train", "val", "test")


class Source(Protocol):
    """One split as the training loop sees it: labels, and batches in a given order."""

    labels: torch.Tensor  # (N,) int64, CPU
    in_channels: int

    def __len__(self) -> int: ...

    def batches(
        self, order: torch.Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` on the training device for consecutive chunks of ``order``.

        ``train`` turns on the training augmentation, drawn from ``generator``. The last chunk may
        be shorter than ``batch_size``.
        """
        ...


@dataclass(frozen=True)
class SourceContext:
    """Everything ``Family.open`` may need: configs, stage directories and the device."""

    data: DataConfig
    frames: FramesConfig
    raw_dir: Path
    prepared_dir: Path
    frames_dir: Path
    device: torch.device


@dataclass(frozen=True)
class FrameDefaults:
    """A video family's published frame settings, used where ``frames.*`` is null.

    ``size``: short side of the extracted frames in px; ``segments``: TSN segments per clip;
    ``store``: how the extracted frames are kept (``longtail.data.clipstore``).
    """

    size: int
    segments: int
    store: str


@dataclass(frozen=True)
class Family:
    """A dataset family: the functions the stages call, and its defaults from the papers."""

    name: str
    kind: Literal["image", "video"]
    default_arch: str
    download: Callable[[DataConfig, Path], None]
    prepare: Callable[[DataConfig, int, Path, Path], None]
    open: Callable[[SourceContext, str], Source]
    extract: Callable[[FramesConfig, Path, Path, Path], None] | None = None
    frames: FrameDefaults | None = None  # video families only


# The built-in families by name, in listing order, and the module that registers each. A family's
# module is imported when that family is asked for, so the data stages of one dataset import only
# its module (the file-based and video families import torch; digits and CIFAR do not).
BUILTIN = {
    "cifar10": "longtail.data.cifar",
    "cifar100": "longtail.data.cifar",
    "digits": "longtail.data.digits",
    "imagenet_lt": "longtail.data.imagelist",
    "places_lt": "longtail.data.imagelist",
    "inat2018": "longtail.data.imagelist",
    "moving_digits": "longtail.data.video",
    "egtea": "longtail.data.video",
}
FAMILIES: Registry[Family] = Registry("data.name", lazy=BUILTIN)


def register(family: Family) -> Family:
    """Add ``family`` to the registry; a duplicate name is refused."""
    return FAMILIES.add(family.name, family)


def names() -> tuple[str, ...]:
    """Registered dataset names (the built-in ones first, without importing their modules)."""
    return FAMILIES.names()


def get(name: str) -> Family:
    """The family called ``name``, or an error listing the valid names."""
    return FAMILIES[name]


def load_builtin() -> None:
    """Import every built-in family module (each registers itself on import)."""
    for module in dict.fromkeys(BUILTIN.values()):
        importlib.import_module(module)


# ----------------------------------------------------------------------------- prepared layout
def write_prepared(
    out_dir: Path,
    manifests: dict[str, pd.DataFrame],
    class_names: Sequence[str],
    info: dict[str, Any],
    images: dict[str, np.ndarray] | None = None,
) -> None:
    """Write the manifests, per-split arrays, ``class_counts.json`` and ``dataset.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes = len(class_names)
    counts = {}
    for split in SPLITS:
        frame = manifests[split]
        with io.atomic_path(out_dir / f"{split}.csv") as tmp:
            frame.to_csv(tmp, index=False)
        counts[split] = np.bincount(frame["label"].to_numpy(), minlength=num_classes).tolist()
        if images is not None:
            assert len(images[split]) == len(frame), split
            io.save_npy(out_dir / f"{split}_images.npy", images[split])
    io.write_json(
        out_dir / "class_counts.json",
        {"num_classes": num_classes, "names": list(class_names), **counts},
    )
    io.write_json(out_dir / "dataset.json", {"num_classes": num_classes, **info})


# Manifest columns that hold paths joined to a data root (image lists, video clips).
PATH_COLUMNS = ("path", "clip")


def read_manifest(prepared_dir: Path, split: str) -> pd.DataFrame:
    """The manifest of ``split``; its paths must stay under their root (``io.relative_path``)."""
    path = prepared_dir / f"{split}.csv"
    frame = pd.read_csv(path)
    for column in PATH_COLUMNS:
        if column in frame:
            for row, value in enumerate(frame[column].astype(str), start=2):
                io.relative_path(value, f"{path}:{row} ({column})")
    return frame


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, with an error naming the stage that writes it when missing."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it (dvc repro)")
    return json.loads(path.read_text())


def class_counts(prepared_dir: Path, split: str = "train") -> list[int]:
    """Per-class sample counts of ``split``."""
    return read_json(prepared_dir / "class_counts.json")[split]


def write_nothing_to_extract(frames_dir: Path, name: str) -> None:
    """The ``extract_frames`` output of an image dataset: a manifest that says why it is empty.

    ``data/frames`` is a persisted output (video extraction resumes into it), so frames left by an
    earlier video dataset are removed first.
    """
    if frames_dir.exists():
        shutil.rmtree(frames_dir)
    frames_dir.mkdir(parents=True)
    io.write_json(
        frames_dir / "manifest.json",
        {
            "dataset": name,
            "kind": "image",
            "clips": 0,
            "frames": 0,
            "note": "image dataset: there are no frames to extract; training reads data/prepared",
        },
    )


# -------------------------------------------------------------------------------- in-memory source
class TensorSource:
    """A split held on the training device as uint8, augmented there in whole batches.

    Args:
        images: (N, C, H, W) uint8.
        labels: (N,) integer labels.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        padding: ``RandomCrop(H, padding)`` of the training augmentation (0: none).
        flip: random horizontal flip in training.
        (``set_policy`` swaps the crop and flip for another policy built around them.)
        device: where the data lives and batches are produced.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        padding: int,
        flip: bool,
        device: torch.device,
    ) -> None:
        import torch

        from longtail.data.augment import CropFlip

        self.images = images.to(device)
        self.labels = labels.to(torch.int64).cpu()
        self._labels_dev = self.labels.to(device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.padding, self.flip = padding, flip
        self.augment = CropFlip(padding=padding, flip=flip)
        self.device = device
        self.in_channels = int(images.shape[1])

    def set_policy(self, name: str) -> None:
        """Train with the augmentation policy ``name`` (``longtail.data.augment.POLICIES``)."""
        from longtail.data.augment import create_policy

        self.augment = create_policy(name, padding=self.padding, flip=self.flip)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: torch.Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from longtail.data.augment import normalize

        order = order.to(self.device)
        augment = train and self.augment.active
        for idx in order.split(batch_size):
            x = self.images[idx]  # (B, C, H, W) uint8
            if augment:
                x = self.augment(x, generator)
            yield normalize(x, self.mean, self.std), self._labels_dev[idx]


def open_arrays(ctx: SourceContext, split: str, *, padding: int, flip: bool) -> TensorSource:
    """A :class:`TensorSource` over ``<split>_images.npy`` and the split's manifest labels."""
    import torch

    info = read_json(ctx.prepared_dir / "dataset.json")
    images = torch.from_numpy(np.load(ctx.prepared_dir / f"{split}_images.npy"))
    labels = torch.tensor(read_manifest(ctx.prepared_dir, split)["label"].to_numpy(np.int64))
    return TensorSource(
        images,
        labels,
        mean=info["mean"],
        std=info["std"],
        padding=padding,
        flip=flip,
        device=ctx.device,
    )
