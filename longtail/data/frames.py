"""Frame extraction of the video datasets: every clip decoded once, at the training resolution.

The ``extract_frames`` stage. OpenCV decodes each clip listed in the prepared manifests (all splits)
from the clip directory named in ``raw_dir/source.json`` (``cropped_clips/<recording>/<clip>.mp4``,
EGTEA Gaze+'s layout), keeps the frames at ``frames.fps`` (``None``: every frame; otherwise the
first frame at or after each tick ``j / fps``, which for an integer ratio ``r = native / fps`` is
every ``r``-th frame, CDB-CE's ``extract_frames.py`` with ``sample_every = r``; a rate above the
native one keeps every frame, nothing is duplicated), resizes them so that the short side is
``frames.size`` (area interpolation when shrinking, bilinear when enlarging) and stores one uint8
RGB array per clip, ``frames_dir/<recording>/<clip>.npy`` shaped (T, H, W, 3): EGTEA's
``extracted_frames/<recording>/<clip>/`` layout with the frame folder replaced by one array.

Why arrays rather than CDB-CE's ``000000.jpg`` folders, measured with :func:`benchmark_formats` on
the default set (moving digits: 335 clips of 16 frames, 32×32) on a 2-core CPU, median of 5 reads of
every clip, 3 runs agreeing within 2 ms::

    python -c "from longtail.data import frames; print(frames.benchmark_formats(
        'data/prepared', 'data/frames', 8))"

    npy, whole clip          20 ms     (what the on-device split reads, once per stage)
    npy, 8 frames, mmap      35 ms     (what a split too large for the device reads per epoch)
    JPEG, 8 frames           71 ms     (CDB-CE's loader: one cv2.imread per sampled frame)
    JPEG, all 16 frames     140 ms

Runs over the clips in ``frames.workers`` processes (1: inline), with a one-line progress count on
stderr. Every clip is written under a temporary name and renamed, so a killed run leaves only whole
clips; a rerun reuses every clip whose ``.npy`` exists and decodes only the others (the stage's
output must be declared ``persist: true`` in ``dvc.yaml`` for DVC to keep them). If ``fps`` or
``size`` differ from the run that wrote the existing clips (``settings.json``), they are all
discarded and the extraction starts fresh, saying so.

Defaults: ``frames.size`` and ``frames.segments`` null resolve to the dataset's published setting
(:data:`DEFAULTS`, :func:`resolve`): EGTEA gets CDB-CE's 10 segments and 224 px (CDB-CE crops the
480×480 square of its 640×480 frames, then resizes it to 224; here frames are stored with short side
224 and the square is cropped from them, the same image up to resampling), moving digits its 32 px
and 8 segments. ``inject_imbalance`` records the resolved values in ``dataset.json`` (``frames``)
and the extraction manifest records the size it used.

A clip that OpenCV cannot open, that yields no frame, or that decodes fewer frames than its
container declares (beyond ``max(2, 5 %)`` of the declared count: a damaged or truncated stream
decodes up to the damage and stops) is *bad*: it is listed with its reason in ``bad_clips.txt``,
and the stage fails naming it, unless ``frames.skip_bad`` is true, in which case ``manifest.json``
lists it and the sources drop it from ``train`` and ``val``. It is never dropped from ``test``: a
test clip that cannot be decoded is scored as wrong, and ``evaluate`` reports clips listed and
scored.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from longtail import io
from longtail.data import base

if TYPE_CHECKING:
    from longtail.config import FramesConfig

FORMAT = "npy"  # one (T, H, W, 3) uint8 RGB array per clip
CLIP_SUFFIX = ".npy"
VIDEO_SUFFIX = ".mp4"
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
BAD_CLIPS = "bad_clips.txt"
# Published frame settings per video family: (short side in px, TSN segments).
DEFAULTS = {"egtea": (224, 10), "moving_digits": (32, 8)}
SHORTFALL = (2, 0.05)  # a clip may decode max(2, 5 %) fewer frames than its container declares


def resolve(cfg: FramesConfig, family: str) -> FramesConfig:
    """``cfg`` with a null ``size`` / ``segments`` replaced by ``family``'s published setting."""
    if family not in DEFAULTS:
        raise ValueError(f"frames: expected a video family ({', '.join(DEFAULTS)}); got {family!r}")
    size, segments = DEFAULTS[family]
    return replace(
        cfg,
        size=cfg.size if cfg.size is not None else size,
        segments=cfg.segments if cfg.segments is not None else segments,
    )


def used(cfg: FramesConfig, family: str) -> dict[str, Any]:
    """What ``dataset.json`` records: the resolved size and segments, and where each came from."""
    resolved = resolve(cfg, family)
    return {
        "size": resolved.size,
        "segments": resolved.segments,
        "size_from": "frames.size" if cfg.size is not None else f"{family} default",
        "segments_from": "frames.segments" if cfg.segments is not None else f"{family} default",
    }


class BadClipError(ValueError):
    """A clip that OpenCV cannot decode (missing, unreadable, or without a single frame)."""


@dataclass(frozen=True)
class ClipResult:
    """What extracting one clip gave: its frame count and size, or why it is bad."""

    clip: str
    frames: int = 0
    height: int = 0
    width: int = 0
    decoded: bool = False  # False: reused from an earlier run (or bad)
    error: str | None = None


# ----------------------------------------------------------------------------------------- paths
def clip_output(frames_dir: Path, clip: str) -> Path:
    """Where the frames of ``clip`` (``<recording>/<clip>``) are stored."""
    return Path(frames_dir) / f"{clip}{CLIP_SUFFIX}"


def clips_dir(raw_dir: Path) -> Path:
    """The directory of the MP4 clips, as recorded by the download stage in ``source.json``."""
    source = base.read_json(Path(raw_dir) / "source.json")
    if "clips_dir" not in source:
        raise ValueError(
            f"{raw_dir}/source.json: expected a 'clips_dir' entry (a video dataset's download "
            f"output), got keys {sorted(source)}"
        )
    path = Path(source["clips_dir"])
    return path if path.is_absolute() else Path(raw_dir) / path


def listed_clips(prepared_dir: Path) -> list[str]:
    """Every clip of every prepared split, each once, sorted."""
    clips: set[str] = set()
    for split in base.SPLITS:
        clips.update(base.read_manifest(Path(prepared_dir), split)["clip"].astype(str))
    return sorted(clips)


# ---------------------------------------------------------------------------------------- decode
def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) with the short side ``size`` and the aspect ratio kept (long side rounded)."""
    if height <= width:
        return size, max(1, round(width * size / height))
    return max(1, round(height * size / width)), size


def kept_frames(native_fps: float, fps: float | None) -> Iterator[int]:
    """Increasing indices of the frames kept at ``fps``: the first frame at or after each tick.

    Output frame ``j`` is input frame ``ceil(j * native / fps)``; the iterator is endless and the
    decoder stops it at the clip's end. ``fps`` None or not below the native rate keeps every frame.
    """
    if fps is None or native_fps <= 0 or fps >= native_fps:
        yield from _count()
        return
    ratio = native_fps / fps
    last = -1
    for j in _count():
        index = math.ceil(j * ratio - 1e-6)  # 1e-6: j * ratio that is an integer up to rounding
        if index > last:
            last = index
            yield index


def _count() -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


def decode_clip(path: Path, *, fps: float | None, size: int) -> np.ndarray:
    """Decode one clip: (T, H, W, 3) uint8 RGB, short side ``size``, frames kept at ``fps``.

    Raises:
        BadClipError: the file is missing, OpenCV cannot open it, no frame decodes, or it decodes
            fewer frames than its container declares (beyond ``SHORTFALL``).
    """
    if not Path(path).is_file():
        raise BadClipError("file not found")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise BadClipError("OpenCV cannot open it")
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # <= 0: the container does not say
        keep = kept_frames(capture.get(cv2.CAP_PROP_FPS), fps)
        frames, decoded = _read_kept(capture, keep, size)
    finally:
        capture.release()
    if not frames:
        raise BadClipError("no frame could be decoded")
    if declared > 0 and declared - decoded > max(SHORTFALL[0], SHORTFALL[1] * declared):
        raise BadClipError(
            f"decoded {decoded} of the {declared} frames its container declares (damaged stream)"
        )
    return np.stack(frames)  # (T, H, W, 3)


def _read_kept(
    capture: cv2.VideoCapture, keep: Iterator[int], size: int
) -> tuple[list[np.ndarray], int]:
    """Grab every frame, decode and resize only the kept ones; also returns the frames grabbed."""
    frames, wanted, index = [], next(keep), 0
    while capture.grab():
        if index == wanted:
            ok, bgr = capture.retrieve()
            if not ok:
                break
            frames.append(_resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size))
            wanted = next(keep)
        index += 1
    return frames, index


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    height, width = frame.shape[:2]
    new_h, new_w = resized_shape(height, width, size)
    if (new_h, new_w) == (height, width):
        return frame
    shrink = new_h < height
    return cv2.resize(
        frame, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


# ------------------------------------------------------------------------------------- one clip
@dataclass(frozen=True)
class _Job:
    clip: str
    video: str
    output: str
    fps: float | None
    size: int


def _extract_one(job: _Job) -> ClipResult:
    """Decode ``job``'s clip and write its array atomically; bad clips become results, not errors.

    Looks ``decode_clip`` up at call time, so a test can count or interrupt the decodes inline.
    """
    try:
        frames = sys.modules[__name__].decode_clip(Path(job.video), fps=job.fps, size=job.size)
    except BadClipError as err:
        return ClipResult(job.clip, error=str(err))
    io.save_npy(job.output, frames)
    t, h, w, _ = frames.shape
    return ClipResult(job.clip, frames=t, height=h, width=w, decoded=True)


def _reused(clip: str, output: Path) -> ClipResult:
    """The result of a clip finished by an earlier run (its array header only is read)."""
    t, h, w, _ = np.load(output, mmap_mode="r").shape
    return ClipResult(clip, frames=int(t), height=int(h), width=int(w))


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already runs one clip per core


def _run(jobs: list[_Job], workers: int) -> Iterator[ClipResult]:
    """Results of ``jobs`` in order: inline for one worker, else over a process pool."""
    if workers == 1 or len(jobs) <= 1:
        yield from map(_extract_one, jobs)
        return
    chunk = max(1, min(16, len(jobs) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        yield from pool.map(_extract_one, jobs, chunksize=chunk)


class _Progress:
    """A single ``\\r`` line on stderr: clips done, decoded, reused and bad."""

    def __init__(self, total: int, reused: int) -> None:
        self.total, self.reused, self.done, self.bad, self.last = total, reused, reused, 0, 0.0

    def update(self, result: ClipResult) -> None:
        self.done += 1
        self.bad += result.error is not None
        now = time.monotonic()
        if now - self.last > 0.2 or self.done == self.total:
            self.last = now
            print(
                f"\rextract_frames: {self.done}/{self.total} clips ({self.reused} reused, "
                f"{self.bad} bad)",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        print(file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------- the stage
def extract(frames_cfg: FramesConfig, raw_dir: Path, prepared_dir: Path, frames_dir: Path) -> None:
    """Decode every clip of the prepared splits into ``frames_dir`` (see the module docstring).

    Raises:
        ValueError: naming the clips that could not be decoded, unless ``frames.skip_bad``.
    """
    frames_dir, source = Path(frames_dir), clips_dir(raw_dir)
    family = base.read_json(Path(prepared_dir) / "dataset.json")["family"]
    frames_cfg = resolve(frames_cfg, family)
    settings = {"format": FORMAT, "fps": frames_cfg.fps, "size": frames_cfg.size}
    _start(frames_dir, settings)
    clips = listed_clips(prepared_dir)
    results = list(_extract_all(clips, source, frames_dir, frames_cfg))
    bad = [r for r in results if r.error is not None]
    io.write_text(frames_dir / BAD_CLIPS, "".join(f"{r.clip}\t{r.error}\n" for r in bad))
    if bad and not frames_cfg.skip_bad:
        names = ", ".join(f"{r.clip} ({r.error})" for r in bad)
        raise ValueError(
            f"extract_frames: expected every clip to decode; {len(bad)} of {len(clips)} could not "
            f"be decoded: {names}. They are listed in {frames_dir / BAD_CLIPS}; set "
            f"frames.skip_bad: true to drop them from train and val (a bad test clip is scored "
            f"as wrong)."
        )
    io.write_json(frames_dir / MANIFEST, _manifest(results, source, settings, frames_cfg))


def _start(frames_dir: Path, settings: dict[str, Any]) -> None:
    """Drop the completion marker; discard earlier clips if they were made with other settings."""
    (frames_dir / MANIFEST).unlink(missing_ok=True)  # a manifest means a finished extraction
    old = frames_dir / SETTINGS
    if old.exists() and base.read_json(old) != settings:
        print(
            f"extract_frames: {frames_dir} holds clips made with {base.read_json(old)}, not "
            f"{settings}: starting fresh",
            file=sys.stderr,
        )
        shutil.rmtree(frames_dir)
    io.write_json(frames_dir / SETTINGS, settings)


def _extract_all(
    clips: Iterable[str], source: Path, frames_dir: Path, cfg: FramesConfig
) -> Iterator[ClipResult]:
    """Reuse the finished clips, decode the rest; yields one result per clip."""
    jobs, done = [], []
    for clip in clips:
        output = clip_output(frames_dir, clip)
        if output.exists():
            done.append(_reused(clip, output))
        else:
            jobs.append(
                _Job(clip, str(source / f"{clip}{VIDEO_SUFFIX}"), str(output), cfg.fps, cfg.size)
            )
    yield from done
    progress = _Progress(len(done) + len(jobs), len(done))
    try:
        for result in _run(jobs, cfg.workers):
            progress.update(result)
            yield result
    finally:
        progress.close()


def _manifest(
    results: list[ClipResult], source: Path, settings: dict[str, Any], cfg: FramesConfig
) -> dict[str, Any]:
    good = [r for r in results if r.error is None]
    return {
        "kind": "video",
        "format": FORMAT,
        "layout": "<recording>/<clip>.npy, (T, H, W, 3) uint8 RGB",
        "source": str(source),
        "fps": settings["fps"] if settings["fps"] is not None else "native",
        "size": settings["size"],
        "skip_bad": cfg.skip_bad,
        "clips": len(good),
        "frames": sum(r.frames for r in good),
        "decoded": sum(r.decoded for r in good),
        "reused": sum(not r.decoded for r in good),
        "bad_clips": [{"clip": r.clip, "reason": r.error} for r in results if r.error is not None],
        "per_clip": {
            r.clip: {"frames": r.frames, "height": r.height, "width": r.width} for r in good
        },
    }


def read_manifest(frames_dir: Path) -> dict[str, Any]:
    """The extraction manifest (an error naming the stage when it is missing)."""
    manifest = base.read_json(Path(frames_dir) / MANIFEST)
    if manifest.get("kind") != "video":
        raise ValueError(
            f"{frames_dir}/{MANIFEST}: expected a video extraction (kind: video), "
            f"got kind {manifest.get('kind')!r}"
        )
    return manifest


# ------------------------------------------------------------------------------------- benchmark
def benchmark_formats(
    prepared_dir: Path, frames_dir: Path, segments: int, repeats: int = 5
) -> dict[str, float]:
    """Milliseconds (median of ``repeats``) to load every extracted clip once, per storage format.

    Compares this module's arrays (whole clips, or ``segments`` frames memory-mapped) with CDB-CE's
    layout, one JPEG per frame (``segments`` evenly spaced frames, or all), written to a temporary
    folder from the arrays. Every read ends in a uint8 array in memory.
    """
    import statistics
    import tempfile

    clips = listed_clips(prepared_dir)
    arrays = [clip_output(frames_dir, c) for c in clips]
    with tempfile.TemporaryDirectory() as tmp:
        folders = [
            _write_jpegs(np.load(a), Path(tmp) / c) for a, c in zip(arrays, clips, strict=True)
        ]
        picks = [np.linspace(0, len(list(f.iterdir())) - 1, segments).astype(int) for f in folders]
        readers = {
            "npy_whole_clip": lambda: [np.load(a) for a in arrays],
            "npy_mmap_segments": lambda: [
                np.load(a, mmap_mode="r")[p] for a, p in zip(arrays, picks, strict=True)
            ],
            "jpeg_segments": lambda: [
                _read_jpegs(f, p) for f, p in zip(folders, picks, strict=True)
            ],
            "jpeg_all_frames": lambda: [_read_jpegs(f, None) for f in folders],
        }
        timings = {}
        for name, read in readers.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                read()
                times.append(time.perf_counter() - start)
            timings[name] = 1000 * statistics.median(times)
    return timings


def _write_jpegs(clip: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, frame in enumerate(clip):
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def _read_jpegs(folder: Path, picks: np.ndarray | None) -> np.ndarray:
    names = sorted(folder.iterdir()) if picks is None else [folder / f"{i:06d}.jpg" for i in picks]
    return np.stack([cv2.imread(str(n)) for n in names])
