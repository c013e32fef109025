"""The timing protocol: what one repeat runs, interleaved repeats, and the real end-to-end run.

* A repeat is whole epochs or the first full batches of one (:func:`chunk_plan`), the same images
  for every path.
* Every path warms up first (path (a) also runs its short last batch, so both static shapes are
  compiled before any timing); the device is drained before and after each timed call.
* The paths' repeats alternate (a b, b a, ...), so that a change of load hits all of them; the
  report gives medians and ranges over repeats.
* One real run of path (a) (:func:`full_run`) is timed from host arrays to test top-1, in a cold
  process, so its first epoch includes ``torch.compile``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.speed.project import TimedCheckpointer, cifar_source, project_trainer
from benchmarks.speed.workload import NUM_CLASSES, PROJECTED_EPOCHS, CifarLT, progress
from longtail.metrics import summarize
from longtail.train import evaluate_confusion


# ---------------------------------------------------------------------------------- timing plan
@dataclass(frozen=True)
class Chunk:
    """What one timed repeat of a path runs: whole epochs, or the first full batches of one.

    Attributes:
        epochs: whole epochs per repeat (1 when ``steps`` is set).
        steps: full batches of a partial epoch; None for whole epochs.
        images: images per repeat.
    """

    epochs: int
    steps: int | None
    images: int


def chunk_plan(epochs_measured: float, num_images: int, batch_size: int) -> Chunk:
    """Turn ``--epochs-measured`` into a repeat: N whole epochs, or a fraction of full batches.

    A fraction (``0 < e < 1``) runs ``round(e * num_images / batch_size)`` full batches (at least
    one), so both paths see the same images per repeat without an epoch-sized wait on a slow CPU.
    """
    if epochs_measured <= 0:
        raise ValueError(f"--epochs-measured: expected a number > 0, got {epochs_measured}")
    if epochs_measured >= 1:
        if epochs_measured != int(epochs_measured):
            raise ValueError(
                "--epochs-measured: expected a whole number of epochs or a fraction below 1, "
                f"got {epochs_measured}"
            )
        return Chunk(int(epochs_measured), None, int(epochs_measured) * num_images)
    full_batches = num_images // batch_size
    if full_batches == 0:
        raise ValueError(
            f"--epochs-measured: a fraction needs at least one full batch of {batch_size}; the "
            f"data has {num_images} images: measure whole epochs"
        )
    steps = min(max(1, round(epochs_measured * num_images / batch_size)), full_batches)
    return Chunk(1, steps, steps * batch_size)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], int]) -> tuple[float, int]:
    """``(seconds, images)`` of ``run()``, the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    images = run()
    synchronize(device)
    return time.perf_counter() - start, images


# ---------------------------------------------------------------------------------- measurements
def interleaved(
    paths: dict[str, Any], chunk: Chunk, repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """images/s of every repeat of every path, the order alternating (a b, b a, ...)."""
    rates: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            seconds, images = timed(device, lambda p=paths[name]: p.run(chunk))
            rates[name].append(images / seconds)
            progress(f"  repeat {repeat + 1}/{repeats} {name}: {images / seconds:,.1f} images/s")
    return rates


@dataclass(frozen=True)
class FullRun:
    """One real run of path (a), end to end."""

    epochs: int
    total_s: float
    first_epoch_s: float
    later_epoch_s: float | None  # median of the epochs after the first
    checkpoint_s: float
    eval_s: float
    test_top1: float

    def projected_s(self, epochs: int = PROJECTED_EPOCHS) -> float:
        """This run's total plus the missing epochs at its later-epoch median.

        With a one-epoch run the first epoch stands in (it includes compilation, so it overstates).
        """
        per_epoch = self.first_epoch_s if self.later_epoch_s is None else self.later_epoch_s
        return self.total_s + max(epochs - self.epochs, 0) * per_epoch


def full_run(cifar_lt: CifarLT, args: argparse.Namespace, device: torch.device) -> FullRun:
    """Path (a) for ``--full-run-epochs`` epochs, from host arrays to test top-1."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = TimedCheckpointer(Path(tmp) / "benchmark.ckpt") if args.checkpoint else None
        synchronize(device)
        start = time.perf_counter()
        trainer = project_trainer(
            cifar_lt, args, device, epochs=args.full_run_epochs, checkpointer=checkpointer
        )
        history = trainer.fit()
        synchronize(device)
        eval_start = time.perf_counter()
        test = cifar_source(cifar_lt.test_images, cifar_lt.test_labels, device)
        conf = evaluate_confusion(  # the eager model, as stages/evaluate.py scores the test set
            trainer.model, test, NUM_CLASSES, args.eval_batch_size, trainer.fast, device
        )
        top1 = summarize(conf, cifar_lt.train_counts(), 100, 20)["top1"]  # host sync
        end = time.perf_counter()
    seconds = [h["seconds"] for h in history]
    return FullRun(
        epochs=len(history),
        total_s=end - start,
        first_epoch_s=seconds[0] if seconds else 0.0,
        later_epoch_s=statistics.median(seconds[1:]) if len(seconds) > 1 else None,
        checkpoint_s=checkpointer.seconds if checkpointer else 0.0,
        eval_s=end - eval_start,
        test_top1=top1,
    )
