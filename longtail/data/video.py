"""Video datasets: EGTEA Gaze+ verbs as CDB-CE uses them, and moving digits, its offline stand-in.

**EGTEA Gaze+** (Li, Liu and Rehg, ECCV 2018): trimmed action clips of cooking, recorded by 32
subjects. CDB-CE (Sinha, Ohashi and Nakamura, ACCV 2020; hitachi-rd-cv/CDB-loss, ``EGTEA/``) trains
a Kinetics-pretrained 3D ResNeXt-101 on its 19 verb classes, long-tailed by themselves (1,421 train
clips of the largest class, 15 of the smallest), so no imbalance is injected (``data.imbalance`` and
``data.profile`` do not apply).

- Split files, EGTEA's ``train_split1.txt`` / ``test_split1.txt``: one clip per line,
  ``<clip> <action> <verb> <noun> [<noun> ...]``, labels 1-based (a few actions name two or three
  nouns; the first is kept as ``noun``). Clip
  ``OP01-R01-PastaSalad-1002316-1004005-F024051-F024101`` belongs to recording
  ``OP01-R01-PastaSalad`` (its first three dash-separated fields) of subject ``OP01``, and lives at
  ``cropped_clips/<recording>/<clip>.mp4``. The label is ``verb - 1``.
- Validation, as CDB-CE: split off ``train_split1`` by subject. CDB-CE's ``val_split.txt`` is every
  clip of P20-P26 (1,927 clips) and its ``train_split.txt`` every clip of the other 25 subjects,
  OP01-OP06 and P01-P19 (6,372); ``EGTEA_VAL_SUBJECTS`` reproduces that split. Held-out people
  rather than held-out clips, because clips of one recording share the person, kitchen and
  session: the class accuracies that CDB-CE turns into difficulties are measured on people the
  network has not seen. ``data.lists.val`` set: that list is val instead, its clips taken out of
  train. ``test_split1`` is the test set.
- Sampling (TSN-style, CDB-CE's ``createEGTEA``): the T frames of a clip are cut into
  S = ``frames.segments`` segments (null: CDB-CE's 10), segment ``i`` being frames
  ``[floor(i T / S), floor((i + 1) T / S))``. Training takes one uniformly random frame of each
  segment; evaluation takes each segment's centre frame, ``start + len // 2``, so val and test are
  deterministic. CDB-CE draws from ``linspace(0, T - 1, S + 1)`` boundaries, which never reach the
  last frame and fail on an empty segment; here the segments partition all T frames, and a clip with
  fewer frames than segments gives segment ``i`` frame ``floor(i T / S)``: its frames repeat, in
  order (nearest-neighbour stretching in time).
- Augmentation (CDB-CE, vidaug): training crops a 480×480 square at a random position of the
  640×480 frames, rotates by a uniform angle in [-10°, 10°] (bilinear, black corners), flips
  horizontally with probability 0.5 and resizes to 224; evaluation crops the centre square. One
  draw per clip, shared by all its frames. Here the frames are extracted with short side
  ``frames.size`` (null: 224, CDB-CE's input), so the square crop is the input, with no resize.
- Normalisation: that of the Kinetics checkpoint (Hara et al.'s 3D-ResNets: RGB, the ActivityNet
  mean [114.77, 107.74, 99.48] subtracted on the 0..255 scale, no division), written as mean / 255
  and std 1 / 255. CDB-CE fed OpenCV's BGR frames unnormalised.

**Moving digits** (``moving_digits``, the video default): short MP4 clips rendered with OpenCV
(``mp4v``) in EGTEA's layout and split-file format, so that the code is the same as EGTEA's from the
MP4 on. Each clip shows one scikit-learn digit (8×8, upscaled to 16×16, bright on a dark background,
colours drawn per clip) moving in a straight line and bouncing off the borders of a 32×32 canvas,
16 frames at 8 fps; the verb is the digit + 1. Subjects P01-P04 hold the train clips (exp or step
profile of ``data.imbalance`` with ``n_max = data.n_max``, default 50) and the test clips
(``data.test_per_class``, default 10 per class), each subject in two recordings
``P0k-R01-Digits`` / ``P0k-R02-Digits``; subject P05 holds the val clips (``data.val_per_class``,
default 10 per class) inside ``train_split1.txt``, split off by subject exactly like EGTEA's.
Every digit image is used once, and scikit-learn's copy of the digits is checked against the
``digits`` family's md5 (``data.md5``). The render is seeded by ``data.seed`` (the training
``seed`` never reaches ``download``): the same seed gives the same split files and the same decoded
frames. Training augmentation: ``random_crop_flip`` with padding 2 and no flip (digits are
chiral), the same crop for every frame of a clip.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from longtail import io
from longtail.data import base, frames
from longtail.data.augment import normalize, random_crop_flip
from longtail.data.digits import DIGITS_MD5, content_md5
from longtail.data.imbalance import profile_counts

if TYPE_CHECKING:
    from longtail.config import DataConfig

# Layout shared by both families (EGTEA's names).
CLIPS_DIR = "cropped_clips"
TRAIN_LIST, TEST_LIST, VAL_LIST = "train_split1.txt", "test_split1.txt", "val_split.txt"
VERB_INDEX = "verb_idx.txt"  # EGTEA's "<verb name> <index>" lines, index 1-based
MANIFEST_COLUMNS = ("clip", "recording", "subject", "label", "verb", "noun", "action")

# EGTEA Gaze+ as CDB-CE uses it.
EGTEA_NUM_CLASSES = 19
EGTEA_VAL_SUBJECTS = tuple(f"P{i}" for i in range(20, 27))  # CDB-CE's val_split.txt
EGTEA_ROTATION_DEGREES = 10.0
KINETICS_MEAN = (114.7748 / 255, 107.7354 / 255, 99.4750 / 255)  # RGB, ActivityNet mean
KINETICS_STD = (1 / 255, 1 / 255, 1 / 255)  # mean subtraction only, on the 0..255 scale
# Where the official download keeps the annotation files, relative to data.root.
EGTEA_LIST_DIRS = ("action_annotation", ".")

# Moving digits.
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

# A split whose frames take at most this many bytes is held on the device as one uint8 tensor;
# a larger one is read per batch from the memory-mapped arrays (no FramesConfig key for it yet).
DEVICE_CACHE_BYTES = 4 * 2**30


# ------------------------------------------------------------------------------------ split files
def parse_clip_name(name: str) -> tuple[str, str]:
    """``(recording, subject)`` of an EGTEA clip name (``OP01-R01-PastaSalad-...``)."""
    parts = name.split("-")
    # One path component: the name becomes data/frames/<recording>/<clip>.npy, written by a stage.
    if len(parts) < 4 or not all(parts[:3]) or "/" in name or "\\" in name:
        raise ValueError(
            f"clip name: expected <subject>-<recipe id>-<recipe>-... as in "
            f"OP01-R01-PastaSalad-1002316-1004005-F024051-F024101, got {name!r}"
        )
    return "-".join(parts[:3]), parts[0]


def read_split_file(path: Path) -> pd.DataFrame:
    """Parse an EGTEA split file: one row per clip with 1-based ``action``, ``verb``, ``noun``.

    Returns:
        Columns ``clip`` (``<recording>/<clip>``), ``recording``, ``subject``, ``verb``, ``noun``,
        ``action``, in file order.
    """
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.strip():
            rows.append(_parse_line(line, f"{path}:{number}"))
    if not rows:
        raise ValueError(f"{path}: expected lines '<clip> <action> <verb> <noun>', got none")
    frame = pd.DataFrame(rows, columns=["clip", "recording", "subject", "verb", "noun", "action"])
    duplicated = frame["clip"][frame["clip"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: expected each clip once, got {duplicated.iloc[0]} twice")
    return frame


def _parse_line(line: str, where: str) -> tuple[str, str, str, int, int, int]:
    fields = line.split()
    try:
        labels = [int(f) for f in fields[1:]]  # action, verb, noun, then any further nouns
    except ValueError:
        labels = []
    if len(labels) < 3:
        raise ValueError(
            f"{where}: expected '<clip> <action> <verb> <noun> [<noun> ...]' with integer "
            f"labels, got {line.strip()!r}"
        )
    if min(labels) < 1:
        raise ValueError(f"{where}: expected 1-based labels (>= 1), got {line.strip()!r}")
    action, verb, noun = labels[:3]
    recording, subject = parse_clip_name(fields[0])
    return f"{recording}/{fields[0]}", recording, subject, verb, noun, action


def write_split_file(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` (``clip`` as ``<recording>/<clip>``, 1-based labels) in EGTEA's format."""
    lines = [
        f"{clip.split('/')[-1]} {a} {v} {n}\n"
        for clip, a, v, n in zip(
            frame["clip"], frame["action"], frame["verb"], frame["noun"], strict=True
        )
    ]
    io.write_text(path, "".join(lines))


def split_by_subject(
    frame: pd.DataFrame, subjects: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rest, held)``: the rows of ``subjects`` are held out, the others kept, order preserved."""
    held = frame["subject"].isin(list(subjects))
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)


def read_class_names(path: Path, num_classes: int) -> list[str]:
    """Verb names from an EGTEA ``verb_idx.txt`` (``<name> <index>``), else ``verb_01``, ..."""
    names = [f"verb_{c + 1:02d}" for c in range(num_classes)]
    if not Path(path).exists():
        return names
    for line in Path(path).read_text().splitlines():
        name, _, index = line.strip().rpartition(" ")
        if name and index.isdigit() and 1 <= int(index) <= num_classes:
            names[int(index) - 1] = name
    return names


def _labelled(frame: pd.DataFrame, num_classes: int, where: str) -> pd.DataFrame:
    """Add ``label = verb - 1`` after checking the verbs, and order the columns."""
    bad = frame["verb"][(frame["verb"] < 1) | (frame["verb"] > num_classes)]
    if len(bad):
        raise ValueError(f"{where}: expected verb labels 1..{num_classes}, got {int(bad.iloc[0])}")
    frame = frame.assign(label=frame["verb"] - 1)
    return frame[list(MANIFEST_COLUMNS)]


def prepare_clips(
    raw_dir: Path,
    out_dir: Path,
    *,
    num_classes: int,
    val_subjects: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    family: str,
) -> None:
    """Manifests of a video dataset in EGTEA's format (both families share this).

    Reads ``train_split1.txt`` and ``test_split1.txt`` (and ``val_split.txt`` if present) from
    ``raw_dir``; val is ``val_split.txt``'s clips, or the train clips of ``val_subjects``.
    """
    raw_dir = Path(raw_dir)
    train = read_split_file(raw_dir / TRAIN_LIST)
    test = read_split_file(raw_dir / TEST_LIST)
    val_file = VAL_LIST if (raw_dir / VAL_LIST).exists() else TRAIN_LIST
    if val_file == VAL_LIST:
        val = read_split_file(raw_dir / VAL_LIST)
        train = train[~train["clip"].isin(val["clip"])].reset_index(drop=True)
        held_by = f"the list {VAL_LIST}"
    else:
        train, val = split_by_subject(train, val_subjects)
        held_by = f"subjects {', '.join(val_subjects)}"
    _check_splits(train, val, test, held_by)
    manifests = {
        name: _labelled(frame, num_classes, str(raw_dir / file))
        for name, frame, file in (
            ("train", train, TRAIN_LIST),
            ("val", val, val_file),
            ("test", test, TEST_LIST),
        )
    }
    info = {
        "kind": "video",
        "family": family,
        "in_channels": 3,
        "mean": list(mean),
        "std": list(std),
        "val_held_out_by": held_by,
    }
    names = read_class_names(raw_dir / VERB_INDEX, num_classes)
    base.write_prepared(Path(out_dir), manifests, names, info)


def _check_splits(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, held_by: str) -> None:
    if len(val) == 0 or len(train) == 0:
        raise ValueError(
            f"{TRAIN_LIST}: expected clips both of and outside the validation {held_by}; got "
            f"{len(train)} train and {len(val)} val clips"
        )
    shared = set(test["clip"]) & (set(train["clip"]) | set(val["clip"]))
    if shared:
        raise ValueError(
            f"{TEST_LIST}: expected no clip of the train list, got {len(shared)}, e.g. "
            f"{sorted(shared)[0]}"
        )


# ----------------------------------------------------------------------------------- moving digits
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


# ------------------------------------------------------------------------------------------ EGTEA
def _egtea_list(cfg: DataConfig, root: Path, which: str, file: str) -> Path | None:
    """The split file ``which`` (train / test / val): ``data.lists.<which>`` or the official one."""
    given = getattr(cfg.lists, which)
    if given is not None:
        path = Path(given) if Path(given).is_absolute() else root / given
        if not path.is_file():
            raise ValueError(
                f"data.lists.{which}: expected an EGTEA split file (absolute, or "
                f"relative to data.root), got {given!r}: {path} does not exist"
            )
        return path
    if which == "val":
        return None  # CDB-CE's subject split
    candidates = [root / d / file for d in EGTEA_LIST_DIRS]
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(
        f"data.lists.{which}: expected EGTEA's {file}; none of "
        f"{', '.join(map(str, candidates))} exists (set data.lists.{which})"
    )


def download_egtea(cfg: DataConfig, raw_dir: Path) -> None:
    """Check the user's EGTEA Gaze+ copy and record it; the clips stay where they are.

    ``data.root`` must hold ``cropped_clips/`` and the split files (``action_annotation/`` as
    published, or ``data.lists.train`` / ``data.lists.test``). The split files (and
    ``verb_idx.txt`` when found) are copied into ``raw_dir``, with their md5 in ``source.json``.
    """
    if cfg.root is None:
        raise ValueError(
            "data.root: expected the EGTEA Gaze+ directory holding cropped_clips/ "
            "and the split files, got null"
        )
    root = Path(cfg.root).expanduser().resolve()
    if not (root / CLIPS_DIR).is_dir():
        raise ValueError(
            f"data.root: expected a directory with EGTEA's {CLIPS_DIR}/ (the "
            f"trimmed clips), got {cfg.root!r}: {root / CLIPS_DIR} is not one"
        )
    lists = {
        which: _egtea_list(cfg, root, which, file)
        for which, file in (("train", TRAIN_LIST), ("test", TEST_LIST), ("val", VAL_LIST))
    }
    with io.atomic_dir(raw_dir) as tmp:
        md5 = {}
        for which, file in (("train", TRAIN_LIST), ("test", TEST_LIST), ("val", VAL_LIST)):
            if lists[which] is not None:
                shutil.copyfile(lists[which], tmp / file)
                md5[file] = io.md5sum(tmp / file)
        verbs = next((p for d in EGTEA_LIST_DIRS if (p := root / d / VERB_INDEX).is_file()), None)
        if verbs is not None:
            shutil.copyfile(verbs, tmp / VERB_INDEX)
        io.write_json(
            tmp / "source.json",
            {
                "family": "egtea",
                "root": str(root),
                "clips_dir": str(root / CLIPS_DIR),
                "lists": {k: str(v) for k, v in lists.items() if v is not None},
                "md5": md5,
            },
        )


def prepare_egtea(cfg: DataConfig, seed: int, raw_dir: Path, out_dir: Path) -> None:
    """Manifests of EGTEA's 19 verbs with CDB-CE's subject-based val split; ``seed`` is unused."""
    prepare_clips(
        raw_dir,
        out_dir,
        num_classes=EGTEA_NUM_CLASSES,
        val_subjects=EGTEA_VAL_SUBJECTS,
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        family="egtea",
    )


# --------------------------------------------------------------------------------- clip sampling
def sample_frames(
    num_frames: torch.Tensor, segments: int, *, train: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Frame indices of each clip, one per segment (TSN; see the module docstring).

    Args:
        num_frames: (B,) frame count of each clip, >= 1.
        segments: S, the number of segments (and of frames taken).
        train: one uniform frame per segment if True, else each segment's centre frame.
        generator: source of the training draws (unused in evaluation), on ``num_frames``'s device.

    Returns:
        (B, S) int64 indices, non-decreasing along S.
    """
    n = num_frames.to(torch.int64)[:, None]  # (B, 1)
    i = torch.arange(segments, device=n.device)  # (S,)
    start = i * n // segments  # (B, S)
    length = ((i + 1) * n // segments - start).clamp(min=1)  # a clip shorter than S repeats frames
    if not train:
        return start + length // 2
    assert generator is not None, "training draws need a generator"
    u = torch.rand(start.shape, generator=generator, device=n.device, dtype=torch.float64)
    return start + torch.minimum((u * length).long(), length - 1)


# ---------------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class ClipAugment:
    """A family's clip augmentation; every draw is per clip and shared by its frames.

    ``square``: CDB-CE's, a random square of the short side in training (centre in evaluation),
    rotation in ``[-degrees, degrees]`` and horizontal flip. Otherwise ``random_crop_flip`` with
    ``padding`` and ``flip`` in training and nothing in evaluation.
    """

    square: bool = False
    padding: int = 0
    flip: bool = False
    degrees: float = 0.0

    def __call__(
        self, clips: torch.Tensor, *, train: bool, generator: torch.Generator
    ) -> torch.Tensor:
        """Augment (B, C, T, H, W) uint8 clips; returns uint8 (B, C, T, H', W')."""
        if self.square:
            return square_crop(
                clips, train=train, flip=self.flip, degrees=self.degrees, generator=generator
            )
        if train and (self.padding > 0 or self.flip):
            return random_crop_flip(
                clips, padding=self.padding, flip=self.flip, generator=generator
            )
        return clips


def square_crop(
    clips: torch.Tensor, *, train: bool, flip: bool, degrees: float, generator: torch.Generator
) -> torch.Tensor:
    """CDB-CE's crop: a square of the short side, random (train) or central, then flip and rotate.

    The draws, all from ``generator`` on the clips' device, in order: ``rand(B)`` for the crop
    offsets along the long side, ``rand(B)`` for the flips (< 0.5 flips), ``rand(B)`` for the
    angles (uniform in ``[-degrees, degrees]``).
    """
    batch, _, _, height, width = clips.shape
    side, long_axis = min(height, width), (3 if height > width else 4)
    slack = max(height, width) - side
    if not train:
        return clips.narrow(long_axis, slack // 2, side)
    device = clips.device
    offsets = (torch.rand(batch, generator=generator, device=device) * (slack + 1)).long()
    offsets = offsets.clamp(max=slack)  # (B,)
    index = offsets[:, None] + torch.arange(side, device=device)  # (B, side)
    shape = [batch, 1, 1, 1, 1]
    shape[long_axis] = side
    index = index.view(shape).expand(*clips.shape[:long_axis], side, *clips.shape[long_axis + 1 :])
    cropped = clips.gather(long_axis, index)  # (B, C, T, side, side)
    flips = torch.rand(batch, generator=generator, device=device) < 0.5
    angles = (torch.rand(batch, generator=generator, device=device) * 2 - 1) * degrees
    return _flip_rotate(cropped, flips if flip else torch.zeros_like(flips), angles)


def _flip_rotate(clips: torch.Tensor, flips: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Flip and rotate square clips about their centre (bilinear, zero fill), one per clip."""
    batch, channels, steps, side, _ = clips.shape
    radians = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(radians), torch.sin(radians)
    sign = 1.0 - 2.0 * flips.double()  # -1 mirrors the output's x before rotating
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64, device=clips.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sign, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * sign, cos
    flat = clips.reshape(batch, channels * steps, side, side).float()  # frames share the warp
    grid = F.affine_grid(theta.float(), list(flat.shape), align_corners=False)
    warped = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.round_().clamp_(0, 255).to(torch.uint8).reshape(clips.shape)


# ----------------------------------------------------------------------------------------- source
class _DeviceClips:
    """Every clip of a split in one uint8 tensor (N, T_max, H, W, 3) on the device."""

    def __init__(self, paths: Sequence[Path], shape: tuple[int, int, int], device: torch.device):
        t_max, height, width = shape
        data = np.zeros((len(paths), t_max, height, width, 3), dtype=np.uint8)
        for row, path in enumerate(paths):
            clip = np.load(path)
            data[row, : len(clip)] = clip
        self.data = torch.from_numpy(data).to(device)

    def gather(self, idx: torch.Tensor, frame_idx: torch.Tensor) -> torch.Tensor:
        """(B, S, H, W, 3) uint8 frames ``frame_idx`` (B, S) of clips ``idx`` (B,)."""
        return self.data[idx[:, None], frame_idx]


class _DiskClips:
    """Clips read per batch from their memory-mapped arrays: only the sampled frames are read."""

    def __init__(self, paths: Sequence[Path], device: torch.device) -> None:
        self.paths, self.device = list(paths), device

    def gather(self, idx: torch.Tensor, frame_idx: torch.Tensor) -> torch.Tensor:
        rows, frame_rows = idx.tolist(), frame_idx.cpu().numpy()  # host sync: the read needs them
        batch = np.stack(
            [
                np.load(self.paths[r], mmap_mode="r")[f]
                for r, f in zip(rows, frame_rows, strict=True)
            ]
        )
        return torch.from_numpy(batch).to(self.device, non_blocking=True)


class ClipSource:
    """A split of clips: S frames sampled per clip, augmented alike across a clip, normalised.

    Args:
        paths: the clips' ``.npy`` arrays, (T, H, W, 3) uint8 RGB, all frames of one size.
        num_frames: T of each clip.
        labels: (N,) integer labels.
        segments: S.
        mean, std: per-channel normalisation of frames scaled to [0, 1].
        augment: the family's augmentation.
        device: where batches are produced (and the clips held, if they fit).
        cache_bytes: the largest split held on the device; larger ones are read per batch.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        num_frames: Sequence[int],
        labels: torch.Tensor,
        *,
        frame_size: tuple[int, int],
        segments: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: ClipAugment,
        device: torch.device,
        cache_bytes: int = DEVICE_CACHE_BYTES,
    ) -> None:
        self.labels = labels.to(torch.int64).cpu()
        self.in_channels = 3
        self.segments, self.augment, self.device = segments, augment, device
        self.mean, self.std = tuple(mean), tuple(std)
        t_max = max(num_frames, default=1)
        size = len(paths) * t_max * frame_size[0] * frame_size[1] * 3
        self.cached = size <= cache_bytes
        self.store = (
            _DeviceClips(paths, (t_max, *frame_size), device)
            if self.cached
            else _DiskClips(paths, device)
        )
        self.num_frames = torch.as_tensor(list(num_frames), dtype=torch.int64, device=device)
        self._labels_dev = self.labels.to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: torch.Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x (B, C, S, H, W) float normalised, y (B,))`` on the device, in ``order``."""
        order = order.to(self.device)
        for idx in order.split(batch_size):
            frame_idx = sample_frames(
                self.num_frames[idx], self.segments, train=train, generator=generator
            )  # (B, S)
            x = self.store.gather(idx, frame_idx).permute(0, 4, 1, 2, 3).contiguous()
            x = self.augment(x, train=train, generator=generator)  # (B, C, S, H', W') uint8
            yield normalize(x, self.mean, self.std), self._labels_dev[idx]


def open_clips(ctx: base.SourceContext, split: str, augment: ClipAugment) -> ClipSource:
    """A :class:`ClipSource` over ``split``'s extracted clips.

    Clips listed as bad (``frames.skip_bad``) are dropped from ``train`` and ``val``. From
    ``test`` they are dropped too, as they have no frames, but their labels stay in the source's
    ``unscored_labels``: ``evaluate`` counts them as wrong, so the test set never shrinks
    silently.
    """
    info = base.read_json(ctx.prepared_dir / "dataset.json")
    extracted = frames.read_manifest(ctx.frames_dir)
    manifest = base.read_manifest(ctx.prepared_dir, split)
    bad = manifest["clip"].isin({entry["clip"] for entry in extracted["bad_clips"]})
    unscored = torch.tensor(manifest["label"][bad].to_numpy(), dtype=torch.int64)
    manifest = manifest[~bad].reset_index(drop=True)
    per_clip = extracted["per_clip"]
    missing = [c for c in manifest["clip"] if c not in per_clip]
    if missing:
        raise ValueError(
            f"{ctx.frames_dir}: expected frames of every {split} clip, {len(missing)} "
            f"are missing (e.g. {missing[0]}): rerun extract_frames"
        )
    sizes = {(per_clip[c]["height"], per_clip[c]["width"]) for c in manifest["clip"]}
    if len(sizes) > 1:
        raise ValueError(f"{split}: expected frames of one size in a split, got {sorted(sizes)}")
    source = ClipSource(
        [frames.clip_output(ctx.frames_dir, c) for c in manifest["clip"]],
        [per_clip[c]["frames"] for c in manifest["clip"]],
        torch.tensor(manifest["label"].to_numpy(), dtype=torch.int64),
        frame_size=sizes.pop() if sizes else (1, 1),
        segments=frames.resolve(ctx.frames, info["family"]).segments,
        mean=info["mean"],
        std=info["std"],
        augment=augment,
        device=ctx.device,
    )
    if split == "test":
        source.unscored_labels = unscored
    return source


MOVING_DIGITS_AUGMENT = ClipAugment(padding=MD_PADDING, flip=False)  # digits are chiral
EGTEA_AUGMENT = ClipAugment(square=True, flip=True, degrees=EGTEA_ROTATION_DEGREES)

MOVING_DIGITS = base.register(
    base.Family(
        name="moving_digits",
        kind="video",
        default_arch="resnet3d_small",
        download=download_moving_digits,
        prepare=prepare_moving_digits,
        extract=frames.extract,
        open=partial(open_clips, augment=MOVING_DIGITS_AUGMENT),
    )
)
EGTEA = base.register(
    base.Family(
        name="egtea",
        kind="video",
        default_arch="resnext101_3d",
        download=download_egtea,
        prepare=prepare_egtea,
        extract=frames.extract,
        open=partial(open_clips, augment=EGTEA_AUGMENT),
    )
)
