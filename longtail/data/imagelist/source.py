"""The training loop's source for an image-list split: files decoded by a DataLoader, per batch.

Each position of the loop's order gets an augmentation seed drawn from the loop's generator, so an
epoch's augmentation depends on that generator only, not on the number of workers; batches are
normalised on the training device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image

from longtail.data import base
from longtail.data.augment import normalize
from longtail.data.imagelist.specs import BAD_IMAGES
from longtail.data.imagelist.transforms import eval_transform, train_transform


class _Files(Dataset):
    """Items are ``(row, seed)``: the image of manifest row ``row``, augmented with ``seed``."""

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        labels: Sequence[int],
        size: int,
        train: bool,
        color_jitter: float,
    ) -> None:
        self.root, self.paths, self.labels = root, paths, labels
        self.size, self.train, self.color_jitter = size, train, color_jitter

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        row, seed = item
        path = self.root / self.paths[row]
        try:
            image = decode_image(str(path), mode=ImageReadMode.RGB)  # (3, H, W) uint8
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{path}: cannot read or decode the image ({err})") from None
        if self.train:
            gen = torch.Generator().manual_seed(seed)
            image = train_transform(image, self.size, self.color_jitter, gen)
        else:
            image = eval_transform(image, self.size)
        return image, self.labels[row]


class FileSource:
    """A split read from image files by a DataLoader, normalised on the training device.

    Args:
        root: the image root the paths are relative to.
        paths: image path of every row of the manifest.
        labels: (N,) labels.
        size: side of the square network input.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        color_jitter: strength s of ColorJitter(s, s, s, 0) in training (0: none); the family's
            default is in ``dataset.json``, ``pretrain.color_jitter`` / ``finetune.color_jitter``
            override it through :meth:`set_color_jitter`.
        workers: DataLoader worker processes (0: decode in this process).
        device: where batches are produced.
    """

    in_channels = 3

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        labels: torch.Tensor,
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        color_jitter: float,
        workers: int,
        device: torch.device,
    ) -> None:
        self.root, self.paths = Path(root), list(paths)
        self.labels = labels.to(torch.int64).cpu()
        self.size, self.color_jitter, self.workers = size, float(color_jitter), workers
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = device

    def set_color_jitter(self, strength: float) -> None:
        """Train with ColorJitter(s, s, s, 0) of strength ``strength`` (0: none)."""
        if not 0 <= strength < float("inf"):
            raise ValueError(f"color_jitter: expected a number >= 0; got {strength!r}")
        self.color_jitter = float(strength)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: torch.Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = order.cpu().tolist()
        if train:  # one augmentation seed per position; a host sync once per epoch on CUDA
            seeds = torch.randint(
                0, 2**62, (len(rows),), generator=generator, device=generator.device
            ).tolist()
        else:
            seeds = [0] * len(rows)
        files = _Files(
            self.root, self.paths, self.labels.tolist(), self.size, train, self.color_jitter
        )
        loader = DataLoader(
            files,
            batch_size=batch_size,
            sampler=list(zip(rows, seeds, strict=True)),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:  # (B, 3, size, size) uint8, (B,) int64
            x = x.to(self.device, non_blocking=True)
            yield normalize(x, self.mean, self.std), y.to(self.device, non_blocking=True)


def open_split(ctx: base.SourceContext, split: str) -> FileSource:
    """A :class:`FileSource` over the split's manifest, as ``dataset.json`` describes it.

    Test images that the verify pass found undecodable are left out of the batches; their labels
    are the source's ``unscored_labels`` (``evaluate`` counts them as wrong).
    """
    info = base.read_json(ctx.prepared_dir / "dataset.json")
    frame = base.read_manifest(ctx.prepared_dir, split)
    bad_file = ctx.prepared_dir / BAD_IMAGES
    bad = base.read_json(bad_file).get(split, {}) if bad_file.exists() else {}
    unscored = frame["path"].isin(bad)
    unscored_labels = torch.tensor(frame["label"][unscored].to_numpy(dtype=np.int64))
    frame = frame[~unscored].reset_index(drop=True)
    source = FileSource(
        Path(info.get("roots", {}).get(split, info["root"])),
        frame["path"].astype(str).tolist(),
        torch.tensor(frame["label"].to_numpy(dtype=np.int64)),  # int64 even when empty
        size=info["image_size"],
        mean=info["mean"],
        std=info["std"],
        color_jitter=info["color_jitter"],
        workers=ctx.data.workers,
        device=ctx.device,
    )
    if split == "test":
        source.unscored_labels = unscored_labels
    return source
