"""Video datasets: EGTEA Gaze+ verbs as CDB-CE uses them, and moving digits, its offline stand-in.

One module per job:

- :mod:`~longtail.data.video.splits`: EGTEA's split files and the prepared manifests of both
  families (labels ``verb - 1``, val split off by subject);
- :mod:`~longtail.data.video.egtea`: the user's EGTEA Gaze+ copy, checked (every listed clip on
  disk) and recorded; CDB-CE's 19 verbs and val subjects;
- :mod:`~longtail.data.video.moving_digits`: the moving-digits renderer (the video default);
- :mod:`~longtail.data.video.sampling`: TSN sampling of S frames per clip;
- :mod:`~longtail.data.video.clip_augment`: CDB-CE's square crop, rotation and flip;
- :mod:`~longtail.data.video.source`: the training loop's clip batches.

Frame extraction (decoding, the frame store and its cache) is :mod:`longtail.data.frames`. Each
family's record carries its published frame settings (:class:`longtail.data.base.FrameDefaults`):
EGTEA CDB-CE's 224 px and 10 segments, stored as JPEG as CDB-CE stores its frames; moving digits
32 px, 8 segments, raw arrays. Every public name of the submodules is importable from here.
"""

from __future__ import annotations

from functools import partial

from longtail.data import base, frames
from longtail.data.video.clip_augment import ClipAugment, _flip_rotate, square_crop
from longtail.data.video.egtea import (
    EGTEA_LIST_DIRS,
    EGTEA_NUM_CLASSES,
    EGTEA_ROTATION_DEGREES,
    EGTEA_VAL_SUBJECTS,
    KINETICS_MEAN,
    KINETICS_STD,
    download_egtea,
    prepare_egtea,
)
from longtail.data.video.moving_digits import (
    MD_CANVAS,
    MD_DIGIT,
    MD_FPS,
    MD_FRAMES,
    MD_N_MAX,
    MD_PADDING,
    MD_RECORDINGS,
    MD_SPEED,
    MD_TEST_PER_CLASS,
    MD_TRAIN_SUBJECTS,
    MD_VAL_PER_CLASS,
    MD_VAL_SUBJECTS,
    download_moving_digits,
    moving_digits_counts,
    prepare_moving_digits,
    render_moving_digits,
)
from longtail.data.video.sampling import sample_frames
from longtail.data.video.source import DEVICE_CACHE_BYTES, ClipSource, open_clips
from longtail.data.video.splits import (
    CLIPS_DIR,
    MANIFEST_COLUMNS,
    MISSING_CLIPS,
    TEST_LIST,
    TRAIN_LIST,
    VAL_LIST,
    VERB_INDEX,
    check_listed_clips,
    missing_clips,
    parse_clip_name,
    prepare_clips,
    read_class_names,
    read_split_file,
    split_by_subject,
    write_split_file,
)

__all__ = [
    "CLIPS_DIR",
    "DEVICE_CACHE_BYTES",
    "EGTEA",
    "EGTEA_AUGMENT",
    "EGTEA_LIST_DIRS",
    "EGTEA_NUM_CLASSES",
    "EGTEA_ROTATION_DEGREES",
    "EGTEA_VAL_SUBJECTS",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "MANIFEST_COLUMNS",
    "MD_CANVAS",
    "MD_DIGIT",
    "MD_FPS",
    "MD_FRAMES",
    "MD_N_MAX",
    "MD_PADDING",
    "MD_RECORDINGS",
    "MD_SPEED",
    "MD_TEST_PER_CLASS",
    "MD_TRAIN_SUBJECTS",
    "MD_VAL_PER_CLASS",
    "MD_VAL_SUBJECTS",
    "MISSING_CLIPS",
    "MOVING_DIGITS",
    "MOVING_DIGITS_AUGMENT",
    "TEST_LIST",
    "TRAIN_LIST",
    "VAL_LIST",
    "VERB_INDEX",
    "ClipAugment",
    "ClipSource",
    "_flip_rotate",
    "check_listed_clips",
    "download_egtea",
    "download_moving_digits",
    "missing_clips",
    "moving_digits_counts",
    "open_clips",
    "parse_clip_name",
    "prepare_clips",
    "prepare_egtea",
    "prepare_moving_digits",
    "read_class_names",
    "read_split_file",
    "render_moving_digits",
    "sample_frames",
    "split_by_subject",
    "square_crop",
    "write_split_file",
]

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
        frames=base.FrameDefaults(size=MD_CANVAS, segments=8, store="npy"),
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
        frames=base.FrameDefaults(size=224, segments=10, store="jpeg"),  # CDB-CE's input
    )
)
