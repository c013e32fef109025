"""EGTEA Gaze+ verbs as CDB-CE uses them: the user's copy checked and recorded, its manifests.

**EGTEA Gaze+** (Li, Liu and Rehg, ECCV 2018): trimmed action clips of cooking, recorded by 32
subjects. CDB-CE (Sinha, Ohashi and Nakamura, ACCV 2020; hitachi-rd-cv/CDB-loss, ``EGTEA/``) trains
a Kinetics-pretrained 3D ResNeXt-101 on its 19 verb classes, long-tailed by themselves (1,421 train
clips of the largest class, 15 of the smallest), so no imbalance is injected (``data.imbalance`` and
``data.profile`` do not apply).

Validation, as CDB-CE: CDB-CE's ``val_split.txt`` is every clip of P20-P26 (1,927 clips) and its
``train_split.txt`` every clip of the other 25 subjects, OP01-OP06 and P01-P19 (6,372);
``EGTEA_VAL_SUBJECTS`` reproduces that split. Held-out people rather than held-out clips, because
clips of one recording share the person, kitchen and session: the class accuracies that CDB-CE
turns into difficulties are measured on people the network has not seen. ``data.lists.val`` set:
that list is val instead, its clips taken out of train. ``test_split1`` is the test set.

Normalisation: that of the Kinetics checkpoint (Hara et al.'s 3D-ResNets: RGB, the ActivityNet mean
[114.77, 107.74, 99.48] subtracted on the 0..255 scale, no division), written as mean / 255 and std
1 / 255. CDB-CE fed OpenCV's BGR frames unnormalised (``frames.channels: bgr``,
``frames.normalize: none`` reproduce that; docs/video.md).

The download stage checks that every clip named in the split files exists before any decoding
(``splits.check_listed_clips``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from longtail import io
from longtail.data.video.splits import (
    CLIPS_DIR,
    TEST_LIST,
    TRAIN_LIST,
    VAL_LIST,
    VERB_INDEX,
    prepare_clips,
)

if TYPE_CHECKING:
    from longtail.config import DataConfig

EGTEA_NUM_CLASSES = 19
EGTEA_VAL_SUBJECTS = tuple(f"P{i}" for i in range(20, 27))  # CDB-CE's val_split.txt
EGTEA_ROTATION_DEGREES = 10.0
KINETICS_MEAN = (114.7748 / 255, 107.7354 / 255, 99.4750 / 255)  # RGB, ActivityNet mean
KINETICS_STD = (1 / 255, 1 / 255, 1 / 255)  # mean subtraction only, on the 0..255 scale
# Where the official download keeps the annotation files, relative to data.root.
EGTEA_LIST_DIRS = ("action_annotation", ".")


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
