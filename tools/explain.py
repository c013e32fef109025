"""What a recipe row really runs, phase by phase: ``python -m tools.recipes --explain TABLE[/ROW]``.

The row's params are merged into ``params.yaml`` and parsed by ``longtail.config`` as the stages
parse them; every number then comes from the code a run uses, not from a second formula:

* steps per epoch from :class:`longtail.train.Trainer` itself, built on a one-layer stand-in
  network with the row's sampler (``longtail.samplers`` / the BALMS meta sampler) over labels
  with the dataset's class counts;
* the LR of any step from that trainer's own scheduler function (``longtail.train.lr_factor``);
  with ``finetune.optimizer: continue`` the schedule starts where pretrain's ended, as the carry
  does;
* the draws of the rarest class from the sampler's ``class_probabilities`` at every epoch;
* the class counts from the package's own profile code for CIFAR-LT and digits-LT
  (``longtail.data.cifar.lt_counts``, ``longtail.data.imbalance.profile_counts``) and, for the
  datasets that are not on disk, from :data:`PUBLISHED` (N, C, largest and smallest class, with
  sources; the list-file datasets read ``longtail.data.imagelist.SPECS``).

The reference's own steps are pinned in ``tests/test_steps.py``, written from each reference's
loop; this module prints ours.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from longtail.config import Config, parse

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Counts:
    """The training set a phase samples from: per-class counts and where they come from."""

    per_class: tuple[int, ...]
    source: str
    exact_profile: bool = True  # false: only N, C, the largest and smallest class are published
    smallest_known: bool = True  # false: the smallest class is not published either
    largest_known: bool = True

    @property
    def n(self) -> int:
        return sum(self.per_class)


@dataclass(frozen=True)
class Published:
    """A training set's published size: N images, C classes, largest and smallest class."""

    n: int
    classes: int
    n_max: int | None
    n_min: int | None
    source: str


def _imagelist(name: str) -> Published:
    from longtail.data.imagelist import SPECS

    spec = SPECS[name]
    n_max, n_min = spec.generated[:2]
    file = spec.lists["train"]
    return Published(
        spec.lines["train"],
        spec.classes,
        n_max,
        n_min,
        f"{file} as published (line count and class count: longtail.data.imagelist.SPECS; "
        f"largest / smallest class {n_max:,} / {n_min:,} of the published split)",
    )


# Training sets that are not on disk here. EGTEA: CDB-CE's train_split.txt, train_split1 without
# the val subjects P20-P26 (longtail/data/video.py); its smallest class there is not published.
PUBLISHED: dict[str, Published] = {
    **{name: _imagelist(name) for name in ("imagenet_lt", "places_lt", "inat2018")},
    "egtea": Published(
        6_372,
        19,
        None,
        None,
        "CDB-CE's EGTEA train_split.txt: the 6,372 clips of train_split1 outside subjects "
        "P20-P26 (longtail/data/video.py), 19 verbs; its per-class counts are not published",
    ),
}
# digits-LT: scikit-learn's digits, smallest class 174 images, less 30 test and 20 val per class.
DIGITS_AVAILABLE = 174 - 30 - 20


def class_counts(cfg: Config) -> Counts:
    """The training counts of ``cfg``'s dataset (module docstring)."""
    name = cfg.data.name
    if name in ("cifar10", "cifar100"):
        from longtail.data.cifar import LAYOUTS, lt_counts

        classes = {"cifar10": 10, "cifar100": 100}[name]
        left = LAYOUTS[name].n_max - (cfg.data.val_per_class or 0)
        counts = lt_counts(name, cfg.data, [left] * classes)
        return Counts(tuple(counts), "longtail.data.cifar.lt_counts (the run's own rule)")
    if name == "digits":
        from longtail.data.imbalance import profile_counts

        n_max = cfg.data.n_max or DIGITS_AVAILABLE
        counts = profile_counts(cfg.data.profile, n_max, 10, cfg.data.imbalance)
        return Counts(tuple(counts), "longtail.data.imbalance.profile_counts (the run's own rule)")
    if name in PUBLISHED:
        return _filled(PUBLISHED[name])
    raise ValueError(
        f"data.name: no published counts for {name!r}; expected one of "
        f"{['cifar10', 'cifar100', 'digits', *PUBLISHED]}"
    )


def _filled(p: Published) -> Counts:
    """Counts with the published N, C, largest and smallest class, the rest spread evenly: enough
    for every sampler's length and for the class-balanced and instance draws of the rarest class."""
    ends = [c for c in (p.n_max, p.n_min) if c is not None]
    rest = p.n - sum(ends)
    k = p.classes - len(ends)
    middle = [rest // k + (i < rest % k) for i in range(k)]
    counts = ([p.n_max] if p.n_max else []) + middle + ([p.n_min] if p.n_min else [])
    return Counts(
        tuple(counts),
        p.source,
        exact_profile=False,
        smallest_known=p.n_min is not None,
        largest_known=p.n_max is not None,
    )


# ---------------------------------------------------------------------------------- resolution
def resolve(params: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> Config:
    """``params.yaml`` with the row's dotted keys on top, parsed as the stages parse it."""
    from tools.recipes import REPO, applied

    if base is None:
        base = yaml.safe_load((REPO / "params.yaml").read_text())
    return parse(applied(base, params))


@dataclass(frozen=True)
class Phase:
    """One training phase as the loop runs it."""

    name: str
    epochs: int
    batch_size: int
    sampler: str
    learned: bool  # the sampler's distribution is learned during the phase (BALMS)
    epoch_length: int  # draws per epoch (the sampler's length)
    steps_per_epoch: int
    rarest_draws: float | None
    lr: dict[str, float]  # label -> LR of that step
    lr_rule: str

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def images(self) -> int:
        return self.epochs * self.epoch_length


def finetune_sampler(cfg: Config) -> str:
    """The sampler finetune's loop uses, as the mode says (LWS: class-balanced by definition)."""
    from longtail import modes

    return modes.get(cfg.finetune.mode).sampler(cfg)


def finetune_trains(cfg: Config) -> bool:
    """Whether finetune runs the training loop (not ``none``, ``tau_norm``, ...)."""
    from longtail import modes

    return modes.get(cfg.finetune.mode).trains(cfg)


def finetune_steps(cfg: Config) -> bool:
    """Whether finetune's sampler is a step strategy's own (BALMS's learnable sampler), not one
    of the registered samplers."""
    from longtail import samplers

    return finetune_trains(cfg) and finetune_sampler(cfg) not in samplers.names()


def _sampler(cfg: Config, stage: str, labels: torch.Tensor, classes: int) -> Any:
    """The stage's sampler, built as the training stages build it."""
    from longtail import samplers
    from longtail.meta import MetaSampler

    section = cfg.pretrain if stage == "pretrain" else cfg.finetune
    name = section.sampler if stage == "pretrain" else finetune_sampler(cfg)
    if stage == "finetune" and finetune_steps(cfg):  # BALMS's learnable sampler and its options
        ft = cfg.finetune
        return MetaSampler(
            labels, seed=cfg.seed, num_classes=classes, init_pow=ft.meta_init_pow, lr=ft.meta_lr
        )
    options = samplers.stage_options(name, samples_per_class=section.samples_per_class)
    return samplers.create(name, labels, seed=cfg.seed, num_classes=classes, **options)


def _trainer(cfg: Config, stage: str, counts: Counts) -> Any:
    """A :class:`~longtail.train.Trainer` of the stage on a one-layer stand-in network."""
    from longtail.train import Trainer

    section = cfg.pretrain if stage == "pretrain" else cfg.finetune
    classes = len(counts.per_class)
    labels = torch.repeat_interleave(torch.arange(classes), torch.tensor(counts.per_class))
    plain = dataclasses.replace(cfg.train, amp="off", channels_last="off", compile="off")
    return Trainer(
        model=torch.nn.Linear(1, classes),
        loss=torch.nn.CrossEntropyLoss(),
        sampler=_sampler(cfg, stage, labels, classes),
        train_source=None,
        val_source=None,
        optim=section.optim,
        train_cfg=plain,
        device=torch.device("cpu"),
        seed=cfg.seed,
        num_classes=classes,
        train_counts=list(counts.per_class),
        stage=stage,
        log=lambda line: None,
    )


def phase(cfg: Config, stage: str, counts: Counts, offset: int = 0) -> Phase:
    """The numbers of one training phase; ``offset``: schedule steps done before it (continue)."""
    trainer = _trainer(cfg, stage, counts)
    optim = trainer.optim
    spe = trainer.steps_per_epoch
    total = optim.epochs * spe
    factor = trainer.scheduler.lr_lambdas[0]  # lr_factor(step, steps_per_epoch, optim)
    marks: dict[str, int] = {}
    if optim.warmup_epochs:
        marks["warmup end"] = optim.warmup_epochs * spe - 1
    for f in FRACTIONS:
        marks[f"{f:.0%}"] = max(math.ceil(f * total) - 1, 0)
    lr = {label: optim.lr * factor(offset + step) for label, step in marks.items()}
    rarest = None
    if counts.smallest_known:
        c = counts.per_class.index(min(counts.per_class))
        sampler, draws = trainer.sampler, 0.0
        for epoch in range(optim.epochs):
            sampler.set_epoch(epoch, optim.epochs)
            draws += float(sampler.class_probabilities()[c]) * len(sampler)
        rarest = draws
    rule = f"{optim.schedule}, lr_update {optim.lr_update}"
    if offset:
        rule += f", continuing pretrain's schedule at step {offset:,}"
    return Phase(
        stage,
        optim.epochs,
        optim.batch_size,
        type(trainer.sampler).__name__,
        stage == "finetune" and finetune_steps(cfg),
        len(trainer.sampler),
        spe,
        rarest,
        lr,
        rule,
    )


def phases(cfg: Config) -> list[Phase]:
    """The phases that train: pretrain (unless ``pretrain.mode: weights`` only loads
    ``model.weights``), and finetune unless its mode trains nothing."""
    counts = class_counts(cfg)
    out = []
    if getattr(cfg.pretrain, "mode", "train") == "train":  # weights: loaded, not trained
        out.append(phase(cfg, "pretrain", counts))
    if finetune_trains(cfg):
        carried = out[0].steps if out and cfg.finetune.optimizer == "continue" else 0
        out.append(phase(cfg, "finetune", counts, carried))
    return out


# ------------------------------------------------------------------------------------ describing
def normalisation(cfg: Config) -> str:
    """The input statistics of the dataset family, from its module."""
    name = cfg.data.name
    if name in ("cifar10", "cifar100"):
        from longtail.data.cifar import MEAN, STD

        return f"mean {MEAN} / std {STD} (LDAM-DRW's CIFAR statistics, longtail.data.cifar)"
    if name in ("imagenet_lt", "places_lt", "inat2018"):
        from longtail.data.imagelist import SPECS

        s = SPECS[name]
        mean, std = tuple(round(v, 4) for v in s.mean), tuple(round(v, 4) for v in s.std)
        return f"mean {mean} / std {std} (longtail.data.imagelist.SPECS)"
    if name in ("egtea", "moving_digits"):
        from longtail.data.video import KINETICS_MEAN

        mean = tuple(round(v * 255, 4) for v in KINETICS_MEAN)
        channels = getattr(cfg.frames, "channels", "rgb").upper()  # frames.channels, normalize:
        if getattr(cfg.frames, "normalize", "dataset") == "none":  # EGTEA input options
            return f"{channels} on the 0-255 scale, no mean subtracted (frames.normalize: none)"
        return f"{channels} on the 0-255 scale minus the Kinetics mean {mean} (longtail.data.video)"
    return "the training pixels' mean and std (dataset.json)"


def augmentation(cfg: Config, stage: str) -> str:
    section = cfg.pretrain if stage == "pretrain" else cfg.finetune
    if stage == "finetune" and not cfg.finetune.augment:
        return "none (finetune.augment: false)"
    text = section.policy
    if cfg.data.name in ("egtea", "moving_digits"):
        return (
            "the clip augmentation of longtail.data.video (random square crop, ±10° rotation, flip)"
        )
    jitter = getattr(section, "color_jitter", None)
    if cfg.data.name in ("imagenet_lt", "places_lt", "inat2018"):
        from longtail.data.imagelist import JITTER, SPECS

        default = JITTER if SPECS[cfg.data.name].color_jitter else 0
        strength = default if jitter is None else jitter
        text += f", colour jitter {strength:g}" + (" (family default)" if jitter is None else "")
    return text


def splits(cfg: Config) -> list[str]:
    """Which split each part of the run reads."""
    from longtail.data.imbalance import phase_split
    from stages.common import val_needed_by

    draws = getattr(cfg.data, "draws", "shared")
    out = [f"pretrain trains on {phase_split(draws, 'pretrain')}"]
    ft = cfg.finetune
    if finetune_trains(cfg):
        out.append(f"finetune trains on {phase_split(draws, 'finetune')}")
    if finetune_steps(cfg):
        meta = phase_split(draws, "meta") if ft.meta_source == "train" else "val"
        out.append(f"the BALMS meta set is {meta}")
    val = [*val_needed_by(cfg)]
    if cfg.train.keep == "best":
        val.append("train.keep: best (the kept epoch of each training stage)")
    out.append("val: " + ("; ".join(val) if val else "curves only"))
    out.append("test: read by evaluate only")
    return out


def describe(cfg: Config) -> list[str]:
    """The lines of ``--explain`` for one resolved config."""
    counts = class_counts(cfg)
    from longtail import losses, modes
    from stages.common import arch

    head = cfg.model.classifier + ("" if cfg.model.bias_init == "default" else ", prior bias")
    lines = [
        f"data: {cfg.data.name}, N = {counts.n:,} training images, C = {len(counts.per_class)}"
        + (f", largest class {max(counts.per_class):,}" if counts.largest_known else "")
        + (f", smallest {min(counts.per_class):,}" if counts.smallest_known else "")
        + f" [{counts.source}]",
        f"normalisation: {normalisation(cfg)}",
        f"network: {arch(cfg)}, {head} classifier"
        + (f", initialised from {cfg.model.weights}" if cfg.model.weights else ""),
        f"selection: train.keep {cfg.train.keep}",
        *(f"split: {s}" for s in splits(cfg)),
    ]
    ft = cfg.finetune
    if getattr(cfg.pretrain, "mode", "train") != "train":
        lines.append(f"pretrain: mode {cfg.pretrain.mode}: model.weights passed through, no step")
    for p in phases(cfg):
        section = cfg.pretrain if p.name == "pretrain" else cfg.finetune
        loss = cfg.pretrain.loss if p.name == "pretrain" else cfg.loss
        taken = losses.option_names(loss.name)
        options = ", ".join(f"{k} {v}" for k, v in loss.options.items() if k in taken)
        mode = modes.get(ft.mode)
        bn = "train mode (every BatchNorm)" if p.name == "pretrain" else mode.batchnorm(cfg)
        lines += [
            f"{p.name}:" + ("" if p.name == "pretrain" else f" mode {ft.mode}: {mode.summary}"),
            f"  optimiser steps: {p.steps:,} = {p.epochs} epochs × {p.steps_per_epoch:,} steps "
            f"(batch {p.batch_size}, an epoch = {p.epoch_length:,} draws)",
            f"  images drawn: {p.images:,}"
            + ("" if p.rarest_draws is None else f"; rarest class: {p.rarest_draws:,.0f} draws")
            + (" (at the meta sampler's initial logits)" if p.learned else ""),
            f"  sampler: {section.sampler if p.name == 'pretrain' else finetune_sampler(cfg)}, "
            f"{section.samples_per_class} per class visit",
            f"  LR: {section.optim.lr:g} ({p.lr_rule}); "
            + ", ".join(f"{k} {v:.4g}" for k, v in p.lr.items()),
            f"  BatchNorm: {bn}",
            f"  augmentation: {augmentation(cfg, p.name)}",
            f"  loss: {loss.name}" + (f" ({options})" if options else ""),
        ]
    if not finetune_trains(cfg):
        lines.append(f"finetune: mode {ft.mode}: {modes.get(ft.mode).summary}")
    return lines


def explain(target: str) -> str:
    """``TABLE`` or ``TABLE/ROW`` of the recipes, explained row by row."""
    from tools import recipes

    key, _, row_key = target.partition("/")
    table = recipes.table(key)
    rows = [table.row(row_key)] if row_key else list(table.rows)
    out = []
    for row in rows:
        cfg = resolve(table.row_params(row))
        out += [f"{table.key}/{row.key}: {row.method}", *(f"  {x}" for x in describe(cfg)), ""]
    return "\n".join(out)
