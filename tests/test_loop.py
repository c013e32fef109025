"""Tests of longtail.loop: the plan a stage runs, and ``pretrain.mode: weights``, the start from
``model.weights`` without a training epoch (FBL's Places-LT backbone keeps its weights and
BatchNorm statistics)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_decouple import COUNTS, images, pretrained

from longtail import config, loop
from longtail.config import ConfigError
from longtail.distributed import World
from longtail.train import evaluate_confusion

CPU = torch.device("cpu")


def stage(cfg: config.Config, tmp_path: Path, train, val) -> loop.Stage:
    return loop.Stage(
        name="pretrain",
        cfg=cfg,
        device=CPU,
        world=World(),
        open_split={"train": train, "val": val}.__getitem__,
        counts=COUNTS,
        checkpoint=tmp_path / "pretrain.ckpt",
        signature="sig",
        live_dir=tmp_path / "dvclive",
        metrics_path=tmp_path / "pretrain.json",
        describe="tiny",
    )


def test_pretrain_weights_mode_passes_the_weights_through_and_scores_val(tmp_path: Path) -> None:
    cfg = config.parse({"pretrain": {"mode": "weights", "epochs": 3}, "model": {"weights": "w.pt"}})
    net = pretrained()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train, val = images(COUNTS, 1), images([4, 4, 4], 2, padding=0)
    plan = loop.Plan(net=net, loss=cfg.pretrain.loss, sampler=cfg.pretrain.sampler)
    summary = loop.PRETRAIN_MODES[cfg.pretrain.mode].run(plan, stage(cfg, tmp_path, train, val))
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # BN buffers included
    assert int(net.bn.num_batches_tracked) == 7  # no train-mode pass
    fast = loop.trainer_for(plan, stage(cfg, tmp_path, train, val)).fast
    conf = evaluate_confusion(net, val, 3, 64, fast, CPU, World())
    top1 = 100.0 * conf.diag().sum().item() / conf.sum().item()
    assert summary["epochs"] == 0 and summary["val/top1"] == pytest.approx(top1)
    written = json.loads((tmp_path / "pretrain.json").read_text())
    assert written["epochs"] == 0 and written["val/top1"] == pytest.approx(top1)
    assert (tmp_path / "dvclive" / "plots").is_dir()
    assert not (tmp_path / "pretrain.ckpt").exists()


def test_pretrain_train_mode_takes_optimiser_steps(tmp_path: Path) -> None:
    cfg = config.parse({"pretrain": {"epochs": 1, "batch_size": 8}})
    net = pretrained()
    weight = net.conv.weight.detach().clone()
    plan = loop.Plan(net=net, loss=cfg.pretrain.loss, sampler=cfg.pretrain.sampler)
    train, val = images(COUNTS, 1), images([4, 4, 4], 2, padding=0)
    summary = loop.PRETRAIN_MODES["train"].run(plan, stage(cfg, tmp_path, train, val))
    assert summary["epochs"] == 1 and not torch.equal(net.conv.weight, weight)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"pretrain": {"mode": "weights"}}, r"model\.weights: expected a checkpoint path"),
        (
            {
                "pretrain": {"mode": "weights", "schedule": "step"},
                "model": {"weights": "w.pt"},
                "finetune": {"optimizer": "continue", "schedule": "step"},
            },
            r"finetune\.optimizer: expected fresh",
        ),
        ({"pretrain": {"mode": "load"}}, r"pretrain\.mode: expected one of train, weights"),
    ],
)
def test_pretrain_weights_mode_refuses_what_it_cannot_run(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config.parse(raw)
