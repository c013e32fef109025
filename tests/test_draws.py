"""``data.draws``: one long-tailed draw for all phases (``shared``) or one each (``per_phase``).

BALMS's CIFAR code (jiawei-ren/BalancedMetaSoftmax-Classification ``data/ImbalanceCIFAR.py``,
``gen_imbalanced_data``) never seeds NumPy, so each ``IMBALANCECIFAR10(phase='train')`` shuffles
each class's indices afresh and keeps the first n_c: the backbone run, the decoupled run and its
meta set (``main.py``) each train on their own subset. ``per_phase`` makes those draws with seeds
from ``data.seed`` and the phase. The reference rule is written out here as LDAM-DRW / BALMS write
it and compared, as sets of ``source_index``, with the files ``inject_imbalance`` writes.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DATA_STAGES, Repo, run_stages
from fakes import downloaded_cifar
from test_decouple import COUNTS, images, make_job, pretrained
from test_decouple import run as run_mode
from trainers import plan_loop

from longtail import meta
from longtail.config import ConfigError, DataConfig
from longtail.config import parse as parse_params
from longtail.data import cifar, digits, imbalance
from longtail.meta import MetaSource

IF = 10


@pytest.fixture(scope="module")
def raws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Downloaded CIFAR-10 (60 per class) and CIFAR-100 (12 per class) fakes."""
    return downloaded_cifar(tmp_path_factory.mktemp("draws"), test_per_class=2)


def train_labels(raw: Path) -> np.ndarray:
    """CIFAR-10 training labels in file order, read with plain pickle."""
    labels = []
    for i in range(1, 6):
        with open(raw / f"cifar-10-batches-py/data_batch_{i}", "rb") as f:
            labels += pickle.load(f, encoding="bytes")[b"labels"]
    return np.array(labels, dtype=np.int64)


def balms_draw(labels: np.ndarray, imb_factor: float, seed: int) -> set[int]:
    """One ``IMBALANCECIFAR10(phase='train')``: per class, shuffle its indices with the legacy
    global RNG (here seeded with the phase's seed) and keep the first n_c."""
    cls_num = int(labels.max()) + 1
    img_max = len(labels) / cls_num
    img_num = [int(img_max * ((1.0 / imb_factor) ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        kept = []
        for the_class, the_img_num in zip(np.unique(labels), img_num, strict=True):
            idx = np.where(labels == the_class)[0]
            np.random.shuffle(idx)
            kept.append(idx[:the_img_num])
    finally:
        np.random.set_state(state)
    return set(np.concatenate(kept).tolist())


def split(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / f"{name}.csv")


def indices(out: Path, name: str) -> set[int]:
    return set(split(out, name)["source_index"].tolist())


def test_phase_seeds_and_splits() -> None:
    assert imbalance.phase_seed(3, "pretrain") == 3
    seeds = {imbalance.phase_seed(3, p) for p in imbalance.PHASES}
    assert len(seeds) == 3  # three different draws
    assert imbalance.phase_seed(3, "meta") == imbalance.phase_seed(3, "meta")  # reproducible
    assert imbalance.phase_seed(3, "meta") != imbalance.phase_seed(4, "meta")
    assert [imbalance.phase_split("per_phase", p) for p in imbalance.PHASES] == [
        "train",
        "train_finetune",
        "train_meta",
    ]
    assert {imbalance.phase_split("shared", p) for p in imbalance.PHASES} == {"train"}
    with pytest.raises(ValueError, match=r"data\.draws: expected one of shared, per_phase"):
        imbalance.phase_split("often", "meta")


def test_cifar_per_phase_draws_are_balms_draws(raws: dict[str, Path], tmp_path: Path) -> None:
    raw = raws["cifar10"]
    labels = train_labels(raw)
    shared, per_phase = tmp_path / "shared", tmp_path / "per_phase"
    cifar.prepare(DataConfig(name="cifar10", imbalance=IF), 0, raw, shared)
    cifar.prepare(DataConfig(name="cifar10", imbalance=IF, draws="per_phase"), 0, raw, per_phase)
    # shared is today's output: one draw, no other training split
    assert not (shared / "train_finetune.csv").exists()
    assert json.loads((shared / "dataset.json").read_text())["draws"]["mode"] == "shared"
    # pretrain keeps the shared draw; val and test are untouched
    for name in ("train", "val", "test"):
        assert split(per_phase, name).equals(split(shared, name))
        assert np.array_equal(
            np.load(per_phase / f"{name}_images.npy"), np.load(shared / f"{name}_images.npy")
        )
    draws = {p: indices(per_phase, imbalance.phase_split("per_phase", p)) for p in imbalance.PHASES}
    images, _ = cifar.read_split(raw / "cifar-10-batches-py", "cifar10", "train")
    want = [int(60 * 0.1 ** (c / 9)) for c in range(10)]
    for phase, drawn in draws.items():
        assert drawn == balms_draw(labels, IF, imbalance.phase_seed(0, phase))
        name = imbalance.phase_split("per_phase", phase)
        frame = split(per_phase, name)
        assert np.bincount(frame["label"], minlength=10).tolist() == want
        assert np.array_equal(frame["label"], labels[frame["source_index"]])
        assert np.array_equal(
            np.load(per_phase / f"{name}_images.npy"), images[frame["source_index"]]
        )
    # every two draws differ, but share the head class's images (all 60 are drawn)
    assert len({frozenset(d) for d in draws.values()}) == 3
    info = json.loads((per_phase / "dataset.json").read_text())["draws"]
    assert info["splits"] == {
        "pretrain": "train",
        "finetune": "train_finetune",
        "meta": "train_meta",
    }
    shared_images = info["images_shared_with_pretrain"]
    assert shared_images["pretrain"] == sum(want)
    assert shared_images["finetune"] == len(draws["finetune"] & draws["pretrain"]) < sum(want)


def test_cifar_per_phase_draws_leave_val_alone(raws: dict[str, Path], tmp_path: Path) -> None:
    cfg = DataConfig(name="cifar100", imbalance=5, val_per_class=2, draws="per_phase")
    cifar.prepare(cfg, 1, raws["cifar100"], tmp_path)
    val = indices(tmp_path, "val")
    want = [int(10 * 0.2 ** (c / 99)) for c in range(100)]  # n_max 12 - 2
    for name in ("train", "train_finetune", "train_meta"):
        frame = split(tmp_path, name)
        assert not set(frame["source_index"]) & val
        assert np.bincount(frame["label"], minlength=100).tolist() == want
    assert indices(tmp_path, "train_finetune") != indices(tmp_path, "train")


def test_digits_per_phase_draws_from_the_pool_left_after_the_hold_outs(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    digits.download(DataConfig(), raw)
    shared, per_phase = tmp_path / "shared", tmp_path / "per_phase"
    digits.prepare(DataConfig(), 0, raw, shared)
    digits.prepare(DataConfig(draws="per_phase"), 0, raw, per_phase)
    held = indices(shared, "val") | indices(shared, "test")
    for name in ("train", "val", "test"):
        assert split(per_phase, name).equals(split(shared, name))
    counts = np.bincount(split(shared, "train")["label"], minlength=10).tolist()
    draws = [indices(per_phase, n) for n in ("train", "train_finetune", "train_meta")]
    for name, drawn in zip(("train", "train_finetune", "train_meta"), draws, strict=True):
        assert not drawn & held
        assert np.bincount(split(per_phase, name)["label"], minlength=10).tolist() == counts
    assert len({frozenset(d) for d in draws}) == 3
    again = tmp_path / "again"
    digits.prepare(DataConfig(draws="per_phase"), 0, raw, again)
    assert split(again, "train_meta").equals(split(per_phase, "train_meta"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "imagenet_lt"}, "data.draws: expected shared for imagenet_lt (its training"),
        ({"name": "egtea"}, "data.draws: expected shared for egtea"),
        (
            {"name": "cifar100", "subset": "cdb"},
            "data.draws: expected shared with data.subset: cdb",
        ),
    ],
)
def test_per_phase_is_refused_where_there_is_no_draw(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_params({"data": {**data, "draws": "per_phase"}}, training=False)


def test_meta_set_from_train_is_the_meta_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``data.draws: per_phase`` the loop trains on finetune's own draw and BALMS's meta
    batches come from the meta draw's frozen features; the shared ``train`` split is not read."""
    train_draw, meta_draw = images(COUNTS, 1), images(COUNTS, 9)
    recorded: list[tuple[object, torch.Tensor]] = []
    real = meta._one_batch

    def recording(src, idx, *, train, generator):
        recorded.append((src, idx.clone()))
        return real(src, idx, train=train, generator=generator)

    monkeypatch.setattr(meta, "_one_batch", recording)
    cfg = parse_params(
        {
            "data": {"draws": "per_phase"},
            "loss": {"name": "balanced_softmax"},
            "finetune": {
                **{"epochs": 2, "batch_size": 8, "lr": 0.1, "mode": "classifier"},
                **{"sampler": "meta", "meta_batch_size": 6, "meta_source": "train"},
            },
        }
    )
    job, calls = make_job(pretrained(), cfg)
    splits = _Recording(
        {"train_finetune": train_draw, "train_meta": meta_draw, "val": images([4] * 3, 2)}
    )
    job.loop = plan_loop(cfg, None, None, COUNTS, calls, splits=splits)
    run_mode("classifier", job)
    assert "train" not in splits.opened and {"train_finetune", "train_meta"} <= set(splits.opened)
    source = calls[0]["trainer"].train_source
    assert isinstance(source, MetaSource)
    assert source.meta is not source.train
    assert source.meta.source is meta_draw and source.meta.labels is meta_draw.labels
    assert source.train.source is train_draw
    metas = [src for i, (src, _) in enumerate(recorded) if i % 2 == 1]
    assert metas and all(src is source.meta for src in metas)
    # its features are those of the meta draw's images, not the cached training features
    feats, labels = source.meta.cached(torch.Generator())
    want = torch.cat(
        [
            source.meta.features(x)
            for x, _ in meta_draw.batches(
                torch.arange(len(meta_draw)), 64, train=False, generator=torch.Generator()
            )
        ]
    )
    assert torch.equal(labels, meta_draw.labels) and torch.equal(feats, want)


class _Recording(dict):
    """Sources by split name that remember which splits were opened."""

    def __init__(self, splits: dict[str, object]) -> None:
        super().__init__(splits)
        self.opened: list[str] = []

    def __getitem__(self, name: str) -> object:
        self.opened.append(name)
        return super().__getitem__(name)


def test_balms_per_phase_runs_end_to_end_on_digits(
    repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.params(
        {
            "data": {"draws": "per_phase"},
            "finetune": {
                "mode": "classifier",
                "sampler": "meta",
                "meta_source": "train",
            },
            "loss": {"name": "balanced_softmax"},
        }
    )
    run_stages(repo, (*DATA_STAGES, "pretrain", "finetune"), monkeypatch)
    info = json.loads((repo.root / "data/prepared/dataset.json").read_text())["draws"]
    assert info["mode"] == "per_phase"
    assert (
        0
        < info["images_shared_with_pretrain"]["meta"]
        < info["images_shared_with_pretrain"]["pretrain"]
    )
    metrics = json.loads((repo.root / "metrics/finetune.json").read_text())
    assert (metrics["sampler"], metrics["loss"]) == ("meta", "balanced_softmax")
