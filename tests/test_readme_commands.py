"""The dataset commands of docs/datasets.md run as printed: each one's params parse, and the data
it asks for has the splits its loss and finetune mode need (CDB-CE's difficulties and a val-sourced
BALMS meta set need a non-empty val split; ``inject_imbalance`` refuses a run without one, tested
here too).
The README's test command is the command ``.ci/run`` runs.

The ``-S`` overrides go through DVC's own code, as in ``test_recipes.py``. No data, no training.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO
from test_recipes import apply, overrides

from longtail.config import Config, load
from stages import common
from stages.inject_imbalance import check_val

README = REPO / "README.md"
DATASETS = REPO / "docs" / "datasets.md"


def dataset_commands() -> list[str]:
    """The ``dvc exp run`` lines of docs/datasets.md, continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", DATASETS.read_text())
    return [
        line.split("#")[0].strip() for line in joined.splitlines() if line.startswith("dvc exp run")
    ]


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text()
    block = text[text.index("Run the tests") :].split("```bash\n", 1)[1].split("\n```", 1)[0]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert block.startswith("python3 -m venv .venv && ") and "pytest" in block
    assert ci[-1] == block


def has_val(cfg: Config) -> bool:
    """Whether the prepared data of ``cfg`` holds a val split (each family's rule)."""
    name, data = cfg.data.name, cfg.data
    if name in ("cifar10", "cifar100"):
        return bool(data.val_per_class)
    if name == "digits":
        return data.val_per_class != 0  # null: 20 per class
    if name in ("imagenet_lt", "places_lt", "inat2018"):
        return data.lists.val is not None or bool(data.val_per_class)
    return True  # video: val held out by subject


def test_the_docs_print_the_dataset_commands() -> None:
    commands = dataset_commands()
    names = {re.search(r"data\.name=(\w+)", c).group(1) for c in commands}
    assert {"cifar100", "imagenet_lt", "moving_digits", "egtea"} <= names
    assert any("data.subset=cdb" in c and "data.val_per_class=25" in c for c in commands)


@pytest.mark.parametrize("command", dataset_commands())
def test_dataset_command_params_are_complete(command: str, tmp_path: Path) -> None:
    (path,) = apply(overrides(command), tmp_path)
    cfg = load(path)
    needs = common.val_needed_by(cfg)
    assert has_val(cfg) or not needs, f"{command}: {needs} need a val split"


def test_the_cifar_default_loss_without_val_is_refused_before_training() -> None:
    cfg = load(REPO / "params.yaml")
    cfg = Config(**{**cfg.__dict__, "data": type(cfg.data)(name="cifar100", imbalance=100)})
    assert common.val_needed_by(cfg) == ["loss.name: cdb_ce"]
    with pytest.raises(
        ValueError, match=r"data.val_per_class: loss.name: cdb_ce needs a val split"
    ):
        check_val(cfg, 0)
    check_val(cfg, 2500)  # 25 per class held out: fine


def test_balms_cifar_needs_no_val(tmp_path: Path) -> None:
    sets = ["finetune.mode=classifier", "finetune.sampler=meta", "loss.name=balanced_softmax"]
    (val,) = apply([*sets, "data.name=cifar100"], tmp_path / "val")
    (train,) = apply([*sets, "data.name=cifar100", "finetune.meta_source=train"], tmp_path / "t")
    assert common.val_needed_by(load(val)) == ["finetune.meta_source: val"]
    assert common.val_needed_by(load(train)) == []
