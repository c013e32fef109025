"""Params that cannot work stop the pipeline before any training, with the key and the fix.

Zero epochs stop the first stage (the data stages check every key, type and range); a loss
option no loss accepts and a network too deep for the input size stop ``pretrain`` before its
first epoch (those checks need the torch-based registries, which the data stages do not import).
"""

from __future__ import annotations

from tests.conftest import Repo


def test_zero_pretrain_epochs_stop_the_first_stage(repo: Repo) -> None:
    repo.params({"pretrain": {"epochs": 0}})
    proc = repo.stage("download", check=False)
    assert proc.returncode == 2
    assert "error: pretrain.epochs: expected a number >= 1; got 0" in proc.stderr
    assert not (repo.root / "data").exists()


def test_bad_loss_option_and_too_deep_network_stop_pretrain_before_training(
    digits_repo: Repo,
) -> None:
    repo = digits_repo
    repo.params({"loss": {"name": "cdb_ce", "gamma": -1}})
    proc = repo.stage("pretrain", check=False)
    assert proc.returncode == 2
    assert "error: loss.gamma: expected a number >= 0" in proc.stderr
    repo.params({"loss": {"gamma": 1.0}, "model": {"arch": "resnet50"}})
    proc = repo.stage("pretrain", check=False)
    assert proc.returncode == 2
    assert (
        "error: model.arch: expected a network that can downsample the 8×8 inputs of digits; "
        "got resnet50, which takes inputs of at least 17×17"
    ) in proc.stderr
    assert not (repo.root / "checkpoints").exists()
    assert not (repo.root / "models").exists()
