"""``python -m tools.recipes --explain`` (tools/explain.py): its numbers are the run's own.

Closed forms on small cases (steps per epoch, the rarest class's draws under the instance and
class-balanced samplers), the LDAM-DRW row's LR at every step against LDAM-DRW's
``adjust_learning_rate`` (kaidic/LDAM-DRW cifar_train.py: epoch e trains at lr × (e + 1) / 5 for
e < 5, lr × 0.01 from e = 160, lr × 0.0001 from e = 180, with the DRW epochs continuing the same
schedule), and the printed protocol of the rows issue #20 names.
"""

from __future__ import annotations

import math

import pytest

from tools import explain, recipes


def row_config(table: str, row: str, **changes: object) -> explain.Config:
    t = recipes.table(table)
    return explain.resolve({**t.row_params(t.row(row)), **changes})


def ldam_drw_lr(epoch: int, lr: float = 0.1) -> float:
    """kaidic/LDAM-DRW cifar_train.py adjust_learning_rate, called with the 0-based epoch."""
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    if epoch > 180:
        return lr * 0.0001
    if epoch > 160:
        return lr * 0.01
    return lr


@pytest.mark.parametrize("row", ["cifar10-if100", "erm-cifar10-if10"])
def test_the_ldam_drw_row_runs_adjust_learning_rate_at_every_step(row: str) -> None:
    cfg = row_config("ldam-drw-cifar", row)
    counts = explain.class_counts(cfg)
    pretrain = explain._trainer(cfg, "pretrain", counts)
    finetune = explain._trainer(cfg, "finetune", counts)
    spe = pretrain.steps_per_epoch
    assert spe == finetune.steps_per_epoch == math.ceil(counts.n / 128)
    offset = cfg.pretrain.optim.epochs * spe  # finetune.optimizer: continue
    for stage, trainer, first in (("pretrain", pretrain, 0), ("finetune", finetune, offset)):
        factor = trainer.scheduler.lr_lambdas[0]
        for step in range(trainer.optim.epochs * spe):
            epoch = (first + step) // spe
            got = trainer.optim.lr * factor(first + step)
            assert got == pytest.approx(ldam_drw_lr(epoch), rel=1e-12), (stage, step)


def test_steps_and_rarest_draws_are_the_samplers() -> None:
    cfg = explain.resolve(
        {
            "data.name": "cifar10",
            "data.imbalance": 10,
            "data.val_per_class": None,
            "pretrain.epochs": 3,
            "pretrain.batch_size": 1000,
            "pretrain.sampler": "instance",
            "finetune.mode": "classifier",
            "finetune.sampler": "class_balanced",
            "finetune.samples_per_class": 4,
            "finetune.epochs": 2,
            "finetune.batch_size": 512,
        }
    )
    counts = explain.class_counts(cfg)
    # LDAM-DRW's get_img_num_per_cls at IF 10: int(5000 * 0.1 ** (c / 9)).
    assert counts.per_class == tuple(int(5000 * 0.1 ** (c / 9)) for c in range(10))
    pretrain, finetune = explain.phases(cfg)
    n = counts.n
    assert (pretrain.steps_per_epoch, pretrain.steps) == (
        math.ceil(n / 1000),
        3 * math.ceil(n / 1000),
    )
    assert pretrain.images == 3 * n and pretrain.rarest_draws == pytest.approx(3 * 500)
    assert finetune.steps == 2 * math.ceil(n / 512)
    assert finetune.rarest_draws == pytest.approx(2 * n / 10)  # class-aware: 1 / C of the draws


def test_lr_marks_follow_the_schedule() -> None:
    cfg = row_config("kang-imagenet-lt-resnet10", "crt")
    finetune = explain.phases(cfg)[1]

    # epoch_prestep cosine over 10 epochs: epoch e trains at 0.2 (1 + cos(pi (e + 1) / 10)) / 2.
    def at(e: int) -> float:
        return 0.2 * (1 + math.cos(math.pi * (e + 1) / 10)) / 2

    spe = finetune.steps_per_epoch
    for label, fraction in (("25%", 0.25), ("50%", 0.5), ("75%", 0.75), ("100%", 1.0)):
        step = math.ceil(fraction * 10 * spe) - 1
        assert finetune.lr[label] == pytest.approx(at(step // spe), abs=1e-12)
    assert finetune.lr["100%"] == pytest.approx(0.0, abs=1e-12)


def test_the_cli_prints_the_reference_step_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert recipes.main(["--explain", "kang-imagenet-lt-resnet10/crt"]) == 0
    text = capsys.readouterr().out
    assert "optimiser steps: 2,270 = 10 epochs × 227 steps (batch 512" in text
    assert "split: val: train.keep: best" in text and "test: read by evaluate only" in text
    assert "BatchNorm: frozen weights, BatchNorm in train mode" in text
    assert recipes.main(["--explain", "kang-places-lt-resnet152/crt"]) == 0
    text = capsys.readouterr().out
    assert "optimiser steps: 2,450 = 10 epochs × 245 steps (batch 256" in text
    assert "optimiser steps: 14,670 = 30 epochs × 489 steps" in text  # the base model
    with pytest.raises(KeyError, match="expected a row in"):
        recipes.main(["--explain", "kang-places-lt-resnet152/nope"])


def test_per_phase_draws_and_the_meta_set_are_shown() -> None:
    lines = explain.describe(row_config("balms-cifar10-if200", "balms"))
    assert "split: finetune trains on train_finetune" in lines
    assert "split: the BALMS meta set is train_meta" in lines
    assert any("rarest class" in x and "initial logits" in x for x in lines)
    lines = explain.describe(row_config("cdb-egtea", "cdb-ce"))
    assert not any("rarest class" in x for x in lines)  # not published for CDB-CE's train split
    assert any(x.startswith("split: val: pretrain.loss.name: cdb_ce") for x in lines)
