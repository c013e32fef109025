"""``python -m benchmarks.gpu_check --device cpu --tiny``: the GPU check's whole sequence, tiny.

Every part (the CUDA suite, which skips everything on the CPU; the digits pipeline; train_speed;
the determinism cost; decode_speed; concurrent runs) must run to its end and write its markdown
table with the device, the torch version and the command. The pieces that read the tables are
checked on fixed text.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from longtail.config import ConfigError

TABLES = ("cuda-tests.md", "digits.md", "train-speed.md", "determinism.md", "decode.md")
TABLES += ("concurrent.md",)


def test_tiny_sequence_on_the_cpu_writes_every_table(tmp_path: Path) -> None:
    outcomes = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    assert [o.part for o in outcomes] == list(gpu_check.PARTS)
    assert {o.part: o.status for o in outcomes} == dict.fromkeys(gpu_check.PARTS, "ok")
    for name in TABLES:
        text = (tmp_path / name).read_text()
        assert "- device: cpu" in text and f"torch {torch.__version__}" in text
        assert "- command: `" in text
    summary = (tmp_path / "README.md").read_text()
    assert all(f"| {part} | ok |" in summary for part in gpu_check.PARTS)
    assert "skipped" in (tmp_path / "cuda-tests.md").read_text()
    assert "| top1 | many | medium | few |" in (tmp_path / "digits.md").read_text()
    assert "Slowdown off / on: **" in (tmp_path / "determinism.md").read_text()
    assert "Recommended: **N = " in (tmp_path / "concurrent.md").read_text()


def test_project_rate_reads_path_a_of_a_train_speed_table(tmp_path: Path) -> None:
    table = tmp_path / "t.md"
    table.write_text("| path | what | images/s |\n| (a) project | x | 12,345 | 1–2 | 3 s |\n")
    assert gpu_check.project_rate(table) == 12_345.0
    assert gpu_check.project_rate(tmp_path / "missing.md") is None


def test_stage_commands_follow_dvc_yaml_with_the_process_count() -> None:
    names = [name for name, _ in gpu_check.stage_commands(gpu_check.REPO)]
    assert names[:2] == ["download", "inject_imbalance"] and names[-1] == "evaluate"
    pretrain = dict(gpu_check.stage_commands(gpu_check.REPO))["pretrain"]
    assert pretrain[1:] == ["-m", "stages.launch", "1", "pretrain"]


def test_cuda_without_a_gpu_is_refused_before_any_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device: cuda was requested"):
        gpu_check.main(["--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
