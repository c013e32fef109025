"""``finetune.mode: tau_norm``: τ-normalised classifier (Kang et al., ICLR 2020;
facebookresearch/classifier-balancing ``tau_norm.py``).

No training: ``w_c <- w_c / ||w_c||^τ`` on the pretrained classifier. The reference scores
``f · w_c / ||w_c||^τ`` without the bias, and so does the default ``finetune.tau_norm_bias:
false`` (the bias is set to zero in ``models/final.pt``, so τ = 0 is the pretrained network
without its bias); ``true`` keeps the bias as trained, so that τ = 0 is the pretrained network
exactly. With several τ candidates (``finetune.tau_norm: sweep`` is that script's grid 0, 0.1,
..., 2) the one with the best mean per-class accuracy on ``val`` is used (the smallest τ among
ties); the script scores its sweep on ``test`` or ``val``, here never ``test``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.config import Config
from longtail.decouple import FrozenFeatures, frozen_backbone, tau_normalized
from longtail.loop import Plan
from longtail.metrics import confusion_matrix, summarize
from longtail.modes import Job, Mode, Outcome, register


@register
class TauNorm(Mode):
    """Rescale the pretrained class vectors; τ chosen on ``val`` among several candidates."""

    summary = "the pretrained classifier rescaled w/||w||^τ, no training"

    name = "tau_norm"
    reads_sampler = False

    def trains(self, cfg: Config) -> bool:
        return False

    def val_needs(self, cfg: Config) -> list[str]:
        if len(cfg.finetune.tau_candidates()) > 1:
            return [f"finetune.tau_norm: {cfg.finetune.tau_norm}"]
        return []

    def plan(self, job: Job) -> Plan | None:
        return None

    def finish(self, job: Job, plan: Plan | None, summary: dict[str, Any]) -> Outcome:
        taus = job.config.tau_candidates()
        backbone = frozen_backbone(job)
        val = job.open_split("val")
        if len(taus) > 1 and len(val) == 0:
            raise ValueError(
                f"finetune.tau_norm: choosing among {len(taus)} values needs a val split "
                "(set data.val_per_class > 0), got 0 val samples"
            )
        rows = []
        if len(val) > 0:
            source = FrozenFeatures(
                val, backbone, augment=False, batch_size=job.eval_batch_size, fast=job.fast
            )
            features, labels = source.cached(torch.Generator(device=job.device))
            rows = tau_sweep(backbone.fc, features, labels, taus, job)
        chosen = best_tau(rows) if len(taus) > 1 else taus[0]
        with torch.no_grad():
            backbone.fc.weight.copy_(tau_normalized(backbone.fc.weight, chosen))
            if not job.config.tau_norm_bias and backbone.fc.bias is not None:
                backbone.fc.bias.zero_()  # the reference scores f · w / ||w||^τ, no bias
        metrics: dict[str, Any] = {
            "mode": self.name,
            "epochs": 0,
            "tau": chosen,
            "tau_norm_bias": job.config.tau_norm_bias,
        }
        for row in rows:
            if row["tau"] == chosen:
                metrics.update({f"val/{k}": v for k, v in row.items() if k != "tau"})
        return Outcome(metrics, {"tau_norm": rows} if len(taus) > 1 else {})


def tau_sweep(
    fc: nn.Linear, features: Tensor, labels: Tensor, taus: tuple[float, ...], job: Job
) -> list[dict[str, float]]:
    """Val scores (percent) of the τ-normalised classifier for each τ in ``taus``."""
    rows = []
    bias = fc.bias if job.config.tau_norm_bias else None
    for tau in taus:
        with torch.no_grad():
            logits = F.linear(features, tau_normalized(fc.weight, tau).to(features.dtype), bias)
        conf = confusion_matrix(logits.argmax(1), labels, len(job.train_counts))
        s = summarize(conf, job.train_counts, job.many_shot, job.few_shot)
        keys = ("top1", "mean_class_accuracy", "many", "medium", "few")
        rows.append({"tau": tau, **{k: s[k] for k in keys}})
    return rows


def best_tau(rows: list[dict[str, float]]) -> float:
    """The τ of the best mean per-class accuracy; the smallest τ among ties."""
    best = max(r["mean_class_accuracy"] for r in rows)
    return min(r["tau"] for r in rows if r["mean_class_accuracy"] == best)
