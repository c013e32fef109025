"""The report: markdown tables with the device, the torch version and the exact command."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision

from benchmarks.speed.timing import FullRun
from benchmarks.speed.workload import PROJECTED_EPOCHS


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
