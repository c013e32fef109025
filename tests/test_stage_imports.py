"""What the data stages import: on the default dataset they run without torch and scikit-learn.

Importing torch and torchvision took most of each data stage's wall clock (seconds per stage, for a
stage that writes a few kilobytes); ``python -m benchmarks.pipeline_speed`` prints the import
time per stage. These tests pin the modules, not a time.
"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import Repo

DATA_STAGES = ("download", "inject_imbalance", "extract_frames")
HEAVY = ("torch", "torchvision", "sklearn", "dvclive")

# Runs the stages in order in one interpreter, then prints the heavy modules it had loaded.
RUN = f"""
import runpy, sys
for name in {DATA_STAGES!r}:
    runpy.run_module("stages." + name, run_name="__main__")
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_data_stages_run_without_torch_or_sklearn(repo: Repo) -> None:
    out = repo.run(sys.executable, "-c", RUN).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert (repo.root / "data/prepared/train_images.npy").exists()
    assert (repo.root / "data/frames/manifest.json").exists()


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "evaluate"])
def test_training_stages_do_not_import_torchvision_for_resnet32(repo: Repo, stage: str) -> None:
    code = (
        f"import sys, stages.{stage}; from longtail import nets; nets.create('resnet32', 10); "
        "print('torchvision' in sys.modules)"
    )
    assert repo.run(sys.executable, "-c", code).stdout.strip() == "False"
