"""The optimiser and LR schedule of a training stage: SGD with momentum over parameters or
parameter groups (the classifier bias optionally without weight decay, CDB-CE's CIFAR code), and
the LR factor of each step (linear warmup, then step or cosine decay; :func:`lr_factor`).

Split from the training loop (``longtail/train.py``), which builds one of each per stage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from longtail.config import OptimConfig


def without_decay(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], exempt: nn.Parameter | None
) -> list:
    """``params`` (parameters or SGD groups) with ``exempt`` moved to its own group, decay 0.

    The exempt parameter's group follows the group it came from (same LR); ``None`` or a
    parameter that is not optimised changes nothing (the list comes back as given).
    """
    items = list(params)
    if exempt is None or not any(_holds(item, exempt) for item in items):
        return items
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    out: list[dict[str, Any]] = []
    for group in groups:
        kept = [p for p in group["params"] if p is not exempt]
        if kept:
            out.append({**group, "params": kept})
        if len(kept) < len(group["params"]):
            out.append({**group, "params": [exempt], "weight_decay": 0.0})
    return out


def _holds(item: nn.Parameter | dict[str, Any], p: nn.Parameter) -> bool:
    if isinstance(item, dict):
        return any(q is p for q in item["params"])
    return item is p


def classifier_bias(model: nn.Module) -> nn.Parameter | None:
    """The bias of ``model.fc`` (every network and classifier wrapper here names it ``fc``)."""
    fc = getattr(model, "fc", None)
    return getattr(fc, "bias", None)


def build_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
    cfg: OptimConfig,
    device: torch.device,
    classifier_bias: nn.Parameter | None = None,
) -> torch.optim.SGD:
    """SGD with momentum and weight decay; fused on CUDA, foreach on the CPU.

    With ``cfg.bias_decay`` false, ``classifier_bias`` trains without weight decay (CDB-CE's CIFAR
    code gives ``linear.bias`` a group of its own with ``weight_decay`` 0).
    """
    fused = device.type == "cuda"
    if not cfg.bias_decay:
        params = without_decay(params, classifier_bias)
    return torch.optim.SGD(
        list(params),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        fused=fused,
        foreach=None if fused else True,
    )


def lr_factor(step: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """Multiplier of the base LR at optimiser step ``step`` (linear warmup, then the schedule).

    ``cfg.lr_update`` says when the LR changes. ``step``: every optimiser step; warmup ramps
    linearly from 1 / (warmup_epochs × steps per epoch) to 1. ``epoch``: once per epoch, as a
    scheduler stepped after each epoch (LDAM-DRW's ``adjust_learning_rate``, CDB-CE's
    MultiStepLR, torch's CosineAnnealingLR): epoch e holds the value at e, warmup epoch e holds
    (e + 1) / warmup_epochs. ``epoch_prestep``: a scheduler stepped *before* each epoch
    (classifier-balancing's and BALMS's ``run_networks.py``): epoch e holds the value at e + 1.
    The step schedule multiplies by ``lr_decay`` at each epoch in ``milestones``; cosine anneals
    to zero over the epochs after warmup.
    """
    epoch = step / steps_per_epoch
    if cfg.lr_update != "step":
        epoch = step // steps_per_epoch + (cfg.lr_update == "epoch_prestep")
    warm = cfg.warmup_epochs
    if warm > 0 and epoch < warm:
        if cfg.lr_update == "step":
            return (step + 1) / (warm * steps_per_epoch)
        return (epoch + 1) / warm
    if cfg.schedule == "step":
        return cfg.lr_decay ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min((epoch - warm) / span, 1.0)))
    return 1.0
