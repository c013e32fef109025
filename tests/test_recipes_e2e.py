"""Every recipe of docs/recipes.md runs end to end, at tiny sizes, on data in the published formats.

Each row of ``tools/recipes/*.yaml`` (docs/recipes.md's source) runs its own params plus size and
epoch overrides only: at most one epoch per stage, small batches, no warmup, a few images per class
(``data.n_max``, ``data.imbalance``, ``data.val_per_class``, ``data.test_per_class`` scaled down so
that every class keeps an image), 32-pixel images, 2 frames per clip, and the data paths of the
fakes built here in the published layouts (CIFAR's python tarballs, ImageNet-LT / Places-LT /
iNaturalist list files over JPEGs, EGTEA's clips and split files); a ``model.weights`` path becomes
null (no ImageNet weights here), except for a row that starts from the weights without training
(``pretrain.mode: weights``), which gets a stand-in file: the row's network with BatchNorm
statistics measured on noise, so that its frozen eval-mode blocks stay finite. Everything else, the
method, the sampler, the finetune mode and its options, is the row's.

The stages run in-process (their ``main``: conftest.run_stages), in a copy of the repository per
dataset, whose data stages run once and are shared by the rows on that data;
``tests/test_reproduce.py`` runs the digits table through DVC as a user would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import DATA_STAGES, REPO, STAGES, TRACKED, Repo, copy_repo, run_stages
from fakes import make_cifar_archive, make_image_tree
from test_video import EGTEA_CLIPS, EGTEA_TEST, write_egtea
from test_video import TINY as TINY_VIDEO

from longtail.data import video
from tools import recipes

# Each row runs the stages in-process on fake data: seconds each, so end-to-end.
pytestmark = pytest.mark.e2e

ROWS = [(t, r) for t in recipes.TABLES for r in t.rows]
IMAGE_LISTS = {
    "imagenet_lt": {s: f"ImageNet_LT_{s}.txt" for s in ("train", "val", "test")},
    "places_lt": {s: f"Places_LT_{s}.txt" for s in ("train", "val", "test")},
    "inat2018": {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"},
}


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny datasets, built once for every row."""
    root = tmp_path_factory.mktemp("fakes")
    out: dict[str, Any] = {"root": root}
    for kind in ("cifar10", "cifar100"):
        path = root / f"{kind}.tar.gz"
        out[kind] = (path, make_cifar_archive(path, kind=kind, train_per_class=6, test_per_class=1))
    classes = ["c0", "c1", "c2"]
    images = make_image_tree(root / "images", classes, per_class=[8, 6, 5], size=(36, 40))
    rows = {s: [] for s in ("train", "val", "test")}
    for label, name in enumerate(classes):
        paths = images[name]
        rows["train"] += [(p, label) for p in paths[: len(paths) - 2]]
        rows["val"].append((paths[-2], label))
        rows["test"].append((paths[-1], label))
    for name, files in IMAGE_LISTS.items():
        for split, file in files.items():
            lines = rows[split] + (rows["val"] if name == "inat2018" and split == "train" else [])
            (root / "images" / file).write_text("".join(f"{p} {c}\n" for p, c in lines))
    out["images"] = root / "images"
    clips = root / "moving"
    video.download_moving_digits(TINY_VIDEO, clips)
    egtea = root / "EGTEA"
    source = clips / video.CLIPS_DIR
    write_egtea(egtea, source, EGTEA_CLIPS, egtea / "action_annotation" / video.TRAIN_LIST)
    write_egtea(egtea, source, EGTEA_TEST, egtea / "action_annotation" / video.TEST_LIST)
    (egtea / "action_annotation" / video.VERB_INDEX).write_text("Take 1\nPut 2\nInspect/Read 19\n")
    out["egtea"] = egtea
    return out


def stand_in_weights(arch: str, path: Path) -> Path:
    """A state dict of ``arch`` (1,000 classes, as ImageNet's) whose BatchNorm running statistics
    are the averages over two batches of noise (a random network's initial ones overflow a deep
    eval-mode ResNet)."""
    from longtail import nets

    if not path.exists():
        torch.manual_seed(0)
        model = nets.create(arch, 1000)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None  # a cumulative average
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(4, 3, 32, 32))
        torch.save(model.state_dict(), path)
    return path


def tiny(params: dict[str, Any], fakes: dict[str, Any]) -> dict[str, Any]:
    """The row's params with the size, epoch and path overrides only."""
    out = dict(params)
    for stage in ("pretrain", "finetune"):
        out[f"{stage}.epochs"] = 1
        out[f"{stage}.batch_size"] = 8
        out[f"{stage}.warmup_epochs"] = 0
    if out.get("finetune.meta_batch_size"):
        out["finetune.meta_batch_size"] = 6
    name = out.get("data.name", "digits")
    if name == "digits":  # 50 training images in the head class (1 in the tail), 3 val, 3 test
        out.update({"data.n_max": 50, "data.val_per_class": 3, "data.test_per_class": 3})
    elif name in ("cifar10", "cifar100"):
        archive, md5 = fakes[name]
        out.update({"data.archive": str(archive), "data.md5": md5, "data.n_max": 2})
        out["data.imbalance"] = 2
        if out.get("data.val_per_class"):
            out["data.val_per_class"] = 1
    elif name in IMAGE_LISTS:
        out.update({"data.root": str(fakes["images"]), "data.image_size": 32, "data.workers": 0})
    elif name == "egtea":
        out.update({"data.root": str(fakes["egtea"]), "frames.size": 32, "frames.segments": 2})
        out["frames.workers"] = 1
    if out.get("pretrain.mode") == "weights":
        out["model.weights"] = str(stand_in_weights(out["model.arch"], fakes["root"] / "w.pt"))
    elif out.get("model.weights"):
        # No ImageNet weights here. A randomly initialised ResNet-152 after one tiny epoch has
        # BatchNorm running statistics that overflow its features in eval mode (frozen backbone,
        # BALMS): such rows run the same code on ResNet-10 unless they name ResNet-152's blocks.
        # Video rows (3D networks, clip input) keep their network.
        out["model.weights"] = None
        if not out.get("finetune.train_blocks") and not out["model.arch"].endswith("_3d"):
            out["model.arch"] = "resnet10"
    out["train.log_every_epochs"] = 1
    return out


GROUPS: dict[str, Path] = {}  # data params -> a repository copy whose data stages have run


def workspace(params: dict[str, Any], base: Path) -> Path:
    """The repository copy for the row's data (data stages run on first use)."""
    data = {k: v for k, v in params.items() if k.split(".")[0] in ("data", "frames")}
    key = json.dumps(data, sort_keys=True, default=str)
    if key not in GROUPS:
        GROUPS[key] = copy_repo(REPO, base / f"data{len(GROUPS)}", TRACKED).root
    return GROUPS[key]


@pytest.mark.parametrize(
    ("table", "row"), [pytest.param(t, r, id=f"{t.key}/{r.key}") for t, r in ROWS]
)
def test_recipe_runs_end_to_end(
    table: recipes.Table,
    row: recipes.Row,
    fakes: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = tiny(table.row_params(row), fakes)
    root = workspace(params, tmp_path_factory.getbasetemp() / "recipes")
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(
        yaml.safe_dump(recipes.applied(defaults, params), sort_keys=False)
    )
    shutil.rmtree(root / "checkpoints", ignore_errors=True)
    data_done = (root / "data" / "frames").exists()  # by an earlier row on the same data
    run_stages(Repo(root), STAGES[len(DATA_STAGES) :] if data_done else STAGES, monkeypatch)
    result = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert 0.0 <= result["top1"] <= 100.0
    assert result["finetune_mode"] == params.get("finetune.mode", defaults["finetune"]["mode"])
