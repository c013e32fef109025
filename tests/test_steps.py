"""Pinned step counts: every recipe row whose reference loop is known runs that loop's steps.

For each row, the reference's optimiser steps per phase are computed here from the reference's own
loop rule and the dataset's published counts, written from the reference code (not from this
project's):

* classifier-balancing / BALMS / CDB-CE ImageNet-LT / OLTR ``run_networks.py``: every epoch stops
  after ``int(N / batch_size)`` steps (``self.epoch_steps``, ``if step == self.epoch_steps:
  break``), whatever the sampler's length; BALMS turns ``num_iterations`` into
  ``ceil(num_iterations / len(loader))`` epochs, ``len(loader)`` being ``ceil(N / batch)`` for a
  plain loader and ``N // batch`` for its ``MetaSampler`` batch sampler;
* LDAM-DRW, FBL, CDB-CE CIFAR and EGTEA: a plain ``DataLoader`` without ``drop_last``, so
  ``ceil(N / batch)`` steps per epoch;
* the long-tailed CIFAR counts by each reference's rule: ``int(n_max * (1 / IF) ** (c / (C - 1)))``
  (LDAM-DRW's ``get_img_num_per_cls``, which BALMS and FBL copy; CDB-CE's ``create_imbalance`` with
  n_max 475 after its 25 val images per class).

They are compared with ``python -m tools.recipes --explain``'s counts (:mod:`tools.explain`, which
reads the run's own code) within one reference epoch's steps. A phase whose steps differ more is
listed in ``DIFFER`` with words its row's deviations must contain.
"""

from __future__ import annotations

import math

import pytest

from tools import explain, recipes

IMAGENET_LT, PLACES_LT, INAT = 115_846, 62_500, 437_513  # the published training lists
EGTEA_TRAIN = 6_372  # CDB-CE's train_split.txt: train_split1 without subjects P20-P26


def lt_n(n_max: int, classes: int, imbalance: float) -> int:
    """Training images of an exponential long-tailed CIFAR (the references' own rule)."""
    return sum(int(n_max * (1 / imbalance) ** (c / (classes - 1))) for c in range(classes))


def kang(n: int, batch: int, epochs: int) -> tuple[int, int]:
    """classifier-balancing's run_networks.py: (steps, steps per epoch)."""
    return epochs * int(n / batch), int(n / batch)


def loader(n: int, batch: int, epochs: int) -> tuple[int, int]:
    """A plain DataLoader without drop_last: (steps, steps per epoch)."""
    return epochs * math.ceil(n / batch), math.ceil(n / batch)


def balms_iterations(n: int, batch: int, iterations: int, meta: bool = False) -> tuple[int, int]:
    """BALMS run_networks.py: ceil(iterations / len(loader)) epochs of int(n / batch) steps."""
    batches = n // batch if meta else math.ceil(n / batch)
    per_epoch = min(int(n / batch), batches)
    return math.ceil(iterations / batches) * per_epoch, per_epoch


BALMS10, BALMS100 = lt_n(5000, 10, 200), lt_n(500, 100, 200)  # 11,203 and 9,502
KANG = {
    "kang-imagenet-lt-resnext50": (IMAGENET_LT, 512, 512),
    "kang-imagenet-lt-resnet10": (IMAGENET_LT, 512, 512),
    "kang-places-lt-resnet152": (PLACES_LT, 128, 256),  # OLTR's stage 1 at batch 128
}


def reference_steps() -> dict[tuple[str, str, str], tuple[int, int]]:
    """(table, row, phase) -> (reference steps, reference steps per epoch)."""
    ref: dict[tuple[str, str, str], tuple[int, int]] = {}
    for table, (n, base_batch, batch) in KANG.items():
        base = kang(n, base_batch, 90 if n == IMAGENET_LT else 30)
        for row in ("joint", "crt", "tau-norm", "lws"):
            ref[table, row, "pretrain"] = base
        ref[table, "crt", "finetune"] = kang(n, batch, 10)
        ref[table, "lws", "finetune"] = kang(n, batch, 5)
    ref["kang-imagenet-lt-resnext50", "ncm", "pretrain"] = ref[
        "kang-imagenet-lt-resnext50", "joint", "pretrain"
    ]  # NCM: the joint base model, class means without a training step
    for row in ("softmax", "bs-e2e", "bs-decoupled", "balms"):
        ref["balms-imagenet-lt", row, "pretrain"] = kang(IMAGENET_LT, 512, 90)
    ref["balms-imagenet-lt", "bs-decoupled", "finetune"] = kang(IMAGENET_LT, 512, 10)
    ref["balms-imagenet-lt", "balms", "finetune"] = kang(IMAGENET_LT, 512, 20)
    for row in ("softmax", "bs-decoupled", "balms"):
        ref["balms-places-lt", row, "pretrain"] = kang(PLACES_LT, 128, 30)
    ref["balms-places-lt", "bs-decoupled", "finetune"] = kang(PLACES_LT, 256, 10)
    ref["balms-places-lt", "balms", "finetune"] = kang(PLACES_LT, 256, 10)
    for table, n in (("balms-cifar10-if200", BALMS10), ("balms-cifar100-if200", BALMS100)):
        for row in ("softmax", "bs-e2e", "bs-decoupled", "balms"):
            ref[table, row, "pretrain"] = balms_iterations(n, 512, 13_000)
        ref[table, "bs-decoupled", "finetune"] = balms_iterations(n, 512, 2_000)
        ref[table, "balms", "finetune"] = balms_iterations(n, 512, 2_000, meta=True)
    ref["cdb-imagenet-lt", "cdb-ce", "pretrain"] = kang(IMAGENET_LT, 512, 90)
    for row, imbalance in (("if200", 200), ("if100", 100), ("if10", 10)):
        ref["cdb-cifar100", row, "pretrain"] = loader(lt_n(475, 100, imbalance), 32, 240)
    ref["cdb-egtea", "cdb-ce", "pretrain"] = loader(EGTEA_TRAIN, 16, 100)
    for row, classes, imbalance in (
        ("cifar10-if100", 10, 100),
        ("cifar10-if10", 10, 10),
        ("cifar100-if100", 100, 100),
        ("cifar100-if10", 100, 10),
        ("erm-cifar10-if10", 10, 10),
    ):
        n = lt_n(50_000 // classes, classes, imbalance)
        ref["ldam-drw-cifar", row, "pretrain"] = loader(n, 128, 160)  # epochs 0-159
        ref["ldam-drw-cifar", row, "finetune"] = loader(n, 128, 40)  # the DRW epochs 160-199
    ref["fbl-cifar-lt", "cifar10", "pretrain"] = loader(lt_n(5000, 10, 100), 64, 200)
    ref["fbl-cifar-lt", "cifar100", "pretrain"] = loader(lt_n(500, 100, 100), 64, 200)
    ref["fbl-imagenet-lt", "fbl", "pretrain"] = loader(IMAGENET_LT, 512, 200)
    ref["fbl-inat2018", "fbl", "pretrain"] = loader(INAT, 512, 200)
    ref["fbl-places-lt", "fbl", "pretrain"] = (0, 1)  # FBL loads the ImageNet network and trains on
    ref["fbl-places-lt", "fbl", "finetune"] = loader(PLACES_LT, 512, 200)
    return ref


# Phases whose steps differ from the reference's by more than one epoch, and the words the row's
# deviations must contain to say why.
DIFFER: dict[tuple[str, str, str], str] = {}
REFERENCE = reference_steps()
PHASES = sorted({(t, r) for t, r, _ in REFERENCE})


def test_the_references_published_counts() -> None:
    # The training-set sizes the protocols print (BALMS's 11,203 / 9,502 images, CDB-CE's 10,302 at
    # IF 100 on CIFAR-100) and the 2,260 / 2,440 cRT steps of issue #20.
    assert (BALMS10, BALMS100, lt_n(475, 100, 100)) == (11_203, 9_502, 10_302)
    assert REFERENCE["kang-imagenet-lt-resnet10", "crt", "finetune"] == (2_260, 226)
    assert REFERENCE["kang-places-lt-resnet152", "crt", "finetune"] == (2_440, 244)
    assert REFERENCE["balms-cifar10-if200", "softmax", "pretrain"] == (591 * 21, 21)
    assert REFERENCE["balms-cifar100-if200", "balms", "finetune"] == (112 * 18, 18)
    assert all(
        (t, r) in [(t.key, r.key) for t in recipes.TABLES for r in t.rows] for t, r in PHASES
    )


@pytest.mark.parametrize(("table", "row"), [pytest.param(t, r, id=f"{t}/{r}") for t, r in PHASES])
def test_steps_match_the_reference(table: str, row: str) -> None:
    t = recipes.table(table)
    r = t.row(row)
    ours = {p.name: p.steps for p in explain.phases(explain.resolve(t.row_params(r)))}
    for phase in ("pretrain", "finetune"):
        if (table, row, phase) not in REFERENCE:
            assert phase not in ours, f"{table}/{row} {phase}: trains, reference loop not pinned"
            continue
        steps, per_epoch = REFERENCE[table, row, phase]
        got = ours.get(phase, 0)
        if (table, row, phase) in DIFFER:
            assert abs(got - steps) > per_epoch, f"{table}/{row} {phase}: now matches, drop DIFFER"
            assert any(DIFFER[table, row, phase] in d for d in r.deviations), (table, row, phase)
            continue
        assert abs(got - steps) <= per_epoch, (
            f"{table}/{row} {phase}: {got:,} steps, the reference {steps:,} ({per_epoch} per epoch)"
        )


def test_an_eleven_times_longer_crt_is_caught() -> None:
    # The protocol this test replaces: 110 epochs where the reference runs 10.
    t = recipes.table("kang-imagenet-lt-resnet10")
    params = {**t.row_params(t.row("crt")), "finetune.epochs": 110}
    finetune = explain.phases(explain.resolve(params))[1]
    steps, per_epoch = REFERENCE["kang-imagenet-lt-resnet10", "crt", "finetune"]
    assert finetune.steps == 24_970 and abs(finetune.steps - steps) > per_epoch
