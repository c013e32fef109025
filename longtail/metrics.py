"""Evaluation metrics of long-tailed recognition.

Top-1 accuracy, the many/medium/few-shot split of Liu et al. (OLTR, CVPR 2019) as every seed paper
prints it (many: more than ``many_shot`` training images, few: fewer than ``few_shot``, medium: the
rest), per-class accuracy, the confusion matrix, mean per-class precision and recall (CDB-CE's EGTEA
table) and the expected calibration error. Everything is computed from per-class *counts*, so that
counts from several processes can be summed before any ratio is taken.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    flat = labels.to(torch.int64) * num_classes + preds.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_counts(
    preds: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, total)``: (C,) int64 counts of correct predictions and of samples per class."""
    total = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[preds == labels], minlength=num_classes)
    return correct, total


def per_class_accuracy(correct: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """(C,) accuracy in [0, 1]; a class with no sample gets NaN (it has no accuracy)."""
    return correct.double() / total.double()


def shot_masks(
    train_counts: Sequence[int], many_shot: int, few_shot: int
) -> dict[str, torch.Tensor]:
    """Boolean (C,) masks of the many, medium and few-shot classes."""
    counts = torch.as_tensor(train_counts)
    many = counts > many_shot
    few = counts < few_shot
    return {"many": many, "medium": ~many & ~few, "few": few}


def summarize(
    confusion: torch.Tensor,
    train_counts: Sequence[int],
    many_shot: int,
    few_shot: int,
    unscored: torch.Tensor | None = None,
) -> dict[str, float | int]:
    """Top-1, many/medium/few, mean per-class precision/recall, in percent, plus class counts.

    ``top1`` is sample accuracy (the papers' number; on balanced test sets it equals the mean
    per-class accuracy). A shot group with no class reports NaN rather than a made-up number.
    ``unscored``: (C,) counts of listed samples that could not be scored (an undecodable clip or
    image); they count as wrong, in their class's total and in no prediction.
    """
    confusion = confusion.double().cpu()
    missed = torch.zeros(len(confusion)) if unscored is None else unscored.double().cpu()
    total = confusion.sum(1) + missed
    acc = confusion.diag() / total  # (C,)
    predicted = confusion.sum(0)
    precision = torch.where(predicted > 0, confusion.diag() / predicted.clamp(min=1), 0.0)
    out: dict[str, float | int] = {
        "top1": 100.0 * float(confusion.diag().sum() / total.sum()),
        "mean_class_accuracy": 100.0 * float(acc[total > 0].mean()),
        "mean_precision": 100.0 * float(precision[total > 0].mean()),
        "mean_recall": 100.0 * float(acc[total > 0].mean()),
    }
    for name, mask in shot_masks(train_counts, many_shot, few_shot).items():
        mask = mask & (total > 0)
        out[name] = 100.0 * float(acc[mask].mean()) if mask.any() else float("nan")
        out[f"num_{name}"] = int(mask.sum())
    out["num_classes"] = len(train_counts)
    out["num_samples"] = int(total.sum())
    out["num_scored"] = int(confusion.sum())
    return out


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al., ICML 2017) with equal-width confidence bins, in percent."""
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype, device=conf.device)
    idx = torch.bucketize(conf, edges[1:-1], right=True)
    gap = torch.zeros(bins, dtype=torch.float64, device=conf.device)
    gap.index_add_(0, idx, conf.double() - correct)
    return 100.0 * float(gap.abs().sum() / len(labels))
