"""Frame extraction of the video datasets: every clip decoded once, at the training resolution.

The ``extract_frames`` stage. OpenCV decodes each clip listed in the prepared manifests (all splits)
from the clip directory named in ``raw_dir/source.json`` (``cropped_clips/<recording>/<clip>.mp4``,
EGTEA Gaze+'s layout), keeps the frames at ``frames.fps`` (``None``: every frame; otherwise the
first frame at or after each tick ``j / fps``, which for an integer ratio ``r = native / fps`` is
every ``r``-th frame, CDB-CE's ``extract_frames.py`` with ``sample_every = r``; a rate above the
native one keeps every frame, nothing is duplicated), resizes them so that the short side is
``frames.size`` (``frames.interpolation``: ``linear``, OpenCV's bilinear default that CDB-CE's
``GroupResize`` uses, vidaug ``affine.py:188``; or ``area``) and stores them in the frame store
``frames.store`` (:mod:`longtail.data.clipstore`: JPEG for EGTEA, raw arrays for moving digits),
one file per clip, ``frames_dir/<recording>/<clip><suffix>``: EGTEA's
``extracted_frames/<recording>/<clip>/`` layout with the frame folder replaced by one file.

**Never decoded twice.** Each clip is decoded into a content-keyed cache outside DVC's outputs,
``$LONGTAIL_CACHE/frames`` (default ``~/.cache/longtail/frames``), like the training checkpoints:
the key is the md5 of the MP4's bytes and the extraction settings (store, quality, fps, size,
interpolation), so neither ``dvc repro``, ``dvc exp run`` (which may reset the workspace's
outputs after a failure), a queued nor a ``--temp`` experiment (which start without the
workspace's ``data/frames``) can lose a finished clip. ``frames_dir`` holds hard links to the
cache entries (copies where the cache is on another file system). The md5 of an MP4 is computed
once and remembered by path, size and modification time. A clip found bad is remembered too,
with its reason and decoder messages, and not retried. Entries are written under a temporary
name of the writing process's own and renamed, so a killed run leaves only whole clips (and
perhaps a ``.part`` file) and queued experiments can fill the cache at the same time. Delete the
folder to reclaim space.

**Quiet decoding.** FFmpeg, inside OpenCV, writes its messages (``[mpeg4 @ 0x...] marker does not
match f_code``, thousands for one damaged clip) straight to the process's stderr from C.
Each decode runs with file descriptor 2 redirected to a temporary file (``dup2``; setting
``OPENCV_FFMPEG_LOGLEVEL`` would discard them instead, and OpenCV's own log level does not reach
them); the messages go to ``frames_dir/decoder.log``, the first ``LOG_LINES`` of each clip with
the count of the rest. The terminal gets one line per bad clip (its MP4 path and the reason) and
one line per split that lost clips.

Runs over the clips in ``frames.workers`` processes (1: inline), one OpenCV and one FFmpeg
decoding thread each (set ``frames.workers`` to the number of cores), with a one-line progress
count on stderr. If the settings differ from the run that filled ``frames_dir``
(``settings.json``), its files are discarded first, saying so (the cache keeps both).

Defaults: ``frames.size``, ``frames.segments`` and ``frames.store`` null resolve to the family's
published setting (:func:`resolve`, the family record's ``FrameDefaults``): EGTEA gets CDB-CE's 10
segments and 224 px (CDB-CE crops the 480×480 square of its 640×480 frames, then resizes it to
224; here frames are stored with short side 224 and the square is cropped from them, the same
image up to resampling) in JPEG; moving digits its 32 px and 8 segments as raw arrays.
``inject_imbalance`` records the resolved values in ``dataset.json`` (``frames``).

A clip that is missing, that OpenCV cannot open, that yields no frame, or that decodes fewer frames
than its container declares (beyond ``max(2, 5 %)`` of the declared count: a damaged or truncated
stream decodes up to the damage and stops) is *bad*: it is listed with its reason in
``bad_clips.txt``, and the stage fails naming it, unless ``frames.skip_bad`` is true, in which
case ``manifest.json`` lists it and the sources drop it from ``train`` and ``val``. It is never
dropped from ``test``: a test clip that cannot be decoded is scored as wrong, and ``evaluate``
reports clips listed and scored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import cv2
import numpy as np

from longtail import io
from longtail.data import base, clipstore

if TYPE_CHECKING:
    from longtail.config import FramesConfig

VIDEO_SUFFIX = ".mp4"
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
BAD_CLIPS = "bad_clips.txt"
DECODER_LOG = "decoder.log"
SHORTFALL = (2, 0.05)  # a clip may decode max(2, 5 %) fewer frames than its container declares
LOG_LINES = 20  # decoder messages kept per clip in decoder.log
BAD_LINES = 20  # bad clips named one per line on the terminal; the rest are counted
CACHE_VERSION = 1  # bump when the decoded frames of the same settings change
INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}


def resolve(cfg: FramesConfig, family: str) -> FramesConfig:
    """``cfg`` with a null ``size`` / ``segments`` / ``store`` replaced by ``family``'s setting."""
    defaults = base.get(family).frames
    if defaults is None:
        video = [name for name in base.names() if base.get(name).frames is not None]
        raise ValueError(f"frames: expected a video family ({', '.join(video)}); got {family!r}")
    return replace(
        cfg,
        size=cfg.size if cfg.size is not None else defaults.size,
        segments=cfg.segments if cfg.segments is not None else defaults.segments,
        store=cfg.store if cfg.store is not None else defaults.store,
    )


def used(cfg: FramesConfig, family: str) -> dict[str, Any]:
    """What ``dataset.json`` records: the resolved size, segments and store, and their origin."""
    resolved = resolve(cfg, family)
    origin = {
        key: f"frames.{key}" if getattr(cfg, key) is not None else f"{family} default"
        for key in ("size", "segments", "store")
    }
    return {
        "size": resolved.size,
        "segments": resolved.segments,
        "store": resolved.store,
        **{f"{key}_from": value for key, value in origin.items()},
    }


def store_of(cfg: FramesConfig) -> clipstore.Store:
    """The frame store of a resolved config."""
    assert cfg.store is not None, "resolve the config first"
    return clipstore.create(cfg.store, cfg.quality)


class BadClipError(ValueError):
    """A clip that OpenCV cannot decode (missing, unreadable, or without a single frame)."""


@dataclass(frozen=True)
class ClipResult:
    """What extracting one clip gave: its frame count and size, or why it is bad."""

    clip: str
    frames: int = 0
    height: int = 0
    width: int = 0
    decoded: bool = False  # False: reused from the cache or an earlier run (or bad)
    error: str | None = None
    log: str = ""  # the decoder's messages (first LOG_LINES lines and a count)


# ----------------------------------------------------------------------------------------- paths
def clip_output(frames_dir: Path, clip: str, suffix: str = ".npy") -> Path:
    """Where the frames of ``clip`` (``<recording>/<clip>``) are stored."""
    return Path(frames_dir) / f"{clip}{suffix}"


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


def cache_root() -> Path:
    """The frame cache, ``$LONGTAIL_CACHE/frames`` (``~/.cache/longtail/frames``)."""
    return io.cache_dir() / "frames"


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


def decode_clip(
    path: Path, *, fps: float | None, size: int, interpolation: str = "linear"
) -> np.ndarray:
    """Decode one clip: (T, H, W, 3) uint8 RGB, short side ``size``, frames kept at ``fps``.

    Raises:
        BadClipError: the file is missing, OpenCV cannot open it, no frame decodes, or it decodes
            fewer frames than its container declares (beyond ``SHORTFALL``).
    """
    if not Path(path).is_file():
        raise BadClipError("file not found")
    # One decoding thread (FFmpeg's default is one per CPU): the pool of frames.workers processes
    # already runs a clip per core, and frame threads cost about 15 % more CPU per frame here.
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    try:
        if not capture.isOpened():
            raise BadClipError("OpenCV cannot open it")
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # <= 0: the container does not say
        keep = kept_frames(capture.get(cv2.CAP_PROP_FPS), fps)
        frames, decoded = _read_kept(capture, keep, size, INTERPOLATION[interpolation])
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
    capture: cv2.VideoCapture, keep: Iterator[int], size: int, interpolation: int
) -> tuple[list[np.ndarray], int]:
    """Grab every frame, decode and resize only the kept ones; also returns the frames grabbed."""
    frames, wanted, index = [], next(keep), 0
    while capture.grab():
        if index == wanted:
            ok, bgr = capture.retrieve()
            if not ok:
                break
            # Resize first: the colour swap then touches 224×299 pixels, not 640×480.
            frames.append(cv2.cvtColor(resize(bgr, size, interpolation), cv2.COLOR_BGR2RGB))
            wanted = next(keep)
        index += 1
    return frames, index


def resize(frame: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``frame`` with its short side ``size`` (``interpolation`` when shrinking, else bilinear)."""
    height, width = frame.shape[:2]
    new_h, new_w = resized_shape(height, width, size)
    if (new_h, new_w) == (height, width):
        return frame
    mode = interpolation if new_h < height else cv2.INTER_LINEAR
    return cv2.resize(frame, (new_w, new_h), interpolation=mode)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Send file descriptor 2 (where FFmpeg writes from C) to a temporary file meanwhile.

    Yields a list that holds, after the block, the captured text's first ``LOG_LINES`` lines and,
    if there were more, a line counting the rest.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            text = log.read().decode(errors="replace").splitlines()
            lines += text[:LOG_LINES]
            if len(text) > LOG_LINES:
                lines.append(f"... {len(text) - LOG_LINES} more lines")


# ------------------------------------------------------------------------------------- the cache
def video_md5(path: Path) -> str:
    """md5 of ``path``'s bytes, remembered in the cache by path, size and modification time."""
    stat = Path(path).stat()
    memo = cache_root() / "md5" / f"{hashlib.md5(str(Path(path).resolve()).encode()).hexdigest()}"
    seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(memo.read_text())
        if {k: known.get(k) for k in seen} == seen:
            return known["md5"]
    digest = io.md5sum(path)
    shared_write(memo, lambda f: f.write(json.dumps({**seen, "md5": digest}).encode()))
    return digest


def shared_write(path: Path, dump: Callable[[BinaryIO], object]) -> None:
    """Write a cache file atomically under a name of this process's own, then rename it.

    Unlike ``io.atomic_path``, it removes no other temporary file beside ``path``: queued
    experiments may write the same entry at the same time (same content, last rename wins).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "wb") as f:
            dump(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cache_entry(md5: str, settings: dict[str, Any]) -> Path:
    """The cache path (without suffix) of a clip with content ``md5`` under ``settings``."""
    content = {"video": md5, "settings": settings, "version": CACHE_VERSION}
    blob = json.dumps(content, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()
    return cache_root() / key[:2] / key


def _place(entry: Path, output: Path) -> None:
    """Put ``entry`` at ``output``: a hard link, or a copy across file systems; atomically."""
    if output.exists() and os.path.samefile(entry, output):
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(output) as tmp:
        tmp.unlink()  # atomic_path made it; the link takes its name
        try:
            os.link(entry, tmp)
        except OSError:
            shutil.copyfile(entry, tmp)


# ------------------------------------------------------------------------------------- one clip
@dataclass(frozen=True)
class _Job:
    clip: str
    video: str
    output: str
    cfg: FramesConfig  # resolved
    settings: dict[str, Any]


def _extract_one(job: _Job) -> ClipResult:
    """Take ``job``'s clip from the cache, or decode it into the cache; then link it in place.

    Bad clips become results, not errors. Looks ``decode_clip`` up at call time, so a test can
    count or interrupt the decodes inline.
    """
    video, output, store = Path(job.video), Path(job.output), store_of(job.cfg)
    if not video.is_file():
        return ClipResult(job.clip, error="file not found")
    entry = cache_entry(video_md5(video), job.settings)
    frames_file = entry.parent / f"{entry.name}{store.suffix}"
    bad_file = entry.parent / f"{entry.name}.bad.json"
    decoded, log = False, []
    if bad_file.exists():
        bad = base.read_json(bad_file)
        return ClipResult(job.clip, error=bad["reason"], log=bad["log"])
    if not frames_file.exists():
        decode = sys.modules[__name__].decode_clip
        with captured_stderr() as log:  # FFmpeg's messages, kept for decoder.log
            try:
                frames = decode(
                    video, fps=job.cfg.fps, size=job.cfg.size, interpolation=job.cfg.interpolation
                )
            except BadClipError as err:
                error = str(err)
            else:
                error = None
        if error is not None:
            bad = {"reason": error, "log": "\n".join(log)}
            shared_write(bad_file, lambda f: f.write(json.dumps(bad).encode()))
            return ClipResult(job.clip, error=error, log="\n".join(log))
        shared_write(frames_file, lambda f: store.dump(f, frames))
        decoded = True
    _place(frames_file, output)
    t, h, w = store.shape(output)
    return ClipResult(job.clip, frames=t, height=h, width=w, decoded=decoded, log="\n".join(log))


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

    def __init__(self, total: int) -> None:
        self.total, self.done, self.reused, self.bad, self.last = total, 0, 0, 0, 0.0

    def update(self, result: ClipResult) -> None:
        self.done += 1
        self.bad += result.error is not None
        self.reused += result.error is None and not result.decoded
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
    settings = extraction_settings(frames_cfg)
    _start(frames_dir, settings)
    clips = listed_clips(prepared_dir)
    results = list(_extract_all(clips, source, frames_dir, frames_cfg, settings))
    bad = [r for r in results if r.error is not None]
    io.write_text(frames_dir / BAD_CLIPS, "".join(f"{r.clip}\t{r.error}\n" for r in bad))
    log = "".join(f"== {r.clip}\n{r.log}\n" for r in results if r.log)
    io.write_text(frames_dir / DECODER_LOG, log)
    _report(bad, source, prepared_dir, frames_dir, frames_cfg.skip_bad)
    if bad and not frames_cfg.skip_bad:
        names = ", ".join(f"{r.clip} ({r.error})" for r in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"extract_frames: expected every clip to decode; {len(bad)} of {len(clips)} could not "
            f"be decoded: {names}{more}. They are listed in {frames_dir / BAD_CLIPS}; set "
            f"frames.skip_bad: true to drop them from train and val (a bad test clip is scored "
            f"as wrong); the decoded clips are kept in {cache_root()} and are not decoded again."
        )
    io.write_json(frames_dir / MANIFEST, _manifest(results, source, settings, frames_cfg))


def extraction_settings(cfg: FramesConfig) -> dict[str, Any]:
    """What the stored frames depend on besides the video (the cache key and ``settings.json``)."""
    settings = {
        "format": cfg.store,
        "fps": cfg.fps,
        "size": cfg.size,
        "interpolation": cfg.interpolation,
    }
    return {**settings, "quality": cfg.quality} if cfg.store == "jpeg" else settings


def _start(frames_dir: Path, settings: dict[str, Any]) -> None:
    """Drop the completion marker; discard earlier clips if they were made with other settings."""
    (frames_dir / MANIFEST).unlink(missing_ok=True)  # a manifest means a finished extraction
    old = frames_dir / SETTINGS
    if old.exists() and base.read_json(old) != settings:
        print(
            f"extract_frames: {frames_dir} holds clips made with {base.read_json(old)}, not "
            f"{settings}: starting afresh (clips cached under these settings are reused)",
            file=sys.stderr,
        )
        shutil.rmtree(frames_dir)
    io.write_json(frames_dir / SETTINGS, settings)


def _extract_all(
    clips: Iterable[str],
    source: Path,
    frames_dir: Path,
    cfg: FramesConfig,
    settings: dict[str, Any],
) -> Iterator[ClipResult]:
    """One result per clip, from the cache or decoded."""
    suffix = store_of(cfg).suffix
    jobs = [
        _Job(
            clip,
            str(source / f"{clip}{VIDEO_SUFFIX}"),
            str(clip_output(frames_dir, clip, suffix)),
            cfg,
            settings,
        )
        for clip in clips
    ]
    progress = _Progress(len(jobs))
    try:
        for result in _run(jobs, cfg.workers):
            progress.update(result)
            yield result
    finally:
        progress.close()


def _report(
    bad: list[ClipResult], source: Path, prepared_dir: Path, frames_dir: Path, skip_bad: bool
) -> None:
    """One line per bad clip (its MP4 and why), one per split that lost clips, on stderr."""
    for result in bad[:BAD_LINES]:
        print(
            f"extract_frames: bad clip {source / result.clip}{VIDEO_SUFFIX}: {result.error}",
            file=sys.stderr,
        )
    if len(bad) > BAD_LINES:
        print(f"extract_frames: ... and {len(bad) - BAD_LINES} more bad clips", file=sys.stderr)
    names = {r.clip for r in bad}
    listing = frames_dir / BAD_CLIPS
    for split in base.SPLITS:
        clips = base.read_manifest(Path(prepared_dir), split)["clip"]
        lost = int(clips.isin(names).sum())
        if lost == 0:
            continue
        if split == "test":
            what = "could not be decoded; they count as wrong"
        else:
            what = "dropped" if skip_bad else "could not be decoded"
        print(f"{split}: {lost} of {len(clips)} clips {what} ({listing})", file=sys.stderr)
    if bad:
        print(f"extract_frames: decoder messages in {frames_dir / DECODER_LOG}", file=sys.stderr)


def _manifest(
    results: list[ClipResult], source: Path, settings: dict[str, Any], cfg: FramesConfig
) -> dict[str, Any]:
    good = [r for r in results if r.error is None]
    store = store_of(cfg)
    return {
        "kind": "video",
        "format": store.name,
        "suffix": store.suffix,
        "layout": f"<recording>/<clip>{store.suffix}, (T, H, W, 3) uint8 RGB ({store.name})",
        "source": str(source),
        "fps": settings["fps"] if settings["fps"] is not None else "native",
        "size": settings["size"],
        "interpolation": settings["interpolation"],
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
