"""The one training loop of both training stages: it runs a :class:`Plan` under a :class:`Stage`.

A plan says *what* is trained (``longtail.modes`` builds one per ``finetune.mode``; ``pretrain``
builds the plain one): the network, its parameter groups, the loss, the sampler (or a step
strategy that brings its own, BALMS's meta step), how the split sources are adapted (frozen
features, unaugmented batches) and which modules stay in eval mode. A stage says *where and
how*: the run's config, device and processes, its splits, checkpoint, curves and metrics paths.
:func:`run` builds the :class:`~longtail.train.Trainer`, resumes its checkpoint, trains, and
writes the stage's metrics; no code here asks which mode or sampler it runs.

``pretrain.mode`` (:data:`PRETRAIN_MODES`): ``train`` runs the loop; ``weights`` starts from
``model.weights`` without a training epoch (:func:`evaluate_only`), as FBL on Places-LT, whose
backbone keeps its ImageNet weights and statistics (juyongjiang/FBL ``train.py`` runs it in eval
mode under ``no_grad``), instead of one pretrain epoch that replaces the BatchNorm statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from longtail.config import Config, ConfigError, LossConfig, OptimConfig
from longtail.data.base import Source
from longtail.distributed import World
from longtail.registry import Registry


class Step(Protocol):
    """A step strategy: builds the run's sampler and adapts the built trainer (BALMS)."""

    def sampler(
        self, labels: torch.Tensor, *, seed: int, rank: int, world_size: int, num_classes: int
    ) -> Any: ...

    def attach(self, trainer: Any) -> None: ...


def same_sources(train: Source, val: Source | None) -> tuple[Source, Source | None]:
    """The split sources as they are."""
    return train, val


@dataclass
class Plan:
    """What the loop trains.

    Attributes:
        net: the module trained and validated, ``net(x) -> (logits, features)``.
        loss: the loss section.
        sampler: the sampler's name (``samplers``), or the name reported for ``step``'s sampler.
        params: the parameters to optimise, or SGD parameter groups; None: all of ``net``'s.
        sources: adapts the ``(train, val)`` split sources to what ``net`` reads.
        train_mode: puts ``net`` in its training mode (None: ``net.train()``).
        step: a step strategy that brings its own sampler and wraps the training source.
        sampler_options: extra options of the sampler's constructor.
    """

    net: nn.Module
    loss: LossConfig
    sampler: str
    params: list[nn.Parameter] | list[dict[str, Any]] | None = None
    sources: Callable[[Source, Source | None], tuple[Source, Source | None]] = same_sources
    train_mode: Callable[[nn.Module], None] | None = None
    step: Step | None = None
    sampler_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stage:
    """Where and how a plan runs: one training stage of the pipeline.

    Attributes:
        name: ``pretrain`` or ``finetune``.
        cfg: the whole validated config.
        device, world: where the stage runs.
        open_split: opens ``train`` or ``val`` of the dataset.
        counts: training images per class.
        checkpoint: the checkpoint file (None: no checkpoints); ``signature`` and ``meta``
            identify the run.
        live_dir: the DVCLive folder of the curves; ``metrics_path``: the stage's metrics JSON
            (both read by :func:`run` only).
        describe: the network and dataset for the start line (``resnet32 on digits``).
        first_step: DVCLive step of the first epoch (finetune continues pretrain's curve).
        carry: an earlier stage's optimiser to continue (``finetune.optimizer: continue``).
        carry_out: filled with this stage's optimiser state for a following stage.
    """

    name: str
    cfg: Config
    device: torch.device
    world: World
    open_split: Callable[[str], Source]
    counts: list[int]
    checkpoint: Path | None = None
    signature: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    live_dir: Path | None = None
    metrics_path: Path | None = None
    describe: str = ""
    first_step: int = 0
    carry: dict | None = None
    carry_out: dict | None = None

    @property
    def section(self) -> Any:
        """The params section of this stage (``cfg.pretrain`` or ``cfg.finetune``)."""
        return getattr(self.cfg, self.name)

    @property
    def optim(self) -> OptimConfig:
        return self.section.optim


def build_sampler(
    plan: Plan, labels: torch.Tensor, stage_name: str, section: Any, **where: int
) -> Any:
    """The plan's sampler: its step strategy's, else the registry's (``where``: seed, rank, ...).

    Raises:
        ConfigError: ``samples_per_class`` that the sampler does not take.
    """
    from longtail import samplers

    try:
        options = samplers.stage_options(plan.sampler, samples_per_class=section.samples_per_class)
    except ValueError as err:
        raise ConfigError(f"{stage_name}.{err}") from None
    if plan.step is not None:
        return plan.step.sampler(labels, **where)
    return samplers.create(plan.sampler, labels, **where, **{**options, **plan.sampler_options})


def trainer_for(plan: Plan, stage: Stage) -> Any:
    """The Trainer of ``plan`` in ``stage``, its sources adapted and its step attached."""
    from longtail import losses
    from longtail.data.augment import use_color_jitter, use_policy
    from longtail.data.imbalance import phase_split
    from longtail.train import Checkpointer, Trainer

    cfg, world = stage.cfg, stage.world
    train_src = stage.open_split(phase_split(cfg.data.draws, stage.name))
    val_src = stage.open_split("val")
    loss = losses.create(plan.loss.name, stage.counts, **losses.kwargs(plan.loss))
    if getattr(loss, "requires_val", False) and len(val_src) == 0:
        raise ValueError(
            f"{stage.name}: loss {plan.loss.name} needs a val split (set data.val_per_class > 0)"
        )
    # data.draws: per_phase gives the BALMS meta set drawn from train its own draw (longtail.meta).
    meta_draw = None
    train_meta = plan.step is not None and getattr(stage.section, "meta_source", None) == "train"
    if train_meta and cfg.data.draws == "per_phase":
        meta_draw = stage.open_split(phase_split(cfg.data.draws, "meta"))
    try:
        for source in (train_src,) if meta_draw is None else (train_src, meta_draw):
            use_policy(source, stage.section.policy, f"{stage.name}.policy")
            use_color_jitter(source, stage.section.color_jitter, f"{stage.name}.color_jitter")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    sampler = build_sampler(
        plan,
        train_src.labels,
        stage.name,
        stage.section,
        seed=cfg.seed,
        rank=world.rank,
        world_size=world.size,
        num_classes=len(stage.counts),
    )
    train_src, val_src = plan.sources(train_src, val_src)
    checkpointer = None
    if stage.checkpoint is not None:
        checkpointer = Checkpointer(stage.checkpoint, stage.signature, meta=stage.meta)
    trainer = Trainer(
        model=plan.net,
        loss=loss,
        sampler=sampler,
        train_source=train_src,
        val_source=val_src,
        optim=stage.optim,
        train_cfg=cfg.train,
        device=stage.device,
        seed=cfg.seed,
        num_classes=len(stage.counts),
        train_counts=stage.counts,
        many_shot=cfg.evaluate.many_shot,
        few_shot=cfg.evaluate.few_shot,
        stage=stage.name,
        loss_name=plan.loss.name,
        params=plan.params,
        train_mode=plan.train_mode,
        checkpointer=checkpointer,
        world=world,
        sync_bn=cfg.dist.sync_bn,
        carry=stage.carry,
    )
    if meta_draw is not None:
        trainer.meta_draw = meta_draw
    if plan.step is not None:
        plan.step.attach(trainer)
    return trainer


def run(plan: Plan, stage: Stage) -> dict[str, Any]:
    """Train ``plan`` in ``stage``; returns the stage's metrics (also written, rank 0).

    Writes the checkpoint (resumed when its signature matches), the DVCLive curves and the
    metrics JSON (rank 0 only, once every rank is done).
    """
    from longtail import io
    from longtail.pipeline import EpochLogger, machine

    cfg, world, optim = stage.cfg, stage.world, stage.optim
    trainer = trainer_for(plan, stage)
    logger = EpochLogger(stage.live_dir, enabled=world.is_main, first_step=stage.first_step)
    trainer.log_epoch = logger
    if trainer.resume():
        logger.replay(trainer.history)
    if world.is_main:
        print(
            f"[{stage.name}] {stage.describe}: {len(trainer.train_source)} train / "
            f"{len(trainer.val_source)} val samples, loss {plan.loss.name}, sampler "
            f"{plan.sampler}, {optim.epochs} epochs, batch {optim.batch_size}, lr {optim.lr:g}, "
            f"device {stage.device}, fast path {trainer.fast}"
        )
        print(scale_line(stage.name, world, trainer.batch_size, optim.lr, cfg.dist.sync_bn))
    history = trainer.fit()
    logger.close()
    if stage.carry_out is not None:  # what a following stage needs to continue this optimiser
        stage.carry_out.update(trainer.carry_state())
    # The epoch whose weights the model now holds (train.keep) and its metrics.
    kept = trainer.kept_epoch
    final = dict(history[kept]) if history else {}
    final.pop("seconds", None)
    summary = {
        "epochs": optim.epochs,
        "loss": plan.loss.name,
        "sampler": plan.sampler,
        "seconds": round(sum(h["seconds"] for h in history), 3),
        **machine(stage.device),
        **final,
        "keep": cfg.train.keep,
        "kept_epoch": kept,
    }
    world.barrier()  # every rank is done before rank 0 writes
    if world.is_main:
        io.write_json(stage.metrics_path, summary)
    return summary


def evaluate_only(plan: Plan, stage: Stage) -> dict[str, Any]:
    """No training: the plan's network scored on ``val`` once, written as the stage's metrics.

    ``pretrain.mode: weights``: the network holds ``model.weights`` and passes through; no
    optimiser step, no BatchNorm update (evaluation runs in eval mode). The curves folder is
    left empty (the stage declares it), the metrics hold ``epochs: 0`` and the val scores.
    """
    import shutil

    from longtail import io
    from longtail.pipeline import machine

    cfg, world = stage.cfg, stage.world
    trainer = trainer_for(plan, stage)
    scores = trainer.validate()
    summary = {
        "epochs": 0,
        "loss": plan.loss.name,
        "sampler": plan.sampler,
        "seconds": 0.0,
        **machine(stage.device),
        **scores,
        "keep": cfg.train.keep,
        "kept_epoch": None,
    }
    if world.is_main:
        print(f"[{stage.name}] {stage.describe}: no training, the weights pass through ({scores})")
    world.barrier()
    if world.is_main:
        if stage.live_dir is not None:
            shutil.rmtree(stage.live_dir, ignore_errors=True)
            (stage.live_dir / "plots").mkdir(parents=True)
        if stage.metrics_path is not None:
            io.write_json(stage.metrics_path, summary)
    return summary


@dataclass(frozen=True)
class PretrainMode:
    """A ``pretrain.mode``: how the pretrain stage runs its plan.

    Attributes:
        run: :func:`run` or :func:`evaluate_only`.
        trains: whether it takes optimiser steps (else it needs ``model.weights`` to start from,
            and leaves no optimiser for ``finetune.optimizer: continue``).
    """

    run: Callable[[Plan, Stage], dict[str, Any]]
    trains: bool


PRETRAIN_MODES: Registry[PretrainMode] = Registry("pretrain.mode")
PRETRAIN_MODES.add("train", PretrainMode(run=run, trains=True))
PRETRAIN_MODES.add("weights", PretrainMode(run=evaluate_only, trains=False))


def scale_line(stage: str, world: World, per_rank: int, lr: float, sync_bn: bool) -> str:
    """The log line of the scale-out conventions: world size, batches and the effective LR."""
    how = f" ({world.backend()})" if world.active else ""
    bn = ""
    if world.active:
        bn = "; SyncBatchNorm" if sync_bn else "; BatchNorm statistics per rank"
    return (
        f"[{stage}] world size {world.size}{how}: per-rank batch {per_rank}, global batch "
        f"{per_rank * world.size}, effective lr {lr:g} (batch_size is the global batch, so the "
        f"learning rate does not change with the world size){bn}"
    )
