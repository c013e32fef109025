"""The papers' tables as data: every row's params, its published numbers and where they were read.

The tables live in ``tools/recipes/``, one YAML file per paper table (``<table>.yaml``), with named
keys: a row's ``params`` are ``params.yaml`` keys, nested or dotted (``pretrain: {epochs: 240,
lr: 0.1}``), and a stage's ``sgd:`` block lists its optimiser (every key always set, so that a
recipe never depends on params.yaml defaults). What tables share is written once:
``_shared.yaml`` holds the order of the tables, the sources of the published numbers
(``SOURCES``), named params fragments (``uses: [classifier]``) and named deviation lines
(``{see: places-base}``); a file ``_<base>.yaml`` holds rows and params that tables
``extends:`` (BALMS's two CIFAR tables, Kang et al.'s three). This module loads them and refuses
an unknown key (naming the valid ones), an unknown fragment, source or line, a value left
``required`` and a table file that ``_shared.yaml`` does not list.

The tables: CDB-CE (Sinha et al., ACCV 2020), Balanced Softmax / BALMS (Ren et al., NeurIPS
2020), FBL (Li et al., ICME 2022), the baselines they compare with (LDAM-DRW, Cao et al., NeurIPS
2019; cRT, τ-norm and LWS, Kang et al., ICLR 2020) and this project's own digits-LT tables. The
hyperparameters were read in the authors' repositories (hitachi-rd-cv/CDB-loss,
jiawei-ren/BalancedMetaSoftmax-Classification, juyongjiang/FBL, kaidic/LDAM-DRW,
facebookresearch/classifier-balancing); every published number names the source it was read in,
and a number that was not read anywhere is absent, never guessed. Every row states each remaining
difference from its reference in one line, with the reason.

``docs/recipes.md`` is generated from these files (``python -m tools.recipes --write``);
``tests/test_recipes.py`` fails when the two disagree and validates every row's params.
``python -m tools.reproduce TABLE`` runs a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "recipes.md"
METRICS = ("top1", "many", "medium", "few")


@dataclass(frozen=True)
class Published:
    """Numbers a source prints for one row (percent); ``None`` where that source gives none."""

    source: str
    top1: float | None = None
    many: float | None = None
    medium: float | None = None
    few: float | None = None
    note: str = ""
    std: tuple[float, ...] = ()  # sample std of top1, many, medium, few (measured tables)
    n: int | None = None  # runs behind a measured mean

    def get(self, metric: str) -> float | None:
        return getattr(self, metric)

    def text(self, metric: str) -> str:
        """``85.78`` or, with a std, ``85.78 ± 2.01``; ``–`` when absent."""
        value = self.get(metric)
        if value is None:
            return "–"
        if not self.std:
            return f"{value:.2f}"
        return f"{value:.2f} ± {self.std[METRICS.index(metric)]:.2f}"


@dataclass(frozen=True)
class Row:
    """One row: a method on a dataset, its params overrides, published numbers and deviations.

    ``params`` are dotted ``params.yaml`` keys on top of the table's shared ``params``.
    ``published`` lists what the sources print, the first being the one our runs are compared
    with. ``deviations`` are one line each: what differs from the reference and why.
    """

    key: str
    method: str
    params: Mapping[str, Any]
    published: tuple[Published, ...] = ()
    deviations: tuple[str, ...] = ()
    source: str = ""

    @property
    def reference(self) -> Published | None:
        return self.published[0] if self.published else None


@dataclass(frozen=True)
class Table:
    """A paper's table: shared params, rows, where it comes from and what it needs."""

    key: str
    title: str
    paper: str
    source: str
    protocol: str
    params: Mapping[str, Any]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    needs: str = ""  # the data a user must provide ("" when none)
    measured: str = ""  # for tables of this project's measured numbers: command, commit, machine

    def row_params(self, row: Row) -> dict[str, Any]:
        """The table's shared params with the row's on top."""
        return {**self.params, **row.params}

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(
            f"table {self.key}: expected a row in {[r.key for r in self.rows]}, got {key!r}"
        )


# ------------------------------------------------------------------------------------- loader
class RecipeError(ValueError):
    """A recipe file that does not follow the format; the message names the file and the key."""


RECIPES = Path(__file__).resolve().parent / "recipes"  # beside this module, copied with it
SHARED = RECIPES / "_shared.yaml"
REQUIRED = "required"  # a fragment's or base's value that every user must set
SGD_KEYS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule")
SGD_KEYS += ("milestones", "lr_decay", "warmup_epochs", "lr_update")
SGD_DEFAULTS = {"momentum": 0.9, "nesterov": False, "milestones": [], "lr_decay": 0.1}
SGD_DEFAULTS["warmup_epochs"] = 0
STAGES = ("pretrain", "finetune")
SHARED_FIELDS = ("tables", "sources", "fragments", "lines")
TABLE_FIELDS = ("extends", "title", "paper", "source", "protocol", "needs", "measured", "notes")
TABLE_FIELDS += ("uses", "params", "deviations", "rows")
TABLE_NEEDS = ("title", "paper", "source", "protocol", "rows")
ROW_FIELDS = ("key", "method", "source", "uses", "params", "published", "deviations")
PUBLISHED_FIELDS = ("source", *METRICS, "note", "n")


def _fields(data: Any, allowed: Sequence[str], where: str) -> dict[str, Any]:
    """``data`` as a mapping whose keys are all in ``allowed``."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r}; expected one of {list(allowed)}")
    return dict(data)


def _sgd(stage: str, values: Any, where: str) -> dict[str, Any]:
    """A stage's ``sgd:`` block: every optimiser key in a fixed order, so that a recipe never
    depends on params.yaml; momentum, nesterov, milestones, lr_decay and warmup_epochs default to
    SGD_DEFAULTS, the others (``lr_update`` included: each reference's own rule) are required."""
    if stage not in STAGES:
        raise RecipeError(f"{where}: `sgd` belongs under one of {list(STAGES)}, got {stage!r}")
    merged = {**SGD_DEFAULTS, **_fields(values, SGD_KEYS, f"{where}: {stage}.sgd")}
    missing = [k for k in SGD_KEYS if k not in merged]
    if missing:
        raise RecipeError(f"{where}: {stage}.sgd: expected values for {missing}")
    return {f"{stage}.{k}": merged[k] for k in SGD_KEYS}


def flatten(node: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """Nested or dotted params to dotted ``params.yaml`` keys, in the order written."""
    if not isinstance(node, Mapping):
        raise RecipeError(f"{where}: params: expected a mapping, got {type(node).__name__}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if not isinstance(key, str):
            raise RecipeError(f"{where}: params: expected a key name, got {key!r}")
        if key == "sgd":
            out.update(_sgd(prefix.rstrip("."), value, where))
        elif isinstance(value, Mapping):
            out.update(flatten(value, where, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@dataclass(frozen=True)
class Shared:
    """``tools/recipes/_shared.yaml``: table order, sources, params fragments, deviation lines."""

    tables: tuple[str, ...]
    sources: dict[str, str]
    fragments: dict[str, Any]
    lines: dict[str, str]

    def params(self, data: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The fragments named in ``uses`` merged in turn, then ``params`` on top."""
        uses = data.get("uses", [])
        if not isinstance(uses, list):
            raise RecipeError(f"{where}: uses: expected a list of fragment names, got {uses!r}")
        out: dict[str, Any] = {}
        for name in uses:
            if name not in self.fragments:
                raise RecipeError(
                    f"{where}: uses: unknown fragment {name!r}; expected one of "
                    f"{list(self.fragments)}"
                )
            out.update(flatten(self.fragments[name], f"{SHARED.name}: fragments.{name}"))
        out.update(flatten(data.get("params", {}), where))
        return out

    def deviations(self, items: Any, where: str) -> tuple[str, ...]:
        """One line per item: the text, or ``{see: name}`` for a shared line."""
        if not isinstance(items, list):
            raise RecipeError(f"{where}: deviations: expected a list, got {items!r}")
        out = []
        for item in items:
            if isinstance(item, Mapping):
                name = _fields(item, ("see",), f"{where}: deviations").get("see")
                if name not in self.lines:
                    raise RecipeError(
                        f"{where}: deviations: unknown line {name!r}; expected one of "
                        f"{list(self.lines)}"
                    )
                item = self.lines[name]
            if not isinstance(item, str) or not item.strip() or "\n" in item.strip():
                raise RecipeError(f"{where}: deviations: expected one line of text, got {item!r}")
            out.append(item.strip())
        return tuple(out)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise RecipeError(f"expected the recipe file {path}, which does not exist")
    return yaml.safe_load(path.read_text())


def load_shared(folder: Path = RECIPES) -> Shared:
    data = _fields(_read(folder / SHARED.name), SHARED_FIELDS, SHARED.name)
    return Shared(
        tuple(data.get("tables", [])),
        dict(data.get("sources", {})),
        dict(data.get("fragments", {})),
        dict(data.get("lines", {})),
    )


def _published(data: Any, sources: Mapping[str, str], where: str) -> Published:
    """A published entry; a measured metric is ``[mean, std]``."""
    fields = _fields(data, PUBLISHED_FIELDS, f"{where}: published")
    if fields.get("source") not in sources:
        raise RecipeError(
            f"{where}: published: source {fields.get('source')!r} is not one of {list(sources)}"
        )
    values = [fields.get(m) for m in METRICS]
    pairs = [isinstance(v, list) for v in values if v is not None]
    if any(pairs) and not all(pairs):
        raise RecipeError(f"{where}: published: every metric is [mean, std] or none is")
    if any(pairs):
        if any(len(v) != 2 for v in values if v is not None):
            raise RecipeError(f"{where}: published: expected [mean, std] pairs, got {values}")
        means = [None if v is None else v[0] for v in values]
        stds = tuple(None if v is None else v[1] for v in values)
    else:
        means, stds = values, ()
    return Published(
        fields["source"], *means, note=fields.get("note", ""), std=stds, n=fields.get("n")
    )


def _raw_table(name: str, folder: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A table file with its ``extends`` chain merged in: fields of the file override its base's,
    params and deviations add to them, rows merge by key (a row's params on its base row's)."""
    if name in seen:
        raise RecipeError(f"{name}.yaml: `extends` loops through {list(seen)}")
    data = _fields(_read(folder / f"{name}.yaml"), TABLE_FIELDS, f"{name}.yaml")
    rows = [_fields(r, ROW_FIELDS, f"{name}.yaml: rows") for r in data.get("rows", [])]
    data["rows"] = [{**r, "layers": [r]} for r in rows]
    data["layers"] = [data]
    base = data.pop("extends", None)
    if base is None:
        return data
    merged = _raw_table(base, folder, (*seen, name))
    for field in ("title", "paper", "source", "protocol", "needs", "measured", "notes"):
        if field in data:
            merged[field] = data[field]
    merged["layers"] = [*merged["layers"], data]
    by_key = {r.get("key"): r for r in merged["rows"]}
    for row in data["rows"]:
        if row.get("key") in by_key:
            old = by_key[row["key"]]
            old.update({k: v for k, v in row.items() if k in ("method", "source", "published")})
            old["layers"] = [*old["layers"], row]
        else:
            merged["rows"].append(row)
    return merged


def load_table(name: str, shared: Shared, folder: Path = RECIPES) -> Table:
    """One table file (``tools/recipes/<name>.yaml``), its bases resolved and validated."""
    raw = _raw_table(name, folder)
    where = f"{name}.yaml"
    missing = [f for f in TABLE_NEEDS if not raw.get(f)]
    if missing:
        raise RecipeError(f"{where}: expected the fields {missing}")
    params: dict[str, Any] = {}
    deviations: tuple[str, ...] = ()
    for layer in raw["layers"]:
        params.update(shared.params(layer, where))
        deviations += shared.deviations(layer.get("deviations", []), where)
    rows = []
    for r in raw["rows"]:
        at = f"{where}: row {r.get('key')!r}"
        if not r.get("key") or not r.get("method"):
            raise RecipeError(f"{at}: expected a key and a method (a row of no base)")
        row_params: dict[str, Any] = {}
        row_deviations = deviations
        for layer in r["layers"]:
            row_params.update(shared.params(layer, at))
            row_deviations += shared.deviations(layer.get("deviations", []), at)
        unset = [k for k, v in {**params, **row_params}.items() if v == REQUIRED]
        if unset:
            raise RecipeError(f"{at}: expected values for {unset} (marked `{REQUIRED}`)")
        published = tuple(_published(p, shared.sources, at) for p in r.get("published", []))
        rows.append(
            Row(r["key"], r["method"], row_params, published, row_deviations, r.get("source", ""))
        )
    return Table(
        key=name,
        title=raw["title"],
        paper=raw["paper"],
        source=raw["source"],
        protocol=raw["protocol"],
        params=params,
        rows=tuple(rows),
        notes=tuple(raw.get("notes", ())),
        needs=raw.get("needs", ""),
        measured=raw.get("measured", ""),
    )


def load(folder: Path = RECIPES) -> tuple[dict[str, str], tuple[Table, ...]]:
    """The sources and every table listed in ``_shared.yaml``, in that order.

    Raises:
        RecipeError: a file that is not listed, a listed file that is absent, an unknown key.
    """
    shared = load_shared(folder)
    files = sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))
    unlisted = [f for f in files if f not in shared.tables]
    if unlisted:
        raise RecipeError(f"{SHARED.name}: tables: expected {unlisted} listed (files in {folder})")
    return shared.sources, tuple(load_table(name, shared, folder) for name in shared.tables)


SOURCES, TABLES = load()


def table(key: str) -> Table:
    """The table named ``key``.

    Raises:
        KeyError: naming the valid keys.
    """
    for t in TABLES:
        if t.key == key:
            return t
    raise KeyError(f"expected a table in {', '.join(t.key for t in TABLES)}; got {key!r}")


# ------------------------------------------------------------------------------- dvc overrides
def yaml_value(value: Any) -> str:
    """A params value as ``dvc exp run -S`` takes it (Hydra grammar: null, true, [1,2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(yaml_value(v) for v in value) + "]"
    return str(value)


def _listed(params: Mapping[str, Any], key: str) -> bool:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def applied(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the parsed params.yaml ``base`` with the row's dotted keys set, as ``dvc exp run
    -S key=value`` writes them into params.yaml."""
    out = yaml.safe_load(yaml.safe_dump(dict(base)))
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def overrides(params: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> list[str]:
    """``key=value`` strings for ``dvc exp run -S``; ``++key`` for keys ``base`` does not list.

    DVC applies ``-S`` with Hydra's grammar, which refuses to add a key without ``+``/``++``.
    ``base`` is the parsed params.yaml (read from the checkout when not given).
    """
    if base is None:
        base = yaml.safe_load((REPO / "params.yaml").read_text())
    return [f"{'' if _listed(base, k) else '++'}{k}={yaml_value(v)}" for k, v in params.items()]


def command(params: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> str:
    """The ``dvc exp run`` line of a row, shell-quoted where a value needs it."""
    words = ["dvc exp run"]
    for item in overrides(params, base):
        words.append(f"-S '{item}'" if any(c in item for c in "[]{}() *?") else f"-S {item}")
    return " ".join(words)


# ------------------------------------------------------------------------------------ document
def published_text(p: Published) -> str:
    """``41.80 (many 50.30, medium 39.50, few 25.30)`` with the source key."""
    text = p.text("top1")
    if p.many is not None:
        text += f" (many {p.text('many')}, medium {p.text('medium')}, few {p.text('few')})"
    if p.n is not None:
        text += f", {p.n} runs"
    return f"{text} [{p.source}{'; ' + p.note if p.note else ''}]"


def render_table(t: Table, base: Mapping[str, Any]) -> list[str]:
    """The markdown section of one table."""
    lines = [f"## `{t.key}`: {t.title}", ""]
    lines += [f"Paper: {t.paper}. Read in: {t.source}.", ""]
    if t.needs:
        lines += [f"Needs: {t.needs}.", ""]
    lines += [t.protocol, "", f"`python -m tools.reproduce {t.key} --seeds 0,1,2`", ""]
    lines += ["| row | method | published top-1 | many | medium | few | source |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for row in t.rows:
        ref = row.reference or Published("")
        cells = [f"`{row.key}`", row.method, *(ref.text(m) for m in METRICS)]
        cells.append(ref.source or "no number read")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if t.measured:
        lines += [t.measured, ""]
    for note in t.notes:
        lines += [note, ""]
    for row in t.rows:
        lines += [f"### `{t.key}` / `{row.key}`: {row.method}", ""]
        lines += [f"From: {row.source or t.source}."]
        for p in row.published:
            lines.append(f"Published: {published_text(p)}.")
        if not row.published:
            lines.append("Published: no number read in a source.")
        lines += ["", "```", command(t.row_params(row), base), "```", ""]
        if row.deviations:
            lines += ["Deviations:", ""]
            lines += [f"- {d}" for d in row.deviations]
        else:
            lines += ["Deviations: none."]
        lines.append("")
    return lines


HEADER = """# Paper recipes

<!-- Generated by `python -m tools.recipes --write` from tools/recipes/*.yaml; edit those files. -->

Every table this project reproduces, row by row: the paper and table, the published numbers with
the source they were read in, the `dvc exp run` command that sets every hyperparameter the row
depends on, and each remaining difference from the reference in one line with its reason. The
hyperparameters were read in the authors' repositories (hitachi-rd-cv/CDB-loss,
jiawei-ren/BalancedMetaSoftmax-Classification, juyongjiang/FBL, kaidic/LDAM-DRW,
facebookresearch/classifier-balancing).

Run a whole table, seeds and comparison included (see the README, "Reproduce a paper's table"):

```
python -m tools.reproduce --list
python -m tools.reproduce balms-cifar100-if200 --seeds 0,1,2 --jobs 2 --report reports/
```

or one row with its command below. `python -m tools.recipes --explain TABLE[/ROW]` prints what a
row really runs, phase by phase, resolved from its params by the code the run uses: optimiser
steps, images drawn and draws of the rarest class, the LR at the end of warmup and at 25, 50, 75
and 100 % of each phase, BatchNorm mode, sampler, augmentation, normalisation, head, loss, the
selection rule and which split is read for what; `tests/test_steps.py` compares its step counts
with each reference's loop. `-S ++key=value` sets a key that `params.yaml` does not list
(DVC applies `-S` with Hydra's grammar, which refuses to add a key without `+`/`++`). Paths
(`data.root`, `model.weights`) are examples. What every recipe shares and the papers did not:
the network is never selected on test (FBL's and BALMS's CIFAR code keep the best *test* epoch).

Sources of the published numbers (an index's copy of a paper's table is named as such; error
rates there are printed here as 100 − error):

"""


README = REPO / "README.md"
README_BEGIN = (
    "<!-- The digits-LT tables below are generated from tools/recipes/digits*.yaml by "
    "`python -m tools.recipes --write`; edit those files. -->"
)
README_END = "<!-- End of the generated digits-LT tables. -->"


def render_results() -> str:
    """The README's digits-LT results: every ``digits*`` table, its rows and measured numbers."""
    lines = [README_BEGIN, ""]
    for t in TABLES:
        if not t.key.startswith("digits"):
            continue
        lines += [
            f"**{t.title}** (`python -m tools.reproduce {t.key} --seeds 0,1,2`). {t.protocol}"
        ]
        lines += ["", "| row | method | top-1 | many | medium | few |", "|---|---|---|---|---|---|"]
        for row in t.rows:
            ref = row.reference or Published("")
            lines.append(
                f"| `{row.key}` | {row.method} | " + " | ".join(ref.text(m) for m in METRICS) + " |"
            )
        lines += ["", *(f"{note}\n" for note in t.notes)]
    measured = {t.measured for t in TABLES if t.key.startswith("digits")}
    lines += [*sorted(measured), "", README_END]
    return "\n".join(lines)


def readme(text: str) -> str:
    """``text`` (the README) with its generated block replaced by :func:`render_results`."""
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"README.md: expected the markers {README_BEGIN!r} and {README_END!r}")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    return head + render_results() + tail


def render(base: Mapping[str, Any] | None = None) -> str:
    """The whole docs/recipes.md."""
    if base is None:
        base = yaml.safe_load((REPO / "params.yaml").read_text())
    lines = [HEADER.rstrip("\n"), ""]
    lines += [f"- `{key}`: {text}." for key, text in SOURCES.items()]
    lines.append("")
    for t in TABLES:
        lines += render_table(t, base)
    return "\n".join(lines).rstrip("\n") + "\n"


def as_json() -> list[dict[str, Any]]:
    """The registry as plain data (``--json``)."""
    return [
        {
            "key": t.key,
            "title": t.title,
            "paper": t.paper,
            "rows": [
                {
                    "key": r.key,
                    "method": r.method,
                    "params": t.row_params(r),
                    "published": [p.__dict__ for p in r.published],
                    "deviations": list(r.deviations),
                }
                for r in t.rows
            ],
        }
        for t in TABLES
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``--write`` regenerates docs/recipes.md, ``--check`` compares, ``--json`` dumps,
    ``--explain TABLE[/ROW]`` prints what rows run (:mod:`tools.explain`)."""
    p = argparse.ArgumentParser(prog="python -m tools.recipes", description=__doc__.split("\n")[0])
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="regenerate docs/recipes.md and README")
    group.add_argument("--check", action="store_true", help="exit 1 if either is stale")
    group.add_argument("--json", action="store_true", help="print the registry as JSON")
    group.add_argument(
        "--explain", metavar="TABLE[/ROW]", help="print the protocol a table's rows really run"
    )
    args = p.parse_args(argv)
    if args.explain:
        from tools.explain import explain

        print(explain(args.explain))
        return 0
    if args.json:
        print(json.dumps(as_json(), indent=1))
        return 0
    wanted = {DOC: render(), README: readme(README.read_text())}
    if args.write:
        for path, text in wanted.items():
            path.write_text(text)
        return 0
    stale = [path.name for path, text in wanted.items() if path.read_text() != text]
    if stale:
        print(f"{', '.join(stale)} stale: run `python -m tools.recipes --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
