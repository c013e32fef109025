"""tools/compare.py: the comparison table from `dvc exp show --json`, and its --run mode.

The fixtures have the shape DVC 3.67 prints (checked on a real repository, which the last test
does again): a list of baseline entries (the workspace first, then the commit), each commit with
``experiments``, each experiment with ``executor`` (None, or a state such as ``running``,
``failed``, ``success``) and ``revs``, whose ``data`` holds ``params["params.yaml"].data`` and
``metrics["metrics/evaluate.json"].data``. Expected tables are computed by hand.
"""

from __future__ import annotations

import importlib.util
import json
import math
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Repo

SPEC = importlib.util.spec_from_file_location("compare", REPO / "tools" / "compare.py")
compare = importlib.util.module_from_spec(SPEC)
sys.modules["compare"] = compare  # dataclasses look their module up there
SPEC.loader.exec_module(compare)

FOOTER = (
    "Mean ± sample standard deviation (n − 1 denominator) over the runs of each row (`runs`: "
    "how many seeds), in percent, on the test split (`metrics/evaluate.json`)."
)


def params(loss: str = "ce", seed: int = 0, **sections: dict) -> dict:
    """A params.yaml as `exp show` nests it (a few sections of the real file)."""
    tree = {
        "seed": seed,
        "data": {"name": "digits", "imbalance": 50, "lists": {"train": None}},
        "pretrain": {"loss": {"name": "ce"}, "milestones": [], "lr": 0.1},
        "loss": {"name": loss, "tau": 1.0},
        "finetune": {"mode": "full", "sampler": "instance"},
    }
    for name, update in sections.items():
        tree[name] = {**tree[name], **update}
    return tree


def metrics(top1: float, many: float, medium: float, few: float) -> dict:
    return {"top1": top1, "many": many, "medium": medium, "few": few, "num_few": 5, "ece": 3.0}


def experiment(
    name: str,
    tree: dict,
    result: dict,
    state: str | None = None,
    error: dict | None = None,
    timestamp: str = "2026-01-02T10:00:00",
) -> dict:
    """One entry of a baseline's ``experiments`` list."""
    executor = None if state is None else {"state": state, "name": "dvc-task", "local": {}}
    data = {
        "rev": name * 2,
        "timestamp": timestamp,
        "params": {"params.yaml": {"data": tree}},
        "metrics": {
            "metrics/evaluate.json": {"data": result},
            "metrics/pretrain.json": {"data": {"epoch": 1}},
        },
        "deps": {},
        "outs": {},
        "meta": {},
    }
    rev = {"rev": name * 2, "name": name, "data": data, "error": error, "experiments": None}
    return {"revs": [rev], "executor": executor, "name": name}


def show(*experiments: dict) -> list[dict]:
    """The whole ``exp show --json``: the workspace, then the commit and its experiments."""
    workspace_data = {
        "rev": "workspace",
        "timestamp": None,
        "params": {"params.yaml": {"data": params("ce")}},
        "metrics": {"metrics/evaluate.json": {"data": metrics(1, 1, 1, 1)}},
        "deps": {},
        "outs": {},
        "meta": {},
    }
    workspace = {
        "rev": "workspace",
        "name": None,
        "data": workspace_data,
        "error": None,
        "experiments": None,
    }
    commit_data = {**workspace_data, "rev": "c0ffee", "timestamp": "2026-01-01T09:00:00"}
    commit = {
        "rev": "c0ffee",
        "name": "main",
        "data": commit_data,
        "error": None,
        "experiments": list(experiments),
    }
    return [workspace, commit]


NAN = float("nan")
MAIN = show(
    experiment("ce-0", params("ce", 0), metrics(80, 90, 70, 50)),
    experiment("ce-1", params("ce", 1), metrics(82, 90, 71, 52)),
    experiment("ce-2", params("ce", 2), metrics(84, 90, 75, 60)),
    experiment("bs-0", params("balanced_softmax", 0), metrics(85, 88, 80, NAN)),
    experiment("bs-1", params("balanced_softmax", 1), metrics(86, 89, 80, 70)),
    # an older run with params identical to ce-0: counted once, the newest kept
    experiment("ce-0-old", params("ce", 0), metrics(10, 10, 10, 10), timestamp="2025-12-31"),
    # unfinished and failed runs still carry the metrics of the workspace they were queued from
    experiment("fbl-0", params("fbl", 0), metrics(99, 99, 99, 99), state="running"),
    experiment(
        "fbl-1",
        params("fbl", 1),
        metrics(99, 99, 99, 99),
        state="failed",
        error={"msg": "Experiment run failed", "type": ""},
    ),
    experiment("ce-3", params("ce", 3), metrics(99, 99, 99, 99), state="queued"),
)

MAIN_TABLE = f"""\
| loss.name | runs | top-1 | many | medium | few |
|---|---|---|---|---|---|
| balanced_softmax | 2 | 85.50 ± 0.71 | 88.50 ± 0.71 | 80.00 ± 0.00 | 70.00 (1 of 2) |
| ce | 3 | 82.00 ± 2.00 | 90.00 ± 0.00 | 72.00 ± 2.65 | 54.00 ± 5.29 |

{FOOTER}
Left out: ce-3 (queued), fbl-0 (running), fbl-1 (failed).
Counted once (identical params, the newest kept): ce-0-old left out.
"""


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "show.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_table_from_an_exp_show_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # ce: top-1 80, 82, 84 -> 82 ± 2; medium 70, 71, 75 -> 72 ± sqrt(14 / 2) = 2.65;
    # few 50, 52, 60 -> 54 ± sqrt(56 / 2) = 5.29. balanced_softmax: 85, 86 -> 85.5 ± sqrt(0.5).
    assert compare.main(["--input", write(tmp_path, MAIN)]) == 0
    assert capsys.readouterr().out == MAIN_TABLE


def test_rows_follow_order_then_name_and_add_varying_keys() -> None:
    data = show(
        experiment("a", params("ce", 0), metrics(1, 2, 3, 4)),
        experiment("b", params("ce", 0, finetune={"mode": "none"}), metrics(5, 6, 7, 8)),
        experiment("c", params("focal", 0), metrics(9, 9, 9, 9)),
        experiment("d", params("ldam", 0), metrics(2, 2, 2, 2)),
    )
    text = compare.table(data, order=["focal", "ce"])
    assert text.splitlines()[:6] == [
        "| loss.name | finetune.mode | runs | top-1 | many | medium | few |",
        "|---|---|---|---|---|---|---|",
        "| focal | full | 1 | 9.00 | 9.00 | 9.00 | 9.00 |",
        "| ce | full | 1 | 1.00 | 2.00 | 3.00 | 4.00 |",
        "| ce | none | 1 | 5.00 | 6.00 | 7.00 | 8.00 |",
        "| ldam | full | 1 | 2.00 | 2.00 | 2.00 | 2.00 |",
    ]


def test_runs_of_a_row_must_differ_only_in_seed() -> None:
    data = show(
        experiment("a", params("ce", 0), metrics(1, 1, 1, 1)),
        experiment("b", params("ce", 1, data={"imbalance": 100}), metrics(3, 3, 3, 3)),
    )
    with pytest.raises(compare.CompareError, match=r"row ce differ in data.imbalance \(100, 50\)"):
        compare.table(data)
    assert "| ce | 1 | 3.00 |" in compare.table(data, where=[("data.imbalance", "100")])
    by = compare.table(data, by=["loss.name", "data.imbalance"])
    assert "| ce | 100 | 1 | 3.00 |" in by and "| ce | 50 | 1 | 1.00 |" in by
    assert "| ce | 2 | 2.00 ± 1.41 |" in compare.table(data, ignore=["data.imbalance"])


def test_lists_and_shorthand_params_group_like_values() -> None:
    tree = params("ce", 1, pretrain={"loss": "ce", "milestones": [160, 180]})
    data = show(
        experiment("a", params("ce", 0, pretrain={"milestones": [160, 180]}), metrics(1, 1, 1, 1)),
        experiment("b", tree, metrics(3, 3, 3, 3)),
    )
    assert compare.value(compare.collect(data).runs[1], "pretrain.loss.name") == "ce"
    by = ["pretrain.loss.name", "pretrain.milestones"]
    text = compare.table(data, by=by, ignore=["pretrain.loss"])
    assert "| ce | [160, 180] | 2 | 2.00 ± 1.41 |" in text


def test_no_finished_run_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = show(experiment("a", params("ce"), metrics(1, 1, 1, 1), state="running"))
    assert compare.main(["--input", write(tmp_path, data)]) == 2
    err = capsys.readouterr().err
    assert "expected at least one finished experiment" in err and "a (running)" in err


def test_cell_statistics() -> None:
    assert compare.cell([1.0]) == "1.00"
    assert compare.cell([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert compare.cell([NAN, None]) == "–"
    assert compare.cell([2.0, math.inf, 4.0]) == "3.00 ± 1.41 (2 of 3)"


# ------------------------------------------------------------------------------------ --run mode
FAKE_DVC = """\
import json, sys
from pathlib import Path

here = Path.cwd()
args = sys.argv[1:]
with open(here / "calls.txt", "a") as f:
    f.write(" ".join(args) + "\\n")
state = json.loads((here / "state.json").read_text())
if args[:3] == ["exp", "run", "--queue"]:
    sets = dict(a.split("=", 1) for a in args[4::2])
    name = f"{sets['loss.name']}-s{sets['seed']}"
    state["queued"].append([name, sets])
    print("Queueing with overrides '...'.")
    print(f"Queued experiment '{name}' for future execution.")
elif args[:2] == ["queue", "start"]:
    print("Started '1' new experiments task queue worker.")
elif args[:2] == ["queue", "status"]:
    state["polls"] += 1
    print("Task     Name        Created    Status")
    for i, (name, _) in enumerate(state["queued"]):
        status = "Queued" if state["polls"] == 1 else state["final"].get(name, "Success")
        print(f"{i:07x}  {name}  01:22 PM   {status}")
    print()
    print("Worker status: 1 active, 0 idle")
elif args == ["exp", "show", "--json"]:
    exps = state["earlier"] + state["experiments"]
    commit = {"rev": "c", "experiments": exps}
    print(json.dumps([{"rev": "workspace", "experiments": None}, commit]))
else:
    sys.exit(f"unexpected: {args}")
(here / "state.json").write_text(json.dumps(state))
"""


def fake_dvc(tmp_path: Path, final: dict[str, str]) -> Path:
    """A `dvc` that records its calls and answers like DVC; `exp show` lists the queued runs."""
    path = tmp_path / "dvc"
    path.write_text(f"#!{sys.executable}\n{FAKE_DVC}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    top1 = {"ce": 80.0, "fbl": 90.0}

    def run(loss: str, seed: int) -> dict:
        tree = params(loss, seed, data={"imbalance": 100})
        value = top1[loss] + 2 * seed
        state = "failed" if final.get(f"{loss}-s{seed}") == "Failed" else "success"
        return experiment(f"{loss}-s{seed}", tree, metrics(value, value, value, value), state)

    state = {
        "queued": [],
        "polls": 0,
        "final": final,
        "experiments": [run(loss, seed) for loss in ("ce", "fbl") for seed in (0, 1)],
        "earlier": [experiment("old", params("ce", 0), metrics(1, 1, 1, 1))],
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    return path


@pytest.mark.e2e
def test_run_queues_every_loss_and_seed_then_tabulates_those_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    dvc = fake_dvc(tmp_path, final={})
    monkeypatch.chdir(tmp_path)
    argv = ["--run", "--losses", "fbl,ce", "--seeds", "0,1", "-S", "data.imbalance=100"]
    assert compare.main([*argv, "--dvc", str(dvc), "--poll", "0"]) == 0
    out = capsys.readouterr()
    assert out.out == (
        "| loss.name | runs | top-1 | many | medium | few |\n"
        "|---|---|---|---|---|---|\n"
        "| fbl | 2 | 91.00 ± 1.41 | 91.00 ± 1.41 | 91.00 ± 1.41 | 91.00 ± 1.41 |\n"
        "| ce | 2 | 81.00 ± 1.41 | 81.00 ± 1.41 | 81.00 ± 1.41 | 81.00 ± 1.41 |\n"
        f"\n{FOOTER}\n"
    )
    queue = "exp run --queue -S loss.name={} -S seed={} -S data.imbalance=100"
    assert (tmp_path / "calls.txt").read_text().splitlines() == [
        queue.format("fbl", 0),
        queue.format("fbl", 1),
        queue.format("ce", 0),
        queue.format("ce", 1),
        "queue start --jobs 1",
        "queue status",  # all queued
        "queue status",  # all finished
        "exp show --json",
    ]
    assert "compare: 0/4 runs finished" in out.err and "compare: 4/4 runs finished" in out.err


@pytest.mark.e2e
def test_run_reports_failed_runs_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    dvc = fake_dvc(tmp_path, final={"ce-s1": "Failed"})
    monkeypatch.chdir(tmp_path)
    argv = ["--run", "--losses", "ce", "--seeds", "0,1", "--dvc", str(dvc), "--poll", "0"]
    assert compare.main(argv) == 1
    out = capsys.readouterr().out
    assert "| ce | 1 | 80.00 | 80.00 | 80.00 | 80.00 |" in out
    assert out.endswith("Left out: ce-s1 (failed).\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--run", "--losses", "ce"], "expected --losses and --seeds, got only one of them"),
        (["--run", "--losses", "ce", "--seeds", "0,x"], "--seeds: expected integers >= 0"),
        (["--run", "--losses", "ce", "--seeds", "0", "--input", "x"], "expected no --input"),
        (["--where", "seed", "--input", "SHOW"], "--where: expected key=value, got 'seed'"),
    ],
)
def test_bad_arguments_are_reported(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    argv = [write(tmp_path, MAIN) if arg == "SHOW" else arg for arg in argv]
    assert compare.main([*argv, "--dvc", str(tmp_path / "no-dvc-called")]) == 2
    assert message in capsys.readouterr().err


def test_queue_status_parsing() -> None:
    text = (
        "Task     Name        Created    Status\n"
        "ec41e2f  sural-doss  01:24 PM   Failed\n"
        "e2cc67c  chief-clog  01:22 PM   Running\n"
        "\nWorker status: 1 active, 2 idle\n"
    )
    statuses, workers = compare.queue_status(text)
    assert statuses["sural-doss"] == "Failed" and statuses["ec41e2f"] == "Failed"
    assert statuses["chief-clog"] == "Running" and workers == 3


# -------------------------------------------------------------------------- real DVC, tiny runs
def test_real_experiments_are_listed(dvc_repo: Repo) -> None:
    repo = dvc_repo
    repo.dvc("exp", "run", "-S", "loss.name=ce")
    repo.dvc("exp", "run", "-S", "loss.name=balanced_softmax")
    text = repo.run(sys.executable, str(REPO / "tools" / "compare.py")).stdout
    shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
    top1 = {
        rev["data"]["params"]["params.yaml"]["data"]["loss"]["name"]: rev["data"]["metrics"][
            "metrics/evaluate.json"
        ]["data"]["top1"]
        for exp in shown[1]["experiments"]
        for rev in exp["revs"]
    }
    lines = text.splitlines()
    assert lines[0] == "| loss.name | runs | top-1 | many | medium | few |"
    assert lines[2].startswith(f"| balanced_softmax | 1 | {top1['balanced_softmax']:.2f} | ")
    assert lines[3].startswith(f"| ce | 1 | {top1['ce']:.2f} | ")
    assert lines[4:6] == ["", FOOTER]
