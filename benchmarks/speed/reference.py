"""Path (b), a reference-style loop: how LDAM-DRW, BALMS, CDB-CE and FBL train on CIFAR.

A ``torch.utils.data.DataLoader`` (shuffled, ``--workers`` processes, pinned memory on CUDA)
over PIL images with ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor`` and
``Normalize``; fp32, contiguous memory, ``torch.optim.SGD`` with its defaults, CE, and the
per-step ``loss.item()`` and accuracy read-back of their progress meters.
:class:`ReferenceLoaderOnly` times the DataLoader alone: the most path (b) could reach on that
machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn

from benchmarks.speed.workload import CifarLT, seeded_resnet32
from longtail.data import cifar

if TYPE_CHECKING:
    from benchmarks.speed.timing import Chunk


# ----------------------------------------------------------------------------- (b) the reference
class PilCifar(torch.utils.data.Dataset):
    """CIFAR as torchvision's ``datasets.CIFAR100`` serves it: HWC uint8 rows, a PIL image each."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.data = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # (N, H, W, C)
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def reference_transform() -> T.Compose:
    """The CIFAR training transform of LDAM-DRW, BALMS, CDB-CE and FBL."""
    return T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(cifar.MEAN, cifar.STD),
        ]
    )


def reference_loader(
    cifar_lt: CifarLT, args: argparse.Namespace, device: torch.device
) -> torch.utils.data.DataLoader:
    """The reference repositories' CIFAR loader: shuffled, ``--workers`` processes, pinned."""
    dataset = PilCifar(cifar_lt.train_images, cifar_lt.train_labels, reference_transform())
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),
    )


class ReferencePath:
    """Path (b): DataLoader over PIL images, fp32 model, SGD defaults, per-step read-back."""

    def __init__(self, cifar_lt: CifarLT, args: argparse.Namespace, device: torch.device) -> None:
        self.loader = reference_loader(cifar_lt, args, device)
        self.device = device
        self.workers = args.workers
        self.model = seeded_resnet32(args.seed).to(device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4
        )
        self.criterion = nn.CrossEntropyLoss()

    def _epoch(self, max_steps: int | None) -> int:
        """One pass over a fresh loader iterator (workers start per epoch, as in the reference)."""
        self.model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        for step, (x, y) in enumerate(self.loader):
            if max_steps is not None and step == max_steps:
                break
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            logits, _ = self.model(x)
            loss = self.criterion(logits, y)
            correct += int((logits.argmax(1) == y).sum())  # host sync: the accuracy meter
            loss_sum += loss.item() * len(y)  # host sync: the loss meter
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            seen += len(y)
        return seen

    def warm_up(self, steps: int) -> int:
        return self._epoch(steps)

    def run(self, chunk: Chunk) -> int:
        return sum(self._epoch(chunk.steps) for _ in range(chunk.epochs))

    def describe(self) -> str:
        return (
            f"DataLoader ({self.workers} workers) over PIL images, RandomCrop(32, 4) + "
            "RandomHorizontalFlip + ToTensor + Normalize, fp32, SGD defaults, per-step .item()"
        )


class ReferenceLoaderOnly:
    """Path (b)'s DataLoader alone, batches copied to the device: the most (b) could reach."""

    def __init__(self, cifar_lt: CifarLT, args: argparse.Namespace, device: torch.device) -> None:
        self.loader = reference_loader(cifar_lt, args, device)
        self.device = device
        self.workers = args.workers

    def _epoch(self, max_steps: int | None) -> int:
        seen = 0
        for step, (x, _) in enumerate(self.loader):
            if max_steps is not None and step == max_steps:
                break
            seen += len(x.to(self.device, non_blocking=True))
        return seen

    def warm_up(self, steps: int) -> int:
        return self._epoch(steps)

    def run(self, chunk: Chunk) -> int:
        return sum(self._epoch(chunk.steps) for _ in range(chunk.epochs))

    def describe(self) -> str:
        return f"path (b)'s DataLoader ({self.workers} workers) alone, no model: its ceiling"
