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

Where to read: path (a) is ``benchmarks/speed/project.py``, path (b)
``benchmarks/speed/reference.py``, the timing protocol ``benchmarks/speed/timing.py``, the report
``benchmarks/speed/report.py``, the data and schedule ``benchmarks/speed/workload.py`` and
``--check-accuracy`` ``benchmarks/speed/accuracy.py``; this module is the command line.

Evidence: the measured tables, each with its device, torch version and command, are in
BENCHMARKS.md; nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.speed.accuracy import mean_std, run_accuracy
from benchmarks.speed.project import EXACT_SWITCHES, PrefixSampler, ProjectPath
from benchmarks.speed.reference import PilCifar, ReferenceLoaderOnly, ReferencePath
from benchmarks.speed.report import full_run_table, header, ratio_lines, speed_table, sync_line
from benchmarks.speed.timing import Chunk, chunk_plan, full_run, interleaved
from benchmarks.speed.workload import (
    IMBALANCE,
    NUM_CLASSES,
    PROJECTED_EPOCHS,
    TEST_PER_CLASS,
    from_archive,
    progress,
    synthetic,
)
from longtail.train import resolve_device, set_determinism

__all__ = [  # the pieces, re-exported for the tests and for readers who start here
    "Chunk",
    "PilCifar",
    "PrefixSampler",
    "chunk_plan",
    "from_archive",
    "main",
    "mean_std",
    "synthetic",
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
