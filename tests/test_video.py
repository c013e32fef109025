"""Tests of the video families: moving-digits render, EGTEA split files, clip sampling, the source.

Data is rendered in the test (a few dozen 16-frame 32×32 MP4 clips); EGTEA is a fake tree of those
clips renamed into EGTEA's naming and layout, with hand-written split files.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from longtail import io
from longtail.config import DataConfig, FramesConfig, ListsConfig
from longtail.data import base, frames, video

TINY = DataConfig(name="moving_digits", n_max=4, imbalance=4.0, val_per_class=1, test_per_class=1)
TINY_TRAIN = [4, 3, 2, 2, 2, 1, 1, 1, 1, 1]  # int(4 * (1/4) ** (c / 9))


def decode(path: Path) -> np.ndarray:
    """Every frame of an MP4 as OpenCV decodes it, (T, H, W, 3) BGR."""
    capture = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        out.append(frame)
    capture.release()
    return np.stack(out)


def split_counts(path: Path, subjects: tuple[str, ...] | None = None) -> list[int]:
    """Per-verb clip counts of a split file, optionally of some subjects only."""
    frame = video.read_split_file(path)
    if subjects is not None:
        frame = frame[frame["subject"].isin(subjects)]
    return np.bincount(frame["verb"] - 1, minlength=10).tolist()


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny moving-digits set, downloaded, prepared and extracted once for this module."""
    root = tmp_path_factory.mktemp("digits")
    dirs = {name: root / name for name in ("raw", "prepared", "frames")}
    video.download_moving_digits(TINY, dirs["raw"])
    video.prepare_moving_digits(TINY, 0, dirs["raw"], dirs["prepared"])
    frames.extract(FramesConfig(workers=1), dirs["raw"], dirs["prepared"], dirs["frames"])
    return dirs


def context(
    dirs: dict[str, Path], data: DataConfig = TINY, segments: int = 4
) -> base.SourceContext:
    return base.SourceContext(
        data,
        FramesConfig(segments=segments, workers=1),
        dirs["raw"],
        dirs["prepared"],
        dirs["frames"],
        torch.device("cpu"),
    )


# ---------------------------------------------------------------------------------- the renderer
def test_render_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = {
        "train_counts": [2, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        "val_per_class": 1,
        "test_per_class": 1,
    }
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        video.render_moving_digits(tmp_path / name, seed=seed, **kwargs)
    a, b, c = (tmp_path / n for n in "abc")
    for split in (video.TRAIN_LIST, video.TEST_LIST):
        assert (a / split).read_text() == (b / split).read_text()
    assert (a / video.TRAIN_LIST).read_text() != (c / video.TRAIN_LIST).read_text()
    clips = sorted((a / video.CLIPS_DIR).rglob("*.mp4"))
    assert len(clips) == 11 + 10 + 10
    for clip in clips:
        assert np.array_equal(decode(clip), decode(b / clip.relative_to(a)))


@pytest.mark.parametrize(
    ("profile", "expected"),
    [("exp", [8, 6, 5, 5, 4, 3, 3, 2, 2, 2]), ("step", [8, 8, 8, 8, 8, 2, 2, 2, 2, 2])],
)
def test_render_counts_follow_the_profile(
    tmp_path: Path, profile: str, expected: list[int]
) -> None:
    cfg = DataConfig(
        name="moving_digits",
        n_max=8,
        imbalance=4.0,
        profile=profile,
        val_per_class=2,
        test_per_class=3,
    )
    video.download_moving_digits(cfg, tmp_path / "raw")
    train_file = tmp_path / "raw" / video.TRAIN_LIST
    assert split_counts(train_file, video.MD_TRAIN_SUBJECTS) == expected
    assert split_counts(train_file, video.MD_VAL_SUBJECTS) == [2] * 10
    assert split_counts(tmp_path / "raw" / video.TEST_LIST) == [3] * 10
    line = train_file.read_text().splitlines()[0].split()
    assert len(line) == 4 and line[0].split("-")[2] == "Digits"
    recording = "-".join(line[0].split("-")[:3])
    assert (tmp_path / "raw" / video.CLIPS_DIR / recording / f"{line[0]}.mp4").is_file()


def test_render_refuses_a_profile_that_leaves_a_class_empty(tmp_path: Path) -> None:
    cfg = DataConfig(name="moving_digits", n_max=40, imbalance=50.0)
    with pytest.raises(ValueError, match=r"data\.n_max.*n_max >= 50"):
        video.download_moving_digits(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_render_checks_the_digits_md5(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, md5="0" * 32)
    with pytest.raises(io.ChecksumError, match=r"data\.md5"):
        video.download_moving_digits(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_moving_digits_prepare_splits_val_by_subject(digits_tree: dict[str, Path]) -> None:
    prepared = digits_tree["prepared"]
    counts = base.read_json(prepared / "class_counts.json")
    assert counts["train"] == TINY_TRAIN and counts["val"] == [1] * 10
    assert counts["test"] == [1] * 10
    val = base.read_manifest(prepared, "val")
    train = base.read_manifest(prepared, "train")
    assert set(val["subject"]) == {"P05"} and "P05" not in set(train["subject"])
    assert list(train.columns) == list(video.MANIFEST_COLUMNS)
    assert (train["label"] == train["verb"] - 1).all()
    info = base.read_json(prepared / "dataset.json")
    assert info["kind"] == "video" and info["in_channels"] == 3 and len(info["mean"]) == 3


# --------------------------------------------------------------------------------- clip sampling
def test_evaluation_takes_each_segment_centre_deterministically() -> None:
    num_frames = torch.tensor([16, 10, 3])
    # n = 10, S = 4: segments [0, 2), [2, 5), [5, 7), [7, 10); n = 3 < S repeats frames
    expected = torch.tensor([[2, 6, 10, 14], [1, 3, 6, 8], [0, 0, 1, 2]])
    assert torch.equal(video.sample_frames(num_frames, 4, train=False, generator=None), expected)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(video.sample_frames(num_frames, 4, train=False, generator=g), expected)


def test_training_draws_one_frame_inside_each_segment() -> None:
    num_frames = torch.arange(1, 41).repeat(50)  # every length 1..40, 50 times
    g = torch.Generator().manual_seed(0)
    idx = video.sample_frames(num_frames, 8, train=True, generator=g)  # (2000, 8)
    i = torch.arange(8)
    start = i * num_frames[:, None] // 8
    end = torch.maximum((i + 1) * num_frames[:, None] // 8, start + 1)
    assert ((idx >= start) & (idx < end)).all()
    sixteen = idx[num_frames == 16]  # segments of 2 frames: both are drawn
    assert set(sixteen[:, 3].tolist()) == {6, 7}
    again = video.sample_frames(
        num_frames, 8, train=True, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(idx, again)


# ---------------------------------------------------------------------------------- augmentation
def test_square_crop_evaluation_is_the_centre_square() -> None:
    clips = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.uint8).view(2, 3, 2, 4, 6)
    out = video.square_crop(clips, train=False, flip=True, degrees=10.0, generator=None)
    assert torch.equal(out, clips[..., 1:5])


def test_square_crop_training_without_rotation_is_a_window_or_its_mirror() -> None:
    clips = torch.randint(
        0, 256, (64, 3, 2, 4, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    g = torch.Generator().manual_seed(0)
    out = video.square_crop(clips, train=True, flip=True, degrees=0.0, generator=g)
    seen = set()
    for clip, crop in zip(clips, out, strict=True):
        matches = [
            (off, flip)
            for off in range(4)
            for flip in (False, True)
            if torch.equal(
                crop, clip[..., off : off + 4].flip(-1) if flip else clip[..., off : off + 4]
            )
        ]
        assert matches
        seen.update(matches)
    assert len(seen) == 8  # every offset, flipped and not


def test_rotation_by_90_degrees_is_rot90_for_every_frame() -> None:
    clips = torch.randint(0, 256, (2, 3, 4, 6, 6), dtype=torch.uint8)
    out = video._flip_rotate(clips, torch.tensor([False, True]), torch.tensor([90.0, 0.0]))
    assert torch.equal(out[0], torch.rot90(clips[0], 1, (2, 3)))
    assert torch.equal(out[1], clips[1].flip(-1))


# ------------------------------------------------------------------------------------------ EGTEA
EGTEA_CLIPS = {
    # name -> (action, verb, nouns)
    "OP01-R01-PastaSalad-1002316-1004005-F024051-F024101": (1, 1, (1,)),
    "OP01-R01-PastaSalad-1004110-1021110-F024057-F024548": (2, 3, (4,)),
    "P19-R03-BaconAndEggs-806419-820160-F019321-F019717": (19, 6, (15, 16)),
    "P20-R04-ContinentalBreakfast-291175-294945-F006979-F007088": (40, 19, (2,)),
    "P26-R05-Cheeseburger-69970-77130-F001662-F001869": (3, 2, (5,)),
}
EGTEA_TEST = {"P04-R06-GreekSalad-682170-683940-F016368-F016419": (7, 19, (9,))}


def write_egtea(
    root: Path, source: Path, clips: dict[str, tuple[int, int, tuple[int, ...]]], file: Path
) -> None:
    """Copy rendered clips into EGTEA's layout and write their split file."""
    mp4s = sorted(source.rglob("*.mp4"))
    lines = []
    for k, (name, (action, verb, nouns)) in enumerate(clips.items()):
        recording = "-".join(name.split("-")[:3])
        target = root / video.CLIPS_DIR / recording / f"{name}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mp4s[k], target)
        lines.append(" ".join(map(str, (name, action, verb, *nouns))) + "\n")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(lines))


@pytest.fixture
def egtea_root(tmp_path: Path, digits_tree: dict[str, Path]) -> Path:
    root = tmp_path / "EGTEA"
    source = digits_tree["raw"] / video.CLIPS_DIR
    write_egtea(root, source, EGTEA_CLIPS, root / "action_annotation" / video.TRAIN_LIST)
    write_egtea(root, source, EGTEA_TEST, root / "action_annotation" / video.TEST_LIST)
    (root / "action_annotation" / video.VERB_INDEX).write_text("Take 1\nPut 2\nInspect/Read 19\n")
    return root


def test_egtea_split_files_labels_and_subject_val_split(egtea_root: Path, tmp_path: Path) -> None:
    cfg = DataConfig(name="egtea", root=str(egtea_root))
    video.download_egtea(cfg, tmp_path / "raw")
    video.prepare_egtea(cfg, 0, tmp_path / "raw", tmp_path / "prepared")
    train = base.read_manifest(tmp_path / "prepared", "train")
    val = base.read_manifest(tmp_path / "prepared", "val")
    test = base.read_manifest(tmp_path / "prepared", "test")
    assert list(train["subject"]) == ["OP01", "OP01", "P19"]  # CDB-CE's train subjects
    assert list(val["subject"]) == ["P20", "P26"]  # CDB-CE's val subjects
    assert list(train["label"]) == [0, 2, 5] and list(val["label"]) == [18, 1]
    assert list(test["label"]) == [18]
    assert list(train["noun"]) == [1, 4, 15] and list(train["action"]) == [1, 2, 19]
    assert train["clip"][0] == (
        "OP01-R01-PastaSalad/OP01-R01-PastaSalad-1002316-1004005-F024051-F024101"
    )
    assert train["recording"][2] == "P19-R03-BaconAndEggs"
    counts = base.read_json(tmp_path / "prepared" / "class_counts.json")
    assert counts["num_classes"] == 19 and len(counts["train"]) == 19
    assert counts["names"][0] == "Take" and counts["names"][18] == "Inspect/Read"
    assert counts["names"][5] == "verb_06"
    source = base.read_json(tmp_path / "raw" / "source.json")
    assert source["clips_dir"] == str(egtea_root.resolve() / video.CLIPS_DIR)
    assert set(source["md5"]) == {video.TRAIN_LIST, video.TEST_LIST}
    assert not (tmp_path / "raw" / video.CLIPS_DIR).exists()  # the clips are not copied


def test_egtea_explicit_val_list_replaces_the_subject_split(
    egtea_root: Path, tmp_path: Path
) -> None:
    val_list = egtea_root / "my_val.txt"
    val_list.write_text("OP01-R01-PastaSalad-1004110-1021110-F024057-F024548 2 3 4\n")
    cfg = DataConfig(name="egtea", root=str(egtea_root), lists=ListsConfig(val="my_val.txt"))
    video.download_egtea(cfg, tmp_path / "raw")
    video.prepare_egtea(cfg, 0, tmp_path / "raw", tmp_path / "prepared")
    assert len(base.read_manifest(tmp_path / "prepared", "train")) == 4
    assert list(base.read_manifest(tmp_path / "prepared", "val")["label"]) == [2]


def test_egtea_extract_and_open_read_the_clips_in_place(egtea_root: Path, tmp_path: Path) -> None:
    cfg = DataConfig(name="egtea", root=str(egtea_root))
    dirs = {name: tmp_path / name for name in ("raw", "prepared", "frames")}
    family = base.get("egtea")
    family.download(cfg, dirs["raw"])
    family.prepare(cfg, 0, dirs["raw"], dirs["prepared"])
    family.extract(FramesConfig(workers=1, size=32), dirs["raw"], dirs["prepared"], dirs["frames"])
    source = family.open(context(dirs, cfg, segments=10), "train")
    x, y = next(
        source.batches(torch.arange(3), 3, train=True, generator=torch.Generator().manual_seed(0))
    )
    assert x.shape == (3, 3, 10, 32, 32) and y.tolist() == [0, 2, 5]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("OP01-R01-PastaSalad-1-2-F1-F2 1 20 1", "verb labels 1..19"),
        ("OP01-R01-PastaSalad-1-2-F1-F2 1 0 1", "1-based"),
        ("OP01-R01-PastaSalad-1-2-F1-F2 1 2", "<clip> <action> <verb> <noun>"),
        ("PastaSalad 1 2 3", "clip name"),
    ],
)
def test_egtea_bad_split_lines_are_refused(tmp_path: Path, line: str, message: str) -> None:
    for file in (video.TRAIN_LIST, video.TEST_LIST):
        (tmp_path / file).write_text(f"{line}\nP20-R01-X-1-2-F1-F2 1 2 3\n")
    (tmp_path / video.TEST_LIST).write_text("P01-R01-X-9-9-F9-F9 1 2 3\n")
    with pytest.raises(ValueError, match=message):
        video.prepare_egtea(DataConfig(name="egtea"), 0, tmp_path, tmp_path / "prepared")


def test_egtea_download_errors_name_the_key(tmp_path: Path, egtea_root: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.root"):
        video.download_egtea(DataConfig(name="egtea", root=str(tmp_path / "nope")), tmp_path / "r")
    cfg = DataConfig(name="egtea", root=str(egtea_root), lists=ListsConfig(train="missing.txt"))
    with pytest.raises(ValueError, match=r"data\.lists\.train.*missing\.txt"):
        video.download_egtea(cfg, tmp_path / "r")
    (egtea_root / "action_annotation" / video.TEST_LIST).unlink()
    with pytest.raises(ValueError, match=r"data\.lists\.test.*test_split1\.txt"):
        video.download_egtea(DataConfig(name="egtea", root=str(egtea_root)), tmp_path / "r")


# ----------------------------------------------------------------------------------------- source
def test_prepare_extract_open_gives_clip_batches(digits_tree: dict[str, Path]) -> None:
    ctx = context(digits_tree)
    for split in base.SPLITS:
        source = base.get("moving_digits").open(ctx, split)
        labels = base.read_manifest(digits_tree["prepared"], split)["label"].tolist()
        assert source.labels.tolist() == labels and source.in_channels == 3
        order = torch.arange(len(source)).flip(0)
        batches = list(
            source.batches(
                order, 8, train=split == "train", generator=torch.Generator().manual_seed(0)
            )
        )
        assert [tuple(x.shape) for x, _ in batches[:1]] == [(8, 3, 4, 32, 32)]
        assert torch.cat([y for _, y in batches]).tolist() == labels[::-1]
        assert all(x.dtype == torch.float32 for x, _ in batches)


def test_evaluation_batches_are_the_centre_frames_whatever_the_generator(
    digits_tree: dict[str, Path],
) -> None:
    source = base.get("moving_digits").open(context(digits_tree), "test")
    order = torch.arange(len(source))
    a, b = (
        next(source.batches(order, 4, train=False, generator=torch.Generator().manual_seed(s)))[0]
        for s in (0, 1)
    )
    assert torch.equal(a, b)
    clip = np.load(
        frames.clip_output(
            digits_tree["frames"], base.read_manifest(digits_tree["prepared"], "test")["clip"][0]
        )
    )
    info = base.read_json(digits_tree["prepared"] / "dataset.json")
    centre = torch.from_numpy(clip[[2, 6, 10, 14]]).permute(3, 0, 1, 2)[None]  # (1, C, S, H, W)
    from longtail.data.augment import normalize

    assert torch.equal(a[:1], normalize(centre, info["mean"], info["std"]))


def test_disk_and_device_stores_give_the_same_batches(digits_tree: dict[str, Path]) -> None:
    ctx = context(digits_tree)
    on_device = base.get("moving_digits").open(ctx, "train")
    assert on_device.cached
    on_disk = video.ClipSource(
        [
            frames.clip_output(ctx.frames_dir, c)
            for c in base.read_manifest(ctx.prepared_dir, "train")["clip"]
        ],
        on_device.num_frames.tolist(),
        on_device.labels,
        frame_size=(32, 32),
        segments=4,
        mean=on_device.mean,
        std=on_device.std,
        augment=on_device.augment,
        device=ctx.device,
        cache_bytes=0,
    )
    assert not on_disk.cached
    order = torch.randperm(len(on_device), generator=torch.Generator().manual_seed(2))
    for train in (False, True):
        a, b = (
            list(s.batches(order, 5, train=train, generator=torch.Generator().manual_seed(3)))
            for s in (on_device, on_disk)
        )
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_batches_depend_on_the_generator(digits_tree: dict[str, Path]) -> None:
    source = base.get("moving_digits").open(context(digits_tree), "train")
    order = torch.arange(len(source))
    a, b, c = (
        next(source.batches(order, 8, train=True, generator=torch.Generator().manual_seed(s)))[0]
        for s in (0, 0, 1)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_families_are_registered_as_video() -> None:
    for name, arch in (("moving_digits", "resnet3d_small"), ("egtea", "resnext101_3d")):
        family = base.FAMILIES[name]
        assert family.kind == "video" and family.default_arch == arch
        assert family.extract is frames.extract


def test_manifest_frame_counts_match_the_arrays(digits_tree: dict[str, Path]) -> None:
    manifest = frames.read_manifest(digits_tree["frames"])
    clips = pd.concat([base.read_manifest(digits_tree["prepared"], s) for s in base.SPLITS])
    assert manifest["clips"] == len(clips) == sum(TINY_TRAIN) + 20
    for clip, entry in manifest["per_clip"].items():
        shape = np.load(frames.clip_output(digits_tree["frames"], clip), mmap_mode="r").shape
        assert shape == (entry["frames"], entry["height"], entry["width"], 3) == (16, 32, 32, 3)


def test_dataclass_defaults_are_the_documented_ones() -> None:
    assert dataclasses.asdict(video.MOVING_DIGITS_AUGMENT) == {
        "square": False,
        "padding": 2,
        "flip": False,
        "degrees": 0.0,
    }
    assert dataclasses.asdict(video.EGTEA_AUGMENT) == {
        "square": True,
        "padding": 0,
        "flip": True,
        "degrees": 10.0,
    }


# ----------------------------------------------------------------- what the network is fed
def fed(dirs: dict[str, Path], split: str = "test", **frames_options: object) -> torch.Tensor:
    """Every clip of ``split`` as evaluation feeds it, one batch, under ``frames_options``."""
    cfg = FramesConfig(segments=4, workers=1, **frames_options)
    ctx = base.SourceContext(
        TINY, cfg, dirs["raw"], dirs["prepared"], dirs["frames"], torch.device("cpu")
    )
    source = base.get("moving_digits").open(ctx, split)
    order = torch.arange(len(source))
    return next(source.batches(order, len(source), train=False, generator=torch.Generator()))[0]


def test_bgr_feeds_the_channels_reversed(digits_tree: dict[str, Path]) -> None:
    rgb, bgr = fed(digits_tree), fed(digits_tree, channels="bgr")
    assert torch.equal(bgr, rgb.flip(1))  # the mean and std follow the channels


def test_normalize_none_feeds_the_raw_0_to_255_values(digits_tree: dict[str, Path]) -> None:
    x = fed(digits_tree, normalize="none")
    test = base.read_manifest(digits_tree["prepared"], "test")["clip"]
    clips = np.stack([np.load(frames.clip_output(digits_tree["frames"], c)) for c in test])
    centre = torch.from_numpy(clips[:, [2, 6, 10, 14]]).permute(0, 4, 1, 2, 3).float()
    assert torch.allclose(x, centre, atol=1e-3) and x.max() > 100
    bgr = fed(digits_tree, normalize="none", channels="bgr")  # CDB-CE's input
    assert torch.allclose(bgr, centre.flip(1), atol=1e-3)


def test_random_evaluation_frames_are_fixed_per_clip_by_the_seed(
    digits_tree: dict[str, Path],
) -> None:
    cfg = FramesConfig(segments=4, workers=1, eval_frame="random", eval_seed=3)
    ctx = base.SourceContext(
        TINY,
        cfg,
        digits_tree["raw"],
        digits_tree["prepared"],
        digits_tree["frames"],
        torch.device("cpu"),
    )
    source = base.get("moving_digits").open(ctx, "val")
    order = torch.arange(len(source))
    whole = torch.cat([x for x, _ in source.batches(order, 64, train=False, generator=None)])
    reverse = torch.cat(
        [x for x, _ in source.batches(order.flip(0), 3, train=False, generator=None)]
    )
    assert torch.equal(whole, reverse.flip(0))  # the same frames whatever the order and batch
    assert torch.equal(whole, fed(digits_tree, "val", eval_frame="random", eval_seed=3))
    assert not torch.equal(whole, fed(digits_tree, "val"))  # not the centre frames
    assert not torch.equal(whole, fed(digits_tree, "val", eval_frame="random", eval_seed=4))
    draws = torch.rand(
        len(source), 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    picked = video.sample_frames(source.num_frames, 4, train=False, generator=None, draws=draws)
    i = torch.arange(4)
    start = i * source.num_frames[:, None] // 4
    assert ((picked >= start) & (picked < start + 16 // 4)).all()  # inside each segment
