"""The whole DVC pipeline on digits-LT at tiny settings, as a user runs it."""

import json

import pandas as pd
import yaml
from conftest import DATA_STAGES, REPO, STAGES, Repo, Reproduced


def test_dvc_repro_runs_every_stage_and_writes_its_outputs(reproduced: Reproduced) -> None:
    for stage in STAGES:
        assert f"Running stage '{stage}'" in reproduced.stdout
    assert "| digits |" in reproduced.stdout  # the results table at the end
    root = reproduced.root
    result = json.loads((root / "metrics/evaluate.json").read_text())
    for key in ("top1", "many", "medium", "few", "num_many", "num_medium", "num_few"):
        assert key in result
    assert result["num_many"] + result["num_medium"] + result["num_few"] == 10
    assert 0.0 <= result["top1"] <= 100.0
    per_class = pd.read_csv(root / "plots/per_class.csv")
    assert list(per_class.columns) == ["class", "train_count", "accuracy"]
    assert len(pd.read_csv(root / "plots/confusion.csv")) == 300
    frames = json.loads((root / "data/frames/manifest.json").read_text())
    assert frames["kind"] == "image" and frames["clips"] == 0
    # the per-epoch curves of both training stages; finetune's steps continue after pretrain's
    for stage, steps in (("pretrain", [0, 1]), ("finetune", [2, 3])):
        curve = pd.read_csv(root / f"dvclive/{stage}/plots/metrics/val/top1.tsv", sep="\t")
        assert list(curve["step"]) == steps


def test_exp_run_reuses_pretrain(dvc_repo: Repo) -> None:
    exp = dvc_repo.dvc("exp", "run", "-S", "loss.tau=1.5")
    for stage in (*DATA_STAGES, "pretrain"):
        assert f"Stage '{stage}' didn't change, skipping" in exp.stdout
    for stage in ("finetune", "evaluate"):
        assert f"Running stage '{stage}'" in exp.stdout
    diff = dvc_repo.dvc("metrics", "diff", "--all", "--json")
    changed = json.loads(diff.stdout)["metrics/evaluate.json"]
    assert "top1" in changed and "few" in changed
    plots = dvc_repo.dvc("plots", "show", "--json")
    shown = json.loads(plots.stdout)
    # every declared plot exists (tests/test_plots.py: in every finetune mode)
    errors = json.dumps(shown.get("errors", {}))
    for name in ("dvclive", "per_class", "confusion"):
        assert name not in errors, errors
    for name in ("train_loss", "val_top1", "val_few", "per_class_accuracy", "confusion"):
        assert shown["data"][name], name


def test_bad_params_stop_the_first_stage_without_traceback(repo: Repo) -> None:
    # The data stages check every key, type and range (the loss registry: tests/test_refused_params)
    repo.params({"data": {"imbalance": 0.5}})
    proc = repo.stage("download", check=False)
    assert proc.returncode == 2
    assert "data.imbalance: expected a number >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (repo.root / "data").exists()


def test_training_seed_does_not_redraw_the_data(dvc_repo: Repo) -> None:
    """``seed`` is training only: ``dvc exp run -S seed=1`` reuses the data stages' outputs."""
    repo = dvc_repo
    before = pd.read_csv(repo.root / "data/prepared/train.csv")
    exp = repo.dvc("exp", "run", "-S", "seed=1")
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in exp.stdout, exp.stdout
    for stage in ("pretrain", "finetune", "evaluate"):
        assert f"Running stage '{stage}'" in exp.stdout
    pd.testing.assert_frame_equal(pd.read_csv(repo.root / "data/prepared/train.csv"), before)
    info = json.loads((repo.root / "data/prepared/dataset.json").read_text())
    assert info["data_seed"] == 0


def test_data_stages_list_data_seed_not_seed() -> None:
    """The data stages depend on ``data.seed`` (through ``data``), never on the top-level seed."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("download", "inject_imbalance", "extract_frames"):
        assert "seed" not in stages[name]["params"], name
    assert "data.seed" in stages["download"]["params"]
    assert "data" in stages["inject_imbalance"]["params"]
