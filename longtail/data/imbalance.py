"""Imbalance injection: per-class counts of the long-tailed profiles and seeded selection.

The exponential profile is the one of LDAM-DRW (Cao et al., NeurIPS 2019), BALMS (Ren et al.,
NeurIPS 2020), CDB-CE (Sinha et al., ACCV 2020) and FBL (Li et al., ICME 2022): class ``c`` of ``C``
keeps ``int(n_max * (1 / IF) ** (c / (C - 1)))`` images. The step profile (Buda et al. 2018, as in
LDAM-DRW) keeps ``n_max`` for the first half of the classes and ``int(n_max / IF)`` for the rest.

``data.draws`` says whether the training phases share one long-tailed draw (``shared``) or each
draws its own (``per_phase``), as BALMS's CIFAR code does: it never seeds NumPy, and every
``IMBALANCECIFAR10(phase='train')`` (BALMS ``data/ImbalanceCIFAR.py``, ``gen_imbalanced_data``:
each class's indices shuffled by the global RNG, the first n_c kept) draws afresh, once for the
backbone run, once for the decoupled run and once more for its meta set (``main.py``). Here the
draws stay reproducible: ``pretrain`` keeps the shared draw of ``data.seed``, ``finetune`` and
``meta`` draw with :func:`phase_seed`, by the same ``data.subset`` rule, from the same pool (every
image not held out for val or test), with the same per-class counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

PROFILES = ("exp", "step")
DRAWS = ("shared", "per_phase")
PHASES = ("pretrain", "finetune", "meta")  # the phases that read a training set
# Families whose training split is a seeded draw (the others read published lists or clips).
DRAWN_FAMILIES = ("digits", "cifar10", "cifar100")


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


# ------------------------------------------------------------------------------------- subset rules
# A rule takes (labels, counts, val_per_class, seed) and returns (train, val): sorted index arrays
# into ``labels``, disjoint, class c holding counts[c] train and val_per_class val indices.
Subset = Callable[[np.ndarray, Sequence[int], int, int], tuple[np.ndarray, np.ndarray]]
SUBSETS: dict[str, Subset] = {}


def _subset(name: str) -> Callable[[Subset], Subset]:
    def add(rule: Subset) -> Subset:
        if name in SUBSETS:
            raise ValueError(f"subset rule {name!r} is registered twice")
        SUBSETS[name] = rule
        return rule

    return add


def subset(
    name: str, labels: np.ndarray, counts: Sequence[int], val_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` indices of ``labels`` under the rule ``name`` (see the module docstring)."""
    if name not in SUBSETS:
        raise ValueError(f"data.subset: expected one of {', '.join(SUBSETS)}; got {name!r}")
    for c, k in enumerate(counts):
        have = int(np.sum(labels == c))
        if k + val_per_class > have:
            raise ValueError(
                f"class {c}: asked for {k} train + {val_per_class} val images, only {have} exist"
            )
    return SUBSETS[name](np.asarray(labels), counts, val_per_class, seed)


def _sorted(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)


@_subset("ldam")
def ldam_subset(
    labels: np.ndarray, counts: Sequence[int], val_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """LDAM-DRW's rule: one legacy RNG, per class in label order shuffle, keep the first n_c."""
    rng = np.random.RandomState(seed)  # the stream np.random.seed(seed) gives the global RNG
    train, val = [], []
    for c, k in enumerate(counts):
        order = np.flatnonzero(labels == c)  # int64, ascending, as np.where(...)[0]
        rng.shuffle(order)
        train.append(order[:k])
        val.append(order[len(order) - val_per_class :])
    return _sorted(train), _sorted(val)


@_subset("cdb")
def cdb_subset(
    labels: np.ndarray, counts: Sequence[int], val_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """CDB-CE's rule: val the last ``val_per_class`` of a class, train the first n_c of the rest.

    ``seed`` is unused: CDB-CE's selection is in file order. (With ``val_per_class`` 0 the
    original's ``loc[:-0]`` would keep nothing; here the whole class is the rest.)
    """
    train, val = [], []
    for c, k in enumerate(counts):
        loc = np.flatnonzero(labels == c)
        cut = len(loc) - val_per_class
        train.append(loc[:cut][:k])
        val.append(loc[cut:])
    return _sorted(train), _sorted(val)


@_subset("random")
def random_subset(
    labels: np.ndarray, counts: Sequence[int], val_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded choice without replacement: the balanced val set first, then train from the rest."""
    rng = np.random.default_rng(seed)
    if val_per_class:
        val, rest = hold_out_per_class(labels, val_per_class, rng)
    else:
        val, rest = np.zeros(0, dtype=np.int64), np.arange(len(labels))
    return rest[select_per_class(labels[rest], counts, rng)], val


# ------------------------------------------------------------------------------ per-phase draws
def phase_seed(seed: int, phase: str) -> int:
    """The data seed of ``phase``'s draw under ``data.draws: per_phase``.

    ``pretrain`` keeps ``seed`` (the shared draw, so the backbone's images do not change);
    ``finetune`` and ``meta`` take the first 32-bit word of NumPy's
    ``SeedSequence([seed, i])``, ``i`` the phase's position in :data:`PHASES` (1, 2).
    """
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {', '.join(PHASES)}; got {phase!r}")
    if phase == "pretrain":
        return int(seed)
    return int(np.random.SeedSequence([int(seed), PHASES.index(phase)]).generate_state(1)[0])


def phase_split(draws: str, phase: str) -> str:
    """The prepared split ``phase`` trains on: ``train``, or ``train_<phase>`` (per_phase)."""
    if draws not in DRAWS:
        raise ValueError(f"data.draws: expected one of {', '.join(DRAWS)}; got {draws!r}")
    return "train" if draws == "shared" or phase == "pretrain" else f"train_{phase}"


def phase_draws(draw: Callable[[int], np.ndarray], seed: int, draws: str) -> dict[str, np.ndarray]:
    """Every extra training split of ``draws``: ``{split: indices}`` from ``draw(phase seed)``.

    ``draw`` returns the sorted training indices of one seeded draw (the family's rule, pool and
    counts); ``shared`` has no extra split.
    """
    if draws == "shared":
        return {}
    return {phase_split(draws, p): draw(phase_seed(seed, p)) for p in PHASES[1:]}


def write_phase_splits(
    out_dir: Path, splits: dict[str, np.ndarray], labels: np.ndarray, images: np.ndarray
) -> None:
    """Write ``<split>.csv`` and ``<split>_images.npy`` of each per-phase training split."""
    import pandas as pd

    from longtail import io

    for split, idx in splits.items():
        frame = pd.DataFrame(
            {"index": np.arange(len(idx)), "source_index": idx, "label": labels[idx]}
        )
        with io.atomic_path(out_dir / f"{split}.csv") as tmp:
            frame.to_csv(tmp, index=False)
        io.save_npy(out_dir / f"{split}_images.npy", images[idx])


def draws_info(draws: str, train: np.ndarray, splits: dict[str, np.ndarray]) -> dict:
    """``dataset.json``'s record of the draws: the split of each phase and the images it shares
    with pretrain's draw."""
    phases = {p: phase_split(draws, p) for p in PHASES}
    every = {"train": train, **splits}
    shared = {p: int(np.intersect1d(every[s], train).size) for p, s in phases.items()}
    return {"mode": draws, "splits": phases, "images_shared_with_pretrain": shared}
