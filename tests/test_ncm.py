"""Tests of the nearest-class-mean mode (longtail/modes/ncm.py, Kang et al., ICLR 2020): the class
means of the L2-normalised frozen features of ``train``, cosine scores, in closed form; and the
mode through the finetune and evaluate stage scripts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_decouple import DRIVER, Identity, Rows, make_job, parse, run

from longtail import modes
from longtail.modes.ncm import class_means
from longtail.nets import heads

# Train features by hand: class 0 is long-tailed (3 images of large norm), class 1 has one image.
TRAIN_X = torch.tensor([[3.0, 0.0], [4.0, 1.0], [6.0, -1.0], [1.0, 1.0]])
TRAIN_Y = torch.tensor([0, 0, 0, 1])


def test_class_means_average_the_unit_features_of_each_class() -> None:
    means = class_means(TRAIN_X, TRAIN_Y, 3)
    unit = TRAIN_X / TRAIN_X.norm(dim=1, keepdim=True)
    assert torch.allclose(means[0], unit[:3].mean(0)) and torch.allclose(means[1], unit[3])
    assert torch.equal(means[2], torch.zeros(2))  # no image: a zero vector


def test_ncm_scores_the_cosine_to_each_class_mean_and_trains_nothing() -> None:
    net = Identity()
    with torch.no_grad():  # a pretrained classifier that predicts class 0 everywhere
        net.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        net.fc.bias.copy_(torch.tensor([5.0, 0.0]))
    val = Rows(torch.tensor([[1.0, 0.9], [2.0, -0.1]]), torch.tensor([1, 0]))
    job, calls = make_job(net, parse({"mode": "ncm"}))
    job.open_split = {"train": Rows(TRAIN_X, TRAIN_Y), "val": val}.__getitem__
    job.train_counts = [3, 1]
    outcome = run("ncm", job)
    assert not calls and not outcome.trained and outcome.classifier == "cosine"
    assert isinstance(net.fc, heads.CosineHead) and not net.fc.weight.requires_grad
    means = class_means(TRAIN_X, TRAIN_Y, 2)
    with torch.no_grad():
        logits = net.fc(val.x)
    expected = F.normalize(val.x, dim=1) @ F.normalize(means, dim=1).T  # (2, 2) cosines
    assert torch.allclose(logits, expected, atol=1e-6)
    assert logits.argmax(1).tolist() == [1, 0]  # the tail image goes to its class
    assert outcome.metrics["val/top1"] == 100.0 and outcome.metrics["epochs"] == 0
    assert outcome.metrics["train_images"] == 4


def test_ncm_describes_itself() -> None:
    cfg = parse({"mode": "ncm"})
    ncm = modes.get("ncm")
    assert not ncm.trains(cfg) and ncm.val_needs(cfg) == [] and ncm.head_loss(cfg) is None
    assert "ncm" in modes.names() and not ncm.reads_sampler


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ncm`` through the finetune and evaluate stage scripts on tiny digits settings."""
    from conftest import REPO, TINY, TRACKED, copy_repo

    root = tmp_path_factory.mktemp("ncm") / "repo"
    repo = copy_repo(REPO, root, TRACKED)
    repo.params({**TINY, "finetune": {"epochs": 2, "batch_size": 128}})
    params = {"ncm": {"finetune": {"mode": "ncm"}, "loss": {"name": "ldam"}}}
    repo.run(sys.executable, "-c", DRIVER, json.dumps(params))
    (root / "results" / "pretrain.pt").write_bytes((root / "models/pretrain.pt").read_bytes())
    return root / "results"


def test_ncm_runs_through_the_stages(stages: Path) -> None:
    result = json.loads((stages / "ncm" / "evaluate.json").read_text())
    assert result["finetune_mode"] == "ncm" and 0 <= result["top1"] <= 100
    final = torch.load(stages / "ncm" / "final.pt", map_location="cpu", weights_only=False)
    pre = torch.load(stages / "pretrain.pt", map_location="cpu", weights_only=False)
    assert final["classifier"] == "cosine" and final["logit_scale"] == 1.0  # ldam unread
    backbone = [k for k in pre["state_dict"] if not k.startswith("fc.")]
    assert all(torch.equal(pre["state_dict"][k], final["state_dict"][k]) for k in backbone)
    assert "fc.bias" not in final["state_dict"]
    assert json.loads((stages / "ncm" / "finetune.json").read_text())["mode"] == "ncm"
