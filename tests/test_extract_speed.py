"""The extraction benchmark at tiny size: its EGTEA-format tree parses; it prints every table."""

from __future__ import annotations

from pathlib import Path

import cv2

from benchmarks import extract_speed
from longtail.data import video


def test_generated_tree_is_in_egtea_format(tmp_path: Path) -> None:
    names = extract_speed.write_egtea_tree(tmp_path, 8, frames_count=5, width=64, height=48)
    train = video.read_split_file(tmp_path / "action_annotation" / video.TRAIN_LIST)
    test = video.read_split_file(tmp_path / "action_annotation" / video.TEST_LIST)
    assert len(train) + len(test) == 8 and set(test["subject"]) == {"P03"}
    assert set(train["subject"]) == {"OP01", "P19", "P20"}  # P20: a val subject
    assert sorted(train["clip"].str.split("/").str[1]) == sorted(
        n for n in names if not n.startswith("P03")
    )
    capture = cv2.VideoCapture(str(tmp_path / video.CLIPS_DIR / f"{train['clip'][0]}.mp4"))
    size = (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    assert size == (64, 48) and capture.get(cv2.CAP_PROP_FRAME_COUNT) == 5
    capture.release()


def test_benchmark_prints_every_table(tmp_path: Path) -> None:
    out = tmp_path / "extract.md"
    argv = ["--clips", "4", "--frames", "6", "--fidelity-clips", "1", "--repeats", "1"]
    text = extract_speed.main([*argv, "--out", str(out)])
    assert out.read_text() == text
    for row in (
        "| read |",
        "| resize linear |",
        "| resize area |",
        "| write (90 JPEG) |",
        "| 1 worker |",
        "| jpeg q90 |",
        "| npy |",
        "| linear vs CDB-CE |",
        "| area vs CDB-CE |",
    ):
        assert row in text, row
