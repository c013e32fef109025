"""Tests of frame extraction: OpenCV's view of a clip, resizing, fps, resuming, bad clips.

Clips are rendered in the test (tiny moving-digits set, 16 frames of 32×32 at 8 fps).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_video_damage import write_mp4, zero_second_half_of_stream

from longtail.config import DataConfig, FramesConfig
from longtail.data import base, clipstore, frames, video

TINY = DataConfig(name="moving_digits", n_max=4, imbalance=4.0, val_per_class=1, test_per_class=1)
NUM_CLIPS = 18 + 10 + 10  # train (exp profile, n_max 4, IF 4), val, test
DECODE = frames.decode_clip  # the real decoder, before any test patches it


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(raw_dir, prepared_dir)`` of the tiny moving-digits set."""
    root = tmp_path_factory.mktemp("frames")
    video.download_moving_digits(TINY, root / "raw")
    video.prepare_moving_digits(TINY, 0, root / "raw", root / "prepared")
    return root / "raw", root / "prepared"


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A frame cache of this test's own, so that decode counts do not depend on other tests."""
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "frames"


@pytest.fixture
def own_raw(prepared: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the raw clips that a test may damage."""
    return Path(shutil.copytree(prepared[0], tmp_path / "raw"))


def first_clip(raw: Path, prepared_dir: Path) -> tuple[str, Path]:
    clip = frames.listed_clips(prepared_dir)[0]
    return clip, frames.clips_dir(raw) / f"{clip}.mp4"


class CountingDecoder:
    """Wraps ``decode_clip``: counts calls, and raises after ``fail_after`` of them if set."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, path: Path, **options: object) -> np.ndarray:
        if self.fail_after is not None and self.calls == self.fail_after:
            raise RuntimeError("killed")
        self.calls += 1
        return DECODE(path, **options)


def test_extracted_clip_has_opencv_frame_count_and_size(prepared: tuple[Path, Path]) -> None:
    raw, prepared_dir = prepared
    _, mp4 = first_clip(raw, prepared_dir)
    capture = cv2.VideoCapture(str(mp4))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    width, height = (
        int(capture.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT)
    )
    ok, first = capture.read()
    capture.release()
    assert ok and (count, height, width) == (16, 32, 32)
    array = frames.decode_clip(mp4, fps=None, size=min(height, width))
    assert array.shape == (count, height, width, 3) and array.dtype == np.uint8
    assert np.array_equal(array[0], cv2.cvtColor(first, cv2.COLOR_BGR2RGB))


def test_short_side_is_resized_and_aspect_kept(tmp_path: Path) -> None:
    path = tmp_path / "wide.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (48, 32))
    for t in range(5):
        writer.write(np.full((32, 48, 3), 40 * t, dtype=np.uint8))
    writer.release()
    assert frames.decode_clip(path, fps=None, size=16).shape == (5, 16, 24, 3)
    assert frames.decode_clip(path, fps=None, size=64).shape == (5, 64, 96, 3)
    assert frames.resized_shape(480, 640, 224) == (224, 299)  # EGTEA's 640×480 at CDB-CE's 224
    assert frames.resized_shape(640, 480, 224) == (299, 224)


def test_fps_keeps_the_first_frame_at_or_after_each_tick(prepared: tuple[Path, Path]) -> None:
    def first(native: float, fps: float | None, k: int) -> list[int]:
        kept = frames.kept_frames(native, fps)
        return [next(kept) for _ in range(k)]

    assert first(8, 4, 5) == [0, 2, 4, 6, 8]  # an integer ratio: every other frame
    assert first(8, 3, 6) == [0, 3, 6, 8, 11, 14]  # ceil(j * 8 / 3)
    assert first(30, 5, 3) == [0, 6, 12]  # CDB-CE's sample_every = 6
    assert first(8, None, 3) == first(8, 16, 3) == [0, 1, 2]  # no upsampling
    _, mp4 = first_clip(*prepared)
    native = frames.decode_clip(mp4, fps=None, size=32)
    assert np.array_equal(frames.decode_clip(mp4, fps=4, size=32), native[::2])
    assert np.array_equal(frames.decode_clip(mp4, fps=3, size=32), native[[0, 3, 6, 8, 11, 14]])


def test_interrupted_extraction_resumes_with_the_missing_clips_only(
    prepared: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, prepared_dir = prepared
    cfg = FramesConfig(workers=1)
    killed = CountingDecoder(fail_after=5)
    monkeypatch.setattr(frames, "decode_clip", killed)
    with pytest.raises(RuntimeError, match="killed"):
        frames.extract(cfg, raw, prepared_dir, tmp_path / "frames")
    assert len(list((tmp_path / "frames").rglob("*.npy"))) == 5
    assert not (tmp_path / "frames" / frames.MANIFEST).exists()
    assert not list((tmp_path / "frames").rglob("*.tmp"))  # nothing half-written
    resumed = CountingDecoder()
    monkeypatch.setattr(frames, "decode_clip", resumed)
    frames.extract(cfg, raw, prepared_dir, tmp_path / "frames")
    assert resumed.calls == NUM_CLIPS - 5
    manifest = frames.read_manifest(tmp_path / "frames")
    assert (manifest["decoded"], manifest["reused"], manifest["clips"]) == (
        NUM_CLIPS - 5,
        5,
        NUM_CLIPS,
    )
    deleted = sorted((tmp_path / "frames").rglob("*.npy"))[:3]  # delete some finished clips
    for path in deleted:
        path.unlink()
    again = CountingDecoder()
    monkeypatch.setattr(frames, "decode_clip", again)
    frames.extract(cfg, raw, prepared_dir, tmp_path / "frames")
    assert again.calls == 0 and all(p.exists() for p in deleted)  # linked back from the cache
    shutil.rmtree(frames.cache_root())  # without the cache, every clip is decoded again
    fresh = CountingDecoder()
    monkeypatch.setattr(frames, "decode_clip", fresh)
    frames.extract(cfg, raw, prepared_dir, tmp_path / "frames")
    assert fresh.calls == NUM_CLIPS


def test_other_settings_start_afresh(
    prepared: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, prepared_dir = prepared
    frames.extract(FramesConfig(workers=1), raw, prepared_dir, tmp_path / "frames")
    counter = CountingDecoder()
    monkeypatch.setattr(frames, "decode_clip", counter)
    frames.extract(FramesConfig(workers=1, size=16), raw, prepared_dir, tmp_path / "frames")
    assert counter.calls == NUM_CLIPS
    manifest = frames.read_manifest(tmp_path / "frames")
    assert {(e["height"], e["width"]) for e in manifest["per_clip"].values()} == {(16, 16)}


def test_corrupt_clip_fails_the_stage_by_name(
    prepared: tuple[Path, Path], own_raw: Path, tmp_path: Path
) -> None:
    prepared_dir = prepared[1]
    clip, mp4 = first_clip(own_raw, prepared_dir)
    mp4.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(ValueError, match=rf"{clip}.*frames\.skip_bad: true"):
        frames.extract(FramesConfig(workers=1), own_raw, prepared_dir, tmp_path / "frames")
    assert (tmp_path / "frames" / frames.BAD_CLIPS).read_text().startswith(f"{clip}\t")
    assert not (tmp_path / "frames" / frames.MANIFEST).exists()


def test_skip_bad_drops_and_lists_the_corrupt_clip(
    prepared: tuple[Path, Path], own_raw: Path, tmp_path: Path
) -> None:
    prepared_dir = prepared[1]
    clip, mp4 = first_clip(own_raw, prepared_dir)
    mp4.write_bytes(np.random.default_rng(0).bytes(3000))
    cfg = FramesConfig(workers=1, skip_bad=True, segments=4)
    frames.extract(cfg, own_raw, prepared_dir, tmp_path / "frames")
    manifest = frames.read_manifest(tmp_path / "frames")
    assert [e["clip"] for e in manifest["bad_clips"]] == [clip]
    assert manifest["clips"] == NUM_CLIPS - 1 and clip not in manifest["per_clip"]
    split = next(s for s in base.SPLITS if clip in set(base.read_manifest(prepared_dir, s)["clip"]))
    ctx = base.SourceContext(
        TINY, cfg, own_raw, prepared_dir, tmp_path / "frames", torch.device("cpu")
    )
    kept = base.read_manifest(prepared_dir, split)
    kept = kept[kept["clip"] != clip]
    source = base.get("moving_digits").open(ctx, split)
    assert source.labels.tolist() == kept["label"].tolist()


def test_missing_clip_file_is_a_bad_clip(prepared: tuple[Path, Path], own_raw: Path) -> None:
    _, mp4 = first_clip(own_raw, prepared[1])
    mp4.unlink()
    with pytest.raises(frames.BadClipError, match="file not found"):
        frames.decode_clip(mp4, fps=None, size=32)


def test_worker_pool_gives_the_inline_arrays(
    prepared: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, prepared_dir = prepared
    frames.extract(FramesConfig(workers=1), raw, prepared_dir, tmp_path / "one")
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "second cache"))  # decode again
    frames.extract(FramesConfig(workers=2), raw, prepared_dir, tmp_path / "two")
    one, two = (frames.read_manifest(tmp_path / d) for d in ("one", "two"))
    assert one["per_clip"] == two["per_clip"] and two["decoded"] == NUM_CLIPS
    for clip in one["per_clip"]:
        assert np.array_equal(
            np.load(frames.clip_output(tmp_path / "one", clip)),
            np.load(frames.clip_output(tmp_path / "two", clip)),
        )


def test_image_manifest_is_refused_as_frames(tmp_path: Path) -> None:
    base.write_nothing_to_extract(tmp_path, "digits")
    with pytest.raises(ValueError, match="kind: video"):
        frames.read_manifest(tmp_path)


# ------------------------------------------------------------------------------- frame stores
def test_jpeg_store_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.random((4, 5, 3)).astype(np.float32), (60, 40), cv2.INTER_CUBIC)
    clip = np.stack([np.clip((smooth + 0.01 * t) * 255, 0, 255) for t in range(7)])
    clip = clip.astype(np.uint8)  # (7, 40, 60, 3) RGB
    store = clipstore.create("jpeg", quality=95)
    path = tmp_path / f"clip{store.suffix}"
    store.write(path, clip)
    assert store.shape(path) == (7, 40, 60)
    whole = store.read(path)
    assert whole.shape == clip.shape and whole.dtype == np.uint8
    assert np.abs(whole.astype(int) - clip).mean() < 2  # lossy, but close
    # Each frame is a standard JPEG that OpenCV decodes to the same pixels (BGR on disk).
    assert np.array_equal(store.read_frames(path, [5, 1, 5]), whole[[5, 1, 5]])
    assert clipstore.from_suffix(path).name == "jpeg"
    with pytest.raises(ValueError, match=r"frames.store: expected one of npy, jpeg; got 'png'"):
        clipstore.create("png")


def test_npy_and_jpeg_stores_give_the_same_manifest(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    raw, prepared_dir = prepared
    for store in ("npy", "jpeg"):
        frames.extract(FramesConfig(workers=1, store=store), raw, prepared_dir, tmp_path / store)
    npy, jpeg = (frames.read_manifest(tmp_path / s) for s in ("npy", "jpeg"))
    assert npy["per_clip"] == jpeg["per_clip"] and (npy["format"], jpeg["format"]) == (
        "npy",
        "jpeg",
    )
    clip = next(iter(npy["per_clip"]))
    raw_frames = np.load(frames.clip_output(tmp_path / "npy", clip))
    jpeg_frames = clipstore.JpegStore().read(frames.clip_output(tmp_path / "jpeg", clip, ".jpgs"))
    assert np.abs(jpeg_frames.astype(int) - raw_frames).mean() < 8  # 32×32 digits, quality 90


def test_interpolation_is_opencv_bilinear_or_area(tmp_path: Path) -> None:
    path = tmp_path / "big.mp4"
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (80, 60))
    for _ in range(3):
        writer.write(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    writer.release()
    first = cv2.cvtColor(DECODE(path, fps=None, size=60)[0], cv2.COLOR_RGB2BGR)  # unresized
    for name, mode in (("linear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA)):
        got = DECODE(path, fps=None, size=24, interpolation=name)[0]
        expected = cv2.cvtColor(cv2.resize(first, (32, 24), interpolation=mode), cv2.COLOR_BGR2RGB)
        assert np.array_equal(got, expected), name
    assert not np.array_equal(
        DECODE(path, fps=None, size=24, interpolation="linear"),
        DECODE(path, fps=None, size=24, interpolation="area"),
    )


# ------------------------------------------------------------------------ quiet, cached bad clips
def test_decoder_messages_go_to_the_log_and_the_terminal_gets_one_line_per_bad_clip(
    prepared: tuple[Path, Path],
    own_raw: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepared_dir = prepared[1]
    train = base.read_manifest(prepared_dir, "train")["clip"]
    clip, mp4 = train[0], frames.clips_dir(own_raw) / f"{train[0]}.mp4"
    mp4.write_bytes(zero_second_half_of_stream(write_mp4(tmp_path / "whole.mp4")))
    cfg = FramesConfig(workers=1, skip_bad=True)
    frames.extract(cfg, own_raw, prepared_dir, tmp_path / "frames")
    err = capfd.readouterr().err
    assert "[mpeg4 @" not in err  # FFmpeg's messages did not reach the terminal
    assert f"bad clip {mp4}: decoded " in err and "damaged stream" in err
    listing = tmp_path / "frames" / frames.BAD_CLIPS
    assert f"\ntrain: 1 of {len(train)} clips dropped ({listing})\n" in err
    assert "val:" not in err and "test:" not in err
    log = (tmp_path / "frames" / frames.DECODER_LOG).read_text()
    assert log.startswith(f"== {clip}\n[mpeg4 @") and "more lines" in log
    assert len(log.splitlines()) == 1 + frames.LOG_LINES + 1
    # The bad clip is remembered: the rerun neither decodes it nor prints FFmpeg's messages.
    counter = CountingDecoder()
    monkeypatch.setattr(frames, "decode_clip", counter)
    frames.extract(cfg, own_raw, prepared_dir, tmp_path / "frames")
    assert counter.calls == 0
    assert (tmp_path / "frames" / frames.DECODER_LOG).read_text() == log
    assert frames.read_manifest(tmp_path / "frames")["bad_clips"][0]["clip"] == clip


def test_captured_stderr_keeps_the_first_lines_and_counts_the_rest() -> None:
    with frames.captured_stderr() as lines:
        os.write(2, b"".join(b"line %d\n" % i for i in range(frames.LOG_LINES + 5)))
    assert lines[0] == "line 0" and lines[frames.LOG_LINES - 1] == f"line {frames.LOG_LINES - 1}"
    assert lines[-1] == "... 5 more lines" and len(lines) == frames.LOG_LINES + 1


def test_an_edited_clip_is_decoded_again(
    prepared: tuple[Path, Path], own_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared_dir = prepared[1]
    frames.extract(FramesConfig(workers=1), own_raw, prepared_dir, tmp_path / "frames")
    clip, mp4 = first_clip(own_raw, prepared_dir)
    other = frames.clips_dir(own_raw) / f"{frames.listed_clips(prepared_dir)[1]}.mp4"
    mp4.write_bytes(other.read_bytes())  # new content under the old name
    counter = CountingDecoder()
    monkeypatch.setattr(frames, "decode_clip", counter)
    frames.extract(FramesConfig(workers=1), own_raw, prepared_dir, tmp_path / "frames")
    assert counter.calls == 0  # its content is a clip already cached
    out = np.load(frames.clip_output(tmp_path / "frames", clip))
    assert np.array_equal(out, DECODE(other, fps=None, size=32))
    mp4.write_bytes(write_mp4(tmp_path / "fresh.mp4"))
    frames.extract(FramesConfig(workers=1, size=32), own_raw, prepared_dir, tmp_path / "frames")
    assert counter.calls == 1


# ----------------------------------------------------------------------------- missing clips
def test_download_names_the_clips_missing_from_disk(
    prepared: tuple[Path, Path], own_raw: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip, mp4 = first_clip(own_raw, prepared[1])
    video.check_listed_clips(own_raw, skip_bad=False)  # nothing missing: no error
    assert (own_raw / video.MISSING_CLIPS).read_text() == ""
    mp4.unlink()
    with pytest.raises(ValueError, match=r"1 are missing .*frames\.skip_bad: true"):
        video.check_listed_clips(own_raw, skip_bad=False)
    err = capsys.readouterr().err
    assert f"download: missing clip {mp4}\n" in err
    listed = video.read_split_file(own_raw / video.TRAIN_LIST)
    in_train = clip in set(listed["clip"])
    file = video.TRAIN_LIST if in_train else video.TEST_LIST
    total = len(listed) if in_train else len(video.read_split_file(own_raw / video.TEST_LIST))
    assert f"download: {file}: 1 of {total} clips missing" in err
    video.check_listed_clips(own_raw, skip_bad=True)  # let through, still listed
    assert (own_raw / video.MISSING_CLIPS).read_text() == f"{clip}\n"


def test_a_file_that_is_not_a_jpeg_frame_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clip.jpgs"
    path.write_bytes(b"\x93NUMPY" + bytes(40))
    with pytest.raises(ValueError, match=r"expected a \.jpgs frame file \(magic b'LTJPEGS1'\)"):
        clipstore.JpegStore().shape(path)


def test_cache_writes_leave_other_writers_temporaries_alone(tmp_path: Path) -> None:
    entry = tmp_path / "ab" / "abcdef.jpgs"
    entry.parent.mkdir()
    other = entry.with_name(f".{entry.name}.99999.0123abcd.part")  # another experiment's write
    other.write_bytes(b"in progress")
    frames.shared_write(entry, lambda f: f.write(b"frames"))
    assert entry.read_bytes() == b"frames" and other.read_bytes() == b"in progress"
    assert sorted(p.name for p in entry.parent.iterdir()) == sorted([entry.name, other.name])
