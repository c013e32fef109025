"""JPEG decoding speed for the large image datasets (ImageNet-LT, Places-LT, iNaturalist 2018).

Three ways to turn a folder of JPEGs into uint8 batches (B, 3, S, S) on the training device, each
producing the same thing (the image decoded to RGB, its shorter side resized to S with antialiased
bilinear filtering, centre-cropped to S × S):

``pil-dataloader``
    The reference repositories' path (classifier-balancing, BALMS): PIL decodes, resizes and
    crops in ``torch.utils.data.DataLoader`` worker processes (``--workers``); batches are copied
    to the device.
``decode_jpeg``
    Files are read on the host, ``torchvision.io.decode_jpeg`` decodes a whole batch on the device
    (nvJPEG on CUDA; libjpeg-turbo, one thread, on the CPU) and the resize and crop run there.
``uint8-cache``
    Decoded once (the one-time cost is reported separately) into an (N, 3, S, S) uint8 ``.npy``
    file, then read back memory-mapped in shuffled batches and copied to the device. A cache that
    fits in device memory can instead be held there whole, as ``TensorSource`` holds CIFAR.

The methods' repeats are interleaved (round robin, the order alternating) and the median over
repeats is reported, with the projected time of one ImageNet-LT epoch (115,846 training images).
The images are synthetic unless ``--folder`` names real JPEGs: smooth random colour fields with
noise, at ImageNet's typical sizes (longer side ``--source-size``, aspect ratios 4:3, 3:4, 3:2,
2:3, 1:1), JPEG quality 90. Decoding cost depends on the pixel count and the entropy-coded size,
which these mimic; real photographs will differ somewhat.

Run (from the repository root):
    python -m benchmarks.decode_speed --device cuda --images 2048 --out decode-fragment.md
    python -m benchmarks.decode_speed --device cpu --images 256 --workers 2 --repeats 3

Evidence: the measured tables, each with its device, torch version and command, are in
BENCHMARKS.md; nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg, read_file, write_file

from longtail.train import resolve_device

IMAGENET_LT_TRAIN = 115_846
ASPECTS = ((4, 3), (3, 4), (3, 2), (2, 3), (1, 1))  # width : height
JPEG_SUFFIXES = (".jpg", ".jpeg")


def progress(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result table."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- images
def synthetic_image(width: int, height: int, generator: torch.Generator) -> torch.Tensor:
    """(3, H, W) uint8: a smooth random colour field plus noise, like a photograph's spectrum."""
    coarse = torch.rand(1, 3, max(height // 16, 2), max(width // 16, 2), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    noise = torch.randn(3, height, width, generator=generator) * 0.03
    return ((smooth + noise).clamp(0, 1) * 255).round().to(torch.uint8)


def write_synthetic_folder(folder: Path, count: int, longer_side: int, seed: int) -> list[Path]:
    """``count`` JPEGs (quality 90) of cycling aspect ratios; returns their paths."""
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(count):
        w, h = ASPECTS[i % len(ASPECTS)]
        scale = longer_side / max(w, h)
        image = synthetic_image(round(w * scale), round(h * scale), generator)
        path = folder / f"{i:06d}.jpg"
        write_file(str(path), encode_jpeg(image, quality=90))
        paths.append(path)
    return paths


def jpeg_files(folder: Path, limit: int | None) -> list[Path]:
    """JPEGs under ``folder`` (recursive, sorted), the first ``limit`` of them."""
    if not folder.is_dir():
        raise ValueError(f"--folder: expected a directory of JPEGs, got {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in JPEG_SUFFIXES)
    if not files:
        raise ValueError(f"--folder: expected .jpg/.jpeg files under {folder}, found none")
    return files[:limit] if limit else files


def resize_crop(image: torch.Tensor | Image.Image, size: int) -> torch.Tensor | Image.Image:
    """Shorter side to ``size`` (antialiased bilinear), then the central ``size`` × ``size``."""
    resized = TF.resize(image, size, antialias=True)
    return TF.center_crop(resized, [size, size])


# -------------------------------------------------------------------------------------- methods
class PilFolder(torch.utils.data.Dataset):
    """PIL decode + resize + crop per item, as the reference image-list datasets do."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return TF.pil_to_tensor(resize_crop(image.convert("RGB"), self.size))  # (3, S, S)


def _batches(items: Sequence, batch_size: int) -> list[Sequence]:
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


@dataclass
class Method:
    """One way to produce batches: ``run()`` makes every batch once and returns the image count."""

    name: str
    device: str
    workers: str
    run: Callable[[], int]
    note: str = ""


def pil_method(paths: Sequence[Path], args: argparse.Namespace, device: torch.device) -> Method:
    loader = torch.utils.data.DataLoader(
        PilFolder(paths, args.size),
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )

    def run() -> int:
        count = 0
        for batch in loader:  # a fresh iterator: workers start per epoch, as in the reference
            count += len(batch.to(device, non_blocking=True))
        return count

    return Method("pil-dataloader", "cpu → " + device.type, f"{args.workers} workers", run)


def decode_batch(paths: Sequence[Path], size: int, device: torch.device) -> torch.Tensor:
    """(B, 3, S, S) uint8 on ``device``: host file reads, one batched decode, resize and crop."""
    data = [read_file(str(p)) for p in paths]  # (bytes,) uint8 each, host
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # [(3, H, W)] on device
    return torch.stack([resize_crop(image, size) for image in images])


def decode_method(paths: Sequence[Path], args: argparse.Namespace, device: torch.device) -> Method:
    def run() -> int:
        return sum(
            len(decode_batch(b, args.size, device)) for b in _batches(paths, args.batch_size)
        )

    where = "nvJPEG" if device.type == "cuda" else "libjpeg-turbo"
    return Method("decode_jpeg", device.type, f"{torch.get_num_threads()} threads", run, where)


def build_cache(
    paths: Sequence[Path], args: argparse.Namespace, device: torch.device, file: Path
) -> float:
    """Decode every image once into an (N, 3, S, S) uint8 ``.npy``; returns the seconds taken."""
    start = time.perf_counter()
    cache = np.lib.format.open_memmap(
        file, mode="w+", dtype=np.uint8, shape=(len(paths), 3, args.size, args.size)
    )
    done = 0
    for batch in _batches(paths, args.batch_size):
        cache[done : done + len(batch)] = decode_batch(batch, args.size, device).cpu().numpy()
        done += len(batch)
    cache.flush()
    del cache
    return time.perf_counter() - start


def cache_method(file: Path, args: argparse.Namespace, device: torch.device) -> Method:
    cache = np.load(file, mmap_mode="r")  # (N, 3, S, S) uint8
    generator = torch.Generator().manual_seed(args.seed)

    def run() -> int:
        order = torch.randperm(len(cache), generator=generator).numpy()
        count = 0
        for idx in _batches(order, args.batch_size):
            batch = torch.from_numpy(cache[np.sort(idx)])  # sorted: sequential page reads
            count += len(batch.to(device, non_blocking=True))
        return count

    return Method("uint8-cache", "cpu → " + device.type, "main process", run)


# ---------------------------------------------------------------------------------- measurement
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(methods: list[Method], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """images/s of each repeat of each method, round robin, the order alternating."""
    rates: dict[str, list[float]] = {m.name: [] for m in methods}
    for repeat in range(repeats):
        for method in methods if repeat % 2 == 0 else methods[::-1]:
            synchronize(device)
            start = time.perf_counter()
            count = method.run()
            synchronize(device)
            rates[method.name].append(count / (time.perf_counter() - start))
            progress(f"  repeat {repeat + 1}/{repeats} {method.name}: {rates[method.name][-1]:.1f}")
    return rates


def rate_text(rate: float) -> str:
    return f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}"


def table(methods: list[Method], rates: dict[str, list[float]], device: torch.device) -> list[str]:
    lines = [
        "| method | device | workers / threads | images/s (median) | range over repeats | "
        f"ImageNet-LT epoch ({IMAGENET_LT_TRAIN:,} images), projected | note |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for m in methods:
        rs = rates[m.name]
        median = statistics.median(rs)
        lines.append(
            f"| {m.name} | {m.device} | {m.workers} | {rate_text(median)} | "
            f"{rate_text(min(rs))}–{rate_text(max(rs))} | {IMAGENET_LT_TRAIN / median:,.0f} s | "
            f"{m.note} |"
        )
    if device.type != "cuda":
        lines.append(
            "| decode_jpeg | cuda | - | not measured (no CUDA device) | - | - | nvJPEG: waits "
            "for a GPU |"
        )
    return lines


def describe_device(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}, {threads} CPU threads"
    names = []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
    model = names[0] if names else (platform.processor() or "unknown CPU")
    return f"cpu: {model}, {os.cpu_count()} cores, {threads} torch threads"


def report(
    args: argparse.Namespace,
    argv: Sequence[str],
    device: torch.device,
    origin: str,
    body: list[str],
    load_start: str,
) -> str:
    lines = [
        f"## JPEG decoding speed: uint8 {args.size}×{args.size} batches of {args.batch_size}",
        "",
        f"- device: {describe_device(device, args.threads)}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"python {platform.python_version()}",
        f"- command: `{shlex.join(['python', '-m', 'benchmarks.decode_speed', *argv])}`",
        f"- images: {origin}",
        f"- {args.repeats} repeats per method, interleaved; load average (1, 5, 15 min) at start "
        f"{load_start}, at the end {_load()}",
        "",
        *body,
    ]
    return "\n".join(lines) + "\n"


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "-"


def run(args: argparse.Namespace, argv: Sequence[str], device: torch.device) -> str:
    load_start = _load()
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder is not None:
            paths = jpeg_files(args.folder, args.images)
            origin = f"{len(paths):,} JPEGs from {args.folder}"
        else:
            paths = write_synthetic_folder(Path(tmp), args.images, args.source_size, args.seed)
            origin = (
                f"synthetic: {len(paths):,} JPEGs (quality 90, longer side {args.source_size}, "
                f"{sum(p.stat().st_size for p in paths) / len(paths) / 1024:.0f} KiB on average)"
            )
        cache_file = Path(tmp) / "cache.npy"
        progress("building the uint8 cache")
        build_s = build_cache(paths, args, device, cache_file)
        methods = [
            pil_method(paths, args, device),
            decode_method(paths, args, device),
            cache_method(cache_file, args, device),
        ]
        for method in methods:  # warm-up: worker start, decoder handles, page cache
            method.run()
        rates = measure(methods, args.repeats, device)
        per_image = 3 * args.size * args.size
        body = [
            *table(methods, rates, device),
            "",
            f"Building the cache (decode_jpeg on {device.type}, written to a local .npy) took "
            f"{build_s:.2f} s for {len(paths):,} images ({len(paths) / build_s:,.1f} images/s), "
            f"once. At {args.size}×{args.size} it holds {per_image / 1024:.0f} KiB per image: "
            f"{IMAGENET_LT_TRAIN * per_image / 2**30:.1f} GiB for ImageNet-LT's training set.",
        ]
    return report(args, argv, device, origin, body, load_start)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.decode_speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--folder", type=Path, default=None, help="real JPEGs instead of synthetic")
    p.add_argument("--images", type=int, default=512, help="synthetic count (or first N files)")
    p.add_argument("--source-size", type=int, default=500, help="longer side of synthetic JPEGs")
    p.add_argument("--size", type=int, default=224, help="side of the produced images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of pil-dataloader")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=cores, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    for name in ("images", "source_size", "size", "batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(
                f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}"
            )
    if args.workers < 0:
        p.error(f"--workers: expected an integer >= 0, got {args.workers}")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print its table (and write ``--out``); returns the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    text = run(args, argv, resolve_device(args.device))
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
