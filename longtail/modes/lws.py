"""``finetune.mode: lws``: learnable weight scaling (Kang et al., ICLR 2020;
facebookresearch/classifier-balancing, the LWS configs).

Logits ``s_c (w_c · f + b_c)`` with the pretrained ``w``, ``b`` and backbone frozen and one scale
per class, initialised to 1, trained with ``loss`` on the ``class_balanced`` sampler (the
method's definition, so ``finetune.sampler`` is not read) and the optimiser settings of
``finetune`` (weight decay applies to the scales, as in classifier-balancing's LWS config). The
scales are then folded into the classifier (``w_c <- s_c w_c``, ``b_c <- s_c b_c``; a cosine head
keeps them in its per-class ``scales`` buffer, since it normalises its class vectors), so
``models/final.pt`` is the plain architecture. The backbone's BatchNorm follows
``finetune.backbone_bn``.
"""

from __future__ import annotations

from typing import Any

from longtail.config import Config
from longtail.decouple import BACKBONE_BN, ScaledHead, frozen_backbone, retrain
from longtail.loop import Plan
from longtail.modes import Job, Mode, Outcome, register

SAMPLER = "class_balanced"  # LWS is class-balanced by definition


@register
class LWS(Mode):
    """One learned scale per class of the frozen pretrained classifier."""

    summary = "one scale per class of the pretrained classifier"

    def batchnorm(self, cfg: Config) -> str:
        return BACKBONE_BN[cfg.finetune.backbone_bn].summary

    name = "lws"
    reads_sampler = False

    def sampler(self, cfg: Config) -> str:
        return SAMPLER

    def plan(self, job: Job) -> Plan | None:
        backbone = frozen_backbone(job)
        head = ScaledHead(backbone.fc)
        how = retrain(job, backbone, head)
        return Plan(
            net=how.net, loss=job.loss, sampler=SAMPLER, params=[head.scales], sources=how.sources
        )

    def finish(self, job: Job, plan: Plan | None, summary: dict[str, Any]) -> Outcome:
        head = _scaled_head(plan.net)
        scales = head.scales.detach().cpu().tolist()
        head.fold()
        names = job.class_names or list(range(len(scales)))
        rows = [
            {"class": names[c], "train_count": job.train_counts[c], "scale": round(s, 6)}
            for c, s in enumerate(scales)
        ]
        metrics = {"mode": self.name, "backbone_bn": job.config.backbone_bn, **summary}
        return Outcome(metrics, {"lws_scales": rows})


def _scaled_head(net: Any) -> ScaledHead:
    """The :class:`ScaledHead` the plan trained (the net itself, or its ``head``)."""
    return next(m for m in net.modules() if isinstance(m, ScaledHead))
