"""Path (a), the project's path, as ``longtail.train`` runs it.

A :class:`~longtail.data.base.TensorSource` holds the images on the device as uint8 and crops and
flips them there in whole batches; the :class:`~longtail.train.Trainer` step has no host sync (loss
sums on the device, NaN check once per epoch), and its :class:`~longtail.train.FastPath` switches
(bf16 autocast, channels_last, ``torch.compile``; ``auto``: on for CUDA, off for the CPU) and fused
SGD on CUDA are those of params.yaml's ``train`` section. The objects are the ones
``longtail.loop.trainer_for`` builds for ``pretrain`` with CE.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from benchmarks.speed.workload import (
    NUM_CLASSES,
    PROJECTED_EPOCHS,
    CifarLT,
    progress,
    recipe,
    seeded_resnet32,
)
from longtail import losses, samplers
from longtail.config import TrainConfig
from longtail.data import base, cifar
from longtail.train import Checkpointer, Trainer

if TYPE_CHECKING:
    from benchmarks.speed.timing import Chunk

EXACT_SWITCHES = {"amp": "off", "channels_last": "off", "compile": "off"}


# ------------------------------------------------------------------------------- (a) the project
class PrefixSampler:
    """A sampler whose epochs stop after ``limit`` indices (None: whole epochs).

    ``len()`` stays the full epoch's, so the Trainer's steps per epoch and LR schedule are those of
    the real run; only the timed repeats are shortened.
    """

    def __init__(self, sampler: samplers.Sampler) -> None:
        self.sampler = sampler
        self.limit: int | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "sampler":  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self.sampler, name)  # labels, rank, world_size, set_epoch, state_dict, ...

    def __len__(self) -> int:
        return len(self.sampler)

    def indices(self) -> torch.Tensor:
        order = self.sampler.indices()
        return order if self.limit is None else order[: self.limit]


class TimedCheckpointer(Checkpointer):
    """The pipeline's checkpointer, adding up the seconds its saves take."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, signature="benchmark", log=progress)
        self.seconds = 0.0

    def save(self, state: dict[str, Any]) -> None:
        start = time.perf_counter()
        super().save(state)
        self.seconds += time.perf_counter() - start


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        eval_batch_size=args.eval_batch_size,
        log_every_epochs=max(args.full_run_epochs, 1),
    )


def cifar_source(images: np.ndarray, labels: np.ndarray, device: torch.device) -> base.TensorSource:
    """The split on ``device`` as uint8, with CIFAR's pad-4 crop and flip (as ``cifar.open``)."""
    return base.TensorSource(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        mean=cifar.MEAN,
        std=cifar.STD,
        padding=4,
        flip=True,
        device=device,
    )


def project_trainer(
    cifar_lt: CifarLT,
    args: argparse.Namespace,
    device: torch.device,
    epochs: int,
    checkpointer: Checkpointer | None = None,
) -> Trainer:
    """Path (a): the objects ``longtail.loop.trainer_for`` builds for ``pretrain`` with CE."""
    source = cifar_source(cifar_lt.train_images, cifar_lt.train_labels, device)
    counts = cifar_lt.train_counts()
    sampler = samplers.create("instance", source.labels, seed=args.seed, num_classes=NUM_CLASSES)
    return Trainer(
        model=seeded_resnet32(args.seed),
        loss=losses.create("ce", counts),
        sampler=PrefixSampler(sampler),
        train_source=source,
        val_source=None,
        optim=recipe(epochs, args.batch_size),
        train_cfg=train_config(args),
        device=device,
        seed=args.seed,
        num_classes=NUM_CLASSES,
        train_counts=counts,
        stage="benchmark",
        loss_name="ce",
        checkpointer=checkpointer,
        log=progress,
    )


class ProjectPath:
    """Path (a) in repeats: one Trainer, epochs (or their first batches) through its own loop."""

    def __init__(self, cifar_lt: CifarLT, args: argparse.Namespace, device: torch.device) -> None:
        self.trainer = project_trainer(cifar_lt, args, device, epochs=PROJECTED_EPOCHS)
        self.num_images = len(cifar_lt.train_labels)
        self.batch_size = args.batch_size
        self.epoch = 0

    def _epochs(self, count: int, limit: int | None) -> int:
        self.trainer.sampler.limit = limit
        for _ in range(count):
            self.trainer.train_one_epoch(self.epoch % self.trainer.optim.epochs)
            self.epoch += 1
        return count * (self.num_images if limit is None else min(limit, self.num_images))

    def warm_up(self, steps: int) -> int:
        """``steps`` full batches plus the epoch's short last batch: both static shapes compile."""
        remainder = self.num_images % self.batch_size
        limit = steps * self.batch_size + remainder
        return self._epochs(1, None if limit >= self.num_images else limit)

    def run(self, chunk: Chunk) -> int:
        limit = None if chunk.steps is None else chunk.steps * self.batch_size
        return self._epochs(chunk.epochs, limit)

    def host_syncs(self) -> tuple[int, int]:
        """``(host syncs, steps)`` in one whole epoch, counted by CUDA's sync debug mode.

        A step free of host syncs leaves only the per-epoch ones (the order's upload, the
        accumulators' read-back), so the count must not grow with the number of steps.
        """
        steps = -(-self.num_images // self.batch_size)
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                self._epochs(1, None)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        return sum("synchronizing" in str(w.message) for w in caught), steps

    def describe(self) -> str:
        fast = self.trainer.fast
        optimizer = "fused" if self.trainer.optimizer.defaults.get("fused") else "foreach"
        return (
            f"TensorSource on {self.trainer.device.type} (uint8, crop/flip in batches), Trainer "
            f"step, bf16 {_on(fast.bf16)}, channels_last {_on(fast.channels_last)}, compile "
            f"{_on(fast.compile)}, {optimizer} SGD"
        )


def _on(flag: bool) -> str:
    return "on" if flag else "off"
