"""Training-protocol options: ``bias_decay`` (no weight decay on the classifier bias) and
``train.keep`` (the weights of the best val epoch), as CDB-CE's CIFAR code runs them.

Also ``finetune.optimizer: continue`` (LDAM-DRW's one 200-epoch run as pretrain + finetune):
bit-identical on the CPU to one uninterrupted run that switches the class weights at the same
epoch. In-process runs of the real training loop on the tiny network and random images of
``test_train.py``; the stage-level check runs ``pretrain`` on tiny digits settings with the test
split removed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import merge, run_stages
from test_train import (
    CLASSES,
    COUNTS,
    CPU,
    TinyNet,
    assert_same_state,
    deterministic,  # noqa: F401 (the fixture, for usefixtures)
    make_trainer,
    source,
)

from longtail import config, losses
from longtail.config import ConfigError, OptimConfig
from longtail.losses import LongTailLoss
from longtail.train import KEEPS, Checkpointer, KeepBest, build_optimizer, classifier_bias


# ---------------------------------------------------------------------------------- bias decay
def test_bias_decay_false_puts_the_classifier_bias_in_a_group_without_decay() -> None:
    net = TinyNet(0)
    opt = build_optimizer(
        net.parameters(), OptimConfig(bias_decay=False), CPU, classifier_bias(net)
    )
    assert [len(g["params"]) for g in opt.param_groups] == [5, 1]
    assert opt.param_groups[1]["params"][0] is net.fc.bias
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]


def test_bias_decay_true_is_the_single_group_of_before() -> None:
    net = TinyNet(0)
    opt = build_optimizer(net.parameters(), OptimConfig(), CPU, classifier_bias(net))
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 6


def test_bias_without_decay_moves_only_by_its_gradient() -> None:
    """SGD without momentum, zero gradients: decay shrinks every weight but the exempt bias."""
    net = TinyNet(0)
    cfg = OptimConfig(lr=0.5, momentum=0.0, weight_decay=0.1, bias_decay=False)
    opt = build_optimizer(net.parameters(), cfg, CPU, classifier_bias(net))
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in net.named_parameters():
        factor = 1.0 if name == "fc.bias" else 1.0 - 0.5 * 0.1
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=0, atol=1e-7)


def test_groups_of_partial_finetuning_keep_their_lr() -> None:
    net = TinyNet(0)
    groups = [
        {"params": [net.conv.weight, net.conv.bias], "lr": 0.01},
        {"params": list(net.fc.parameters()), "lr": 0.1},
    ]
    opt = build_optimizer(groups, OptimConfig(bias_decay=False), CPU, classifier_bias(net))
    got = [(len(g["params"]), g["lr"], g["weight_decay"]) for g in opt.param_groups]
    assert got == [(2, 0.01, 5e-4), (1, 0.1, 5e-4), (1, 0.1, 0.0)]


# ------------------------------------------------------------------------------------ keep best
def _run_keeping(tmp_path: Path, keep: str, **optim: object) -> tuple[object, list[dict]]:
    trainer = make_trainer(tmp_path, **optim)
    trainer.train_cfg = type(trainer.train_cfg)(
        amp="off", channels_last="off", compile="off", keep=keep
    )
    trainer.keeper = KEEPS[keep]()
    copies: list[dict] = []

    def log_epoch(epoch: int, metrics: dict) -> None:
        copies.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    trainer.log_epoch = log_epoch
    trainer.fit()
    return trainer, copies


def test_keep_best_returns_the_best_val_epochs_weights(tmp_path: Path) -> None:
    trainer, copies = _run_keeping(tmp_path, "best", epochs=6, lr=0.3)
    scores = [h["val/top1"] for h in trainer.history]  # balanced val: top-1 = mean class acc
    best = scores.index(max(scores))  # the earliest of ties
    assert best != len(scores) - 1, "the run must make best differ from last to test anything"
    assert trainer.kept_epoch == best
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, copies[best][key]), key


def test_keep_last_returns_the_last_epoch(tmp_path: Path) -> None:
    trainer, copies = _run_keeping(tmp_path, "last", epochs=6, lr=0.3)
    assert trainer.kept_epoch == 5
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, copies[-1][key]), key


def test_keep_best_resumes_with_the_same_kept_epoch(tmp_path: Path) -> None:
    full, _ = _run_keeping(tmp_path / "a", "best", epochs=6, lr=0.3)
    killed, _ = _run_keeping(tmp_path / "b", "best", epochs=6, lr=0.3)
    # The finished run's checkpoint, read by a fresh trainer: nothing to train, same kept weights.
    again = make_trainer(tmp_path / "b", epochs=6, lr=0.3)
    again.train_cfg = killed.train_cfg
    again.keeper = type(killed.keeper)()
    again.checkpointer = Checkpointer(tmp_path / "b" / "pretrain.ckpt", "sig")
    assert again.resume()
    again.fit()
    assert again.kept_epoch == full.kept_epoch
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_keep_best_without_val_is_refused(tmp_path: Path) -> None:
    trainer, _ = _run_keeping(tmp_path, "last", epochs=1)
    trainer.keeper = KeepBest()
    trainer.val_source = source([0] * CLASSES, 2)
    with pytest.raises(ValueError, match=r"train\.keep: best selects the epoch on val"):
        trainer.fit()


# ---------------------------------------------------------------------------- stage, no test
def test_pretrain_keeps_the_best_epoch_with_the_test_split_removed(digits_repo) -> None:
    """The stage never opens test: with every test file deleted, keep best still runs."""
    repo = digits_repo
    repo.params({"pretrain": {"epochs": 4}, "train": {"keep": "best"}})
    prepared = repo.root / "data" / "prepared"
    removed = [p for p in prepared.iterdir() if p.name.startswith("test")]
    assert removed, "the prepared data has test files to remove"
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    repo.stage("pretrain")
    metrics = json.loads((repo.root / "metrics" / "pretrain.json").read_text())
    assert metrics["keep"] == "best" and 0 <= metrics["kept_epoch"] < 4
    blob = torch.load(repo.root / "models" / "pretrain.pt", map_location="cpu", weights_only=True)
    ckpt = torch.load(
        repo.root / "checkpoints" / "pretrain.ckpt", map_location="cpu", weights_only=False
    )
    kept = ckpt["keep"]
    assert kept["epoch"] == metrics["kept_epoch"]
    for key, value in blob["state_dict"].items():
        assert torch.equal(value, kept["weights"][key]), key


# ------------------------------------------------------------------ DRW as one run: continue
class SwitchingLDAM(LongTailLoss):
    """LDAM whose class weights switch to class-balanced at epoch ``at``: LDAM-DRW in one run."""

    def __init__(self, counts: list[int], at: int) -> None:
        super().__init__(counts)
        self.plain = losses.create("ldam", counts, s=30.0)
        self.drw = losses.create("ldam", counts, s=30.0, weights="class_balanced")
        self.at, self.epoch = at, 0

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.epoch = epoch

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor):
        return (self.drw if self.epoch >= self.at else self.plain)(logits, targets, features)


STEP = {"schedule": "step", "milestones": (3, 4), "lr_decay": 0.1, "warmup_epochs": 1}


@pytest.mark.usefixtures("deterministic")
def test_pretrain_then_continued_finetune_is_one_uninterrupted_run(tmp_path: Path) -> None:
    one = make_trainer(tmp_path / "one", loss=SwitchingLDAM(COUNTS, at=3), epochs=5, **STEP)
    one.checkpointer = None
    one.fit()

    pre = make_trainer(
        tmp_path / "pre", loss=losses.create("ldam", COUNTS, s=30.0), epochs=3, **STEP
    )
    pre.checkpointer = None
    pre.fit()
    # Through a file as the stages pass it, read as h17's weights_only loads will read it.
    torch.save({"state_dict": pre.model.state_dict(), "carry": pre.carry_state()}, tmp_path / "p")
    blob = torch.load(tmp_path / "p", map_location="cpu", weights_only=True)
    fine = make_trainer(
        tmp_path / "fine",
        loss=losses.create("ldam", COUNTS, s=30.0, weights="class_balanced"),
        init_seed=99,  # overwritten by the pretrained weights below
        epochs=2,
        **STEP,
    )
    fine.model.load_state_dict(blob["state_dict"])
    fine = dataclasses.replace(
        fine, checkpointer=None, carry=blob["carry"]
    )  # as the stage builds it
    fine.fit()

    for key, value in one.model.state_dict().items():
        assert torch.equal(value, fine.model.state_dict()[key]), key
    assert_same_state(one.optimizer.state_dict(), fine.optimizer.state_dict())
    assert one.scheduler.state_dict()["last_epoch"] == fine.scheduler.state_dict()["last_epoch"]
    tail = [{k: v for k, v in h.items() if k not in ("seconds", "epoch")} for h in one.history[3:]]
    got = [{k: v for k, v in h.items() if k not in ("seconds", "epoch")} for h in fine.history]
    assert tail == got


@pytest.mark.usefixtures("deterministic")
def test_fresh_finetune_differs_from_the_one_run(tmp_path: Path) -> None:
    """The control: without continue, momentum restarts at zero and the schedule at step 0."""
    one = make_trainer(tmp_path / "one", loss=SwitchingLDAM(COUNTS, at=3), epochs=5, **STEP)
    one.checkpointer = None
    one.fit()
    pre = make_trainer(
        tmp_path / "pre", loss=losses.create("ldam", COUNTS, s=30.0), epochs=3, **STEP
    )
    pre.checkpointer = None
    pre.fit()
    fine = make_trainer(
        tmp_path / "fine",
        loss=losses.create("ldam", COUNTS, s=30.0, weights="class_balanced"),
        epochs=2,
        **STEP,
    )
    fine.checkpointer = None
    fine.model.load_state_dict(pre.model.state_dict())
    fine.fit()
    assert not torch.equal(one.model.fc.weight, fine.model.fc.weight)


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"finetune": {"mode": "classifier"}}, r"finetune\.mode: expected full"),
        ({"finetune": {"lr": 0.01}}, r"finetune\.lr: expected pretrain\.lr's value 0\.1"),
        ({"pretrain": {"schedule": "cosine"}, "finetune": {"schedule": "cosine"}}, "LR 0"),
        ({"train": {"keep": "best"}}, r"train\.keep: expected last"),
    ],
)
def test_continue_refuses_what_cannot_continue(update: dict, match: str) -> None:
    base = {
        "pretrain": {"schedule": "step", "milestones": [160, 180], "lr_decay": 0.01, "lr": 0.1},
        "finetune": {
            "optimizer": "continue",
            "mode": "full",
            "schedule": "step",
            "milestones": [160, 180],
            "lr_decay": 0.01,
            "lr": 0.1,
            "warmup_epochs": 5,
        },
    }
    base["pretrain"]["warmup_epochs"] = 5
    config.parse(base)  # the LDAM-DRW shape is accepted
    with pytest.raises(ConfigError, match=match):
        config.parse(merge(base, update))


def test_stages_continue_pretrains_optimiser_through_params(
    digits_repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pretrain (2 epochs) + finetune (2, continue): the LR schedule runs on over 4 epochs."""
    repo = digits_repo
    optim = {
        "batch_size": 64,
        "lr": 0.1,
        "schedule": "step",
        "milestones": [2, 3],
        "lr_decay": 0.1,
        "warmup_epochs": 0,
    }
    repo.params(
        {
            "pretrain": {**optim, "epochs": 2, "loss": {"name": "ldam"}},
            "loss": {"name": "ldam", "weights": "class_balanced"},
            "finetune": {**optim, "epochs": 2, "mode": "full", "optimizer": "continue"},
        }
    )
    run_stages(repo, ("pretrain", "finetune"), monkeypatch)
    metrics = json.loads((repo.root / "metrics" / "finetune.json").read_text())
    # After 4 epochs of one schedule both milestones have passed: 0.1 * 0.1^2. A fresh finetune
    # would be at its own epoch 2: 0.1 * 0.1.
    assert metrics["lr"] == pytest.approx(1e-3)
