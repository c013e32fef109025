"""``finetune.mode: partial``: partial fine-tuning (FBL and OLTR on Places-LT, juyongjiang/FBL
``train.py``).

The network is frozen except the modules named in ``finetune.train_blocks`` (e.g. ``layer4.2``,
the last bottleneck of ResNet-152) and the classifier. Those are re-initialised (each
submodule's own PyTorch default, ``reset_parameters``, drawn from a generator seeded by ``seed``:
FBL builds its new last block as fresh modules and never applies torchvision's ResNet
initialisation to it; BatchNorm running statistics restart too), run in train mode and are
trained with ``loss`` and ``finetune.sampler``; the blocks at ``finetune.block_lr`` (None:
``finetune.lr``, as in FBL, whose one SGD holds the block and the classifier at one LR), the
classifier at ``finetune.lr``. The LR schedule scales both alike.

The frozen blocks follow ``finetune.backbone_bn``: ``frozen`` (the default, and what FBL does:
its backbone runs in eval mode under ``no_grad`` for the whole run) keeps them in eval mode, so
their BatchNorm normalises with the pretrained running statistics and never updates them;
``train`` runs them in train mode (batch statistics, running statistics drifting), as a loop
that calls ``.train()`` on the whole network would.
"""

from __future__ import annotations

from typing import Any

import torch

from longtail.config import Config, ConfigError
from longtail.decouple import (
    BACKBONE_BN,
    frozen_backbone,
    named_blocks,
    parameters_of,
    reinitialise,
    reset_classifier,
    unaugmented_sources,
)
from longtail.loop import Plan
from longtail.modes import Job, Mode, Outcome, register


@register
class Partial(Mode):
    """The named blocks and the classifier re-initialised and trained; the rest frozen."""

    summary = "finetune.train_blocks re-initialised and trained with a new classifier"

    def batchnorm(self, cfg: Config) -> str:
        return (
            f"{BACKBONE_BN[cfg.finetune.backbone_bn].summary}; finetune.train_blocks in train mode"
        )

    name = "partial"

    def check(self, cfg: Config) -> None:
        if not cfg.finetune.train_blocks:
            raise ConfigError(
                "finetune.train_blocks: expected a non-empty list of module names (e.g. "
                "[layer4.2]) with finetune.mode: partial; got []"
            )

    def plan(self, job: Job) -> Plan | None:
        cfg = job.config
        model = job.model
        blocks = named_blocks(model, cfg.train_blocks)
        with torch.random.fork_rng(devices=[]):  # module initialisers draw from the global RNG
            torch.manual_seed(job.seed)
            for block in blocks.values():
                reinitialise(block)
        reset_classifier(model.fc, job.seed)
        model = frozen_backbone(job)
        trained = [*blocks.values(), model.fc]
        for module in trained:
            module.requires_grad_(True)
        groups = [
            {"params": parameters_of(blocks.values(), exclude=model.fc), "lr": self.block_lr(job)},
            {"params": list(model.fc.parameters()), "lr": cfg.optim.lr},
        ]
        return Plan(
            net=model,
            loss=job.loss,
            sampler=cfg.sampler,
            params=groups,
            sources=unaugmented_sources(cfg.augment),
            train_mode=BACKBONE_BN[cfg.backbone_bn].train_mode(trained),
        )

    @staticmethod
    def block_lr(job: Job) -> float:
        cfg = job.config
        return cfg.block_lr if cfg.block_lr is not None else cfg.optim.lr

    def finish(self, job: Job, plan: Plan | None, summary: dict[str, Any]) -> Outcome:
        metrics = {
            "mode": self.name,
            "train_blocks": list(job.config.train_blocks),
            "block_lr": self.block_lr(job),
        }
        return Outcome({**metrics, **summary})
