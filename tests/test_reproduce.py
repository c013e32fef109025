"""tools/reproduce.py: the results table from fixed numbers, and the digits table run through DVC.

The end-to-end test runs ``python -m tools.reproduce digits --seeds 0,1 --jobs 1`` in a copy of the
repository at one epoch per stage (``-S`` overrides), as a user would: ``dvc exp run --queue``,
``dvc queue start``, ``dvc exp show --json``. It keeps one of the table's rows (``--rows``): every
queued run costs DVC's fixed overhead of a temp workspace and five stage processes, and the code
path does not depend on the number of rows (the table of several rows: the tests above). One of
its two runs is queued by hand first and left queued, as an interrupted reproduction leaves it, so
the first call must resume it and queue only the other; the second call must start no experiment
at all.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import yaml
from conftest import REPO, Repo, copy_repo, git_init

from tools import compare, recipes, reproduce

TINY_SETS = ["-S", "pretrain.epochs=1", "-S", "finetune.epochs=1"]


def run(key: str, top1: list[float], few: list[float]) -> list[compare.Run]:
    return [
        compare.Run(f"{key}-{i}", "r" * 40, "t", {"seed": i}, {"top1": t, "few": f})
        for i, (t, f) in enumerate(zip(top1, few, strict=True))
    ]


def test_main_table_has_published_ours_ci_delta_and_the_flag() -> None:
    table = recipes.table("digits")
    rows = [
        reproduce.RowResult(table.row("ce"), tuple(run("ce", [84.0, 86.0, 88.0], [70, 72, 74]))),
        reproduce.RowResult(table.row("fbl"), tuple(run("fbl", [80.0, 80.5, 81.0], [60, 60, 60]))),
    ]
    text = reproduce.main_table(table, rows)
    lines = text.strip().splitlines()
    assert len(lines) == 4 and lines[0].count("|") == 11
    # ce: mean 86, std 2, CI 86 ± 4.3027·2/√3 = [81.03, 90.97]; published 84.78 lies inside.
    assert "| `ce` | CE | 84.78 [measured] | 86.00 ± 2.00 | 3 | [81.03, 90.97] | +1.22 |" in text
    # fbl: mean 80.5, std 0.5, CI [79.26, 81.74]; published 86.56 lies outside: flagged.
    assert "| 80.50 ± 0.50 | 3 | [79.26, 81.74] | -6.06 † |" in text
    welch = reproduce.welch_table(rows)
    # Welch on (84, 86, 88) vs (80, 80.5, 81): t = 5.5/√(4/3 + 0.25/3), df from Satterthwaite.
    test = reproduce.stats.welch([84.0, 86.0, 88.0], [80.0, 80.5, 81.0])
    assert f"| `ce` |  | {test.p:.3g} |" in welch and 0.01 < test.p < 0.05


def test_known_splits_finished_and_pending_experiments_by_params() -> None:
    def entry(name: str, state: str | None, seed: int, metrics: dict | None) -> dict:
        data = {"params": {"params.yaml": {"data": {"seed": seed, "loss": {"name": "ce"}}}}}
        data["metrics"] = {} if metrics is None else {"metrics/evaluate.json": {"data": metrics}}
        data["timestamp"] = "2026-01-01T00:00:00"
        executor = None if state is None else {"state": state}
        rev = {"rev": name, "name": name, "data": data, "error": None}
        return {"name": name, "executor": executor, "revs": [rev]}

    show = [
        {"rev": "workspace", "experiments": None},
        {
            "rev": "abc",
            "experiments": [
                entry("done", None, 0, {"top1": 1.0}),
                entry("waiting", "queued", 1, None),
                entry("busy", "running", 2, None),
                entry("broken", "failed", 3, None),
            ],
        },
    ]
    state = reproduce.known(show)
    key = reproduce.canonical({"seed": 0, "loss.name": "ce"})
    assert state.finished[key].name == "done"
    assert sorted(state.pending.values()) == ["busy", "waiting"]
    assert reproduce.canonical({"loss.name": "ce", "seed": 3}) not in state.pending


def test_bad_arguments_stop_before_anything_runs(capsys: pytest.CaptureFixture) -> None:
    assert reproduce.main(["nope"]) == 2
    assert "expected a table in cdb-cifar100," in capsys.readouterr().err
    assert reproduce.main(["digits", "--seeds", "0,x"]) == 2
    assert "--seeds: expected distinct integers" in capsys.readouterr().err
    assert reproduce.main(["digits", "--rows", "ce,nope"]) == 2
    assert "table digits: expected a row in" in capsys.readouterr().err
    assert reproduce.main(["digits", "-S", "pretrain.schedule=multistep", "--no-run"]) == 2
    assert "digits/ce (seed 0): pretrain.schedule: expected one of" in capsys.readouterr().err


def test_list_names_every_table_row_and_published_number(capsys: pytest.CaptureFixture) -> None:
    assert reproduce.main(["--list"]) == 0
    out = capsys.readouterr().out
    for t in recipes.TABLES:
        assert f"{t.key}: {t.title}" in out
    assert "balms  " in out and "48.00 [balms-readme]" in out


def experiments(repo: Repo) -> list[str]:
    show = json.loads(repo.dvc("exp", "show", "--json").stdout)
    return sorted(e["name"] for b in show for e in b.get("experiments") or [])


def test_reproduce_digits_end_to_end_resumes_and_reuses(repo: Repo) -> None:
    copy_repo(REPO, repo.root, ["tools"])
    git_init(repo)
    table = recipes.table("digits")
    # An interrupted reproduction: one run queued, no worker started.
    base = yaml.safe_load((repo.root / "params.yaml").read_text())
    sets = recipes.overrides(table.row_params(table.row("cdb_ce")), base)
    sets += ["pretrain.epochs=1", "finetune.epochs=1", "seed=1"]
    repo.dvc("exp", "run", "--queue", *(x for s in sets for x in ("-S", s)))

    rows = [table.row("cdb_ce")]
    command = [sys.executable, "-m", "tools.reproduce", "digits", "--seeds", "0,1", "--jobs", "1"]
    command += ["--rows", "cdb_ce", *TINY_SETS, "--poll", "1", "--report", "reports"]
    first = repo.run(*command)
    total = 2 * len(rows)
    assert f"{total} runs: 0 reused, 1 already queued, {total - 1} queued now" in first.stderr
    progress = re.findall(
        r"^reproduce: (\S+)  seed (\d)  (?:ok|done)  (\d+)/(\d+)  elapsed \d+:\d\d:\d\d$",
        first.stderr,
        flags=re.M,
    )
    assert len(progress) == total and progress[-1][2:] == (str(total), str(total))
    lines = [line for line in first.stdout.splitlines() if line.startswith("| `")]
    assert [line.split(" | ")[0] for line in lines[: len(rows)]] == [f"| `{r.key}`" for r in rows]
    for line in lines[: len(rows)]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 10 and cells[4] == "2", line  # n = 2 seeds in every row
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", cells[3]), line
    names = experiments(repo)
    assert len(names) == total  # the hand-queued run was resumed, not queued twice

    report = repo.root / "reports"
    for name in ("digits.md", "digits.json"):
        assert (report / name).stat().st_size > 0
    for name in ("digits-per-class.png", "digits-shots.png"):
        data = (report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    raw = json.loads((report / "digits.json").read_text())
    assert {k: len(v) for k, v in raw.items()} == {row.key: 2 for row in rows}

    second = repo.run(*command[:-2], "--no-run")
    assert second.stdout == first.stdout
    third = repo.run(*command[:-2])
    assert f"{total} runs: {total} reused, 0 already queued, 0 queued now" in third.stderr
    assert experiments(repo) == names
    assert third.stdout == first.stdout
