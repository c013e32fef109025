"""Many experiments per GPU: how many training runs one device takes at once, and their memory.

A ResNet-32 CIFAR run leaves a large GPU mostly idle (small kernels, launch-bound), so several runs
side by side, as ``dvc queue start --jobs N`` or ``tools/compare.py --run --jobs N`` start them,
can multiply the work done per second. This measures it directly:

1. **N concurrent runs.** For each N of ``--jobs``, N separate processes each train path (a) of
   ``benchmarks.train_speed`` (the project's Trainer, ResNet-32, CE, synthetic CIFAR-100-LT IF 100,
   batch 128, the ``train.*`` defaults of the device). Each first warms up (one epoch: both static
   shapes compiled), then all start together (a file barrier) and train ``--epochs`` epochs. The
   table gives the median images/s of one run, the aggregate images/s of all N (every image over
   the span from the common start to the last end), its gain over N = 1, each run's peak device
   memory and its warm-up time; and the projected wall time of the 8-loss × 3-seed comparison
   (24 runs of 200 epochs) at that N.
2. **Memory per run, per architecture.** One training step of every registered network on the
   fast path (bf16 autocast, channels_last, eager), at the input size and per-GPU batch its
   datasets use (:data:`WORKLOADS`), one after the other in a fresh process (allocator emptied and
   peak statistics reset for each): peak allocated and reserved device memory, hence how many
   such runs fit in the device's memory.

The recommended N is the one with the highest aggregate throughput among those whose runs fit in
90 % of the device memory. On the CPU (``--tiny``) the same sequence runs at tiny size; memory is
then the peak resident set size of each process.

Run (from the repository root):
    python -m benchmarks.concurrent_runs --device cuda --jobs 1 2 4 8 --out concurrent.md
    python -m benchmarks.concurrent_runs --device cpu --tiny --jobs 1 2

Evidence: the measured tables are in BENCHMARKS.md; nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from benchmarks.speed.project import project_trainer
from benchmarks.speed.report import describe_device
from benchmarks.speed.workload import PROJECTED_EPOCHS, synthetic
from longtail import nets
from longtail.config import TrainConfig
from longtail.train import FastPath, resolve_device

COMPARISON_RUNS = 8 * 3  # the 8 losses of the comparison × 3 seeds
CIFAR100_LT_IMAGES = 10_847  # IF 100
MEMORY_SHARE = 0.9  # of the device memory that concurrent runs may plan to take


@dataclass(frozen=True)
class Workload:
    """One training step's input of a network: per-GPU batch, sample shape, and where from."""

    batch: int
    shape: tuple[int, ...]
    origin: str


# The per-GPU batch and input of the recipes in docs/recipes.md for each network's datasets.
WORKLOADS = {
    "resnet32": Workload(128, (3, 32, 32), "CIFAR-LT, batch 128"),
    "resnet10": Workload(128, (3, 224, 224), "ImageNet-LT 224 px, 128 per GPU"),
    "resnet50": Workload(128, (3, 224, 224), "ImageNet-LT / iNat 224 px, 128 per GPU"),
    "resnet152": Workload(64, (3, 224, 224), "Places-LT 224 px, 64 per GPU"),
    "resnext50": Workload(128, (3, 224, 224), "ImageNet-LT 224 px, 128 per GPU"),
    "resnext101_3d": Workload(16, (3, 10, 224, 224), "EGTEA 10 × 224 px, batch 16"),
    "resnet3d_small": Workload(128, (3, 8, 32, 32), "moving digits 8 × 32 px, batch 128"),
}
TINY_WORKLOADS = {"resnet32": Workload(8, (3, 16, 16), "tiny")}


def workload(arch: str, tiny: bool = False) -> Workload:
    """A network's workload; one registered later than this table gets ImageNet-LT's."""
    if tiny:
        return TINY_WORKLOADS[arch]
    return WORKLOADS.get(arch, Workload(128, (3, 224, 224), "224 px, 128 per GPU (default)"))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak device memory of this process in GiB (CUDA), or its peak resident set (CPU)."""
    if device.type == "cuda":
        return {
            "allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"allocated_gib": rss_kib / 2**20, "reserved_gib": rss_kib / 2**20}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- the workers
def training_worker(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """One run: warm up, wait at the barrier, train ``--epochs`` epochs; returns its numbers."""
    born = time.time()
    data = synthetic(args.train_images, 10, seed=args.index)
    config = argparse.Namespace(
        seed=args.index,
        batch_size=args.batch_size,
        amp="auto",
        channels_last="auto",
        compile="auto",
        eval_batch_size=1024,
        full_run_epochs=1,
    )
    trainer = project_trainer(data, config, device, epochs=args.epochs + 1)
    trainer.train_one_epoch(0)  # compiles the full and the last batch's shape
    synchronize(device)
    warm_s = time.time() - born
    sync = Path(args.sync)
    (sync / f"ready-{args.index}").touch()
    while not (sync / "go").exists():
        time.sleep(0.01)
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        trainer.train_one_epoch(epoch)
    synchronize(device)
    end = time.time()
    images = args.epochs * len(data.train_labels)
    return {"start": start, "end": end, "images": images, "warm_s": warm_s, **peak_memory(device)}


def step_memory(arch: str, tiny: bool, device: torch.device) -> dict[str, float]:
    """Two training steps of ``arch`` on the fast path, eager; the peak memory of the second."""
    work = workload(arch, tiny)
    fast = FastPath.resolve(TrainConfig(compile="off"), device)
    with torch.device(device):
        model = nets.create(arch, 100).train()
    fast.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(work.batch, *work.shape, device=device)
    y = torch.randint(0, 100, (work.batch,), device=device)
    start = time.perf_counter()
    for _ in range(2):  # the second step holds the momentum buffers too
        with fast.autocast(device):
            logits, _ = model(fast.prepare_input(x))
            loss = nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return {"step_s": (time.perf_counter() - start) / 2, **peak_memory(device)}


def memory_worker(args: argparse.Namespace, device: torch.device) -> None:
    """Print one JSON line per network of ``--archs``: its step's memory, or why there is none.

    One process for all networks (each starts from an emptied allocator with its peak statistics
    reset); on the CPU the peak resident set only grows, so there it is the largest so far.
    """
    for arch in args.archs:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            result: dict[str, float] | str = step_memory(arch, args.tiny, device)
        except torch.OutOfMemoryError:
            result = "out of memory"
        print(json.dumps({arch: result}), flush=True)


# ---------------------------------------------------------------------------------- the parent
def worker_command(args: argparse.Namespace, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.concurrent_runs", "--device", args.device]
    cmd += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    if args.train_images is not None:
        cmd += ["--train-images", str(args.train_images)]
    return cmd + (["--tiny"] if args.tiny else []) + list(extra)


def concurrent(args: argparse.Namespace, jobs: int) -> list[dict[str, float]] | str:
    """``jobs`` training workers started together; their results, or why there are none."""
    with tempfile.TemporaryDirectory() as sync:
        procs = [
            subprocess.Popen(
                worker_command(args, "--worker", "--index", str(i), "--sync", sync),
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(jobs)
        ]
        while len(list(Path(sync).glob("ready-*"))) < jobs:
            if any(p.poll() not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                return "a run failed during warm-up (see stderr)"
            time.sleep(0.05)
        (Path(sync) / "go").touch()
        outs = [p.communicate()[0] for p in procs]
    if any(p.returncode != 0 for p in procs):
        return f"exit codes {[p.returncode for p in procs]} (see stderr)"
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def memory(args: argparse.Namespace, archs: list[str]) -> dict[str, dict[str, float] | str]:
    """Every network's step memory, measured in one fresh process."""
    proc = subprocess.run(
        worker_command(args, "--memory", "--archs", *archs), capture_output=True, text=True
    )
    rows: dict[str, dict[str, float] | str] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rows.update(json.loads(line))
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
    return {arch: rows.get(arch, f"not measured (the process failed: {last})") for arch in archs}


def device_memory_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    return None


def gib(value: float) -> str:
    return f"{value:.2f}"


def concurrency_table(
    results: dict[int, list[dict[str, float]] | str], total_gib: float | None
) -> tuple[list[str], int | None]:
    lines = [
        "| runs at once (N) | images/s of one run (median) | images/s of all N | gain over N = 1 "
        "| peak memory per run, GiB (allocated / reserved) | warm-up per run (s) | 24 runs of "
        f"{PROJECTED_EPOCHS} epochs, projected |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base, best, best_rate = None, None, 0.0
    for n, runs in results.items():
        if isinstance(runs, str):
            lines.append(f"| {n} | {runs} | - | - | - | - | - |")
            continue
        one = statistics.median(r["images"] / (r["end"] - r["start"]) for r in runs)
        span = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        total = sum(r["images"] for r in runs) / span
        base = base or total
        reserved = max(r["reserved_gib"] for r in runs)
        warm = statistics.median(r["warm_s"] for r in runs)
        waves = -(-COMPARISON_RUNS // n)
        projected = COMPARISON_RUNS * PROJECTED_EPOCHS * CIFAR100_LT_IMAGES / total + waves * warm
        lines.append(
            f"| {n} | {one:,.0f} | {total:,.0f} | {total / base:.2f}× | "
            f"{gib(max(r['allocated_gib'] for r in runs))} / {gib(reserved)} | {warm:.1f} | "
            f"{projected:,.0f} s |"
        )
        fits = total_gib is None or n * reserved <= MEMORY_SHARE * total_gib
        if fits and total > best_rate:
            best, best_rate = n, total
    return lines, best


def memory_table(
    rows: dict[str, dict[str, float] | str], total_gib: float | None, tiny: bool
) -> list[str]:
    lines = [
        "| network | input per step | peak allocated (GiB) | peak reserved (GiB) | "
        f"runs that fit in {MEMORY_SHARE:.0%} of the device | step (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for arch, row in rows.items():
        work = workload(arch, tiny)
        what = f"{work.batch} × {'×'.join(map(str, work.shape))} ({work.origin})"
        if isinstance(row, str):
            lines.append(f"| {arch} | {what} | {row} | - | - | - |")
            continue
        fit = "-"
        if total_gib is not None:
            fit = str(int(MEMORY_SHARE * total_gib // row["reserved_gib"]))
        lines.append(
            f"| {arch} | {what} | {gib(row['allocated_gib'])} | {gib(row['reserved_gib'])} | "
            f"{fit} | {row['step_s']:.3f} |"
        )
    return lines


def report(args: argparse.Namespace, argv: Sequence[str], device: torch.device) -> str:
    total_gib = device_memory_gib(device)
    results: dict[int, list[dict[str, float]] | str] = {}
    for n in args.jobs:
        progress(f"{n} concurrent run(s)")
        results[n] = concurrent(args, n)
    runs_table, best = concurrency_table(results, total_gib)
    archs = list(TINY_WORKLOADS) if args.tiny else list(nets.names())
    progress(f"memory of {', '.join(archs)}")
    rows = memory(args, archs)
    size = "tiny " if args.tiny else ""
    device_line = describe_device(device, torch.get_num_threads())
    if total_gib is not None:
        device_line += f", {total_gib:.0f} GiB"
    lines = [
        "## Many experiments per device",
        "",
        f"- device: {device_line}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}",
        f"- command: `{shlex.join(['python', '-m', 'benchmarks.concurrent_runs', *argv])}`",
        f"- each run: path (a) of train_speed, ResNet-32, CE, {size}synthetic CIFAR-100-LT, batch "
        f"{args.batch_size}, the device's train.* defaults; {args.epochs} timed epoch(s) after a "
        "warm-up epoch, all runs started together",
        "",
        *runs_table,
        "",
        "The projection adds one warm-up per wave of N runs to 24 × 200 epochs at the aggregate "
        "rate; a queued DVC experiment also runs its data stages, finetune and evaluate.",
        "",
    ]
    if best is not None:
        lines += [
            f"Recommended: **N = {best}** (the highest aggregate throughput whose runs fit in "
            f"{MEMORY_SHARE:.0%} of the device memory): `dvc queue start --jobs {best}`, "
            f"`python tools/compare.py --run --jobs {best} ...`.",
            "",
        ]
    lines += [
        "Memory of one training step per network (bf16 autocast, channels_last, eager; "
        + ("peak resident set of the process on the CPU" if device.type == "cpu" else "CUDA")
        + "):",
        "",
        *memory_table(rows, total_gib, args.tiny),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.concurrent_runs", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-images", type=int, default=None, help="thin the synthetic set")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU check)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--sync", default=None, help=argparse.SUPPRESS)
    p.add_argument("--archs", nargs="+", default=["resnet32"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.jobs) < 1 or args.epochs < 1 or args.batch_size < 1:
        p.error(
            f"--jobs, --epochs, --batch-size: expected integers >= 1, got {args.jobs}, "
            f"{args.epochs}, {args.batch_size}"
        )
    if args.tiny:  # 48 images in batches of 16
        args.train_images, args.batch_size = args.train_images or 48, 16
    return args


def main(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.worker or args.memory:
        torch.set_num_threads(1)  # several processes share the CPU
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        if args.memory:
            memory_worker(args, device)
            return ""
        result = json.dumps(training_worker(args, device))
        print(result)
        return result
    text = report(args, argv, device)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
