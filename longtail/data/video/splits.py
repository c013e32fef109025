"""EGTEA Gaze+ split files and the prepared manifests of a video dataset in EGTEA's layout.

EGTEA Gaze+ (Li, Liu and Rehg, ECCV 2018) publishes ``train_split1.txt`` / ``test_split1.txt``:
one clip per line, ``<clip> <action> <verb> <noun> [<noun> ...]``, labels 1-based (a few actions
name two or three nouns; the first is kept as ``noun``). Clip
``OP01-R01-PastaSalad-1002316-1004005-F024051-F024101`` belongs to recording ``OP01-R01-PastaSalad``
(its first three dash-separated fields) of subject ``OP01`` and lives at
``cropped_clips/<recording>/<clip>.mp4``. The label is ``verb - 1``.

Validation, as CDB-CE (Sinha, Ohashi and Nakamura, ACCV 2020; hitachi-rd-cv/CDB-loss, ``EGTEA/``):
split off the train list by subject (:func:`split_by_subject`), or a given ``val_split.txt``. Both
video families (EGTEA and moving digits) prepare their manifests here, and the download stage
checks here that every clip the split files name is on disk (:func:`check_listed_clips`), so that
a missing clip is reported before any decoding.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from longtail import io
from longtail.data import base, frames

# Layout shared by both families (EGTEA's names).
CLIPS_DIR = "cropped_clips"
TRAIN_LIST, TEST_LIST, VAL_LIST = "train_split1.txt", "test_split1.txt", "val_split.txt"
VERB_INDEX = "verb_idx.txt"  # EGTEA's "<verb name> <index>" lines, index 1-based
MANIFEST_COLUMNS = ("clip", "recording", "subject", "label", "verb", "noun", "action")
MISSING_CLIPS = "missing_clips.txt"  # written by the download stage beside the split files
MISSING_LINES = 20  # missing clips named one per line on the terminal; the rest are counted


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


# ----------------------------------------------------------------------------- clips on disk
def missing_clips(raw_dir: Path) -> dict[str, list[str]]:
    """Per split file in ``raw_dir``, the clips (``<recording>/<clip>``) without an MP4 on disk."""
    source = frames.clips_dir(raw_dir)
    missing = {}
    for file in (TRAIN_LIST, TEST_LIST, VAL_LIST):
        if (Path(raw_dir) / file).exists():
            clips = read_split_file(Path(raw_dir) / file)["clip"]
            missing[file] = [
                c for c in clips if not (source / f"{c}{frames.VIDEO_SUFFIX}").is_file()
            ]
    return missing


def check_listed_clips(raw_dir: Path, *, skip_bad: bool) -> None:
    """Report the clips named in the split files but missing on disk, before any decoding.

    Prints one line per missing clip (up to ``MISSING_LINES``) and one per split file, and lists
    them all in ``raw_dir/missing_clips.txt``.

    Raises:
        ValueError: if any is missing and ``skip_bad`` is false (``frames.skip_bad``).
    """
    missing = missing_clips(raw_dir)
    listed = sorted({c for clips in missing.values() for c in clips})
    io.write_text(Path(raw_dir) / MISSING_CLIPS, "".join(f"{c}\n" for c in listed))
    if not listed:
        return
    source = frames.clips_dir(raw_dir)
    for clip in listed[:MISSING_LINES]:
        print(f"download: missing clip {source / clip}{frames.VIDEO_SUFFIX}", file=sys.stderr)
    if len(listed) > MISSING_LINES:
        print(f"download: ... and {len(listed) - MISSING_LINES} more", file=sys.stderr)
    for file, clips in missing.items():
        if clips:
            total = len(read_split_file(Path(raw_dir) / file))
            print(f"download: {file}: {len(clips)} of {total} clips missing", file=sys.stderr)
    if not skip_bad:
        raise ValueError(
            f"download: expected every clip named in the split files under {source}; "
            f"{len(listed)} are missing (listed in {Path(raw_dir) / MISSING_CLIPS}). Put them "
            f"there, or set frames.skip_bad: true to drop them from train and val (a missing test "
            f"clip is scored as wrong)."
        )
