"""Where BALMS's meta batches come from: ``finetune.meta_source``, val or train, never test.

jiawei-ren/BalancedMetaSoftmax-Classification's ``main.py`` builds the class-balanced meta set from
``train`` for CIFAR and from ``val`` for ImageNet-LT and Places-LT. These tests record every meta
batch the meta step draws (the split and the indices) on tiny in-memory data, and run the finetune
stage on a CIFAR-100 archive in the published layout with no val hold-out, as the BALMS CIFAR
recipe does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DATA_STAGES, Repo, git_init, run_stages
from fakes import make_cifar_archive
from test_decouple import COUNTS, images, make_job, parse, pretrained, run

from longtail import meta
from longtail.config import ConfigError
from longtail.meta import MetaSource


def run_meta(
    monkeypatch: pytest.MonkeyPatch, source: str, meta_augment: bool = False
) -> tuple[MetaSource, list, list]:
    """Retrain the classifier with the meta sampler; returns the MetaSource, meta draws, splits.

    A meta draw is recorded as (source, indices, train flag, the batch it returned).
    """
    draws: list[tuple[object, torch.Tensor, bool, tuple]] = []
    real = meta._one_batch
    counter = iter(range(10**9))

    def recording(src, indices, *, train, generator):
        batch = real(src, indices, train=train, generator=generator)
        # MetaSource.batches draws the step's training batch, then update draws its meta batch.
        if next(counter) % 2 == 1:
            draws.append((src, indices.clone(), train, batch))
        return batch

    monkeypatch.setattr(meta, "_one_batch", recording)
    options = {"mode": "classifier", "sampler": "meta", "meta_batch_size": 6}
    options.update(meta_source=source, meta_augment=meta_augment)
    cfg = parse(options, loss="balanced_softmax")
    train_src, val_src = images(COUNTS, 1), images([4, 4, 4], 2, padding=0)
    job, calls = make_job(pretrained(), cfg, train=train_src, val=val_src)
    opened: list[str] = []
    inner = job.open_split
    job.open_split = lambda split: opened.append(split) or inner(split)
    run("classifier", job)
    return calls[0]["trainer"].train_source, draws, opened


def test_meta_batches_come_from_train_and_never_from_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, draws, opened = run_meta(monkeypatch, "train")
    assert isinstance(source, MetaSource)
    train_features = source.train  # the frozen-backbone features of the training images
    assert source.meta is train_features
    assert draws, "the meta step drew no meta batch"
    for src, indices, train, _ in draws:
        assert src is train_features and not train  # unaugmented by default
        assert int(indices.min()) >= 0 and int(indices.max()) < sum(COUNTS)
        labels = train_features.labels[indices]
        assert torch.bincount(labels, minlength=3).tolist() == [2, 2, 2]  # class-balanced
    assert "test" not in opened


def test_meta_batches_come_from_val_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    source, draws, opened = run_meta(monkeypatch, "val")
    assert draws and all(src is source.meta and not train for src, _, train, _ in draws)
    assert source.meta is not source.train and len(source.meta) == 12  # the val split
    assert "test" not in opened


def test_meta_augment_draws_train_meta_batches_through_the_training_augmentation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # BALMS's CIFAR meta loader is the training loader: its images are augmented.
    source, draws, _ = run_meta(monkeypatch, "train", meta_augment=True)
    assert draws and all(src is source.meta and train for src, _, train, _ in draws)
    plain = [
        meta._one_batch(src, indices, train=False, generator=torch.Generator())[0]
        for src, indices, _, _ in draws
    ]
    augmented = [batch[0] for _, _, _, batch in draws]
    assert any(not torch.equal(a, p) for a, p in zip(augmented, plain, strict=True))
    for src, indices, _, (_, labels) in draws:
        assert torch.equal(labels, src.labels[indices])
        assert torch.bincount(labels, minlength=3).tolist() == [2, 2, 2]


def test_meta_augment_needs_train_meta_batches_and_augmentation() -> None:
    assert parse({}).finetune.meta_augment is False
    match = r"finetune.meta_augment: true .* expected finetune.meta_source: train and "
    with pytest.raises(ConfigError, match=match + r"finetune.augment: true, got meta_source: val"):
        parse({"meta_augment": True})
    with pytest.raises(ConfigError, match=match + r".*augment: false"):
        parse({"meta_augment": True, "meta_source": "train", "augment": False})


def test_meta_source_is_validated() -> None:
    assert parse({}).finetune.meta_source == "val"
    with pytest.raises(ConfigError, match=r"finetune.meta_source: expected one of val, train"):
        parse({"meta_source": "test"})
    with pytest.raises(ValueError, match=r"finetune.meta_source: expected one of val, train"):
        meta.meta_set("test", object())


def test_empty_val_meta_set_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"non-empty val split .*finetune.meta_source: train"):
        MetaSource(
            images(COUNTS, 1),
            images([0, 0, 0], 2),
            meta.MetaSampler(images(COUNTS, 1).labels, seed=0),
            torch.nn.Linear(1, 3),
            torch.optim.SGD(torch.nn.Linear(1, 3).parameters(), lr=0.1),
            shift=torch.zeros(3),
            meta_batch_size=6,
        )


def test_balms_cifar_recipe_trains_without_val(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BALMS on CIFAR: no val hold-out, meta set from train; the stages run and val stays empty."""
    archive = tmp_path / "cifar-100-python.tar.gz"
    md5 = make_cifar_archive(archive, kind="cifar100", train_per_class=12, test_per_class=1)
    git_init(repo)
    repo.params(
        {
            "data": {"name": "cifar100", "archive": str(archive), "md5": md5, "imbalance": 10},
            "pretrain": {"epochs": 1, "batch_size": 64},
            "finetune": {
                "epochs": 1,
                "batch_size": 64,
                "mode": "classifier",
                "sampler": "meta",
                "meta_source": "train",
            },
            "loss": {"name": "balanced_softmax"},
        }
    )
    run_stages(repo, (*DATA_STAGES, "pretrain", "finetune"), monkeypatch)
    counts = json.loads((repo.root / "data/prepared/class_counts.json").read_text())
    assert sum(counts["val"]) == 0
    assert counts["train"] == [int(12 * 0.1 ** (c / 99)) for c in range(100)]
    metrics = json.loads((repo.root / "metrics/finetune.json").read_text())
    assert (metrics["sampler"], metrics["loss"]) == ("meta", "balanced_softmax")
