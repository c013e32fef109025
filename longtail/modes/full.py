"""``finetune.mode: full``: fine-tune every layer with ``loss`` and ``finetune.sampler``.

LDAM-DRW's deferred stage (Cao et al., NeurIPS 2019; kaidic/LDAM-DRW ``cifar_train.py``), and
with ``finetune.optimizer: continue`` its one run: pretrain's SGD, momentum and LR schedule
carried on. ``finetune.augment: false`` trains on the evaluation batches.
"""

from __future__ import annotations

from typing import Any

from longtail.decouple import unaugmented_sources
from longtail.loop import Plan
from longtail.modes import Job, Mode, Outcome, register


@register
class Full(Mode):
    """Every parameter trained, the pretrained network as the start."""

    summary = "the pretrained network, every parameter trained"

    name = "full"
    continues_optimizer = True

    def plan(self, job: Job) -> Plan | None:
        return Plan(
            net=job.model,
            loss=job.loss,
            sampler=job.config.sampler,
            sources=unaugmented_sources(job.config.augment),
        )

    def finish(self, job: Job, plan: Plan | None, summary: dict[str, Any]) -> Outcome:
        return Outcome({"mode": self.name, **summary})
