"""The papers' tables as data: every row's params, its published numbers and where they were read.

One registry (``TABLES``) of the results tables this project reproduces: CDB-CE (Sinha et al.,
ACCV 2020), Balanced Softmax / BALMS (Ren et al., NeurIPS 2020), FBL (Li et al., ICME 2022), the
baselines they compare with (LDAM-DRW, Cao et al., NeurIPS 2019; cRT, τ-norm and LWS, Kang et al.,
ICLR 2020) and this project's own digits-LT tables. The hyperparameters were read in the authors'
repositories (hitachi-rd-cv/CDB-loss, jiawei-ren/BalancedMetaSoftmax-Classification,
juyongjiang/FBL, kaidic/LDAM-DRW, facebookresearch/classifier-balancing); every published number
names the source it was read in (``SOURCES``), and a number that was not read anywhere is absent,
never guessed. Every row states each remaining difference from its reference in one line, with
the reason.

``docs/recipes.md`` is generated from this module (``python -m tools.recipes --write``);
``tests/test_recipes.py`` fails when the two disagree and validates every row's params.
``python -m tools.reproduce TABLE`` runs a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "recipes.md"
METRICS = ("top1", "many", "medium", "few")

# Where each published number was read. A number from an index (Papers with Code, a leaderboard)
# is the paper's number as that index copied it; error rates there are turned into accuracy
# (100 − error) and say so.
SOURCES: dict[str, str] = {
    "cdb-readme": "hitachi-rd-cv/CDB-loss README.md: the example output of the CIFAR-100 IF 200 "
    "command (`Test Accuracy is 0.3740`)",
    "cdb-pwc": "Sinha et al., ACCV 2020, as indexed by Papers with Code "
    "(paperswithcode.com/paper/class-wise-difficulty-balanced-loss-for): CIFAR-100-LT error "
    "41.26 (IF 10) and 57.43 (IF 100) as 100 − error; ImageNet-LT top-1 38.5",
    "balms-readme": "jiawei-ren/BalancedMetaSoftmax-Classification README.md, 'Experiment Results' "
    "table (the README warns that its numbers may differ slightly from the paper's)",
    "balms-leaderboard": "Ren et al., NeurIPS 2020, as tabulated by "
    "yanyanSann/Long-Tailed-Classification-Leaderboard README.md (ImageNet-LT and Places-LT "
    "many/medium/few/all)",
    "fbl-pwc": "Li et al., ICME 2022, as indexed by Papers with Code (paperswithcode2.com/paper/"
    "366215): error 17.54 (CIFAR-10-LT) and 54.78 (CIFAR-100-LT), IF 100, as 100 − error",
    "ldam-leaderboard": "Cao et al., NeurIPS 2019, as tabulated by "
    "yanyanSann/Long-Tailed-Classification-Leaderboard README.md: LDAM-DRW error 22.97 / 11.84 "
    "(CIFAR-10-LT IF 100 / 10) and 57.96 / 41.29 (CIFAR-100-LT), as 100 − error",
    "ldam-pwc": "Cao et al., NeurIPS 2019, as indexed by the Papers with Code archive "
    "(sotaverified.org/papers/learning-imbalanced-datasets-with-label): ERM (CE) error 13.61 on "
    "CIFAR-10-LT IF 10, as 100 − error",
    "kang-readme": "facebookresearch/classifier-balancing README.md, 'ImageNet_LT' results tables "
    "(ResNeXt-50): many / medium / few / all",
    "kang-leaderboard": "Kang et al., ICLR 2020, as tabulated by "
    "yanyanSann/Long-Tailed-Classification-Leaderboard README.md (ImageNet-LT ResNet-10 LWS; "
    "Places-LT ResNet-152 LWS and τ-normalised)",
    "measured": "this project, measured: the command and machine are given under the table",
}


@dataclass(frozen=True)
class Published:
    """Numbers a source prints for one row (percent); ``None`` where that source gives none."""

    source: str
    top1: float | None = None
    many: float | None = None
    medium: float | None = None
    few: float | None = None
    note: str = ""
    std: tuple[float, ...] = ()  # sample std of top1, many, medium, few (measured tables)
    n: int | None = None  # runs behind a measured mean

    def get(self, metric: str) -> float | None:
        return getattr(self, metric)

    def text(self, metric: str) -> str:
        """``85.78`` or, with a std, ``85.78 ± 2.01``; ``–`` when absent."""
        value = self.get(metric)
        if value is None:
            return "–"
        if not self.std:
            return f"{value:.2f}"
        return f"{value:.2f} ± {self.std[METRICS.index(metric)]:.2f}"


@dataclass(frozen=True)
class Row:
    """One row: a method on a dataset, its params overrides, published numbers and deviations.

    ``params`` are dotted ``params.yaml`` keys on top of the table's shared ``params``.
    ``published`` lists what the sources print, the first being the one our runs are compared
    with. ``deviations`` are one line each: what differs from the reference and why.
    """

    key: str
    method: str
    params: Mapping[str, Any]
    published: tuple[Published, ...] = ()
    deviations: tuple[str, ...] = ()
    source: str = ""

    @property
    def reference(self) -> Published | None:
        return self.published[0] if self.published else None


@dataclass(frozen=True)
class Table:
    """A paper's table: shared params, rows, where it comes from and what it needs."""

    key: str
    title: str
    paper: str
    source: str
    protocol: str
    params: Mapping[str, Any]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    needs: str = ""  # the data a user must provide ("" when none)
    measured: str = ""  # for tables of this project's measured numbers: command, commit, machine

    def row_params(self, row: Row) -> dict[str, Any]:
        """The table's shared params with the row's on top."""
        return {**self.params, **row.params}

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(
            f"table {self.key}: expected a row in {[r.key for r in self.rows]}, got {key!r}"
        )


# --------------------------------------------------------------------------------- protocols
def _optim(prefix: str, **values: Any) -> dict[str, Any]:
    """Every optimiser key of one stage, so that a recipe never depends on params.yaml defaults."""
    keys = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule")
    keys += ("milestones", "lr_decay", "warmup_epochs")
    defaults = {"momentum": 0.9, "nesterov": False, "milestones": [], "lr_decay": 0.1}
    defaults["warmup_epochs"] = 0
    merged = {**defaults, **values}
    missing = [k for k in keys if k not in merged]
    if missing:
        raise ValueError(f"{prefix}: expected values for {missing}")
    return {f"{prefix}.{k}": merged[k] for k in keys}


def _finetune_none() -> dict[str, Any]:
    return {"finetune.mode": "none"}


# CDB-CE, CIFAR-LT/cifar_train.py: ResNet-32, batch 32 (README, one GPU), SGD 0.1, momentum 0.9,
# weight decay 5e-4 on every parameter but the classifier bias, 240 epochs, LR x 0.01 at epochs 160
# and 210, 25 val images per class; it keeps the epoch of the best val mean-class accuracy.
CDB_CIFAR = {
    "data.name": "cifar100",
    "data.profile": "exp",
    "data.subset": "cdb",
    "data.seed": 0,
    "data.val_per_class": 25,
    "model.arch": "resnet32",
    "model.bias_init": "prior",
    "pretrain.loss.name": "cdb_ce",
    "pretrain.loss.tau": 1.5,
    "pretrain.loss.reduction": "mean",
    "pretrain.loss.tau_rule": "sigmoid",
    "pretrain.sampler": "instance",
    **_optim(
        "pretrain",
        epochs=240,
        batch_size=32,
        lr=0.1,
        weight_decay=0.0005,
        schedule="step",
        milestones=[160, 210],
        lr_decay=0.01,
    ),
    "pretrain.bias_decay": False,
    "train.keep": "best",
    **_finetune_none(),
}
CDB_CIFAR_DEVIATIONS = (
    "Normalisation: LDAM-DRW's CIFAR statistics; the reference uses ImageNet's, a fixed "
    "transform that no params key changes (an affine rescaling the first BatchNorm absorbs).",
)

# CDB-CE, ImageNet-LT/config/ImageNet_LT/feat_uniform_with_CDBloss.yaml; run_networks.py keeps the
# epoch of the best val top-1, on ImageNet-LT's balanced val (20 per class) the mean-class accuracy.
CDB_IMAGENET = {
    "data.name": "imagenet_lt",
    "data.root": "/data/imagenet",
    "model.arch": "resnet10",
    "pretrain.loss.name": "cdb_ce",
    "pretrain.loss.tau": 1,
    "pretrain.loss.reduction": "normalized",
    "pretrain.loss.tau_rule": "shifted_sigmoid",
    "pretrain.sampler": "instance",
    **_optim("pretrain", epochs=90, batch_size=512, lr=0.2, weight_decay=0.0002, schedule="cosine"),
    "train.keep": "best",
    **_finetune_none(),
}

# CDB-CE, EGTEA/EGTEA_train.py: Kinetics 3D ResNeXt-101, 10 frames, 224 px, SGD 0.001 without
# momentum, weight decay 5e-4, 100 epochs, StepLR at 0.6 x 100 = epoch 60, batch 8 x 2 GPUs; it
# keeps the epoch of the best val top-1.
CDB_EGTEA = {
    "data.name": "egtea",
    "data.root": "/data/egtea",
    "frames.size": 224,
    "frames.segments": 10,
    "model.arch": "resnext101_3d",
    "model.weights": "/data/weights/resnext-101-kinetics.pth",
    "pretrain.loss.name": "cdb_ce",
    "pretrain.loss.tau": 1.5,
    "pretrain.loss.reduction": "mean",
    "pretrain.loss.tau_rule": "sigmoid",
    "pretrain.sampler": "instance",
    **_optim(
        "pretrain",
        epochs=100,
        batch_size=16,
        lr=0.001,
        momentum=0,
        weight_decay=0.0005,
        schedule="step",
        milestones=[60],
    ),
    "train.keep": "best",
    **_finetune_none(),
}


def _balms_cifar(dataset: str, epochs: int, warmup: int) -> dict[str, Any]:
    """BALMS CIFAR base model: batch 512, 13,000 iterations (as epochs), warmup 800 iterations."""
    return {
        "data.name": dataset,
        "data.imbalance": 200,
        "data.profile": "exp",
        "data.subset": "ldam",
        "data.seed": 0,
        "data.val_per_class": 0,
        "model.arch": "resnet32",
        "pretrain.loss.name": "ce",
        "pretrain.sampler": "instance",
        "pretrain.policy": "autoaugment_cutout",  # data/ImbalanceCIFAR.py: CIFAR10Policy, Cutout
        **_optim(
            "pretrain",
            epochs=epochs,
            batch_size=512,
            lr=0.1,
            weight_decay=0.0005,
            schedule="cosine",
            warmup_epochs=warmup,
        ),
    }


def _classifier(
    loss: str, sampler: str, epochs: int, batch_size: int, lr: float, **extra: Any
) -> dict[str, Any]:
    """Decoupled classifier retraining on the cached backbone (cRT, decoupled BS, BALMS).

    The references keep the frozen backbone in train mode, so its BatchNorm statistics drift
    under the re-balanced sampler: ``backbone_bn: train``.
    """
    return {
        "loss.name": loss,
        "finetune.mode": "classifier",
        "finetune.sampler": sampler,
        "finetune.samples_per_class": 1,
        "finetune.augment": True,
        "finetune.backbone_bn": "train",
        **_optim(
            "finetune",
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=0.0005,
            schedule="cosine",
        ),
        **extra,
    }


def _meta(lr: float, init_pow: float, batch: int, source: str = "val") -> dict[str, Any]:
    """The BALMS meta sampler; ``source``: where its class-balanced meta batches come from (a
    ``train`` meta set is read with the training transform, as the reference's CIFAR loader)."""
    return {
        "finetune.meta_lr": lr,
        "finetune.meta_init_pow": init_pow,
        "finetune.meta_batch_size": batch,
        "finetune.meta_source": source,
        "finetune.meta_augment": source == "train",
        "finetune.backbone_bn": "frozen",  # the meta step needs frozen features (see BALMS_BN)
    }


BALMS_BN = (
    "Backbone BatchNorm: frozen in eval mode; the reference leaves it in train mode, which the "
    "meta step here refuses (it differentiates through the classifier on frozen features)."
)


# The reference's CIFAR training transform serves every training phase, the decoupled one too.
BALMS_CIFAR_AUGMENT = {"finetune.policy": "autoaugment_cutout"}

BALMS_CIFAR_DEVIATIONS = (
    "Images: LDAM-DRW's seeded draw (data.subset ldam); the reference draws the same way (per "
    "class, shuffle, keep the first n_c) with NumPy's unseeded global RNG, so its images are "
    "not recoverable.",
    "Augmentation: crop, flip, AutoAugment's CIFAR-10 policy and one 16-pixel Cutout hole as the "
    "reference (`policy: autoaugment_cutout`), with torchvision's definition of the policy; the "
    "reference's own PIL implementation fills rotated and sheared pixels with grey (128) where "
    "torchvision fills black.",
    "Kept model: the final network; the reference's val phase is the test set and its decoupled "
    "configs load the best-on-test base model.",
    "Warmup: the LR ramps from 0 to 0.1; the reference ramps from 0.05 (peak and decay agree).",
)

# BALMS ImageNet-LT base model: feat_uniform_resnet10.yaml (ResNet-10, 90 epochs, batch 512,
# LR 0.2, weight decay 5e-4, cosine to 0).
BALMS_IMAGENET = {
    "data.name": "imagenet_lt",
    "data.root": "/data/imagenet",
    "model.arch": "resnet10",
    "pretrain.loss.name": "ce",
    "pretrain.sampler": "instance",
    **_optim("pretrain", epochs=90, batch_size=512, lr=0.2, weight_decay=0.0005, schedule="cosine"),
}

# Places-LT base model: OLTR's config/Places_LT/stage_1.py (ImageNet ResNet-152, 30 epochs,
# batch 128, LR x 0.1 every 10 epochs, weight decay 5e-4); one LR of 0.01 for the whole network.
PLACES_BASE = {
    "data.name": "places_lt",
    "data.root": "/data/places365",
    "model.arch": "resnet152",
    "model.weights": "/data/weights/resnet152-imagenet.pth",
    "pretrain.loss.name": "ce",
    "pretrain.sampler": "instance",
    **_optim(
        "pretrain",
        epochs=30,
        batch_size=128,
        lr=0.01,
        weight_decay=0.0005,
        schedule="step",
        milestones=[10, 20],
    ),
}
PLACES_BASE_DEVIATION = (
    "Base model: neither BALMS nor classifier-balancing ships its Places-LT stage-1 config; "
    "this follows OLTR's stage_1.py with one LR (0.01) where OLTR uses 0.001 for the backbone "
    "and 0.1 for the classifier (one LR per block is not a params key yet)."
)


def _fbl(
    dataset: str, arch: str, batch: int, lr: float, lam: float, steps: list[int], **extra: Any
):
    """FBL end to end, train.py defaults: 200 epochs, weight decay 2e-4, 5-epoch warmup."""
    return {
        "data.name": dataset,
        "model.arch": arch,
        "pretrain.loss.name": "fbl",
        "pretrain.loss.lam": lam,
        "pretrain.sampler": "instance",
        **_optim(
            "pretrain",
            epochs=200,
            batch_size=batch,
            lr=lr,
            weight_decay=0.0002,
            schedule="step",
            milestones=steps,
            lr_decay=0.1 if steps[0] != 160 else 0.01,
            warmup_epochs=5,
        ),
        **_finetune_none(),
        **extra,
    }


# FBL, Places-LT (train.py, models/resnet_places.py): ImageNet ResNet-152 frozen in eval mode,
# layer4.2 re-initialised and trained with the classifier, both at args.lr.
FBL_PLACES = {
    "data.name": "places_lt",
    "model.arch": "resnet152",
    "pretrain.loss.name": "ce",
    "pretrain.sampler": "instance",
    # A stage trains at least one epoch: one CE epoch at a negligible LR stands for "as loaded".
    **_optim(
        "pretrain",
        epochs=1,
        batch_size=512,
        lr=1e-6,
        momentum=0,
        weight_decay=0,
        schedule="constant",
    ),
    "loss.name": "fbl",
    "loss.lam": 150,
    "finetune.mode": "partial",
    "finetune.train_blocks": ["layer4.2"],
    "finetune.block_lr": None,
    "finetune.sampler": "instance",
    "finetune.augment": True,
    **_optim(
        "finetune",
        epochs=200,
        batch_size=512,
        lr=0.2,
        weight_decay=0.0002,
        schedule="step",
        milestones=[60, 80],
        warmup_epochs=5,
    ),
}

FBL_DEVIATIONS = (
    "Kept model: the final epoch; the reference reports its best epoch on the test set "
    "(its val_loader is the test split).",
    "Warmup: linear per step over 5 epochs; the reference steps the LR once per epoch "
    "(LR × e/5), landing on the same epochs.",
)


# LDAM-DRW, cifar_train.py --loss_type LDAM --train_rule DRW: ResNet-32 (NormedLinear head),
# batch 128, SGD 0.1, momentum 0.9, weight decay 2e-4, 200 epochs, 5-epoch warmup, LR x 0.01
# after 160 and x 0.0001 after 180; class-balanced weights (beta 0.9999) from epoch 160. One SGD
# optimiser and schedule for all 200 epochs: finetune continues pretrain's (finetune.optimizer).
def _ldam_drw(dataset: str, imbalance: float) -> dict[str, Any]:
    schedule = {
        "batch_size": 128,
        "lr": 0.1,
        "weight_decay": 0.0002,
        "schedule": "step",
        "milestones": [160, 180],  # counted from pretrain's first epoch
        "lr_decay": 0.01,
        "warmup_epochs": 5,
    }
    return {
        "data.name": dataset,
        "data.imbalance": imbalance,
        "data.profile": "exp",
        "data.val_per_class": None,
        "model.arch": "resnet32",
        "model.classifier": "cosine",
        "pretrain.loss.name": "ldam",
        "pretrain.loss.max_m": 0.5,
        "pretrain.loss.s": 30,
        "pretrain.sampler": "instance",
        **_optim("pretrain", epochs=160, **schedule),
        "loss.name": "ldam",
        "loss.max_m": 0.5,
        "loss.s": 30,
        "loss.weights": "class_balanced",
        "loss.beta": 0.9999,
        "finetune.mode": "full",
        "finetune.sampler": "instance",
        "finetune.augment": True,
        "finetune.optimizer": "continue",
        **_optim("finetune", epochs=40, **schedule),
    }


LDAM_WARMUP = (
    "Warmup: linear per step over 5 epochs; the reference steps the LR once per epoch "
    "(LR × e/5), landing on the same epochs."
)
LDAM_DEVIATIONS = (
    "Kept model: the final epoch; the reference reports its best test epoch.",
    LDAM_WARMUP,
)

# classifier-balancing ImageNet_LT configs: cls_crt.yaml (10 epochs), cls_lws.yaml (5 epochs),
# batch 512, LR 0.2, cosine, class-aware sampling with 4 images per class visit
# (num_samples_cls), the fixed backbone left in train mode (its BatchNorm statistics drift).
# τ-norm: tau_norm.py scores w/||w||^τ · f without the bias over τ in linspace(0, 2, 21) and
# prints every τ; the paper picks τ on val, as `tau_norm: sweep` does.


def _kang_rows(
    crt: tuple[dict[str, Any], str],
    lws: tuple[dict[str, Any], str],
    published: Mapping[str, tuple[Published, ...]],
) -> tuple[Row, ...]:
    """Joint (the CE backbone), cRT, τ-norm and LWS on one cached backbone; ``crt`` and ``lws``
    are (params, the epoch-length deviation)."""
    return (
        Row(
            "joint",
            "Joint (instance-balanced CE)",
            _finetune_none(),
            published.get("joint", ()),
            source="representation learning",
        ),
        Row(
            "crt",
            "cRT",
            crt[0],
            published.get("crt", ()),
            (crt[1],),
            source="classifier learning",
        ),
        Row(
            "tau-norm",
            "τ-normalised",
            {
                "finetune.mode": "tau_norm",
                "finetune.tau_norm": "sweep",
                "finetune.tau_norm_bias": False,
            },
            published.get("tau-norm", ()),
            source="classifier learning",
        ),
        Row(
            "lws",
            "LWS",
            lws[0],
            published.get("lws", ()),
            (lws[1],),
            source="classifier learning",
        ),
    )


# n_max, C and N of the published training lists (longtail/data/imagelist.py checks N).
CLASS_AWARE = {"imagenet_lt": (1_280, 1_000, 115_846), "places_lt": (4_980, 365, 62_500)}


def _class_aware_epochs(dataset: str, epochs: int) -> tuple[int, str]:
    """classifier-balancing's ClassAwareSampler makes an epoch of n_max * C draws; an epoch here is
    N draws. The epochs that give the reference's number of steps, and the deviation line."""
    n_max, classes, n = CLASS_AWARE[dataset]
    ours = round(epochs * n_max * classes / n)
    return ours, (
        f"Epochs: the reference's class-aware sampler makes an epoch of n_max × C = {n_max:,} × "
        f"{classes:,} draws, an epoch here is the {n:,} training images, so its {epochs} epochs "
        f"are {ours} here (the same number of steps, rounded). Its cosine LR steps once per "
        "epoch, ours every step; its per-class image cycles carry over between epochs, ours "
        "restart with each epoch's seeded draw (exact resume)."
    )


def _kang_crt(dataset: str, epochs: int, batch: int, lr: float) -> tuple[dict[str, Any], str]:
    ours, deviation = _class_aware_epochs(dataset, epochs)
    params = {
        **_classifier("ce", "class_balanced", ours, batch, lr),
        "finetune.samples_per_class": 4,
    }
    return params, deviation


def _kang_lws(dataset: str, epochs: int, batch: int, lr: float) -> tuple[dict[str, Any], str]:
    ours, deviation = _class_aware_epochs(dataset, epochs)
    return _kang_lws_params(ours, batch, lr), deviation


def _kang_lws_params(epochs: int, batch: int, lr: float) -> dict[str, Any]:
    return {
        "loss.name": "ce",
        "finetune.mode": "lws",
        "finetune.sampler": "class_balanced",
        "finetune.samples_per_class": 4,
        "finetune.augment": True,
        "finetune.backbone_bn": "train",
        **_optim(
            "finetune",
            epochs=epochs,
            batch_size=batch,
            lr=lr,
            weight_decay=0.0005,
            schedule="cosine",
        ),
    }


KANG_IMAGENET_BASE = {
    "data.name": "imagenet_lt",
    "data.root": "/data/imagenet",
    "pretrain.loss.name": "ce",
    "pretrain.sampler": "instance",
    **_optim("pretrain", epochs=90, batch_size=512, lr=0.2, weight_decay=0.0005, schedule="cosine"),
}


# ------------------------------------------------------------------------------------- tables
def _p(source: str, top1: float | None = None, *mmf: float, note: str = "") -> Published:
    many, medium, few = mmf if mmf else (None, None, None)
    return Published(source, top1, many, medium, few, note)


TABLES: tuple[Table, ...] = (
    Table(
        key="cdb-cifar100",
        title="CDB-CE on CIFAR-100-LT",
        paper="Sinha, Ohashi, Nakamura, Class-Wise Difficulty-Balanced Loss, ACCV 2020",
        source="hitachi-rd-cv/CDB-loss CIFAR-LT/cifar_train.py and README",
        protocol="End to end: ResNet-32, 25 val images per class held out before the imbalance, "
        "SGD 0.1, momentum 0.9, weight decay 5e-4, 240 epochs, LR × 0.01 at epochs 160 and 210 "
        "(MultiStepLR gamma 0.01), batch 32 on the README's one GPU, τ = 1.5 as the README "
        "commands pass it (the script's default is `dynamic`), no weight decay on the classifier "
        "bias (`pretrain.bias_decay: false`), the epoch of the best val mean-class accuracy kept "
        "(`train.keep: best`).",
        params=CDB_CIFAR,
        rows=(
            Row(
                "if200",
                "CDB-CE, τ = 1.5, IF 200",
                {"data.imbalance": 200},
                (_p("cdb-readme", 37.40, note="README's example output"),),
                CDB_CIFAR_DEVIATIONS,
                source="README",
            ),
            Row(
                "if100",
                "CDB-CE, τ = 1.5, IF 100",
                {"data.imbalance": 100},
                (_p("cdb-pwc", 42.57),),
                CDB_CIFAR_DEVIATIONS,
                source="paper, CIFAR-100-LT table",
            ),
            Row(
                "if10",
                "CDB-CE, τ = 1.5, IF 10",
                {"data.imbalance": 10},
                (_p("cdb-pwc", 58.74),),
                CDB_CIFAR_DEVIATIONS,
                source="paper, CIFAR-100-LT table",
            ),
        ),
        notes=(
            "Other imbalance factors (`cifar_train.py` offers 200, 100, 50, 20 and 10): add "
            "`-S data.imbalance=N` to `reproduce` or to the command.",
        ),
        needs="the CIFAR-100 python tarball (downloaded, or `data.archive`)",
    ),
    Table(
        key="cdb-imagenet-lt",
        title="CDB-CE on ImageNet-LT",
        paper="Sinha, Ohashi, Nakamura, ACCV 2020",
        source="hitachi-rd-cv/CDB-loss "
        "ImageNet-LT/config/ImageNet_LT/feat_uniform_with_CDBloss.yaml",
        protocol="End to end: ResNet-10, 90 epochs, batch 512, SGD 0.2, momentum 0.9, weight decay "
        "2e-4, cosine to 0, the published `ImageNet_LT_val.txt` as val (20 images per class), the "
        "epoch of the best val top-1 kept (`run_networks.py`; on this balanced val it is the "
        "mean-class accuracy, `train.keep: best`). The config says "
        "`loss_params: {tau: 1}` and `coslr: true` while its stage name describes τ = 1.5 with a "
        "step LR; the recipe follows what the file runs.",
        params=CDB_IMAGENET,
        rows=(
            Row(
                "cdb-ce",
                "CDB-CE, τ = 1, ResNet-10",
                {},
                (_p("cdb-pwc", 38.5),),
                (),
                source="paper, ImageNet-LT table",
            ),
        ),
        needs="ImageNet images under `data.root` and the ImageNet-LT list files",
    ),
    Table(
        key="cdb-egtea",
        title="CDB-CE on EGTEA Gaze+ (19 verbs)",
        paper="Sinha, Ohashi, Nakamura, ACCV 2020",
        source="hitachi-rd-cv/CDB-loss EGTEA/EGTEA_train.py and README",
        protocol="End to end: Kinetics-pretrained 3D ResNeXt-101, 10 frames per clip at 224 × 224, "
        "SGD 0.001 without momentum (the script passes none), weight decay 5e-4, 100 epochs, "
        "LR × 0.1 at epoch 60 (StepLR at 0.6 × epochs), batch 8 per GPU on 2 GPUs, val = subjects "
        "P20–P26 (the repository's `val_split.txt`), τ = 1.5 as the README passes it.",
        params=CDB_EGTEA,
        rows=(
            Row(
                "cdb-ce",
                "CDB-CE, τ = 1.5, 3D ResNeXt-101",
                {},
                (),
                (
                    "Kept model: the best val epoch by mean per-class accuracy (`train.keep: "
                    "best`); the reference selects on overall val top-1, which no option selects.",
                ),
                source="paper, EGTEA table (no number read in a source)",
            ),
        ),
        needs="EGTEA Gaze+ trimmed clips and split files under `data.root`, Kinetics weights",
    ),
    Table(
        key="balms-cifar10-if200",
        title="Balanced Softmax and BALMS on CIFAR-10-LT, IF 200",
        paper="Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition, NeurIPS 2020",
        source="jiawei-ren/BalancedMetaSoftmax-Classification config/CIFAR10_LT/*_imba200.yaml",
        protocol="ResNet-32, no val split (the reference has none). Base model and end-to-end "
        "Balanced Softmax: batch 512, 13,000 iterations, SGD momentum 0.9, weight decay 5e-4, "
        "linear warmup over 800 iterations to LR 0.1, then cosine to 0. Decoupled rows: frozen "
        "backbone, new classifier, 2,000 iterations, batch 512, LR 0.1, cosine; BALMS adds the "
        "meta sampler (init_pow 0, Adam LR 0.01, meta batch 512, meta batches drawn "
        "class-balanced from the training set as the reference does). Iterations become epochs "
        "as the reference counts them (`run_networks.py`: ceil(iterations / batches per "
        "epoch)): 11,203 training images at batch 512 are 22 batches, so 591 epochs, 37 warmup "
        "epochs and 91 decoupled epochs.",
        params=_balms_cifar("cifar10", 591, 37),
        rows=(
            Row(
                "softmax",
                "Softmax",
                _finetune_none(),
                (_p("balms-readme", 74.0),),
                BALMS_CIFAR_DEVIATIONS,
                source="README table",
            ),
            Row(
                "bs-e2e",
                "Balanced Softmax (end-to-end)",
                {"pretrain.loss.name": "balanced_softmax", **_finetune_none()},
                (_p("balms-readme", 79.8),),
                BALMS_CIFAR_DEVIATIONS,
                source="README table",
            ),
            Row(
                "bs-decoupled",
                "Balanced Softmax (decoupled)",
                _classifier("balanced_softmax", "instance", 91, 512, 0.1, **BALMS_CIFAR_AUGMENT),
                (_p("balms-readme", 81.8),),
                BALMS_CIFAR_DEVIATIONS,
                source="README table",
            ),
            Row(
                "balms",
                "BALMS",
                _classifier(
                    "balanced_softmax",
                    "meta",
                    91,
                    512,
                    0.1,
                    **_meta(0.01, 0, 512, "train"),
                    **BALMS_CIFAR_AUGMENT,
                ),
                (_p("balms-readme", 82.2),),
                BALMS_CIFAR_DEVIATIONS,
                source="README table",
            ),
        ),
        needs="the CIFAR-10 python tarball (downloaded, or `data.archive`)",
    ),
    Table(
        key="balms-cifar100-if200",
        title="Balanced Softmax and BALMS on CIFAR-100-LT, IF 200",
        paper="Ren et al., NeurIPS 2020",
        source="jiawei-ren/BalancedMetaSoftmax-Classification config/CIFAR100_LT/*_imba200.yaml",
        protocol="As on CIFAR-10-LT: 9,502 training images at batch 512 are 19 batches per epoch, "
        "so 13,000 iterations are 685 epochs, the 800-iteration warmup 43 epochs and the "
        "2,000-iteration decoupled stage 106 epochs.",
        params=_balms_cifar("cifar100", 685, 43),
        rows=(
            Row(
                "softmax",
                "Softmax",
                _finetune_none(),
                (_p("balms-readme", 41.2),),
                BALMS_CIFAR_DEVIATIONS,
                source="README table",
            ),
            Row(
                "bs-e2e",
                "Balanced Softmax (end-to-end)",
                {"pretrain.loss.name": "balanced_softmax", **_finetune_none()},
                (_p("balms-readme", 46.7),),
                BALMS_CIFAR_DEVIATIONS,
                source="README table",
            ),
            Row(
                "bs-decoupled",
                "Balanced Softmax (decoupled)",
                _classifier("balanced_softmax", "instance", 106, 512, 0.1, **BALMS_CIFAR_AUGMENT),
                (_p("balms-readme", 47.2),),
                BALMS_CIFAR_DEVIATIONS,
                source="README table",
            ),
            Row(
                "balms",
                "BALMS",
                _classifier(
                    "balanced_softmax",
                    "meta",
                    106,
                    512,
                    0.1,
                    **_meta(0.01, 0, 512, "train"),
                    **BALMS_CIFAR_AUGMENT,
                ),
                (_p("balms-readme", 48.0),),
                BALMS_CIFAR_DEVIATIONS,
                source="README table",
            ),
        ),
        needs="the CIFAR-100 python tarball (downloaded, or `data.archive`)",
    ),
    Table(
        key="balms-imagenet-lt",
        title="Balanced Softmax and BALMS on ImageNet-LT (ResNet-10)",
        paper="Ren et al., NeurIPS 2020",
        source="jiawei-ren/BalancedMetaSoftmax-Classification config/ImageNet_LT/*_resnet10.yaml",
        protocol="Base model `feat_uniform_resnet10.yaml`: ResNet-10, 90 epochs, batch 512, "
        "LR 0.2, weight decay 5e-4, cosine (the repository's `softmax_resnet10.yaml` is a "
        "classifier-retraining config; the README's Softmax row is this base model). "
        "`balanced_softmax_resnet10.yaml`: the same with Balanced Softmax. Decoupled Balanced "
        "Softmax: 10 epochs, LR 0.4. BALMS: 20 epochs, LR 0.5, meta init_pow 0.1, meta LR 0.001, "
        "meta batch 1024; the meta set is the published val list.",
        params=BALMS_IMAGENET,
        rows=(
            Row(
                "softmax",
                "Softmax",
                _finetune_none(),
                (_p("balms-readme", 34.8),),
                source="README table",
            ),
            Row(
                "bs-e2e",
                "Balanced Softmax (end-to-end)",
                {"pretrain.loss.name": "balanced_softmax", **_finetune_none()},
                (),
                source="config only (no number read in a source)",
            ),
            Row(
                "bs-decoupled",
                "Balanced Softmax (decoupled)",
                _classifier("balanced_softmax", "instance", 10, 512, 0.4),
                (),
                source="config only (no number read in a source)",
            ),
            Row(
                "balms",
                "BALMS",
                _classifier("balanced_softmax", "meta", 20, 512, 0.5, **_meta(0.001, 0.1, 1024)),
                (
                    _p("balms-readme", 41.6),
                    _p("balms-leaderboard", 41.8, 50.3, 39.5, 25.3, note="paper"),
                ),
                (BALMS_BN,),
                source="README table; paper table",
            ),
        ),
        needs="ImageNet images under `data.root` and the ImageNet-LT list files",
    ),
    Table(
        key="balms-places-lt",
        title="Balanced Softmax and BALMS on Places-LT (ResNet-152)",
        paper="Ren et al., NeurIPS 2020",
        source="jiawei-ren/BalancedMetaSoftmax-Classification config/Places_LT/*.yaml",
        protocol="Decoupled configs `decouple_balanced_softmax.yaml` and `balms.yaml`: 10 epochs, "
        "batch 256, classifier LR 0.02, cosine; BALMS meta init_pow 0.3, meta LR 0.001, meta "
        "batch 512. The decoupled Balanced Softmax config shipped a class-aware sampler; the "
        "authors called it a typo (issue #11) and fixed it to instance sampling (commit "
        "34a61e4), which the recipe follows.",
        params=PLACES_BASE,
        rows=(
            Row(
                "softmax",
                "Softmax",
                _finetune_none(),
                (_p("balms-readme", 30.2),),
                (PLACES_BASE_DEVIATION,),
                source="README table",
            ),
            Row(
                "bs-decoupled",
                "Balanced Softmax (decoupled)",
                _classifier("balanced_softmax", "instance", 10, 256, 0.02),
                (),
                (PLACES_BASE_DEVIATION,),
                source="config only (no number read in a source)",
            ),
            Row(
                "balms",
                "BALMS",
                _classifier("balanced_softmax", "meta", 10, 256, 0.02, **_meta(0.001, 0.3, 512)),
                (
                    _p("balms-readme", 38.3),
                    _p("balms-leaderboard", 38.7, 41.2, 39.8, 31.6, note="paper"),
                ),
                (PLACES_BASE_DEVIATION, BALMS_BN),
                source="README table; paper table",
            ),
        ),
        notes=(
            "The leaderboard files the paper's Places-LT BALMS row under ResNet-10; the BALMS "
            "README and config use ResNet-152.",
        ),
        needs="Places-365 images under `data.root`, the Places-LT list files, ImageNet "
        "ResNet-152 weights",
    ),
    Table(
        key="fbl-cifar-lt",
        title="FBL on CIFAR-10-LT and CIFAR-100-LT, IF 100",
        paper="Li, Cheung, Jiang, Feature-Balanced Loss for Long-Tailed Visual Recognition, "
        "ICME 2022",
        source="juyongjiang/FBL README commands and train.py defaults",
        protocol="End to end: ResNet-32, batch 64, LR 0.1, λ = 60 (README), 200 epochs, SGD "
        "momentum 0.9, weight decay 2e-4 (train.py's default; its help text says 1e-4), 5-epoch "
        "warmup, LR × 0.01 after epoch 160 and × 0.0001 after 180, `--imb_factor 0.01` (IF 100), "
        "no val split.",
        params={"data.imbalance": 100, "data.profile": "exp", "data.val_per_class": None},
        rows=(
            Row(
                "cifar10",
                "FBL, λ = 60, CIFAR-10-LT",
                _fbl("cifar10", "resnet32", 64, 0.1, 60, [160, 180]),
                (_p("fbl-pwc", 82.46),),
                FBL_DEVIATIONS,
                source="paper, CIFAR-LT table",
            ),
            Row(
                "cifar100",
                "FBL, λ = 60, CIFAR-100-LT",
                _fbl("cifar100", "resnet32", 64, 0.1, 60, [160, 180]),
                (_p("fbl-pwc", 45.22),),
                FBL_DEVIATIONS,
                source="paper, CIFAR-LT table",
            ),
        ),
        needs="the CIFAR-10 and CIFAR-100 python tarballs",
    ),
    Table(
        key="fbl-imagenet-lt",
        title="FBL on ImageNet-LT (ResNet-50)",
        paper="Li, Cheung, Jiang, ICME 2022",
        source="juyongjiang/FBL README commands and train.py defaults",
        protocol="End to end: ResNet-50 (`--arch resnet50`), batch 512, LR 0.2, λ = 150, 200 "
        "epochs, weight decay 2e-4, 5-epoch warmup, LR × 0.1 after epoch 120 and × 0.01 after "
        "160.",
        params={"data.root": "/data/imagenet"},
        rows=(
            Row(
                "fbl",
                "FBL, λ = 150, ResNet-50",
                _fbl("imagenet_lt", "resnet50", 512, 0.2, 150, [120, 160]),
                (),
                FBL_DEVIATIONS,
                source="paper, ImageNet-LT table (no number read in a source)",
            ),
        ),
        needs="ImageNet images under `data.root` and the ImageNet-LT list files",
    ),
    Table(
        key="fbl-inat2018",
        title="FBL on iNaturalist 2018 (ResNet-50)",
        paper="Li, Cheung, Jiang, ICME 2022",
        source="juyongjiang/FBL README commands and train.py defaults",
        protocol="As on ImageNet-LT (ResNet-50, batch 512, LR 0.2, λ = 150, 200 epochs, LR × 0.1 "
        "after 120 and × 0.01 after 160); iNaturalist's val list is the test split.",
        params={"data.root": "/data/inat2018"},
        rows=(
            Row(
                "fbl",
                "FBL, λ = 150, ResNet-50",
                _fbl("inat2018", "resnet50", 512, 0.2, 150, [120, 160]),
                (),
                FBL_DEVIATIONS,
                source="paper, iNaturalist table (no number read in a source)",
            ),
        ),
        needs="iNaturalist 2018 images under `data.root` and list files",
    ),
    Table(
        key="fbl-places-lt",
        title="FBL on Places-LT (ResNet-152 from ImageNet)",
        paper="Li, Cheung, Jiang, ICME 2022",
        source="juyongjiang/FBL README commands, train.py defaults, models/resnet_places.py",
        protocol="ImageNet ResNet-152 (`--arch resnet152_p`) frozen in eval mode, its last "
        "bottleneck (`layer4.2`) re-initialised and trained with a new classifier at one LR: "
        "batch 512, LR 0.2, λ = 150, 200 epochs (no `--epochs` is passed), weight decay 2e-4, "
        "5-epoch warmup, LR × 0.1 after epoch 60 and × 0.01 after 80. Here `pretrain` runs one "
        "CE epoch at LR 1e-6 over the ImageNet network and `finetune.mode: partial` trains the "
        "block and the classifier with FBL.",
        params={
            "data.root": "/data/places365",
            "model.weights": "/data/weights/resnet152-imagenet.pth",
        },
        rows=(
            Row(
                "fbl",
                "FBL, λ = 150, ResNet-152, layer4.2 + classifier",
                FBL_PLACES,
                (),
                (
                    *FBL_DEVIATIONS,
                    "Frozen layers: one pretrain epoch (LR 1e-6, a stage trains at least one "
                    "epoch) lets BatchNorm's running statistics move towards Places-LT's; the "
                    "reference keeps ImageNet's.",
                ),
                source="paper, Places-LT table (no number read in a source)",
            ),
        ),
        needs="Places-365 images under `data.root`, the Places-LT list files, ImageNet "
        "ResNet-152 weights",
    ),
    Table(
        key="ldam-drw-cifar",
        title="LDAM-DRW and CE (ERM) on CIFAR-LT",
        paper="Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss, "
        "NeurIPS 2019",
        source="kaidic/LDAM-DRW cifar_train.py (README commands)",
        protocol="The deferred schedule the three papers compare with: ResNet-32, batch 128, SGD "
        "0.1, momentum 0.9, weight decay 2e-4, 200 epochs, 5-epoch warmup, LR × 0.01 after "
        "epoch 160 and × 0.0001 after 180, LDAM with max margin 0.5 and s = 30, Cui et al.'s "
        "class-balanced weights (β = 0.9999) from epoch 160. Epochs 0–159 are `pretrain` "
        "(LDAM), 160–199 `finetune` (LDAM with `weights: class_balanced`), one SGD optimiser "
        "and LR schedule for both: `finetune.optimizer: continue` carries momentum, schedule "
        "position and step count on (milestones 160 and 180 counted from pretrain's first "
        "epoch). ERM is `--loss_type CE --train_rule None`.",
        params={},
        rows=(
            Row(
                "cifar10-if100",
                "LDAM-DRW, CIFAR-10-LT IF 100",
                _ldam_drw("cifar10", 100),
                (_p("ldam-leaderboard", 77.03),),
                LDAM_DEVIATIONS,
                source="paper, CIFAR-LT table",
            ),
            Row(
                "cifar10-if10",
                "LDAM-DRW, CIFAR-10-LT IF 10",
                _ldam_drw("cifar10", 10),
                (_p("ldam-leaderboard", 88.16),),
                LDAM_DEVIATIONS,
                source="paper, CIFAR-LT table",
            ),
            Row(
                "cifar100-if100",
                "LDAM-DRW, CIFAR-100-LT IF 100",
                _ldam_drw("cifar100", 100),
                (_p("ldam-leaderboard", 42.04),),
                LDAM_DEVIATIONS,
                source="paper, CIFAR-LT table",
            ),
            Row(
                "cifar100-if10",
                "LDAM-DRW, CIFAR-100-LT IF 10",
                _ldam_drw("cifar100", 10),
                (_p("ldam-leaderboard", 58.71),),
                LDAM_DEVIATIONS,
                source="paper, CIFAR-LT table",
            ),
            Row(
                "erm-cifar10-if10",
                "CE (ERM), CIFAR-10-LT IF 10",
                {
                    **_ldam_drw("cifar10", 10),
                    "model.classifier": "linear",  # cifar_train.py: NormedLinear only for LDAM
                    "pretrain.loss.name": "ce",
                    "loss.name": "ce",
                    "loss.weights": "none",
                },
                (_p("ldam-pwc", 86.39),),
                LDAM_DEVIATIONS,
                source="paper, CIFAR-LT table",
            ),
        ),
        needs="the CIFAR-10 and CIFAR-100 python tarballs",
    ),
    Table(
        key="kang-imagenet-lt-resnext50",
        title="cRT, τ-norm and LWS on ImageNet-LT (ResNeXt-50)",
        paper="Kang et al., Decoupling Representation and Classifier for Long-Tailed Recognition, "
        "ICLR 2020",
        source="facebookresearch/classifier-balancing config/ImageNet_LT/{feat_uniform,cls_crt,"
        "cls_lws}.yaml and README",
        protocol="Joint: 90 epochs, batch 512, LR 0.2, momentum 0.9, weight decay 5e-4, cosine "
        "to 0, instance sampling. cRT: backbone fixed, classifier re-initialised, 10 epochs, "
        "LR 0.2, cosine, class-aware sampling. LWS: 5 epochs, same optimiser. τ-norm: "
        "w/‖w‖^τ, τ chosen on val (the README runs `tau_norm.py` over a grid).",
        params={**KANG_IMAGENET_BASE, "model.arch": "resnext50"},
        rows=_kang_rows(
            _kang_crt("imagenet_lt", 10, 512, 0.2),
            _kang_lws("imagenet_lt", 5, 512, 0.2),
            {
                "joint": (_p("kang-readme", 44.4, 65.9, 37.5, 7.7),),
                "crt": (_p("kang-readme", 49.6, 61.8, 46.2, 27.4),),
                "tau-norm": (_p("kang-readme", 49.4, 59.1, 46.9, 30.7),),
                "lws": (_p("kang-readme", 49.9, 60.2, 47.2, 30.3),),
            },
        ),
        needs="ImageNet images under `data.root` and the ImageNet-LT list files",
    ),
    Table(
        key="kang-imagenet-lt-resnet10",
        title="cRT, τ-norm and LWS on ImageNet-LT (ResNet-10)",
        paper="Kang et al., ICLR 2020",
        source="facebookresearch/classifier-balancing config/ImageNet_LT/cls_*.yaml on the "
        "ResNet-10 base model of BALMS's feat_uniform_resnet10.yaml",
        protocol="The ResNeXt-50 protocol with ResNet-10 (classifier-balancing ships no ResNet-10 "
        "config; the base model is the one the BALMS table uses).",
        params={**KANG_IMAGENET_BASE, "model.arch": "resnet10"},
        rows=_kang_rows(
            _kang_crt("imagenet_lt", 10, 512, 0.2),
            _kang_lws("imagenet_lt", 5, 512, 0.2),
            {"lws": (_p("kang-leaderboard", 41.4),)},
        ),
        needs="ImageNet images under `data.root` and the ImageNet-LT list files",
    ),
    Table(
        key="kang-places-lt-resnet152",
        title="cRT, τ-norm and LWS on Places-LT (ResNet-152)",
        paper="Kang et al., ICLR 2020",
        source="facebookresearch/classifier-balancing config/Places_LT/{cls_crt,cls_lws}.yaml",
        protocol="Backbone as in the BALMS Places-LT table. cRT: classifier LR 0.1, 10 epochs, "
        "batch 256, cosine, class-aware sampling. LWS: 5 epochs, same optimiser.",
        params=PLACES_BASE,
        rows=tuple(
            Row(
                r.key,
                r.method,
                r.params,
                r.published,
                (PLACES_BASE_DEVIATION, *r.deviations),
                r.source,
            )
            for r in _kang_rows(
                _kang_crt("places_lt", 10, 256, 0.1),
                _kang_lws("places_lt", 5, 256, 0.1),
                {
                    "tau-norm": (_p("kang-leaderboard", 37.9, 37.8, 40.7, 31.8),),
                    "lws": (_p("kang-leaderboard", 37.6, 40.6, 39.1, 28.6),),
                },
            )
        ),
        needs="Places-365 images under `data.root`, the Places-LT list files, ImageNet "
        "ResNet-152 weights",
    ),
)


# ------------------------------------------------------------------------------ digits-LT tables
DIGITS_MEASURED = (
    "Measured by `python -m tools.reproduce <table> --seeds 0,1,2 --jobs 2` (`digits`, "
    "`digits-end-to-end`, `digits-decoupled`) at commit `130b27a` on this project's 2-core AMD "
    "EPYC machine (KVM guest), one training thread (`train.cpu_threads: 1`), on the default "
    "params.yaml (pretrain: CE, 100 epochs, cosine LR 0.1, 5 warmup epochs; finetune: 60 epochs, "
    "cosine LR 0.1). The `ldam-cosine` row was measured the same way at `798ab51`, which changed "
    "only that row's params; the default row of `digits` (`cdb_ce`, seed 0) gave the same test "
    "metrics at the commit of the committed baseline."
)
DIGITS_DEFAULT = {"pretrain.loss.name": "ce", "finetune.sampler": "instance"}


def _m(*pairs: float, n: int = 3) -> tuple[Published, ...]:
    """A measured row: mean, std of top-1, many, medium and few in turn."""
    means, stds = pairs[0::2], pairs[1::2]
    return (Published("measured", *means, std=tuple(stds), n=n),)


def _digits_loss(key: str, method: str, *pairs: float) -> Row:
    params = {"loss.name": key, "finetune.mode": "full"}
    return Row(key, method, params, _m(*pairs), source="measured")


def _digits_e2e(key: str, method: str, *pairs: float) -> Row:
    params = {"pretrain.loss.name": key, "finetune.mode": "none"}
    return Row(key, method, params, _m(*pairs), source="measured")


TABLES += (
    Table(
        key="digits",
        title="digits-LT: every loss in the default schedule",
        paper="this project",
        source="params.yaml defaults",
        protocol="digits-LT (IF 50: 342 training images, train counts 124/80/51/33/21/14/9/5/3/2; "
        "1 many-, 4 medium-, 5 few-shot classes; 30 test images per class). A CE backbone "
        "(`pretrain`), then `finetune.mode: full` with the row's loss, every other key from "
        "params.yaml. Minutes on a CPU, no download.",
        params=DIGITS_DEFAULT,
        rows=(
            _digits_loss("ce", "CE", 84.78, 2.78, 100, 0, 98.06, 0.96, 71.11, 5.05),
            _digits_loss("focal", "Focal", 84.22, 3.47, 100, 0, 97.78, 1.27, 70.22, 6.58),
            _digits_loss(
                "class_balanced", "Class-balanced", 86.56, 3.15, 100, 0, 97.78, 1.27, 74.89, 5.43
            ),
            _digits_loss(
                "ldam", "LDAM (linear head)", 37.33, 42.74, 100, 0, 37.50, 53.51, 24.67, 42.72
            ),
            _digits_loss(
                "logit_adjust", "Logit adjustment", 87.56, 3.02, 100, 0, 96.94, 2.10, 77.56, 5.43
            ),
            _digits_loss(
                "balanced_softmax",
                "Balanced Softmax",
                88.00,
                2.33,
                100,
                0,
                96.94,
                2.10,
                78.44,
                3.91,
            ),
            _digits_loss("cdb_ce", "CDB-CE", 88.11, 3.66, 100, 0, 97.78, 1.27, 78.00, 7.42),
            _digits_loss("fbl", "FBL", 86.56, 2.59, 100, 0, 97.50, 1.44, 75.11, 4.44),
            Row(
                "ldam-cosine",
                "LDAM-DRW, cosine head (LDAM-DRW's NormedLinear)",
                {
                    "model.classifier": "cosine",
                    "pretrain.loss.name": "ldam",
                    "loss.name": "ldam",
                    "loss.weights": "class_balanced",
                    "finetune.mode": "full",
                },
                _m(90.22, 0.51, 98.89, 1.92, 95.83, 0.83, 84.00, 0.67),
                source="measured",
            ),
        ),
        notes=(
            "`ldam` is unstable with the plain linear head (seed 1 trains, seeds 0 and 2 "
            "collapse to 11.33 and 14.00 top-1): its s = 30 assumes LDAM-DRW's normalised "
            "classifier. With that cosine head (`ldam-cosine`) every seed trains.",
            "`ldam-cosine` is LDAM-DRW in this schedule: as in LDAM-DRW, the cosine head trains "
            "with LDAM from the first epoch (`pretrain.loss.name: ldam`; CE has no scale for "
            "cosine logits in [-1, 1]), then finetune re-weights LDAM by class-balanced weights "
            "(the DRW phase). The finetune restarts its cosine LR schedule like every row here.",
        ),
        measured=DIGITS_MEASURED,
    ),
    Table(
        key="digits-end-to-end",
        title="digits-LT: losses end to end",
        paper="this project",
        source="params.yaml defaults",
        protocol="The row's loss trains the network from scratch for the pretrain epochs "
        "(`pretrain.loss.name`, `finetune.mode: none`), as the papers do.",
        params={"finetune.sampler": "instance"},
        rows=(
            _digits_e2e("ce", "CE", 84.00, 2.60, 100, 0, 98.06, 1.27, 69.56, 4.44),
            _digits_e2e(
                "balanced_softmax",
                "Balanced Softmax",
                87.89,
                0.38,
                98.89,
                1.92,
                97.22,
                0.96,
                78.22,
                0.38,
            ),
            _digits_e2e("cdb_ce", "CDB-CE", 72.44, 12.29, 100, 0, 89.17, 5.83, 53.56, 20.25),
            _digits_e2e("fbl", "FBL", 86.44, 1.17, 100, 0, 96.94, 1.73, 75.33, 1.15),
        ),
        notes=(
            "CDB-CE from scratch is the unstable row on digits-LT (few 48.00, 76.00, 36.67 on "
            "seeds 0, 1, 2): the head and medium classes reach 100 % val accuracy within a few "
            "epochs, their weight drops to the 10⁻³ difficulty floor, and the weighted loss then "
            "trains almost only the tail images (traced at an earlier commit, where this row "
            "gave 57.67 ± 7.84). On a CE backbone (table `digits`) it is stable.",
        ),
        measured=DIGITS_MEASURED,
    ),
    Table(
        key="digits-decoupled",
        title="digits-LT: decoupled retraining on the CE backbone",
        paper="this project",
        source="params.yaml defaults",
        protocol="The CE backbone of `pretrain`, then the classifier retrained or rescaled "
        "(`finetune.mode` classifier, tau_norm, lws), every other key from params.yaml.",
        params={"pretrain.loss.name": "ce"},
        rows=(
            Row(
                "crt",
                "cRT",
                {
                    "finetune.mode": "classifier",
                    "finetune.sampler": "class_balanced",
                    "loss.name": "ce",
                },
                _m(84.78, 3.67, 100, 0, 97.78, 2.10, 71.33, 5.77),
                source="measured",
            ),
            Row(
                "tau-norm",
                "τ-norm (τ swept on val)",
                {"finetune.mode": "tau_norm", "finetune.tau_norm": "sweep"},
                _m(84.11, 2.59, 100, 0, 95.83, 3.82, 71.56, 2.78),
                source="measured",
            ),
            Row(
                "lws",
                "LWS",
                {"finetune.mode": "lws", "loss.name": "ce"},
                _m(85.89, 2.87, 100, 0, 96.94, 2.10, 74.22, 4.68),
                source="measured",
            ),
            Row(
                "bs-decoupled",
                "Decoupled Balanced Softmax",
                {
                    "finetune.mode": "classifier",
                    "finetune.sampler": "instance",
                    "loss.name": "balanced_softmax",
                },
                _m(85.67, 3.93, 100, 0, 97.78, 1.92, 73.11, 6.41),
                source="measured",
            ),
            Row(
                "balms",
                "BALMS (meta sampler)",
                {
                    "finetune.mode": "classifier",
                    "finetune.sampler": "meta",
                    "loss.name": "balanced_softmax",
                },
                _m(84.78, 3.89, 100, 0, 96.67, 2.89, 72.22, 5.67),
                source="measured",
            ),
        ),
        notes=(
            "With 64-d features of 342 memorised training images, retraining only the classifier "
            "has little to correct: these rows stay within one std of the CE backbone (84.00 ± "
            "2.60 end to end).",
        ),
        measured=DIGITS_MEASURED,
    ),
)


def table(key: str) -> Table:
    """The table named ``key``.

    Raises:
        KeyError: naming the valid keys.
    """
    for t in TABLES:
        if t.key == key:
            return t
    raise KeyError(f"expected a table in {', '.join(t.key for t in TABLES)}; got {key!r}")


# ------------------------------------------------------------------------------- dvc overrides
def yaml_value(value: Any) -> str:
    """A params value as ``dvc exp run -S`` takes it (Hydra grammar: null, true, [1,2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(yaml_value(v) for v in value) + "]"
    return str(value)


def _listed(params: Mapping[str, Any], key: str) -> bool:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def overrides(params: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> list[str]:
    """``key=value`` strings for ``dvc exp run -S``; ``++key`` for keys ``base`` does not list.

    DVC applies ``-S`` with Hydra's grammar, which refuses to add a key without ``+``/``++``.
    ``base`` is the parsed params.yaml (read from the checkout when not given).
    """
    if base is None:
        base = yaml.safe_load((REPO / "params.yaml").read_text())
    return [f"{'' if _listed(base, k) else '++'}{k}={yaml_value(v)}" for k, v in params.items()]


def command(params: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> str:
    """The ``dvc exp run`` line of a row, shell-quoted where a value needs it."""
    words = ["dvc exp run"]
    for item in overrides(params, base):
        words.append(f"-S '{item}'" if any(c in item for c in "[]{}() *?") else f"-S {item}")
    return " ".join(words)


# ------------------------------------------------------------------------------------ document
def published_text(p: Published) -> str:
    """``41.80 (many 50.30, medium 39.50, few 25.30)`` with the source key."""
    text = p.text("top1")
    if p.many is not None:
        text += f" (many {p.text('many')}, medium {p.text('medium')}, few {p.text('few')})"
    if p.n is not None:
        text += f", {p.n} runs"
    return f"{text} [{p.source}{'; ' + p.note if p.note else ''}]"


def render_table(t: Table, base: Mapping[str, Any]) -> list[str]:
    """The markdown section of one table."""
    lines = [f"## `{t.key}`: {t.title}", ""]
    lines += [f"Paper: {t.paper}. Read in: {t.source}.", ""]
    if t.needs:
        lines += [f"Needs: {t.needs}.", ""]
    lines += [t.protocol, "", f"`python -m tools.reproduce {t.key} --seeds 0,1,2`", ""]
    lines += ["| row | method | published top-1 | many | medium | few | source |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for row in t.rows:
        ref = row.reference or Published("")
        cells = [f"`{row.key}`", row.method, *(ref.text(m) for m in METRICS)]
        cells.append(ref.source or "no number read")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if t.measured:
        lines += [t.measured, ""]
    for note in t.notes:
        lines += [note, ""]
    for row in t.rows:
        lines += [f"### `{t.key}` / `{row.key}`: {row.method}", ""]
        lines += [f"From: {row.source or t.source}."]
        for p in row.published:
            lines.append(f"Published: {published_text(p)}.")
        if not row.published:
            lines.append("Published: no number read in a source.")
        lines += ["", "```", command(t.row_params(row), base), "```", ""]
        if row.deviations:
            lines += ["Deviations:", ""]
            lines += [f"- {d}" for d in row.deviations]
        else:
            lines += ["Deviations: none."]
        lines.append("")
    return lines


HEADER = """# Paper recipes

<!-- Generated by `python -m tools.recipes --write` from tools/recipes.py; edit that file. -->

Every table this project reproduces, row by row: the paper and table, the published numbers with
the source they were read in, the `dvc exp run` command that sets every hyperparameter the row
depends on, and each remaining difference from the reference in one line with its reason. The
hyperparameters were read in the authors' repositories (hitachi-rd-cv/CDB-loss,
jiawei-ren/BalancedMetaSoftmax-Classification, juyongjiang/FBL, kaidic/LDAM-DRW,
facebookresearch/classifier-balancing).

Run a whole table, seeds and comparison included (see the README, "Reproduce a paper's table"):

```
python -m tools.reproduce --list
python -m tools.reproduce balms-cifar100-if200 --seeds 0,1,2 --jobs 2 --report reports/
```

or one row with its command below. `-S ++key=value` sets a key that `params.yaml` does not list
(DVC applies `-S` with Hydra's grammar, which refuses to add a key without `+`/`++`). Paths
(`data.root`, `model.weights`) are examples. What every recipe shares and the papers did not:
the network is never selected on test (FBL's and BALMS's CIFAR code keep the best *test* epoch).

Sources of the published numbers (an index's copy of a paper's table is named as such; error
rates there are printed here as 100 − error):

"""


README = REPO / "README.md"
README_BEGIN = (
    "<!-- The digits-LT tables below are generated from tools/recipes.py by "
    "`python -m tools.recipes --write`; edit that file. -->"
)
README_END = "<!-- End of the generated digits-LT tables. -->"


def render_results() -> str:
    """The README's digits-LT results: every ``digits*`` table, its rows and measured numbers."""
    lines = [README_BEGIN, ""]
    for t in TABLES:
        if not t.key.startswith("digits"):
            continue
        lines += [
            f"**{t.title}** (`python -m tools.reproduce {t.key} --seeds 0,1,2`). {t.protocol}"
        ]
        lines += ["", "| row | method | top-1 | many | medium | few |", "|---|---|---|---|---|---|"]
        for row in t.rows:
            ref = row.reference or Published("")
            lines.append(
                f"| `{row.key}` | {row.method} | " + " | ".join(ref.text(m) for m in METRICS) + " |"
            )
        lines += ["", *(f"{note}\n" for note in t.notes)]
    measured = {t.measured for t in TABLES if t.key.startswith("digits")}
    lines += [*sorted(measured), "", README_END]
    return "\n".join(lines)


def readme(text: str) -> str:
    """``text`` (the README) with its generated block replaced by :func:`render_results`."""
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"README.md: expected the markers {README_BEGIN!r} and {README_END!r}")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    return head + render_results() + tail


def render(base: Mapping[str, Any] | None = None) -> str:
    """The whole docs/recipes.md."""
    if base is None:
        base = yaml.safe_load((REPO / "params.yaml").read_text())
    lines = [HEADER.rstrip("\n"), ""]
    lines += [f"- `{key}`: {text}." for key, text in SOURCES.items()]
    lines.append("")
    for t in TABLES:
        lines += render_table(t, base)
    return "\n".join(lines).rstrip("\n") + "\n"


def as_json() -> list[dict[str, Any]]:
    """The registry as plain data (``--json``)."""
    return [
        {
            "key": t.key,
            "title": t.title,
            "paper": t.paper,
            "rows": [
                {
                    "key": r.key,
                    "method": r.method,
                    "params": t.row_params(r),
                    "published": [p.__dict__ for p in r.published],
                    "deviations": list(r.deviations),
                }
                for r in t.rows
            ],
        }
        for t in TABLES
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``--write`` regenerates docs/recipes.md, ``--check`` compares, ``--json`` dumps."""
    p = argparse.ArgumentParser(prog="python -m tools.recipes", description=__doc__.split("\n")[0])
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="regenerate docs/recipes.md and README")
    group.add_argument("--check", action="store_true", help="exit 1 if either is stale")
    group.add_argument("--json", action="store_true", help="print the registry as JSON")
    args = p.parse_args(argv)
    if args.json:
        print(json.dumps(as_json(), indent=1))
        return 0
    wanted = {DOC: render(), README: readme(README.read_text())}
    if args.write:
        for path, text in wanted.items():
            path.write_text(text)
        return 0
    stale = [path.name for path, text in wanted.items() if path.read_text() != text]
    if stale:
        print(f"{', '.join(stale)} stale: run `python -m tools.recipes --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
