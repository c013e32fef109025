"""Every dataset family through the stages, on data built here in the published format.

No machine here can download CIFAR, ImageNet-LT or EGTEA, so each test writes a tiny copy in the
exact published layout (CIFAR's pickled tarball, classifier-balancing list files over JPEGs, MP4
clips in EGTEA's layout) and runs ``download`` through ``evaluate`` on it, at tiny settings on the
CPU. The stages run in-process (their ``main``: conftest.run_stages); tests/test_video_dvc.py runs
a video dataset's stages as DVC runs them.
"""

import json
from pathlib import Path

import pytest
from conftest import STAGES, Repo, git_init, run_stages
from fakes import make_cifar_archive, make_image_tree, make_list_files

ONE_EPOCH = {
    "pretrain": {"epochs": 1, "batch_size": 32},
    "finetune": {"epochs": 1, "batch_size": 32},
}


def run_all(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> dict:
    run_stages(repo, STAGES, monkeypatch)
    return json.loads((repo.root / "metrics/evaluate.json").read_text())


def test_cifar100_from_a_local_archive(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "cifar-100-python.tar.gz"
    md5 = make_cifar_archive(archive, kind="cifar100", train_per_class=12, test_per_class=2)
    git_init(repo)
    repo.params(
        {
            **ONE_EPOCH,
            "data": {
                "name": "cifar100",
                "archive": str(archive),
                "md5": md5,
                "imbalance": 10,
                "n_max": 10,
                "val_per_class": 2,
            },
            "loss": {"name": "cdb_ce"},
        }
    )
    result = run_all(repo, monkeypatch)
    counts = json.loads((repo.root / "data/prepared/class_counts.json").read_text())
    assert counts["train"] == [int(10 * 0.1 ** (c / 99)) for c in range(100)]
    assert counts["test"] == [2] * 100
    assert result["num_samples"] == 200 and result["num_classes"] == 100


def test_imagenet_lt_list_files_at_32px(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "imagenet"
    classes = ["n01", "n02", "n03"]
    paths = make_image_tree(root, classes, per_class=[9, 5, 3], size=(36, 40))
    rows = [(p, c) for c, name in enumerate(classes) for p in paths[name]]
    lists = make_list_files(
        tmp_path / "lists",
        {
            "train": rows[:6] + rows[9:12] + rows[14:15],
            "val": rows[6:7] + rows[12:13] + rows[15:16],
            "test": rows[7:9] + rows[13:14] + rows[16:17],
        },
    )
    git_init(repo)
    repo.params(
        {
            **ONE_EPOCH,
            "data": {
                "name": "imagenet_lt",
                "root": str(root),
                "image_size": 32,
                "workers": 0,
                "lists": {k: str(v) for k, v in lists.items()},
            },
            "model": {"arch": "resnet10"},
            "loss": {"name": "balanced_softmax"},
        }
    )
    result = run_all(repo, monkeypatch)
    assert result["num_samples"] == 4 and result["num_classes"] == 3


def test_moving_digits_video_pipeline(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    git_init(repo)
    repo.params(
        {
            **ONE_EPOCH,
            "data": {"name": "moving_digits", "imbalance": 5, "n_max": 6, "test_per_class": 2},
            "frames": {"segments": 4, "workers": 1},
            "loss": {"name": "fbl"},
        }
    )
    result = run_all(repo, monkeypatch)
    manifest = json.loads((repo.root / "data/frames/manifest.json").read_text())
    assert manifest["kind"] == "video" and manifest["clips"] > 0
    assert result["num_classes"] == 10 and result["num_samples"] == 20
