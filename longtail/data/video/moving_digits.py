"""Moving digits, EGTEA's offline stand-in: short MP4 clips rendered from scikit-learn's digits.

``moving_digits`` (the video default): short MP4 clips rendered with OpenCV (``mp4v``) in EGTEA's
layout and split-file format, so that the code is the same as EGTEA's from the MP4 on. Each clip
shows one scikit-learn digit (8×8, upscaled to 16×16, bright on a dark background, colours drawn per
clip) moving in a straight line and bouncing off the borders of a 32×32 canvas, 16 frames at 8 fps;
the verb is the digit + 1. Subjects P01-P04 hold the train clips (exp or step profile of
``data.imbalance`` with ``n_max = data.n_max``, default 50) and the test clips
(``data.test_per_class``, default 10 per class), each subject in two recordings ``P0k-R01-Digits`` /
``P0k-R02-Digits``; subject P05 holds the val clips (``data.val_per_class``, default 10 per class)
inside ``train_split1.txt``, split off by subject exactly like EGTEA's. Every digit image is used
once, and scikit-learn's copy of the digits is checked against the ``digits`` family's md5
(``data.md5``). The render is seeded by ``data.seed`` (the training ``seed`` never reaches
``download``): the same seed gives the same split files and the same decoded frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd

from longtail import io
from longtail.data import base, frames
from longtail.data.digits import DIGITS_MD5, content_md5
from longtail.data.imbalance import profile_counts
from longtail.data.video.splits import (
    CLIPS_DIR,
    TEST_LIST,
    TRAIN_LIST,
    VERB_INDEX,
    prepare_clips,
    write_split_file,
)

if TYPE_CHECKING:
    from longtail.config import DataConfig

MD_CANVAS = 32
MD_DIGIT = 16
MD_FRAMES = 16
MD_FPS = 8.0
MD_SPEED = (1.0, 2.5)  # pixels per frame
MD_N_MAX = 50  # the smallest n_max leaving every class a clip at the default imbalance 50
MD_VAL_PER_CLASS = 10
MD_TEST_PER_CLASS = 10
MD_TRAIN_SUBJECTS = ("P01", "P02", "P03", "P04")
MD_VAL_SUBJECTS = ("P05",)
MD_RECORDINGS = ("R01", "R02")
MD_PADDING = 2


@dataclass(frozen=True)
class _ClipSpec:
    split: str  # train_split1 (train and val subjects) or test_split1
    digit: int
    image: int  # index into scikit-learn's digits
    subject: str


def moving_digits_counts(cfg: DataConfig) -> list[int]:
    """Per-class train clips of the moving-digits render (``data.profile`` / ``data.imbalance``)."""
    n_max = cfg.n_max if cfg.n_max is not None else MD_N_MAX
    counts = profile_counts(cfg.profile, n_max, 10, cfg.imbalance)
    if min(counts) < 1:
        raise ValueError(
            f"data.n_max: expected a value that leaves every class at least one train clip at "
            f"data.imbalance {cfg.imbalance:g} (n_max >= {math.ceil(cfg.imbalance)}); got "
            f"{n_max}, which gives {counts}"
        )
    return counts


def render_moving_digits(
    out_dir: Path,
    *,
    seed: int,
    train_counts: Sequence[int],
    val_per_class: int,
    test_per_class: int,
) -> dict[str, Any]:
    """Render the moving-digits clips and split files into ``out_dir`` (EGTEA's layout).

    Returns:
        ``source.json``'s content: where the clips are, the split files' md5, the train pixels'
        per-channel mean and std (RGB, [0, 1]).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    labels = digits.target.astype(np.int64)
    specs = _clip_specs(labels, train_counts, val_per_class, test_per_class, rng)
    rows: dict[str, list[tuple[str, int]]] = {TRAIN_LIST: [], TEST_LIST: []}
    cursor: dict[str, int] = {}
    stats = np.zeros((2, 3))  # per-channel sum and sum of squares of the train pixels
    for spec in specs:
        recording = f"{spec.subject}-{rng.choice(MD_RECORDINGS)}-Digits"
        name = _clip_name(recording, cursor, rng)
        clip = _render_clip(images[spec.image], rng)  # (T, H, W, 3) RGB
        _write_mp4(out_dir / CLIPS_DIR / recording / f"{name}{frames.VIDEO_SUFFIX}", clip)
        rows[spec.split].append((f"{recording}/{name}", spec.digit + 1))
        if spec.split == TRAIN_LIST and spec.subject not in MD_VAL_SUBJECTS:
            pixels = clip.reshape(-1, 3) / 255.0
            stats += (pixels.sum(0), (pixels**2).sum(0))
    md5 = {}
    for file, listed in rows.items():
        frame = pd.DataFrame({"clip": [c for c, _ in listed], "verb": [v for _, v in listed]})
        write_split_file(out_dir / file, frame.assign(action=frame["verb"], noun=1))
        md5[file] = io.md5sum(out_dir / file)
    io.write_text(out_dir / VERB_INDEX, "".join(f"{d} {d + 1}\n" for d in range(10)))
    count = MD_FRAMES * MD_CANVAS * MD_CANVAS * sum(train_counts)
    mean = stats[0] / count
    return {
        "family": "moving_digits",
        "clips_dir": CLIPS_DIR,
        "seed": seed,
        "md5": md5,
        "digits_md5": content_md5(images, labels),
        "pixel_mean": mean.tolist(),
        "pixel_std": np.sqrt(stats[1] / count - mean**2).tolist(),
    }


def _clip_specs(
    targets: np.ndarray,
    train_counts: Sequence[int],
    val_per_class: int,
    test_per_class: int,
    rng: np.random.Generator,
) -> list[_ClipSpec]:
    """Which digit image each clip shows and its subject; every image is used at most once."""
    specs = []
    for digit, n_train in enumerate(train_counts):
        pool = rng.permutation(np.flatnonzero(targets == digit))
        need = n_train + val_per_class + test_per_class
        if need > len(pool):
            raise ValueError(
                f"data.n_max: expected at most {len(pool) - val_per_class - test_per_class} "
                f"train clips of digit {digit} (scikit-learn has {len(pool)} images of it), "
                f"got {n_train}"
            )
        subjects = rng.choice(MD_TRAIN_SUBJECTS, size=n_train + test_per_class)
        specs += [
            _ClipSpec(TRAIN_LIST, digit, int(i), str(s))
            for i, s in zip(pool[:n_train], subjects[:n_train], strict=True)
        ]
        specs += [
            _ClipSpec(TRAIN_LIST, digit, int(i), MD_VAL_SUBJECTS[0])
            for i in pool[n_train : n_train + val_per_class]
        ]
        specs += [
            _ClipSpec(TEST_LIST, digit, int(i), str(s))
            for i, s in zip(pool[n_train + val_per_class : need], subjects[n_train:], strict=True)
        ]
    return specs


def _clip_name(recording: str, cursor: dict[str, int], rng: np.random.Generator) -> str:
    """An EGTEA-style name: ``<recording>-<start ms>-<end ms>-F<start>-F<end>``, clips in order."""
    start = cursor.get(recording, 0) + int(rng.integers(0, 40))
    end = start + MD_FRAMES - 1
    cursor[recording] = end + 1
    ms = [round(f * 1000 / MD_FPS) for f in (start, end + 1)]
    return f"{recording}-{ms[0]}-{ms[1]}-F{start:06d}-F{end:06d}"


def _render_clip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One clip, (T, H, W, 3) uint8 RGB: ``image`` moving in a straight line, bouncing."""
    glyph = cv2.resize(image, (MD_DIGIT, MD_DIGIT), interpolation=cv2.INTER_LINEAR)
    alpha = (glyph.astype(np.float64) / 255.0)[..., None]  # (D, D, 1)
    background = rng.integers(0, 64, size=3).astype(np.float64)
    colour = rng.integers(160, 256, size=3).astype(np.float64)
    span = MD_CANVAS - MD_DIGIT
    start = rng.uniform(0, span, size=2)
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*MD_SPEED)
    velocity = speed * np.array([np.sin(angle), np.cos(angle)])
    path = _bounce(start + np.arange(MD_FRAMES)[:, None] * velocity, span)  # (T, 2) top, left
    clip = np.empty((MD_FRAMES, MD_CANVAS, MD_CANVAS, 3), dtype=np.float64)
    clip[:] = background
    for t, (top, left) in enumerate(np.rint(path).astype(int)):
        window = clip[t, top : top + MD_DIGIT, left : left + MD_DIGIT]
        window[:] = window * (1 - alpha) + colour * alpha
    return np.rint(clip).astype(np.uint8)


def _bounce(position: np.ndarray, span: float) -> np.ndarray:
    """Reflect free positions into [0, span], as a ball bouncing between two walls."""
    folded = np.mod(position, 2 * span)
    return np.where(folded > span, 2 * span - folded, folded)


def _write_mp4(path: Path, clip: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = clip.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), MD_FPS, (width, height))
    if not writer.isOpened():
        raise RuntimeError(
            f"OpenCV cannot write the mp4v clip {path}: its FFmpeg backend is "
            f"missing (install opencv-python-headless from requirements.txt)"
        )
    try:
        for frame in clip:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def download_moving_digits(cfg: DataConfig, raw_dir: Path) -> None:
    """Render the moving-digits clips into ``raw_dir`` (atomically), as EGTEA's download looks."""
    counts = moving_digits_counts(cfg)
    val_pc = cfg.val_per_class if cfg.val_per_class is not None else MD_VAL_PER_CLASS
    test_pc = cfg.test_per_class if cfg.test_per_class is not None else MD_TEST_PER_CLASS
    if val_pc < 1:
        raise ValueError(f"data.val_per_class: expected >= 1 val clips per class, got {val_pc}")
    expected = DIGITS_MD5 if cfg.md5 == "auto" else cfg.md5
    with io.atomic_dir(raw_dir) as tmp:
        source = render_moving_digits(
            tmp, seed=cfg.seed, train_counts=counts, val_per_class=val_pc, test_per_class=test_pc
        )
        if expected is not None and source["digits_md5"] != expected:
            raise io.ChecksumError(
                f"checksum mismatch for scikit-learn's bundled digits: expected md5 {expected}, "
                f"got {source['digits_md5']}. Install the pinned scikit-learn, or set data.md5 to "
                f"{source['digits_md5']} (or null) to accept this copy."
            )
        io.write_json(tmp / "source.json", {**source, "train_counts": counts})


def prepare_moving_digits(cfg: DataConfig, seed: int, raw_dir: Path, out_dir: Path) -> None:
    """Manifests of moving digits: its split files, val = subject P05 (see the module docstring).

    ``seed`` is unused: the splits are fixed by the split files, as EGTEA's.
    """
    source = base.read_json(Path(raw_dir) / "source.json")
    prepare_clips(
        raw_dir,
        out_dir,
        num_classes=10,
        val_subjects=MD_VAL_SUBJECTS,
        mean=source["pixel_mean"],
        std=source["pixel_std"],
        family="moving_digits",
    )
