"""EGTEA-scale frame extraction: frames/s per core, per-stage split, frame store size and reads.

Builds a tree in EGTEA Gaze+'s published layout (``cropped_clips/<recording>/<clip>.mp4``, 640×480
at 24 fps, written by OpenCV's ``mp4v`` encoder; ``action_annotation/{train,test}_split1.txt``,
1-based labels) of generated clips (a smooth random colour field drifting across the frame, plus
noise: it compresses like video, unlike pure noise), then measures, on one core
(``cv2.setNumThreads(1)``):

1. the stages of extracting one frame, ms each: ``read`` (OpenCV grab + retrieve: demux, decode,
   YUV to BGR), ``resize`` to short side 224 (``linear``, OpenCV's default and CDB-CE's, or
   ``area``), ``write`` (the frame store's encoding and file write);
2. the stage itself, ``longtail.data.frames.extract`` (hashing, cache, links included) with one
   worker (frames/s per core) and with ``--workers``;
3. the frame stores (``npy``, ``jpeg`` at ``--quality``): bytes per frame, and frames/s read the
   way training reads them (10 frames sampled per clip, decoded to RGB), one thread and
   ``--readers``;
4. what the network sees: each resize choice against CDB-CE's own path (the 480×480 centre square
   of the 640×480 frame resized to 224 by ``cv2.resize``'s bilinear default), after the centre
   crop and the Kinetics mean subtraction (0..255 scale): mean and max absolute difference and
   PSNR; and the JPEG store against the raw frames;
5. projections to EGTEA Gaze+ (10,321 clips, ``EGTEA_FRAMES`` frames): extraction hours on one
   core and on ``--workers``, store size in GB.

Run (from the repository root):
    python -m benchmarks.extract_speed --clips 16 --frames 96 --workers 2 --out extract.md

Evidence: the measured tables, with machine, load and command, are in BENCHMARKS.md; nothing here
asserts a number.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from longtail.config import DataConfig, FramesConfig
from longtail.data import base, clipstore, frames

EGTEA_CLIPS = 10_321
EGTEA_FRAMES = 1_050_000  # about; the count for the trimmed clips at 24 fps
KINETICS_MEAN_255 = np.array([114.7748, 107.7354, 99.4750])  # RGB
SIZE = 224
# (recording, split file) of the generated tree: train subjects, a val subject, test subjects.
RECORDINGS = (
    ("OP01-R01-PastaSalad", "train"),
    ("P20-R03-BaconAndEggs", "train"),  # P20-P26: CDB-CE's val subjects
    ("P03-R02-TurkeySandwich", "test"),
    ("P19-R05-Cheeseburger", "train"),
)


def progress(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result tables."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ the tree
def synthetic_clip(
    frames_count: int, width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """(T, H, W, 3) uint8 BGR: a smooth colour field drifting a few pixels a frame, plus noise."""
    pad = 4 * frames_count
    coarse = rng.random((max(2, (height + pad) // 24), max(2, (width + pad) // 24), 3))
    field = cv2.resize(coarse.astype(np.float32), (width + pad, height + pad), cv2.INTER_CUBIC)
    dx, dy = rng.integers(1, 4, size=2)
    clip = np.empty((frames_count, height, width, 3), dtype=np.uint8)
    for t in range(frames_count):
        window = field[dy * t : dy * t + height, dx * t : dx * t + width]
        noise = rng.normal(0, 0.012, window.shape).astype(np.float32)
        clip[t] = np.clip((window + noise) * 255, 0, 255).astype(np.uint8)
    return clip


def write_mp4(path: Path, clip: np.ndarray, fps: float) -> None:
    """Write BGR ``clip`` with OpenCV's mp4v encoder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = clip.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in clip:
        writer.write(frame)
    writer.release()


def write_egtea_tree(
    root: Path,
    clips: int,
    *,
    frames_count: int = 96,
    width: int = 640,
    height: int = 480,
    fps: float = 24.0,
    seed: int = 0,
) -> list[str]:
    """An EGTEA-format tree of ``clips`` generated clips under ``root``; returns the clip names.

    Clips cycle over :data:`RECORDINGS` (so train, val and test all get some) and the 19 verbs.
    """
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    names = []
    for k in range(clips):
        recording, split = RECORDINGS[k % len(RECORDINGS)]
        start = 1000 * k
        name = f"{recording}-{start}-{start + 4000}-F{24 * k:06d}-F{24 * k + frames_count:06d}"
        write_mp4(
            root / "cropped_clips" / recording / f"{name}.mp4",
            synthetic_clip(frames_count, width, height, rng),
            fps,
        )
        verb = k % 19 + 1
        lines[split].append(f"{name} {verb} {verb} {k % 7 + 1}\n")
        names.append(name)
    for split, rows in lines.items():
        path = root / "action_annotation" / f"{split}_split1.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(rows))
    return names


# ------------------------------------------------------------------------------ stage timings
def read_all(path: Path) -> list[np.ndarray]:
    """Every frame as OpenCV gives it (grab + retrieve), BGR, one decoding thread as the stage."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    out = []
    while capture.grab():
        out.append(capture.retrieve()[1])
    capture.release()
    return out


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (user + system)."""
    children = os.times()  # clock ticks: coarse, but the pool's workers run for seconds
    return time.process_time() + children.children_user + children.children_system


class Clock:
    """Wall and CPU seconds of the blocks it times, added up per name."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu_seconds() - cpu


def per_stage(
    videos: Sequence[Path], store: clipstore.Store, work: Path
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) ms per frame of read, resize (linear and area) and write, one core."""
    clock, count = Clock(), 0
    for i, video in enumerate(videos):
        with clock("read"):
            bgr = read_all(video)
        for name, mode in (("resize area", cv2.INTER_AREA), ("resize linear", cv2.INTER_LINEAR)):
            with clock(name):
                small = [cv2.cvtColor(frames.resize(f, SIZE, mode), cv2.COLOR_BGR2RGB) for f in bgr]
        with clock("write"):
            store.write(work / f"{i}{store.suffix}", np.stack(small))
        count += len(bgr)
    return {n: (1000 * clock.wall[n] / count, 1000 * clock.cpu[n] / count) for n in clock.wall}


def stage_rate(tree: Path, work: Path, cfg: FramesConfig) -> tuple[float, float, int]:
    """(frames per wall second, frames per CPU second, frames) of the extract_frames stage on
    ``tree`` with an empty frame cache (the CPU time includes the pool's workers)."""
    family = base.get("egtea")
    data = DataConfig(name="egtea", root=str(tree))
    raw, prepared, out = work / "raw", work / "prepared", work / f"frames-{cfg.workers}"
    if not raw.exists():
        family.download(data, raw)
        family.prepare(data, 0, raw, prepared)
    before = os.environ.get("LONGTAIL_CACHE")
    os.environ["LONGTAIL_CACHE"] = str(work / f"cache-{cfg.workers}")  # an empty frame cache
    try:
        clock = Clock()
        with clock("extract"):
            frames.extract(cfg, raw, prepared, out)
    finally:
        if before is None:
            del os.environ["LONGTAIL_CACHE"]
        else:
            os.environ["LONGTAIL_CACHE"] = before
    count = frames.read_manifest(out)["frames"]
    return count / clock.wall["extract"], count / clock.cpu["extract"], count


# -------------------------------------------------------------------------------------- stores
def store_numbers(
    clips: Sequence[np.ndarray], store: clipstore.Store, work: Path, readers: int, repeats: int
) -> dict[str, float]:
    """Bytes per frame; frames/s reading 10 sampled frames per clip (1 and ``readers`` threads)."""
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i, clip in enumerate(clips):
        paths.append(work / f"{store.name}-{i}{store.suffix}")
        store.write(paths[-1], clip)
    size = sum(p.stat().st_size for p in paths) / sum(len(c) for c in clips)
    rng = np.random.default_rng(0)
    picks = [np.sort(rng.integers(0, len(c), 10)) for c in clips]
    jobs = list(zip(paths, picks, strict=True))

    def timed(run: object) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return 10 * len(jobs) / statistics.median(times)

    one = timed(lambda: [store.read_frames(p, f) for p, f in jobs])
    with ThreadPoolExecutor(readers) as pool:
        many = timed(lambda: list(pool.map(lambda j: store.read_frames(*j), jobs)))
    return {"bytes": size, "read1": one, "readN": many}


# ------------------------------------------------------------------------- what the network sees
def network_input(rgb224: np.ndarray) -> np.ndarray:
    """Centre 224 square, Kinetics mean subtracted (0..255 scale): what evaluation feeds."""
    height, width = rgb224.shape[:2]
    top, left = (height - SIZE) // 2, (width - SIZE) // 2
    return rgb224[top : top + SIZE, left : left + SIZE].astype(np.float64) - KINETICS_MEAN_255


def reference_input(bgr: np.ndarray) -> np.ndarray:
    """CDB-CE's: the centre square of the full frame resized to 224 (bilinear), as RGB."""
    height, width = bgr.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = cv2.resize(bgr[top : top + side, left : left + side], (SIZE, SIZE))
    return cv2.cvtColor(square, cv2.COLOR_BGR2RGB).astype(np.float64) - KINETICS_MEAN_255


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(a - b)
    mse = float(np.mean(diff**2))
    psnr = 10 * np.log10(255**2 / mse) if mse > 0 else float("inf")
    return {"mean": float(diff.mean()), "max": float(diff.max()), "psnr": psnr}


def fidelity(videos: Sequence[Path], quality: int) -> dict[str, dict[str, float]]:
    """Each resize choice and the JPEG store against CDB-CE's input, over every frame."""
    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {
        "linear vs CDB-CE": [],
        "area vs CDB-CE": [],
        "linear vs area": [],
        f"jpeg q{quality} vs raw (linear)": [],
    }
    jpeg = clipstore.JpegStore(quality=quality)
    for video in videos:
        for bgr in read_all(video)[::8]:
            ref = reference_input(bgr)
            ours = {
                name: cv2.cvtColor(frames.resize(bgr, SIZE, mode), cv2.COLOR_BGR2RGB)
                for name, mode in (("linear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA))
            }
            decoded = jpeg.read(_roundtrip(jpeg, ours["linear"]))[0]
            pairs["linear vs CDB-CE"].append((network_input(ours["linear"]), ref))
            pairs["area vs CDB-CE"].append((network_input(ours["area"]), ref))
            pairs["linear vs area"].append(
                (network_input(ours["linear"]), network_input(ours["area"]))
            )
            pairs[f"jpeg q{quality} vs raw (linear)"].append(
                (network_input(decoded), network_input(ours["linear"]))
            )
    return {
        name: compare(np.stack([a for a, _ in p]), np.stack([b for _, b in p]))
        for name, p in pairs.items()
    }


def _roundtrip(store: clipstore.JpegStore, frame: np.ndarray) -> Path:
    path = Path(tempfile.mkdtemp()) / f"f{store.suffix}"
    store.write(path, frame[None])
    return path


def input_stats(videos: Sequence[Path]) -> dict[str, tuple[float, float]]:
    """Mean and std of the network input (all channels) for each resize choice and CDB-CE's."""
    values: dict[str, list[np.ndarray]] = {"linear": [], "area": [], "CDB-CE": []}
    for video in videos:
        for bgr in read_all(video)[::8]:
            for name, mode in (("linear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA)):
                rgb = cv2.cvtColor(frames.resize(bgr, SIZE, mode), cv2.COLOR_BGR2RGB)
                values[name].append(network_input(rgb))
            values["CDB-CE"].append(reference_input(bgr))
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in values.items()}


# ------------------------------------------------------------------------------------ the report
def load_text() -> str:
    try:
        return f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1 / 5 / 15 min)"
    except OSError:
        return "load average unknown"


def run(args: argparse.Namespace, argv: Sequence[str]) -> str:
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tree, work = Path(tmp) / "EGTEA", Path(tmp) / "work"
        work.mkdir()
        progress(f"writing {args.clips} clips of {args.frames} frames (640×480, 24 fps, mp4v)")
        names = write_egtea_tree(tree, args.clips, frames_count=args.frames)
        videos = sorted((tree / "cropped_clips").rglob("*.mp4"))
        load_before = load_text()
        jpeg = clipstore.JpegStore(quality=args.quality)
        progress("per-stage split, one core")
        stages = per_stage(videos, jpeg, work)
        cfg = FramesConfig(workers=1, interpolation="linear", store="jpeg", quality=args.quality)
        progress("extract_frames, one worker")
        one = stage_rate(tree, work, cfg)
        progress(f"extract_frames, {args.workers} workers")
        many = stage_rate(tree, work, replace(cfg, workers=args.workers))
        progress("frame stores")
        clips = [
            np.stack([cv2.cvtColor(frames.resize(f, SIZE), cv2.COLOR_BGR2RGB) for f in read_all(v)])
            for v in videos
        ]
        stores = {
            store.name: store_numbers(clips, store, work, args.readers, args.repeats)
            for store in (clipstore.NpyStore(), jpeg)
        }
        progress("what the network sees")
        sees = fidelity(videos[: args.fidelity_clips], args.quality)
        stats = input_stats(videos[: args.fidelity_clips])
        load_after = load_text()
    loads = (load_before, load_after)
    return report(args, argv, names, stages, one, many, stores, sees, stats, loads)


def report(
    args: argparse.Namespace,
    argv: Sequence[str],
    names: Sequence[str],
    stages: dict[str, tuple[float, float]],
    one: tuple[float, float, int],
    many: tuple[float, float, int],
    stores: dict[str, dict[str, float]],
    sees: dict[str, dict[str, float]],
    stats: dict[str, tuple[float, float]],
    loads: tuple[str, str],
) -> str:
    def total(resize: str) -> tuple[float, float]:
        parts = [stages[n] for n in ("read", resize, "write")]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    linear, area = total("resize linear"), total("resize area")
    lines = [
        f"`python -m benchmarks.extract_speed {shlex.join(argv)}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"OpenCV {cv2.__version__}, one OpenCV thread per process. Before: {loads[0]}; "
        f"after: {loads[1]}.",
        f"Tree: {len(names)} generated clips, {one[2]} frames, 640×480 at 24 fps (mp4v) → 224 px.",
        "Wall: elapsed time (what a loaded machine gives); CPU: user + system time of the process "
        "and its workers (what the work costs a core, whatever the load).",
        "",
        "| stage (one core) | wall ms / frame | CPU ms / frame | frames / CPU s |",
        "| --- | ---: | ---: | ---: |",
    ]
    rows = [(n, stages[n]) for n in ("read", "resize linear", "resize area", "write")]
    rows += [("read + resize linear + write", linear), ("read + resize area + write", area)]
    for name, (wall, cpu) in rows:
        label = f"write ({args.quality} JPEG)" if name == "write" else name
        lines.append(f"| {label} | {wall:.2f} | {cpu:.2f} | {1000 / max(cpu, 1e-6):.0f} |")
    lines += [
        "",
        "| extract_frames stage (jpeg, linear) | frames / wall s | frames / CPU s | "
        "EGTEA (1.05 M frames), wall | EGTEA, CPU hours |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, (wall, cpu, _) in (("1 worker", one), (f"{args.workers} workers", many)):
        lines.append(
            f"| {label} | {wall:.0f} | {cpu:.0f} | {EGTEA_FRAMES / wall / 3600:.2f} h | "
            f"{EGTEA_FRAMES / cpu / 3600:.2f} |"
        )
    lines += [
        "",
        f"| frame store | bytes / frame | EGTEA GB | read frames / s, 1 thread | "
        f"{args.readers} threads |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, numbers in stores.items():
        label = f"jpeg q{args.quality}" if name == "jpeg" else name
        lines.append(
            f"| {label} | {numbers['bytes']:,.0f} | {numbers['bytes'] * EGTEA_FRAMES / 1e9:.1f} | "
            f"{numbers['read1']:.0f} | {numbers['readN']:.0f} |"
        )
    lines += [
        "",
        "| network input (centre 224 crop, Kinetics mean subtracted, 0..255) | mean abs diff | "
        "max abs diff | PSNR dB |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, numbers in sees.items():
        lines.append(
            f"| {name} | {numbers['mean']:.2f} | {numbers['max']:.0f} | {numbers['psnr']:.1f} |"
        )
    lines.append("")
    lines.append(
        "Input mean / std (0..255 scale): "
        + "; ".join(f"{name} {m:.2f} / {s:.2f}" for name, (m, s) in stats.items())
        + "."
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16, help="generated clips in the tree")
    parser.add_argument("--frames", type=int, default=96, help="frames per clip (24 fps)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--readers", type=int, default=2, help="threads of the parallel read")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the store")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each read (median)")
    parser.add_argument(
        "--fidelity-clips", type=int, default=4, help="clips compared for the network input"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    text = run(args, argv)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
