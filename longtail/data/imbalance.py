"""Imbalance injection: per-class counts of the long-tailed profiles and seeded selection.

The exponential profile is the one of LDAM-DRW (Cao et al., NeurIPS 2019), BALMS (Ren et al.,
NeurIPS 2020), CDB-CE (Sinha et al., ACCV 2020) and FBL (Li et al., ICME 2022): class ``c`` of ``C``
keeps ``int(n_max * (1 / IF) ** (c / (C - 1)))`` images. The step profile (Buda et al. 2018, as in
LDAM-DRW) keeps ``n_max`` for the first half of the classes and ``int(n_max / IF)`` for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PROFILES = ("exp", "step")


def exp_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Counts of the exponential profile; ``imbalance`` is n_max / n_min (1 keeps it balanced)."""
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * (1.0 / imbalance) ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def step_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Counts of the step profile: the first half of the classes keep n_max, the rest n_max / IF."""
    head = num_classes // 2
    return [int(n_max)] * head + [int(n_max / imbalance)] * (num_classes - head)


def profile_counts(profile: str, n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class counts for ``profile`` (``exp`` or ``step``)."""
    if profile == "exp":
        return exp_counts(n_max, num_classes, imbalance)
    if profile == "step":
        return step_counts(n_max, num_classes, imbalance)
    raise ValueError(f"data.profile: expected one of {', '.join(PROFILES)}; got {profile!r}")


def select_per_class(
    labels: np.ndarray, counts: Sequence[int], rng: np.random.Generator
) -> np.ndarray:
    """Choose ``counts[c]`` indices of class ``c`` without replacement, seeded by ``rng``.

    Returns:
        The chosen indices of ``labels``, sorted ascending.
    """
    chosen = []
    for c, k in enumerate(counts):
        pool = np.flatnonzero(labels == c)
        if k > len(pool):
            raise ValueError(f"class {c}: asked for {k} samples, only {len(pool)} available")
        chosen.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def hold_out_per_class(
    labels: np.ndarray, per_class: int, rng: np.random.Generator, pool: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``per_class`` samples of every class off ``pool`` (default: all indices).

    Returns:
        ``(held_out, rest)``: sorted index arrays into ``labels``, disjoint, covering ``pool``.
    """
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    num_classes = int(labels.max()) + 1
    held = select_per_class(labels[pool], [per_class] * num_classes, rng)
    held_idx = pool[held]
    rest = np.setdiff1d(pool, held_idx, assume_unique=True)
    return np.sort(held_idx), np.sort(rest)
