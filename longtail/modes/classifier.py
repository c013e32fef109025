"""``finetune.mode: classifier``: re-initialise and retrain the classifier on the frozen backbone.

Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition", ICLR 2020
(cRT: ``class_balanced`` sampler + ``ce``); Ren et al., "Balanced Meta-Softmax for Long-Tailed
Visual Recognition", NeurIPS 2020 (decoupled Balanced Softmax: ``instance`` +
``balanced_softmax``; BALMS: ``finetune.sampler: meta`` + ``balanced_softmax``).

The classifier gets its own fresh initialisation from a generator seeded by ``seed``
(``nn.Linear``'s default U(±1/sqrt(D)) for a linear head, LDAM's for a cosine head;
``longtail.nets.heads``) and is trained with ``loss`` on ``finetune.sampler``; the backbone's
BatchNorm follows ``finetune.backbone_bn`` (``longtail.decouple``).

``finetune.sampler`` takes, besides the registered samplers, the names of :data:`STEPS`: step
strategies that bring their own sampler. ``meta`` is BALMS's bi-level step
(``longtail.meta.MetaStep``): a learnable class-level sampler updated before every classifier
step on a class-balanced meta batch of ``finetune.meta_source``. Its inner loss is the per-image
form of ``loss`` (``LongTailLoss.shifts_by_log_counts``: ``balanced_softmax`` or ``ce``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from longtail import losses
from longtail.config import Config, ConfigError
from longtail.decouple import BACKBONE_BN, FeatureHead, frozen_backbone, reset_classifier, retrain
from longtail.loop import Plan, Step
from longtail.meta import MetaStep
from longtail.modes import Job, Mode, Outcome, register
from longtail.registry import Registry


def balms_step(job: Job) -> MetaStep:
    """BALMS's meta step with the ``finetune.meta_*`` options and ``loss``'s per-image form."""
    cfg = job.config
    log_counts = torch.tensor(job.train_counts, dtype=torch.float64).log().float()
    by_log_counts = losses.LOSSES[job.loss.name].shifts_by_log_counts
    return MetaStep(
        init_pow=cfg.meta_init_pow,
        lr=cfg.meta_lr,
        shift=log_counts if by_log_counts else torch.zeros_like(log_counts),
        meta_batch_size=cfg.meta_batch_size or cfg.optim.batch_size,
        meta_source=cfg.meta_source,
        meta_augment=cfg.meta_augment,
    )


# ``finetune.sampler`` values that are step strategies bringing their own sampler.
STEPS: Registry[Callable[[Job], Step]] = Registry("finetune.sampler")
STEPS.add("meta", balms_step)


@register
class Classifier(Mode):
    """cRT, decoupled Balanced Softmax and BALMS: a new classifier on the frozen backbone."""

    summary = "a new classifier on the frozen backbone"

    def batchnorm(self, cfg: Config) -> str:
        return BACKBONE_BN[cfg.finetune.backbone_bn].summary

    name = "classifier"

    def samplers(self) -> tuple[str, ...]:
        return (*super().samplers(), *STEPS.names())

    def val_needs(self, cfg: Config) -> list[str]:
        needs = super().val_needs(cfg)
        if cfg.finetune.sampler in STEPS and cfg.finetune.meta_source == "val":
            needs.append(f"finetune.meta_source: {cfg.finetune.meta_source}")
        return needs

    def check(self, cfg: Config) -> None:
        if cfg.finetune.sampler not in STEPS:
            return
        inner = [n for n in losses.names() if losses.LOSSES[n].shifts_by_log_counts is not None]
        if cfg.loss.name not in inner:
            raise ConfigError(
                f"loss.name: the meta sampler's inner step expects one of {', '.join(inner)} "
                f"(BALMS uses balanced_softmax); got {cfg.loss.name!r}"
            )

    def plan(self, job: Job) -> Plan | None:
        cfg = job.config
        backbone = frozen_backbone(job)
        reset_classifier(backbone.fc, job.seed)
        head = FeatureHead(backbone.fc.requires_grad_(True))
        how = retrain(job, backbone, head)
        step = STEPS[cfg.sampler](job) if cfg.sampler in STEPS else None
        return Plan(
            net=how.net,
            loss=job.loss,
            sampler=cfg.sampler,
            params=list(head.parameters()),
            sources=how.sources,
            step=step,
        )

    def finish(self, job: Job, plan: Plan | None, summary: dict[str, Any]) -> Outcome:
        cfg = job.config
        metrics = {"mode": self.name, "backbone_bn": cfg.backbone_bn, **summary}
        plots = {}
        driver = getattr(plan.step, "driver", None)
        if driver is not None:
            metrics.update(meta_init_pow=cfg.meta_init_pow, meta_lr=cfg.meta_lr)
            rows = driver.rate_rows(job.class_names or None)
            last = max(r["epoch"] for r in rows)
            plots["meta_sampling_epochs"] = rows
            plots["meta_sampling"] = [r for r in rows if r["epoch"] == last]
        return Outcome(metrics, plots)
