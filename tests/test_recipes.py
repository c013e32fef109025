"""docs/recipes.md: every `dvc exp run` command parses and validates, as DVC would apply it.

Each command's ``-S`` overrides go through DVC's own code (``to_path_overrides``, then
``apply_overrides``: Hydra's override grammar on a copy of ``params.yaml``, where a key absent from
the file needs ``+`` or ``++`` and ``[160,180]`` is a list), the file is read back as the stages
read it (YAML 1.1, so ``1e-05`` is a string) and validated by ``longtail.config.load``. A Hydra
sweep (``seed=0,1,2``) is expanded as ``dvc exp run --queue`` expands it. No data, no training.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from dvc.exceptions import InvalidArgumentError
from dvc.utils.cli_parse import to_path_overrides
from dvc.utils.hydra import apply_overrides, get_hydra_sweeps

from longtail.config import Config, ConfigError, load

RECIPES = REPO / "docs" / "recipes.md"
COMMAND = re.compile(r"dvc exp run [^`\n]*")
FLAGS = {"--queue", "--temp", "-f", "--force"}  # `dvc exp run` flags a recipe may carry
NAMED = {"-n", "--name"}  # flags followed by a value
# Params keys recipes need that longtail.config does not accept yet: key -> why.
MISSING: dict[str, str] = {}
VAL_DATASETS = ("cifar10", "cifar100", "digits")  # datasets whose val split is data.val_per_class


def commands() -> list[str]:
    """Every `dvc exp run` command in docs/recipes.md, in order."""
    return COMMAND.findall(RECIPES.read_text())


def overrides(command: str) -> list[str]:
    """The ``-S`` values of a command line (shell quoting removed)."""
    words = shlex.split(command)
    assert words[:3] == ["dvc", "exp", "run"], command
    sets, rest = [], iter(words[3:])
    for word in rest:
        if word in ("-S", "--set-param"):
            sets.append(next(rest))
        elif word in NAMED:
            next(rest)
        else:
            assert word in FLAGS, f"unexpected argument {word!r} in: {command}"
    return sets


def apply(sets: list[str], folder: Path) -> list[Path]:
    """Apply the overrides to fresh copies of params.yaml, one per sweep combination."""
    by_file = to_path_overrides(sets)
    assert list(by_file) == ["params.yaml"], by_file
    paths = []
    for i, combination in enumerate(get_hydra_sweeps(by_file)):
        path = folder / str(i) / "params.yaml"
        path.parent.mkdir(parents=True)
        shutil.copy(REPO / "params.yaml", path)
        apply_overrides(path, combination["params.yaml"])
        paths.append(path)
    return paths


def key_of(override: str) -> str:
    return override.partition("=")[0].lstrip("+")


def check_needs(config: Config) -> None:
    """What the config layer cannot see: CDB-CE and the BALMS meta sampler need a val split."""
    meta_on_val = config.finetune.sampler == "meta" and config.finetune.meta_source == "val"
    uses_val = config.pretrain.loss.name == "cdb_ce" or meta_on_val
    uses_val |= config.finetune.mode != "none" and config.loss.name == "cdb_ce"
    if uses_val and config.data.name in VAL_DATASETS:
        assert config.data.val_per_class, "CDB-CE / the meta sampler need data.val_per_class > 0"


def test_every_paper_has_recipes() -> None:
    text = RECIPES.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    counts = {s.splitlines()[0]: len(COMMAND.findall(s)) for s in sections}
    for paper in ("CDB-CE", "Balanced Softmax and BALMS", "FBL", "Baseline: LDAM-DRW"):
        (title,) = [t for t in counts if t.startswith(paper)]
        assert counts[title] >= 2, (title, counts[title])
    assert len(commands()) == sum(counts.values()) >= 25


def recipe_id(index: int, command: str) -> str:
    """A readable test id: position, dataset, the two losses and the finetune mode."""
    values = dict(s.lstrip("+").partition("=")[::2] for s in overrides(command))
    parts = ("data.name", "pretrain.loss.name", "finetune.mode", "loss.name", "finetune.sampler")
    return "-".join([f"{index:02d}", *(values[k] for k in parts if k in values)])


@pytest.mark.parametrize(
    "command", [pytest.param(c, id=recipe_id(i, c)) for i, c in enumerate(commands())]
)
def test_recipe_parses_and_validates(command: str, tmp_path: Path) -> None:
    sets = overrides(command)
    missing = sorted({key_of(s) for s in sets} & set(MISSING))
    kept = [s for s in sets if key_of(s) not in MISSING]
    for path in apply(kept, tmp_path / "kept"):
        check_needs(load(path))
    if missing:
        # The recipe is marked as waiting for these keys: they must still be refused, so that
        # this skip is removed as soon as the config accepts them.
        for path in apply(sets, tmp_path / "all"):
            with pytest.raises(ConfigError, match=rf"{re.escape(missing[0])}: unknown key"):
                load(path)
        pytest.skip(f"needs params key {missing[0]}: {MISSING[missing[0]]}")


def test_the_checker_applies_overrides_as_dvc_does(tmp_path: Path) -> None:
    # A key that params.yaml does not list is refused without ++, as `dvc exp run -S` refuses it.
    with pytest.raises(InvalidArgumentError):
        apply(["pretrain.no_such_key=1.5"], tmp_path / "plain")
    (path,) = apply(
        [
            "++pretrain.loss.tau=1.5",
            "pretrain.weight_decay=1e-05",
            "pretrain.milestones=[160,180]",
            "data.val_per_class=null",
        ],
        tmp_path / "ok",
    )
    raw = yaml.safe_load(path.read_text())
    assert raw["pretrain"]["weight_decay"] == "1e-05"  # YAML 1.1 reads it as a string
    assert raw["pretrain"]["milestones"] == [160, 180]
    config = load(path)
    assert config.pretrain.optim.weight_decay == 1e-5
    assert config.pretrain.optim.milestones == (160, 180)
    assert config.pretrain.loss.options["tau"] == 1.5
    assert config.data.val_per_class is None
    seeds = apply(["seed=0,1,2"], tmp_path / "sweep")
    assert [load(p).seed for p in seeds] == [0, 1, 2]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pretrain.schedule=multistep", "pretrain.schedule: expected one of cosine, step"),
        ("++pretrain.loss.lambda=60", "pretrain.loss.lambda: unknown key"),
        ("pretrain.loss.name=feature_balanced", "pretrain.loss.name: expected one of ce"),
    ],
)
def test_the_checker_catches_bad_recipes(override: str, message: str, tmp_path: Path) -> None:
    (path,) = apply([override], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(path)


def test_a_cdb_recipe_without_val_is_caught(tmp_path: Path) -> None:
    sets = ["data.name=cifar100", "pretrain.loss.name=cdb_ce", "data.val_per_class=null"]
    (path,) = apply(sets, tmp_path)
    with pytest.raises(AssertionError, match=re.escape("need data.val_per_class > 0")):
        check_needs(load(path))
