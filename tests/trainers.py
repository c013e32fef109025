"""Builders of the training loop for tests: one Trainer call instead of a copy per test file.

:func:`make_trainer` fills every Trainer argument a test does not care about (CPU, seed 0, no
checkpoint, silent); :func:`plan_loop` runs a finetune mode's plan through the package's own
loop (``longtail.loop.trainer_for``) on in-memory sources, recording each trainer it builds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from longtail import loop, losses, samplers
from longtail.config import Config, OptimConfig, TrainConfig
from longtail.distributed import World
from longtail.train import Trainer

CPU = torch.device("cpu")
SLOW_PATH = TrainConfig(amp="off", channels_last="off", compile="off")


def make_trainer(
    model: nn.Module,
    train_source: Any,
    val_source: Any,
    counts: Sequence[int],
    *,
    optim: OptimConfig,
    train_cfg: TrainConfig = SLOW_PATH,
    loss: nn.Module | str = "ce",
    sampler: Any = "instance",
    seed: int = 0,
    **overrides: Any,
) -> Trainer:
    """A Trainer on the CPU without checkpoints or terminal lines; ``overrides`` go through.

    ``loss`` and ``sampler`` may be registry names (built over ``counts`` and the training
    labels, sampler seed ``seed``) or built objects.
    """
    counts = list(counts)
    if isinstance(loss, str):
        loss = losses.create(loss, counts)
    if isinstance(sampler, str):
        sampler = samplers.create(sampler, train_source.labels, seed=seed, num_classes=len(counts))
    kwargs: dict[str, Any] = {
        "model": model,
        "loss": loss,
        "sampler": sampler,
        "train_source": train_source,
        "val_source": val_source,
        "optim": optim,
        "train_cfg": train_cfg,
        "device": CPU,
        "seed": seed,
        "num_classes": len(counts),
        "train_counts": counts,
        "log": lambda line: None,
    }
    return Trainer(**{**kwargs, **overrides})


def plan_loop(
    cfg: Config,
    train_source: Any,
    val_source: Any,
    counts: Sequence[int],
    calls: list[dict],
    splits: Mapping[str, Any] | None = None,
) -> Callable[[loop.Plan], dict[str, Any]]:
    """A loop for ``longtail.modes.run`` that trains each plan in-process through the package's
    loop code (no checkpoint, no files) and appends ``{"trainer", "plan"}`` to ``calls``.

    ``splits``: the sources by split name the loop may open (default: ``train`` and ``val``).
    """

    def run(plan: loop.Plan) -> dict[str, Any]:
        stage = loop.Stage(
            name="finetune",
            cfg=cfg,
            device=CPU,
            world=World(),
            open_split=(
                splits if splits is not None else {"train": train_source, "val": val_source}
            ).__getitem__,
            counts=list(counts),
        )
        trainer = loop.trainer_for(plan, stage)
        trainer.log = lambda line: None
        calls.append({"trainer": trainer, "plan": plan, "sampler": plan.sampler})
        history = trainer.fit()
        return {"epochs": len(history), **history[-1]}

    return run
