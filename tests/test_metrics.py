"""Top-1, shot groups and per-class counts on hand-made predictions."""

import math

import torch

from longtail.metrics import (
    confusion_matrix,
    expected_calibration_error,
    per_class_counts,
    shot_masks,
    summarize,
)


def test_confusion_and_counts() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    conf = confusion_matrix(preds, labels, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    correct, total = per_class_counts(preds, labels, 3)
    assert correct.tolist() == [1, 2, 1] and total.tolist() == [2, 2, 2]


def test_shot_groups_follow_the_thresholds() -> None:
    masks = shot_masks([150, 100, 20, 19], many_shot=100, few_shot=20)
    assert masks["many"].tolist() == [True, False, False, False]
    assert masks["medium"].tolist() == [False, True, True, False]
    assert masks["few"].tolist() == [False, False, False, True]


def test_summarize_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 1, 0, 0, 0])
    r = summarize(confusion_matrix(preds, labels, 3), [200, 50, 5], 100, 20)
    assert r["top1"] == 50.0
    assert (r["many"], r["medium"], r["few"]) == (100.0, 50.0, 0.0)
    assert (r["num_many"], r["num_medium"], r["num_few"]) == (1, 1, 1)
    assert math.isclose(r["mean_precision"], 100 * (2 / 5 + 1 + 0) / 3)


def test_empty_group_is_nan_not_zero() -> None:
    labels = torch.tensor([0, 1])
    r = summarize(confusion_matrix(labels, labels, 2), [500, 500], 100, 20)
    assert math.isnan(r["few"]) and r["num_few"] == 0


def test_ece_of_perfectly_calibrated_predictions_is_zero() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, torch.tensor([0, 1])) == 0.0
    assert expected_calibration_error(probs, torch.tensor([1, 0])) == 100.0
