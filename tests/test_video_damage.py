"""Video defaults and damage: EGTEA's published frame settings, half-decodable MP4s, bad test clips.

EGTEA resolves ``frames.size`` / ``frames.segments`` null to CDB-CE's 224 px and 10 segments.
MP4s are written with OpenCV (``mp4v``, as the moving-digits renderer does) and then damaged: a
stream whose second half is zeroed decodes only up to the damage, fewer frames than its container
declares, and is a bad clip. A bad test clip is not dropped from the test set: it is scored as
wrong, and ``evaluate`` reports the clips listed and scored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import Repo, git_init, run_stages
from test_video import TINY, context, digits_tree, egtea_root  # noqa: F401 (fixtures)

from longtail.config import Config, DataConfig, FramesConfig
from longtail.data import base, frames, video
from longtail.metrics import confusion_matrix, summarize
from stages.inject_imbalance import record_frames


def write_mp4(path: Path, count: int = 40) -> bytes:
    """A (48, 64) mp4v clip of ``count`` random frames at 8 fps; returns its bytes."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (64, 48))
    for _ in range(count):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return path.read_bytes()


def zero_second_half_of_stream(data: bytes) -> bytes:
    """Zero the second half of the ``mdat`` payload, keeping the ``moov`` index intact."""
    start, moov = data.index(b"mdat") + 4, data.index(b"moov") - 4
    assert start < moov, "expected OpenCV's layout: mdat before moov"
    middle = start + (moov - start) // 2
    return data[:middle] + bytes(moov - middle) + data[moov:]


# ---------------------------------------------------------------------------------- defaults
def test_egtea_defaults_resolve_to_224_px_and_10_segments() -> None:
    egtea = frames.resolve(FramesConfig(), "egtea")
    assert (egtea.size, egtea.segments) == (224, 10)
    digits = frames.resolve(FramesConfig(), "moving_digits")
    assert (digits.size, digits.segments) == (32, 8)
    given = frames.resolve(FramesConfig(size=112, segments=4), "egtea")
    assert (given.size, given.segments) == (112, 4)
    assert FramesConfig().size is None and FramesConfig().segments is None
    with pytest.raises(ValueError, match=r"frames: expected a video family"):
        frames.resolve(FramesConfig(), "cifar10")


def test_dataset_json_records_the_frames_used(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"family": "egtea", "kind": "video"}))
    record_frames(Config(frames=FramesConfig(segments=12)), tmp_path)
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["frames"] == {
        "size": 224,
        "segments": 12,
        "store": "jpeg",
        "size_from": "egtea default",
        "segments_from": "frames.segments",
        "store_from": "egtea default",
    }


def test_egtea_extracts_and_samples_at_the_published_setting(
    egtea_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cfg = DataConfig(name="egtea", root=str(egtea_root))
    dirs = {name: tmp_path / name for name in ("raw", "prepared", "frames")}
    family = base.get("egtea")
    family.download(cfg, dirs["raw"])
    family.prepare(cfg, 0, dirs["raw"], dirs["prepared"])
    family.extract(FramesConfig(workers=1), dirs["raw"], dirs["prepared"], dirs["frames"])
    assert frames.read_manifest(dirs["frames"])["size"] == 224
    ctx = base.SourceContext(
        cfg, FramesConfig(), dirs["raw"], dirs["prepared"], dirs["frames"], torch.device("cpu")
    )
    source = family.open(ctx, "val")
    assert source.segments == 10
    x, _ = next(source.batches(torch.arange(2), 2, train=False, generator=torch.Generator()))
    assert x.shape == (2, 3, 10, 224, 224)


# ------------------------------------------------------------------------------------ damage
def test_a_whole_mp4_decodes(tmp_path: Path) -> None:
    write_mp4(tmp_path / "clip.mp4")
    assert frames.decode_clip(tmp_path / "clip.mp4", fps=None, size=48).shape == (40, 48, 64, 3)


def test_a_half_zeroed_mp4_is_bad(tmp_path: Path) -> None:
    data = write_mp4(tmp_path / "clip.mp4")
    (tmp_path / "half.mp4").write_bytes(zero_second_half_of_stream(data))
    with pytest.raises(frames.BadClipError, match=r"decoded \d+ of the 40 frames its container"):
        frames.decode_clip(tmp_path / "half.mp4", fps=None, size=48)
    (tmp_path / "tail.mp4").write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    with pytest.raises(frames.BadClipError, match="OpenCV cannot open it"):
        frames.decode_clip(tmp_path / "tail.mp4", fps=None, size=48)


def test_a_half_zeroed_clip_is_reported_by_the_stage(
    digits_tree: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(digits_tree["raw"], raw)
    test = base.read_manifest(digits_tree["prepared"], "test")
    clip = raw / video.CLIPS_DIR / f"{test['clip'][0]}{frames.VIDEO_SUFFIX}"
    clip.write_bytes(zero_second_half_of_stream(clip.read_bytes()))
    with pytest.raises(ValueError, match=r"1 of \d+ could not be decoded: .*declares"):
        frames.extract(FramesConfig(workers=1), raw, digits_tree["prepared"], tmp_path / "f")
    listed = (tmp_path / "f" / frames.BAD_CLIPS).read_text()
    assert test["clip"][0] in listed and "damaged stream" in listed


def test_an_undecodable_test_clip_is_scored_as_wrong(
    digits_tree: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(digits_tree["raw"], raw)
    test = base.read_manifest(digits_tree["prepared"], "test")
    train = base.read_manifest(digits_tree["prepared"], "train")
    for clip in (test["clip"][0], train["clip"][0]):
        (raw / video.CLIPS_DIR / f"{clip}{frames.VIDEO_SUFFIX}").write_bytes(b"\0" * 100)
    dirs = {"raw": raw, "prepared": digits_tree["prepared"], "frames": tmp_path / "frames"}
    frames.extract(FramesConfig(workers=1, skip_bad=True), raw, dirs["prepared"], dirs["frames"])
    family = base.get("moving_digits")
    test_src = family.open(context(dirs), "test")
    train_src = family.open(context(dirs), "train")
    assert len(train_src) == len(train) - 1  # dropped from train
    assert not hasattr(train_src, "unscored_labels")
    assert len(test_src) == len(test) - 1
    assert test_src.unscored_labels.tolist() == [int(test["label"][0])]
    # Perfect predictions on every scored clip: the unscored one still counts as wrong.
    labels = test_src.labels
    conf = confusion_matrix(labels, labels, 10)
    missed = torch.bincount(test_src.unscored_labels, minlength=10)
    result = summarize(conf, [5] * 10, 100, 20, missed)
    assert result["num_samples"] == len(test) and result["num_scored"] == len(test) - 1
    assert result["top1"] == pytest.approx(100.0 * (len(test) - 1) / len(test))
    assert result["few"] == pytest.approx(100.0 * (len(test) - 1) / len(test))
    assert TINY.test_per_class == 1


def test_evaluate_reports_listed_and_scored_clips(
    repo: Repo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    git_init(repo)
    repo.params(
        {
            "pretrain": {"epochs": 1, "batch_size": 32},
            "finetune": {"epochs": 1, "batch_size": 32},
            "data": {"name": "moving_digits", "imbalance": 5, "n_max": 6, "test_per_class": 2},
            "frames": {"segments": 4, "workers": 1, "skip_bad": True},
            "loss": {"name": "balanced_softmax"},
        }
    )
    run_stages(repo, ("download", "inject_imbalance"), monkeypatch)
    test = base.read_manifest(repo.root / "data/prepared", "test")
    clip = repo.root / "data/raw/moving_digits" / video.CLIPS_DIR / f"{test['clip'][3]}.mp4"
    clip.write_bytes(zero_second_half_of_stream(clip.read_bytes()))
    run_stages(repo, ("extract_frames", "pretrain", "finetune"), monkeypatch)
    capsys.readouterr()
    run_stages(repo, ("evaluate",), monkeypatch)
    out = capsys.readouterr().out
    result = json.loads((repo.root / "metrics/evaluate.json").read_text())
    assert (result["num_samples"], result["num_scored"]) == (20, 19)
    assert "20 test samples listed, 19 scored: 1 could not be decoded" in out
    confusion = (repo.root / "plots/confusion.csv").read_text()
    assert confusion.count("(not scored)") == 1
    info = json.loads((repo.root / "data/prepared/dataset.json").read_text())
    assert info["frames"]["segments"] == 4 and info["frames"]["size"] == 32
