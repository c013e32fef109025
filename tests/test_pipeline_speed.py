"""The pipeline benchmark runs and prints one row per stage (tiny epochs; no time is asserted)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import BIN, REPO


def test_pipeline_benchmark_prints_every_stage() -> None:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": "/tmp"}
    args = ["--repeats", "1", "--set", "pretrain.epochs=1", "--set", "finetune.epochs=1"]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline_speed", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for stage in ("download", "inject_imbalance", "extract_frames", "pretrain", "finetune"):
        assert f"| {stage} | " in out
    assert "| evaluate | " in out and "| **total** | " in out
    assert out.startswith("CPU: ")
