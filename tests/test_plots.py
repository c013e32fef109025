"""``dvc plots show`` after a run: no missing file or warning in any finetune mode, and the plots
that mode declares (tiny sizes; the run itself is the pipeline's, through ``dvc repro``). Each mode
is switched to from the default run's committed workspace, as a user switches: only finetune and
evaluate run again, and nothing the previous mode wrote may linger in the plots."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import Repo

ALWAYS = {"train_loss", "val_top1", "val_few", "per_class_accuracy", "confusion"}
CURVES = {"finetune_train_loss", "finetune_val_top1", "finetune_val_few"}


def shown(repo: Repo) -> set[str]:
    """The names of the plots ``dvc plots show`` rendered (ids without their dvc.yaml prefix)."""
    proc = repo.dvc("plots", "show", "--json")
    assert "failed to load" not in proc.stderr + proc.stdout
    out = json.loads(proc.stdout)
    assert not out.get("errors"), out.get("errors")
    return {name.split("::")[-1] for name in out["data"]}


def test_default_run_then_tau_norm_show_their_plots_without_errors(dvc_repo: Repo) -> None:
    repo = dvc_repo
    assert shown(repo) == ALWAYS | CURVES
    # finetune's steps continue after pretrain's 2 epochs
    tsv = repo.root / "dvclive/finetune/plots/metrics/train/loss.tsv"
    with open(tsv) as f:
        assert [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")] == [2, 3]
    assert json.loads((repo.root / ".dvc/plots/scatter_logx.json").read_text())["encoding"]["x"][
        "scale"
    ] == {"type": "log"}

    repo.params({"finetune": {"mode": "tau_norm", "tau_norm": [0.0, 1.0]}})
    repo.dvc("repro")
    assert shown(repo) == ALWAYS | {"tau_norm_sweep"}


@pytest.mark.parametrize(
    ("update", "declared"),
    [
        ({"finetune": {"mode": "none"}}, set()),
        ({"finetune": {"mode": "lws"}, "loss": {"name": "ce"}}, CURVES | {"lws_scales"}),
        (
            {
                "finetune": {"mode": "classifier", "sampler": "meta"},
                "loss": {"name": "balanced_softmax"},
            },
            CURVES | {"meta_sampling_rates"},
        ),
    ],
)
def test_other_modes_show_their_plots_without_errors(
    dvc_repo: Repo, update: dict, declared: set
) -> None:
    dvc_repo.params(update)
    dvc_repo.dvc("repro")
    assert shown(dvc_repo) == ALWAYS | declared
