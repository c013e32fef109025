"""The recipe registry (tools/recipes/*.yaml, loaded by tools/recipes.py): it parses, every row
validates, docs/recipes.md agrees, and the loader refuses malformed files.

Each row's params go through DVC's own override code (``to_path_overrides``, then
``apply_overrides``: Hydra's grammar on a copy of ``params.yaml``, where a key absent from the file
needs ``+``/``++`` and ``[160,180]`` is a list), the file is read back as the stages read it and
validated by ``longtail.config.load``, as ``tools/reproduce.py`` does before it queues anything.
No data, no training (``tests/test_recipes_e2e.py`` runs them).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from dvc.exceptions import InvalidArgumentError
from dvc.utils.cli_parse import to_path_overrides
from dvc.utils.hydra import get_hydra_sweeps

from longtail.config import Config, ConfigError, load
from stages import common
from tools import recipes, reproduce

VAL_DATASETS = ("cifar10", "cifar100")  # no val split unless data.val_per_class (digits: 20)
ROWS = [(t, r) for t in recipes.TABLES for r in t.rows]


def apply_one(sets: list[str], folder: Path) -> Path:
    return reproduce.apply(REPO / "params.yaml", sets, folder)


def overrides(command: str) -> list[str]:
    """The ``-S`` values of a ``dvc exp run`` command line (shell quoting removed)."""
    words = shlex.split(command)
    assert words[:3] == ["dvc", "exp", "run"], command
    return [words[k + 1] for k, w in enumerate(words) if w in ("-S", "--set-param")]


def apply(sets: list[str], folder: Path) -> list[Path]:
    """Apply overrides to copies of params.yaml, one per Hydra sweep combination (``seed=0,1``)."""
    by_file = to_path_overrides(sets)
    return [
        apply_one(combination["params.yaml"], folder / str(i))
        for i, combination in enumerate(get_hydra_sweeps(by_file))
    ]


def check_needs(config: Config) -> None:
    """What the config layer cannot see: the params that need a val split have one."""
    needs = common.val_needed_by(config)
    if needs and config.data.name in VAL_DATASETS:
        assert config.data.val_per_class, f"{needs} need data.val_per_class > 0"


def test_the_registry_parses() -> None:
    keys = [t.key for t in recipes.TABLES]
    assert len(keys) == len(set(keys))
    for t in recipes.TABLES:
        assert t.rows and len({r.key for r in t.rows}) == len(t.rows), t.key
        for row in t.rows:
            assert row.source or t.source, (t.key, row.key)
            assert all(d.strip() and "\n" not in d for d in row.deviations), (t.key, row.key)
            for p in row.published:
                assert p.source in recipes.SOURCES, (t.key, row.key, p.source)
                values = [p.get(m) for m in recipes.METRICS]
                assert any(v is not None for v in values), (t.key, row.key)
                assert all(v is None or 0.0 <= v <= 100.0 for v in values), (t.key, row.key)
    # The papers' own tables and the baselines they compare with, as the issue lists them.
    for key in (
        "cdb-cifar100",
        "cdb-imagenet-lt",
        "cdb-egtea",
        "balms-cifar10-if200",
        "balms-cifar100-if200",
        "balms-imagenet-lt",
        "balms-places-lt",
        "fbl-cifar-lt",
        "fbl-imagenet-lt",
        "fbl-inat2018",
        "fbl-places-lt",
        "ldam-drw-cifar",
        "kang-imagenet-lt-resnext50",
        "kang-imagenet-lt-resnet10",
        "kang-places-lt-resnet152",
        "digits",
    ):
        assert recipes.table(key).key == key
    with pytest.raises(KeyError, match="expected a table in cdb-cifar100, "):
        recipes.table("nope")


def test_docs_recipes_md_and_the_readme_tables_are_the_generated_text() -> None:
    assert recipes.DOC.read_text() == recipes.render(), (
        "docs/recipes.md is stale: run `python -m tools.recipes --write`"
    )
    text = recipes.README.read_text()
    assert recipes.readme(text) == text, "README.md is stale: run `python -m tools.recipes --write`"
    assert recipes.main(["--check"]) == 0
    assert "| `ce` | CE | 84.78 ± 2.78 | 100.00 ± 0.00 | 98.06 ± 0.96 | 71.11 ± 5.05 |" in text


def test_a_stale_document_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "recipes.md"
    stale.write_text(recipes.render().replace("82.20", "82.30"))
    monkeypatch.setattr(recipes, "DOC", stale)
    assert recipes.main(["--check"]) == 1
    with pytest.raises(ValueError, match=r"README\.md: expected the markers"):
        recipes.readme("# a README without the generated block\n")


@pytest.mark.parametrize(
    ("table", "row"), [pytest.param(t, r, id=f"{t.key}/{r.key}") for t, r in ROWS]
)
def test_row_params_validate(table: recipes.Table, row: recipes.Row, tmp_path: Path) -> None:
    sets = recipes.overrides(table.row_params(row))
    check_needs(load(apply_one([*sets, "seed=0"], tmp_path)))


def test_every_documented_command_is_its_rows_params() -> None:
    text = recipes.DOC.read_text()
    commands = re.findall(r"^dvc exp run .*$", text, flags=re.M)
    assert len(commands) == len(ROWS)
    for command, (table, row) in zip(commands, ROWS, strict=True):
        words = shlex.split(command)
        assert words[:3] == ["dvc", "exp", "run"] and words[3::2] == ["-S"] * (len(words) // 2 - 1)
        assert words[4::2] == recipes.overrides(table.row_params(row)), (table.key, row.key)


def test_validation_reports_every_bad_row_before_queueing() -> None:
    bad = recipes.Table(
        key="bad",
        title="bad",
        paper="none",
        source="none",
        protocol="none",
        params={},
        rows=(
            recipes.Row("a", "a", {"pretrain.schedule": "multistep"}),
            recipes.Row("b", "b", {"loss.name": "ce"}),
            recipes.Row("c", "c", {"pretrain.loss.name": "feature_balanced"}),
            recipes.Row("d", "d", {"data.name": "cifar100", "pretrain.loss.name": "cdb_ce"}),
        ),
    )
    with pytest.raises(reproduce.ReproduceError) as err:
        reproduce.jobs(bad, bad.rows, [0, 1], [], REPO / "params.yaml")
    message = str(err.value)
    assert "bad/a (seed 0): pretrain.schedule: expected one of cosine, step" in message
    assert "bad/c (seed 0): pretrain.loss.name: expected one of ce" in message
    assert "bad/d (seed 0): data.val_per_class: pretrain.loss.name: cdb_ce" in message
    assert "bad/b" not in message


def test_the_checker_applies_overrides_as_dvc_does(tmp_path: Path) -> None:
    # A key that params.yaml does not list is refused without ++, as `dvc exp run -S` refuses it.
    with pytest.raises(InvalidArgumentError):
        apply_one(["pretrain.no_such_key=1.5"], tmp_path / "plain")
    path = apply_one(
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


def test_overrides_add_plus_plus_only_for_unlisted_keys() -> None:
    base = {"loss": {"name": "ce"}, "data": {"lists": {"train": None}}}
    params = {"loss.name": "fbl", "loss.lam": 60, "data.lists.train": None, "x.y": [1, 2]}
    assert recipes.overrides(params, base) == [
        "loss.name=fbl",
        "++loss.lam=60",
        "data.lists.train=null",
        "++x.y=[1,2]",
    ]
    assert recipes.command({"a.b": [160, 210], "c": True}, {"c": 1}) == (
        "dvc exp run -S '++a.b=[160,210]' -S c=true"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pretrain.schedule=multistep", "pretrain.schedule: expected one of cosine, step"),
        ("++pretrain.loss.lambda=60", "pretrain.loss.lambda: unknown key"),
        ("pretrain.loss.name=feature_balanced", "pretrain.loss.name: expected one of ce"),
    ],
)
def test_the_checker_catches_bad_recipes(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(apply_one([override], tmp_path))


def test_a_cdb_recipe_without_val_is_caught(tmp_path: Path) -> None:
    sets = ["data.name=cifar100", "pretrain.loss.name=cdb_ce", "data.val_per_class=null"]
    with pytest.raises(AssertionError, match=re.escape("need data.val_per_class > 0")):
        check_needs(load(apply_one(sets, tmp_path)))
    assert [load(p).seed for p in apply(["seed=0,1,2"], tmp_path / "sweep")] == [0, 1, 2]


SHARED = """
tables: [t]
sources: {s: a source}
fragments:
  opt:
    loss.name: required
    finetune:
      mode: classifier
      sgd: {epochs: required, batch_size: 8, lr: 0.1, weight_decay: 0.0, schedule: cosine,
            lr_update: epoch}
lines: {shared: a shared line.}
"""
BASE = """
paper: p
params: {data: {name: cifar10, seed: 0}}
deviations: [base line.]
rows:
  - {key: a, method: A, uses: [opt], params: {loss.name: ce, finetune.epochs: required}}
"""
TABLE = """
extends: _b
title: T
source: S
protocol: P.
params: {data.seed: 1, model.arch: resnet32}
rows:
  - key: a
    params: {finetune: {epochs: 3}}
    published: [{source: s, top1: [50.0, 1.5], many: [60, 2], medium: [40, 0], few: [30, 3]}]
    deviations: [{see: shared}]
  - {key: b, method: B, params: {finetune.mode: none}}
"""


def write_recipes(folder: Path, shared: str = SHARED, base: str = BASE, table: str = TABLE) -> Path:
    folder.mkdir()
    (folder / "_shared.yaml").write_text(shared)
    (folder / "_b.yaml").write_text(base)
    (folder / "t.yaml").write_text(table)
    return folder


def test_the_loader_merges_bases_fragments_and_sgd_blocks(tmp_path: Path) -> None:
    sources, (t,) = recipes.load(write_recipes(tmp_path / "r"))
    assert sources == {"s": "a source"} and (t.key, t.title, t.paper) == ("t", "T", "p")
    assert list(t.params.items()) == [
        ("data.name", "cifar10"),
        ("data.seed", 1),
        ("model.arch", "resnet32"),
    ]
    a, b = t.rows
    assert list(a.params.items()) == [
        ("loss.name", "ce"),
        ("finetune.mode", "classifier"),
        ("finetune.epochs", 3),
        ("finetune.batch_size", 8),
        ("finetune.lr", 0.1),
        ("finetune.momentum", 0.9),
        ("finetune.nesterov", False),
        ("finetune.weight_decay", 0.0),
        ("finetune.schedule", "cosine"),
        ("finetune.milestones", []),
        ("finetune.lr_decay", 0.1),
        ("finetune.warmup_epochs", 0),
        ("finetune.lr_update", "epoch"),
    ]
    assert a.deviations == ("base line.", "a shared line.") and b.deviations == ("base line.",)
    assert a.reference.text("top1") == "50.00 ± 1.50" and a.reference.text("few") == "30.00 ± 3.00"
    assert dict(b.params) == {"finetune.mode": "none"} and b.published == ()


@pytest.mark.parametrize(
    ("where", "old", "new", "message"),
    [
        ("table", "title: T", "titel: T", "t.yaml: unknown key 'titel'; expected one of"),
        ("table", "- key: a\n", "- key: a\n    sauce: x\n", "unknown key 'sauce'; expected one"),
        ("table", "source: s, top1", "source: x, top1", "source 'x' is not one of ['s']"),
        ("table", "{see: shared}", "{see: other}", "unknown line 'other'; expected one of"),
        ("table", "finetune: {epochs: 3}", "finetune: {}", "expected values for ['finetune.epochs"),
        ("table", "many: [60, 2]", "many: 60", "every metric is [mean, std] or none is"),
        ("base", "uses: [opt]", "uses: [sgd]", "unknown fragment 'sgd'; expected one of ['opt']"),
        ("shared", "lr: 0.1,", "rate: 0.1,", "opt: finetune.sgd: unknown key 'rate'"),
        ("shared", "lr: 0.1,", "", "finetune.sgd: expected values for ['lr']"),
        ("shared", "lr_update: epoch", "", "finetune.sgd: expected values for ['lr_update']"),
        ("shared", "tables: [t]", "tables: []", "tables: expected ['t'] listed"),
        ("table", "extends: _b", "extends: _c", "expected the recipe file"),
    ],
)
def test_the_loader_refuses_bad_files(
    where: str, old: str, new: str, message: str, tmp_path: Path
) -> None:
    texts = {"shared": SHARED, "base": BASE, "table": TABLE}
    assert old in texts[where], old
    texts[where] = texts[where].replace(old, new, 1)
    with pytest.raises(recipes.RecipeError, match=re.escape(message)):
        recipes.load(write_recipes(tmp_path / "r", **texts))
