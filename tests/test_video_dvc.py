"""EGTEA-format extraction under ``dvc exp run``: a short failure that names the clip, no lost work.

The tree is generated in EGTEA Gaze+'s published layout (``benchmarks.extract_speed``'s
``write_egtea_tree``: ``cropped_clips/<recording>/<clip>.mp4``, ``action_annotation/``), at 64×48
to keep it fast, with one clip whose stream has its second half zeroed: FFmpeg decodes it up to the
damage and prints hundreds of ``[mpeg4 @ 0x...]`` lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Repo, git_init
from test_video_damage import zero_second_half_of_stream

from benchmarks.extract_speed import write_egtea_tree


def test_failing_exp_run_is_short_and_its_rerun_decodes_nothing_again(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "EGTEA"
    names = write_egtea_tree(root, 12, frames_count=40, width=64, height=48, fps=8.0)
    bad = names[0]  # OP01-R01-PastaSalad: a train clip
    mp4 = root / "cropped_clips" / "OP01-R01-PastaSalad" / f"{bad}.mp4"
    mp4.write_bytes(zero_second_half_of_stream(mp4.read_bytes()))
    repo.params(
        {"data": {"name": "egtea", "root": str(root)}, "frames": {"size": 32, "workers": 2}}
    )
    git_init(repo)
    failed = repo.dvc("exp", "run", "extract_frames", check=False)
    terminal = failed.stdout + failed.stderr
    assert failed.returncode != 0
    # Terminal lines: the progress count rewrites its own line with "\r".
    assert len(terminal.rstrip("\n").split("\n")) < 30, terminal
    assert "[mpeg4" not in terminal
    assert f"bad clip {mp4}: decoded " in terminal and "damaged stream" in terminal
    assert "train: 1 of 6 clips could not be decoded" in terminal
    rerun = repo.dvc("exp", "run", "extract_frames", "-S", "frames.skip_bad=true")
    manifest = json.loads((repo.root / "data/frames/manifest.json").read_text())
    assert (manifest["decoded"], manifest["reused"], manifest["clips"]) == (0, 11, 11)
    assert [b["clip"] for b in manifest["bad_clips"]] == [f"OP01-R01-PastaSalad/{bad}"]
    assert "train: 1 of 6 clips dropped" in rerun.stdout + rerun.stderr
    assert "[mpeg4" not in rerun.stdout + rerun.stderr
