"""``finetune.mode: none``: the pretrained network is the final one (the papers' end-to-end
recipes, which set their loss as ``pretrain.loss``)."""

from __future__ import annotations

from typing import Any

from longtail.config import Config, LossConfig
from longtail.loop import Plan
from longtail.modes import Job, Mode, Outcome, register


@register
class PassThrough(Mode):
    """No training: the pretrained network passes through unchanged."""

    summary = "the pretrained network as it is"

    name = "none"
    reads_sampler = False

    def trains(self, cfg: Config) -> bool:
        return False

    def head_loss(self, cfg: Config) -> LossConfig | None:
        return cfg.pretrain.loss  # the classifier is pretrain's

    def plan(self, job: Job) -> Plan | None:
        return None

    def finish(self, job: Job, plan: Plan | None, summary: dict[str, Any]) -> Outcome:
        return Outcome({"mode": self.name, "epochs": 0})
