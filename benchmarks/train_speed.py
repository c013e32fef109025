"""Training speed: the project's device-resident path against a reference-style DataLoader loop.

Both paths train ResNet-32 with CE on CIFAR-100-LT (IF 100: 10,847 images, 100 classes, batch 128)
in one process, on one device. Their repeats are interleaved (a b, b a, a b, ...) so that a change
of load on the machine hits both, and the median over repeats is reported:

(a) the project's path, as ``longtail.train`` runs it: a :class:`~longtail.data.base.TensorSource`
    holding the images on the device as uint8 and cropping/flipping them there in whole batches,
    the :class:`~longtail.train.Trainer` step (no host sync, loss sums on the device, NaN check once
    per epoch) and its :class:`~longtail.train.FastPath` switches ``--amp``, ``--channels-last``,
    ``--compile`` (``auto``: on for CUDA, off for the CPU, as params.yaml's ``train`` section);
(b) a reference-style loop, the way LDAM-DRW, BALMS, CDB-CE and FBL train on CIFAR: a
    ``torch.utils.data.DataLoader`` (shuffled, ``--workers`` processes, pinned memory on CUDA) over
    PIL images with ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor`` and
    ``Normalize``; fp32, contiguous memory, ``torch.optim.SGD`` with its defaults, CE, and the
    per-step ``loss.item()`` and accuracy read-back of their progress meters.

Data: the CIFAR-100 python archive when ``--archive`` is given (the project's own download and
prepare of ``cifar100`` at IF 100, or ``--imbalance``), otherwise random uint8 images with the
CIFAR-100-LT class counts. Speed does not depend on pixel content: random pixels time the same work.

A third row times path (b)'s DataLoader alone, the most path (b) could reach on that machine;
``--compare-exact`` adds path (a) with every fast switch off to the same interleaving, which shows
what the switches buy.

Besides throughput (images/s of each path, their ratio, the projected time of 200 epochs), one real
run of path (a) is timed end to end (``--full-run-epochs``, default 200): upload of the data, the
model, a Trainer that writes a checkpoint after every epoch as the pipeline does, every epoch, and
a final evaluation of the test set in batches of ``--eval-batch-size``. It runs first, in a cold
process, so its first epoch includes ``torch.compile``.

``--check-accuracy`` runs the other half of the fast path's evidence instead: the loss and gradient
of one fixed batch under each switch against a float64 reference, then digits-LT (the default
experiment of params.yaml: pretrain with CE) trained over ``--seeds`` on the exact path and on the
fast path, test top-1 as mean ± std.

Run (from the repository root):
    python -m benchmarks.train_speed --device cuda --out BENCHMARKS-fragment.md
    python -m benchmarks.train_speed --device cpu --amp bf16 --channels-last on --compare-exact \
        --epochs-measured 0.1 --repeats 3 --full-run-epochs 1
    python -m benchmarks.train_speed --check-accuracy --amp bf16 --channels-last on

Evidence: the measured tables, each with its device, torch version and command, are in
BENCHMARKS.md; nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn

from longtail import data, losses, nets, samplers
from longtail.config import Config, DataConfig, OptimConfig, TrainConfig, load
from longtail.data import base, cifar
from longtail.data.augment import normalize
from longtail.data.imbalance import profile_counts
from longtail.metrics import summarize
from longtail.train import (
    Checkpointer,
    FastPath,
    Trainer,
    build_optimizer,
    evaluate_confusion,
    resolve_device,
    set_determinism,
)

NUM_CLASSES = 100
IMBALANCE = 100.0  # the default of --imbalance, the setting the papers report most
N_MAX = 500  # CIFAR-100 head class
EXACT_SWITCHES = {"amp": "off", "channels_last": "off", "compile": "off"}
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


def seeded_resnet32(seed: int, num_classes: int = NUM_CLASSES, in_channels: int = 3) -> nn.Module:
    """ResNet-32 initialised from ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nets.create("resnet32", num_classes, in_channels=in_channels)


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
    """Path (a): the objects ``stages/common.train_stage`` builds for ``pretrain`` with CE."""
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


# --------------------------------------------------------------------------------------- report
def describe_device(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}, {threads} CPU threads"
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return f"cpu: {model}, {os.cpu_count()} cores, {threads} torch threads"


def header(
    title: str, args: argparse.Namespace, argv: Sequence[str], device: torch.device
) -> list[str]:
    load_avg = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "-"
    return [
        f"## {title}",
        "",
        f"- device: {describe_device(device, args.threads)}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"python {platform.python_version()}; determinism {args.determinism}",
        f"- command: `{shlex.join(['python', '-m', 'benchmarks.train_speed', *argv])}`",
        f"- load average (1, 5, 15 min) at start: {load_avg}",
    ]


def seconds_text(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds:,.0f} s ({seconds / 3600:.1f} h)"
    return f"{seconds:,.1f} s"


def rate_text(rate: float) -> str:
    return f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}"


def speed_table(paths: dict[str, Any], rates: dict[str, list[float]], num_images: int) -> list[str]:
    lines = [
        f"| path | what runs | images/s (median) | range over repeats | {PROJECTED_EPOCHS} epochs, "
        "projected |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, path in paths.items():
        rs = rates[name]
        median = statistics.median(rs)
        lines.append(
            f"| {name} | {path.describe()} | {rate_text(median)} | {rate_text(min(rs))}–"
            f"{rate_text(max(rs))} | {seconds_text(PROJECTED_EPOCHS * num_images / median)} |"
        )
    return lines


def ratio_text(rates: dict[str, list[float]], num: str, den: str) -> str:
    """``num`` over ``den``: the median of the paired repeats, and the ratio of the medians."""
    paired = statistics.median(a / b for a, b in zip(rates[num], rates[den], strict=True))
    of_medians = statistics.median(rates[num]) / statistics.median(rates[den])
    return (
        f"**{paired:.2f}×** (median of {len(rates[num])} paired repeats; ratio of medians "
        f"{of_medians:.2f}×)"
    )


def ratio_lines(rates: dict[str, list[float]]) -> list[str]:
    lines = [f"Speed-up (a) / (b): {ratio_text(rates, '(a) project', '(b) reference')}."]
    if "(a) exact" in rates:
        lines.append(
            f"What the fast switches buy, (a) / (a) exact: "
            f"{ratio_text(rates, '(a) project', '(a) exact')}."
        )
    return lines


def sync_line(syncs: tuple[int, int] | None) -> str:
    if syncs is None:
        return "Host syncs per epoch of (a): not counted (CUDA's sync debug mode needs a GPU)."
    count, steps = syncs
    return (
        f"Host syncs in one epoch of (a) ({steps} steps), counted by CUDA's sync debug mode: "
        f"{count} (the per-epoch ones only when this does not grow with the steps)."
    )


def full_run_table(
    run: FullRun, archive: bool, eval_batch_size: int, test_images: int
) -> list[str]:
    later = "-" if run.later_epoch_s is None else f"{run.later_epoch_s:.2f}"
    projected = run.projected_s()
    kind = (
        "measured"
        if run.epochs >= PROJECTED_EPOCHS
        else f"projected from this {run.epochs}-epoch run"
    )
    top1 = f"{run.test_top1:.2f} %" if archive else "n/a (random pixels)"
    return [
        "| epochs run | total (s) | first epoch (s; includes compiling when on) | later epochs, "
        f"median (s) | checkpoints (s) | test eval, {test_images:,} images in batches of "
        f"{eval_batch_size} (s) | {PROJECTED_EPOCHS} epochs end to end | test top-1 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {run.epochs} | {run.total_s:.1f} | {run.first_epoch_s:.2f} | {later} | "
        f"{run.checkpoint_s:.2f} | {run.eval_s:.2f} | {seconds_text(projected)} ({kind}) | "
        f"{top1} |",
    ]


# ------------------------------------------------------------------------------------ speed mode
def run_speed(args: argparse.Namespace, argv: Sequence[str], device: torch.device) -> str:
    cifar_lt = (
        from_archive(args.archive, args.archive_md5, args.seed, args.imbalance)
        if args.archive
        else synthetic(args.train_images, args.test_images, args.seed, args.imbalance)
    )
    num_images = len(cifar_lt.train_labels)
    chunk = chunk_plan(args.epochs_measured, num_images, args.batch_size)
    lines = header(
        f"Training speed: ResNet-32, CIFAR-100-LT IF {args.imbalance:g}, batch {args.batch_size}",
        args,
        argv,
        device,
    )
    lines.append(f"- data: {cifar_lt.origin}")
    run = None
    if args.full_run_epochs > 0:
        progress(f"real run of (a): {args.full_run_epochs} epochs")
        run = full_run(cifar_lt, args, device)
    paths = {
        "(a) project": ProjectPath(cifar_lt, args, device),
        "(b) reference": ReferencePath(cifar_lt, args, device),
        "(b) loader only": ReferenceLoaderOnly(cifar_lt, args, device),
    }
    if args.compare_exact:
        exact = argparse.Namespace(**{**vars(args), **EXACT_SWITCHES})
        paths["(a) exact"] = ProjectPath(cifar_lt, exact, device)
    for name, path in paths.items():
        progress(f"warm-up {name}: {args.warmup_steps} steps")
        path.warm_up(args.warmup_steps)
    syncs = paths["(a) project"].host_syncs() if device.type == "cuda" else None
    rates = interleaved(paths, chunk, args.repeats, device)
    what = (
        f"{chunk.epochs} epoch(s)"
        if chunk.steps is None
        else f"the first {chunk.steps} full batches of an epoch"
    )
    lines += [
        f"- throughput: {args.repeats} repeats of {what} ({chunk.images:,} images) per path, "
        f"interleaved a b / b a; warm-up {args.warmup_steps} steps each (path (a) also its short "
        "last batch)",
        "",
        *speed_table(paths, rates, num_images),
        "",
        *ratio_lines(rates),
        "",
        sync_line(syncs),
    ]
    if run is not None:
        lines += [
            "",
            f"Real run of (a), timed from host arrays to test top-1 (checkpoint after every "
            f"epoch: {'on' if args.checkpoint else 'off'}):",
            "",
            *full_run_table(
                run, bool(args.archive), args.eval_batch_size, len(cifar_lt.test_labels)
            ),
        ]
    load_avg = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    lines += ["", f"Load average (1, 5, 15 min) at the end: {load_avg}."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- accuracy mode
def exact_config(args: argparse.Namespace) -> TrainConfig:
    return dataclasses.replace(train_config(args), **EXACT_SWITCHES)


def _flat_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().double().flatten() for p in model.parameters()])


def _loss_and_grads(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fast: FastPath,
    device: torch.device,
    train_mode: bool,
) -> tuple[float, torch.Tensor]:
    """The project's CE (upcast to float32 under bf16) and all gradients, one batch."""
    model.train(train_mode)
    forward = torch.compile(model, dynamic=False) if fast.compile else model
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    model.zero_grad(set_to_none=True)
    loss_fn = losses.create("ce", [1] * NUM_CLASSES).to(device)
    with fast.autocast(device):
        logits, features = forward(fast.prepare_input(x))
        loss = loss_fn(logits, y, features)
    loss.backward()
    return loss.item(), _flat_grads(model)


def _variants(args: argparse.Namespace, device: torch.device) -> list[tuple[str, FastPath]]:
    off = FastPath(bf16=False, channels_last=False, compile=False)
    variants = [
        ("exact fp32", off),
        ("channels_last", dataclasses.replace(off, channels_last=True)),
        ("bf16 autocast", dataclasses.replace(off, bf16=True)),
        ("bf16 + channels_last", FastPath(bf16=True, channels_last=True, compile=False)),
    ]
    if args.compile == "on" or (args.compile == "auto" and device.type == "cuda"):
        variants += [
            ("compile (fp32)", dataclasses.replace(off, compile=True)),
            ("compile + bf16 + channels_last", FastPath(True, True, True)),
        ]
    return variants


def fixed_batch_agreement(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Loss and gradients of one fixed batch per switch, relative to a float64 reference.

    Both batch-norm modes are shown: in training mode (as the step runs) the backward pass through
    the batch statistics cancels large terms at initialisation on random data, which magnifies
    every rounding error in the early layers' gradients, fp32's included; in eval mode the same
    network is well conditioned and shows each precision's own error.
    """
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (64,), generator=gen)
    x = normalize(images, cifar.MEAN, cifar.STD)  # (64, 3, 32, 32) float32
    model = seeded_resnet32(args.seed)
    cpu = torch.device("cpu")
    off = FastPath(bf16=False, channels_last=False, compile=False)
    lines = [
        "| switches | batch norm | loss rel. error vs float64 | gradient rel. error vs float64 "
        "| seconds |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, fast in _variants(args, device):
        for train_mode in (True, False):
            ref_model = copy.deepcopy(model).double()
            ref_loss, ref_grads = _loss_and_grads(ref_model, x.double(), y, off, cpu, train_mode)
            start = time.perf_counter()
            net = copy.deepcopy(model).to(device)
            loss, grads = _loss_and_grads(net, x.to(device), y.to(device), fast, device, train_mode)
            seconds = time.perf_counter() - start
            grad_err = float((grads.cpu() - ref_grads).norm() / ref_grads.norm())
            lines.append(
                f"| {name} | {'train' if train_mode else 'eval'} | "
                f"{abs(loss - ref_loss) / abs(ref_loss):.1e} | {grad_err:.1e} | {seconds:.1f} |"
            )
        progress(f"  fixed batch, {name}: done")
    lines += ["", *sgd_agreement(model, x.to(device), y.to(device), device)]
    return lines


def sgd_agreement(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> list[str]:
    """Three steps of the project's SGD (fused on CUDA, foreach on the CPU) against a for-loop."""
    cfg = recipe(1, len(y))
    results = []
    for make in (
        lambda ps: build_optimizer(ps, cfg, device),
        lambda ps: torch.optim.SGD(
            ps, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=False
        ),
    ):
        net = copy.deepcopy(model).to(device)
        optimizer = make(list(net.parameters()))
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            logits, _ = net(x)
            nn.functional.cross_entropy(logits, y).backward()
            optimizer.step()
        results.append(torch.cat([p.detach().double().flatten().cpu() for p in net.parameters()]))
    kind = "fused" if device.type == "cuda" else "foreach"
    err = float((results[0] - results[1]).norm() / results[1].norm())
    return [
        f"SGD, 3 steps: {kind} against the for-loop implementation, parameters rel. "
        f"difference {err:.1e}."
    ]


def digits_config(params: Path) -> Config:
    """params.yaml (the default experiment) when present; digits-LT whatever its data section."""
    cfg = load(params) if params.exists() else Config()
    if cfg.data.name != "digits":
        cfg = dataclasses.replace(cfg, data=DataConfig())
    return cfg


def digits_run(
    cfg: Config,
    seed: int,
    train_cfg: TrainConfig,
    epochs: int,
    device: torch.device,
    raw: Path,
    scratch: Path,
) -> dict[str, float]:
    """pretrain (its loss and sampler) on digits-LT prepared with ``seed``; test top-1 and few."""
    family = data.get("digits")
    prepared = scratch / f"prepared-{seed}"
    family.prepare(cfg.data, seed, raw, prepared)
    ctx = base.SourceContext(cfg.data, cfg.frames, raw, prepared, scratch / "frames", device)
    train, val, test = (family.open(ctx, split) for split in base.SPLITS)
    counts = base.class_counts(prepared)
    start = time.perf_counter()
    trainer = Trainer(
        model=seeded_resnet32(seed, len(counts), train.in_channels),
        loss=losses.create(cfg.pretrain.loss.name, counts, **cfg.pretrain.loss.kwargs()),
        sampler=samplers.create(
            cfg.pretrain.sampler, train.labels, seed=seed, num_classes=len(counts)
        ),
        train_source=train,
        val_source=val,
        optim=dataclasses.replace(cfg.pretrain.optim, epochs=epochs),
        train_cfg=train_cfg,
        device=device,
        seed=seed,
        num_classes=len(counts),
        train_counts=counts,
        many_shot=cfg.evaluate.many_shot,
        few_shot=cfg.evaluate.few_shot,
        stage="digits",
        log=lambda line: None,
    )
    trainer.fit()
    conf = evaluate_confusion(
        trainer.model, test, len(counts), train_cfg.eval_batch_size, trainer.fast, device
    )
    summary = summarize(conf, counts, cfg.evaluate.many_shot, cfg.evaluate.few_shot)
    return {"top1": summary["top1"], "few": summary["few"], "seconds": time.perf_counter() - start}


def mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def digits_caption(cfg: Config, args: argparse.Namespace) -> str:
    optim = cfg.pretrain.optim
    return (
        f"digits-LT (IF {cfg.data.imbalance:g}), pretrain as params.yaml sets it "
        f"({cfg.pretrain.loss.name}, {cfg.pretrain.sampler} sampler, {args.accuracy_epochs} "
        f"epochs, batch {optim.batch_size}, lr {optim.lr:g}, {optim.schedule}), balanced test "
        f"set, seeds {', '.join(map(str, args.seeds))}:"
    )


def accuracy_table(
    results: dict[str, list[dict[str, float]]], exact: FastPath, fast: FastPath
) -> list[str]:
    lines = [
        "| path | switches | test top-1 per seed (%) | top-1 mean ± std | few-shot mean ± std | "
        "seconds per run (median) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for name, switches in (("exact", exact), ("fast", fast)):
        top1 = [r["top1"] for r in results[name]]
        few = [r["few"] for r in results[name]]
        seconds = statistics.median(r["seconds"] for r in results[name])
        lines.append(
            f"| {name} | bf16 {_on(switches.bf16)}, channels_last {_on(switches.channels_last)}, "
            f"compile {_on(switches.compile)} | {', '.join(f'{v:.1f}' for v in top1)} | "
            f"{mean_std(top1)} | {mean_std(few)} | {seconds:.1f} |"
        )
    return lines


def run_accuracy(args: argparse.Namespace, argv: Sequence[str], device: torch.device) -> str:
    fast_cfg, exact_cfg = train_config(args), exact_config(args)
    fast = FastPath.resolve(fast_cfg, device)
    if fast == FastPath.resolve(exact_cfg, device):
        raise ValueError(
            f"--check-accuracy: expected at least one fast switch on {device.type} (--amp bf16, "
            "--channels-last on or --compile on); these flags resolve to the exact path"
        )
    cfg = digits_config(args.params)
    lines = header(
        "Fast path against exact path: agreement and digits-LT accuracy", args, argv, device
    )
    lines += [
        "",
        "Loss and gradients of one fixed batch (64 random CIFAR-shaped images, ResNet-32 at "
        "initialisation, 100 classes, the project's CE), each switch against float64 on the CPU:",
        "",
    ]
    lines += fixed_batch_agreement(args, device)
    results: dict[str, list[dict[str, float]]] = {"exact": [], "fast": []}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        data.get("digits").download(cfg.data, raw)
        for seed in args.seeds:
            for name, train_cfg in (("exact", exact_cfg), ("fast", fast_cfg)):
                out = digits_run(cfg, seed, train_cfg, args.accuracy_epochs, device, raw, Path(tmp))
                results[name].append(out)
                progress(f"  digits-LT seed {seed} {name}: top-1 {out['top1']:.1f} %")
    exact = FastPath.resolve(exact_cfg, device)
    lines += ["", digits_caption(cfg, args), "", *accuracy_table(results, exact, fast)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--archive", type=Path, default=None, help="CIFAR-100 python archive (.tar.gz)")
    p.add_argument("--archive-md5", default="auto", help="auto: the published md5; none: skip")
    p.add_argument("--imbalance", type=float, default=IMBALANCE, help="CIFAR-100-LT's IF")
    p.add_argument("--train-images", type=int, default=None, help="synthetic only: thin the set")
    p.add_argument("--test-images", type=int, default=NUM_CLASSES * TEST_PER_CLASS)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--epochs-measured",
        type=float,
        default=1.0,
        help="per repeat: whole epochs, or a fraction < 1 (full batches)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument(
        "--full-run-epochs",
        type=int,
        default=PROJECTED_EPOCHS,
        help="epochs of the real end-to-end run of path (a); 0 skips it",
    )
    p.add_argument(
        "--no-checkpoint",
        dest="checkpoint",
        action="store_false",
        help="the real run writes no checkpoint after each epoch",
    )
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of path (b)")
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    p.add_argument(
        "--compare-exact",
        action="store_true",
        help="also time path (a) with every fast switch off, interleaved with the others",
    )
    p.add_argument("--determinism", default="off", choices=("on", "off"))
    p.add_argument("--threads", type=int, default=cores, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    p.add_argument(
        "--check-accuracy",
        action="store_true",
        help="fixed-batch agreement and digits-LT accuracy of fast vs exact path",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--accuracy-epochs", type=int, default=100)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = p.parse_args(argv)
    for name in (
        "batch_size",
        "repeats",
        "threads",
        "eval_batch_size",
        "test_images",
        "accuracy_epochs",
    ):
        if getattr(args, name) < 1:
            p.error(
                f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}"
            )
    for name in ("warmup_steps", "full_run_epochs", "workers"):
        if getattr(args, name) < 0:
            p.error(
                f"--{name.replace('_', '-')}: expected an integer >= 0, got {getattr(args, name)}"
            )
    if args.imbalance < 1:
        p.error(f"--imbalance: expected a number >= 1, got {args.imbalance}")
    if args.archive and args.train_images is not None:
        p.error("--train-images: expected it only without --archive (it thins synthetic data)")
    args.archive_md5 = None if args.archive_md5.lower() == "none" else args.archive_md5
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print its table (and write ``--out``); returns the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    set_determinism(args.determinism == "on", device)
    mode = run_accuracy if args.check_accuracy else run_speed
    text = mode(args, argv, device)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
