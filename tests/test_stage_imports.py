"""What the stages import: on the default dataset the data stages run without torch and
scikit-learn, the pipeline never imports torchvision, and CPU determinism does not import Inductor.

Importing torch and torchvision took most of each data stage's wall clock (seconds per stage, for a
stage that writes a few kilobytes); ``python -m benchmarks.pipeline_speed`` prints the import
time per stage. These tests pin the modules, not a time.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, Repo

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


# Runs every stage in one interpreter on the CPU (params.yaml's defaults), then reports whether
# torchvision was imported and whether the determinism switch (determinism: true) is on.
RUN_ALL = f"""
import runpy, sys, torch
for name in {(*DATA_STAGES, "pretrain", "finetune", "evaluate")!r}:
    runpy.run_module("stages." + name, run_name="__main__")
print("torchvision" in sys.modules, torch.are_deterministic_algorithms_enabled())
"""


def test_the_default_pipeline_never_imports_torchvision(repo: Repo) -> None:
    # ResNet-32 with crop and flip needs none of it; AutoAugment's policy table and the
    # torchvision networks import it when they are used.
    out = repo.run(sys.executable, "-c", RUN_ALL).stdout
    assert out.strip().splitlines()[-1] == "False True"


def test_cpu_determinism_does_not_import_inductor() -> None:
    # torch.use_deterministic_algorithms imports Inductor's config (about a second) to copy the
    # switch into it; the evaluate stage, which builds no optimiser, never needs Inductor.
    code = (
        "import sys, torch; from longtail.train import set_determinism; "
        "set_determinism(True, torch.device('cpu')); "
        "print('torch._inductor.config' in sys.modules, "
        "torch.are_deterministic_algorithms_enabled())"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False True"
