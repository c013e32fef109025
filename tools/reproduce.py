"""Reproduce a paper's table in one command: queue every row × seed, run, compare with the paper.

    python -m tools.reproduce --list                 # every table and row, with sources
    python -m tools.reproduce balms-cifar100-if200 --seeds 0,1,2 --jobs 2
    python -m tools.reproduce digits --seeds 0,1,2   # the embedded default, minutes on a CPU
    python -m tools.reproduce digits --no-run --report reports/   # tabulate, write the report
    python -m tools.reproduce digits --seeds 0,1 -S pretrain.epochs=2 -S finetune.epochs=2
    python -m tools.reproduce digits --seeds 0,1 --executor slurm --slurm-partition gpu \
        --slurm-gpus 1                    # one Slurm job per row × seed (tools/slurm.py)

The tables are ``tools/recipes/*.yaml`` (loaded by ``tools/recipes.py``). Run from the repository
root (a git repository with DVC). For every row and seed the tool builds the row's params exactly as
``dvc exp run -S`` would (DVC's own Hydra override code on a copy of the workspace ``params.yaml``,
with ``-S`` extras applied to every row, then ``seed``) and validates them with ``longtail.config``
before anything is queued. A row × seed whose params equal those of an experiment of the current
commit (``dvc exp show --json``) is reused: a finished one is read, a queued or running one is
waited for (so an interrupted reproduction resumes where it stopped: rerun the same command); the
others are queued with ``dvc exp run --queue`` and run by ``dvc queue start --jobs N``. Progress is
one line per finished run: row, seed, done/total, elapsed. ``--no-run`` queues nothing and tabulates
what exists.

The table (stdout, and ``--report DIR``) has, per row: the published top-1 and its source key,
ours as mean ± sample std over the seeds with n and the 95 % Student-t interval, Δ = ours −
published (``†``: the published number lies outside our interval), and many/medium/few as mean ±
std. Under it, Welch's t-test on top-1 between every two rows (p-values). ``--report DIR`` also
writes ``DIR/<table>.md``, ``DIR/<table>.json`` (every run's metrics), and two PNG figures:
per-class test accuracy against training count (mean over seeds, per row) and many/medium/few/top-1
of every row side by side with the published numbers.

``--executor slurm`` runs each row × seed as one Slurm job instead of the local queue
(``tools/slurm.py``; docs/scale-out.md): the call submits the runs that have no job yet, prints
their job ids and returns (``--wait``: once they have ended); run again, it pulls the experiments
the jobs pushed and prints the same table, with the failed runs and their logs under it.
``--resubmit-failed`` submits the failed ones again; ``--dry-run`` prints the job scripts (with
the local queue: the ``dvc exp run --queue`` commands) and submits nothing.

Exit status: 0 when every row has all its seeds, 1 when a run failed or is missing, 2 on an error
(bad params, a DVC command that failed, an unknown table).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from longtail.config import Config
from tools import compare, recipes, slurm, stats
from tools.compare import CompareError

PARAMS_FILE = "params.yaml"
PER_CLASS_FILE = "plots/per_class.csv"
PENDING_STATES = ("queued", "running")
POLL_SECONDS = 5.0
RESTARTS = 3  # queue starts in a row without progress before giving up


class ReproduceError(CompareError):
    """Arguments, params or DVC state that stop a reproduction, with what was expected and got."""


# ------------------------------------------------------------------------------ params per run
@dataclass(frozen=True)
class Job:
    """One row × seed: the overrides DVC receives and the params file they produce (flattened)."""

    row: str
    seed: int
    overrides: tuple[str, ...]
    params: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{self.row} seed {self.seed}"


def canonical(params: Mapping[str, Any]) -> str:
    """An order-stable text of flattened params, to compare two runs' params."""
    return json.dumps(dict(params), sort_keys=True, default=str)


def apply(base: Path, sets: Sequence[str], folder: Path) -> Path:
    """Apply ``-S`` overrides to a copy of ``base`` as ``dvc exp run -S`` does; returns the copy."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    path = folder / PARAMS_FILE
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(base, path)
    by_file = to_path_overrides(list(sets))
    if list(by_file) != [PARAMS_FILE]:
        raise ReproduceError(f"-S: expected overrides of {PARAMS_FILE} only, got {list(by_file)}")
    apply_overrides(path, by_file[PARAMS_FILE])
    return path


def check_val(cfg: Config) -> None:
    """Refuse, before queueing, a CIFAR row whose params need a val split it does not hold.

    ``inject_imbalance`` refuses it too, but only once the run has started; the other families
    hold a val split by default (digits, published val lists, EGTEA's subjects).
    """
    from stages.common import val_needed_by

    needs = val_needed_by(cfg)
    if needs and cfg.data.name in ("cifar10", "cifar100") and not cfg.data.val_per_class:
        raise ReproduceError(
            f"data.val_per_class: {', '.join(needs)} needs a val split; expected "
            f"data.val_per_class > 0, got {cfg.data.val_per_class}"
        )


def _read_as_dvc(path: Path) -> dict[str, Any]:
    """The params file as ``dvc exp show`` reads it (its YAML 1.2 loader: ``1e-05`` is a float)."""
    from dvc.utils.serialize import load_yaml

    return dict(load_yaml(path))


def jobs(
    table: recipes.Table,
    rows: Sequence[recipes.Row],
    seeds: Sequence[int],
    extra: Sequence[str],
    base: Path,
) -> list[Job]:
    """Every row × seed with its overrides and params, validated before anything is queued.

    Raises:
        ReproduceError: listing every row whose params DVC or ``longtail.config`` refuses.
    """
    from longtail.config import load

    listed = yaml.safe_load(base.read_text())
    out, errors = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            for seed in seeds:
                sets = [*recipes.overrides(table.row_params(row), listed), *extra, f"seed={seed}"]
                try:
                    path = apply(base, sets, Path(tmp) / f"{row.key}-{seed}")
                    check_val(load(path))
                except Exception as err:  # DVC's and the config's errors alike, all reported
                    errors.append(f"{table.key}/{row.key} (seed {seed}): {err}")
                    break
                params = compare.flatten(_read_as_dvc(path))
                out.append(Job(row.key, seed, tuple(sets), params))
    if errors:
        raise ReproduceError(
            "expected every row's params to validate before queueing; got:\n  "
            + "\n  ".join(errors)
        )
    return out


# ---------------------------------------------------------------------------- DVC experiments
@dataclass
class Known:
    """The experiments of the current commit: finished runs and pending ones, by params."""

    finished: dict[str, compare.Run] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # params -> experiment name


def known(show: Sequence[Mapping[str, Any]]) -> Known:
    """Finished (newest per params) and queued/running experiments of an ``exp show``."""
    out = Known()
    for run in compare.collect(show).runs:
        out.finished.setdefault(canonical(run.params), run)
    for baseline in show:
        for experiment in baseline.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state")
            if state not in PENDING_STATES:
                continue
            for rev in experiment.get("revs") or []:
                params = compare._file_data((rev.get("data") or {}).get("params"), PARAMS_FILE)
                if params is not None:
                    name = str(rev.get("name") or experiment.get("name") or rev.get("rev"))
                    out.pending.setdefault(canonical(compare.flatten(params)), name)
    return out


def queue(dvc: str, job: Job) -> str:
    """``dvc exp run --queue`` one job; returns the queued experiment's name."""
    out = compare.call(dvc, "exp", "run", "--queue", *(x for s in job.overrides for x in ("-S", s)))
    names = compare.QUEUED.findall(out)
    if len(names) != 1:
        raise ReproduceError(
            f'dvc exp run --queue ({job.label}): expected one line "Queued experiment '
            f"'<name>' ...\", got:\n{out.strip()}"
        )
    return names[0]


class Progress:
    """One line per finished run: row, seed, done/total, elapsed."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.done, self.log, self.start = total, 0, log, time.monotonic()

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.start)
        return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def finished(self, job: Job, how: str) -> None:
        self.done += 1
        self.log(
            f"reproduce: {job.row}  seed {job.seed}  {how}  {self.done}/{self.total}  "
            f"elapsed {self.elapsed()}"
        )


def wait(
    dvc: str, waiting: Mapping[str, Job], progress: Progress, poll: float, workers: int
) -> dict[str, str]:
    """Poll ``dvc queue status`` until none of ``waiting`` (name -> job) is pending.

    A queue that shows no worker while runs are pending (a worker exits between tasks, or was
    killed) is started again; only a queue that stays without one after ``RESTARTS`` starts in
    a row is an error.

    Returns:
        The final status of every name (``Success``, ``Failed``, ...).

    Raises:
        ReproduceError: runs are pending and no worker stays up.
    """
    final: dict[str, str] = {}
    idle = restarts = 0
    while len(final) < len(waiting):
        statuses, active = compare.queue_status(compare.call(dvc, "queue", "status"))
        before = len(final)
        for name, job in waiting.items():
            status = statuses.get(name, "unknown")
            # A task that has left `queue status` has finished too; whether it produced a result
            # is read from `exp show` afterwards (a missing run is reported as missing).
            if name not in final and status not in compare.PENDING_STATUSES:
                final[name] = status
                progress.finished(
                    job, {"Success": "ok", "unknown": "done"}.get(status, status.lower())
                )
        pending = [n for n in waiting if n not in final]
        restarts = 0 if len(final) > before else restarts
        idle = idle + 1 if pending and active == 0 else 0
        if idle >= compare.IDLE_POLLS:
            if restarts >= RESTARTS:
                raise ReproduceError(
                    f"expected a queue worker while {len(pending)} runs are pending "
                    f"({', '.join(pending)}); got none after {restarts} starts: see "
                    "`dvc queue logs <name>`, then rerun this command"
                )
            compare.call(dvc, "queue", "start", "--jobs", str(workers))
            idle, restarts = 0, restarts + 1
        if pending:
            time.sleep(poll)
    return final


def run_jobs(
    dvc: str, todo: Sequence[Job], workers: int, poll: float, log: Callable[[str], None]
) -> dict[str, str]:
    """Reuse, queue and run ``todo``; returns the status of each job's label."""
    state = known(compare.exp_show(dvc))
    progress = Progress(len(todo), log)
    waiting: dict[str, Job] = {}
    reused = resumed = 0
    statuses: dict[str, str] = {}
    for job in todo:
        key = canonical(job.params)
        if key in state.finished:
            statuses[job.label] = "Success"
            reused += 1
            progress.finished(job, f"reused {state.finished[key].name}")
        elif key in state.pending:
            waiting[state.pending[key]] = job
            resumed += 1
        else:
            waiting[queue(dvc, job)] = job
    log(
        f"reproduce: {len(todo)} runs: {reused} reused, {resumed} already queued, "
        f"{len(waiting) - resumed} queued now"
    )
    if waiting:
        compare.call(dvc, "queue", "start", "--jobs", str(workers))
        final = wait(dvc, waiting, progress, poll, workers)
        statuses.update({waiting[name].label: status for name, status in final.items()})
    return statuses


# ---------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class RowResult:
    """A row's runs: the metrics of each seed found, and the experiment names."""

    row: recipes.Row
    runs: tuple[compare.Run, ...]

    def values(self, metric: str) -> list[float]:
        out = []
        for run in self.runs:
            value = run.metrics.get(metric)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and math.isfinite(value):
                out.append(float(value))
        return out


def results(
    table: recipes.Table, todo: Sequence[Job], show: Sequence[Mapping[str, Any]]
) -> list[RowResult]:
    """Each row's finished runs among ``todo`` (matched by params)."""
    state = known(show)
    by_row: dict[str, list[compare.Run]] = {}
    for job in todo:
        run = state.finished.get(canonical(job.params))
        if run is not None:
            by_row.setdefault(job.row, []).append(run)
    return [
        RowResult(row, tuple(by_row.get(row.key, ())))
        for row in table.rows
        if row.key in {j.row for j in todo}
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def mean_std(values: Sequence[float]) -> str:
    s = stats.summary(values)
    if s.mean is None:
        return "–"
    return _fmt(s.mean) + ("" if s.std is None else f" ± {_fmt(s.std)}")


def main_table(table: recipes.Table, rows: Sequence[RowResult]) -> str:
    """The comparison table: published, ours with n and CI, Δ, many/medium/few."""
    head = ["row", "method", "published top-1", "ours top-1 (mean ± std)", "n", "95 % CI", "Δ"]
    head += ["many", "medium", "few"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ref = r.row.reference
        published = None if ref is None else ref.top1
        s = stats.summary(r.values("top1"))
        ci = "–" if s.low is None else f"[{_fmt(s.low)}, {_fmt(s.high)}]"
        delta = "–" if published is None or s.mean is None else f"{s.mean - published:+.2f}"
        if published is not None and s.contains(published) is False:
            delta += " †"
        pub = "–" if published is None else f"{published:.2f} [{ref.source}]"
        cells = [f"`{r.row.key}`", r.row.method, pub, mean_std(r.values("top1")), str(s.n), ci]
        cells += [delta, *(mean_std(r.values(m)) for m in ("many", "medium", "few"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def welch_table(rows: Sequence[RowResult]) -> str:
    """Welch's t-test p-values on top-1 between every two rows (upper triangle)."""
    keys = [r.row.key for r in rows]
    lines = ["| p (Welch, top-1) | " + " | ".join(f"`{k}`" for k in keys) + " |"]
    lines.append("|" + "---|" * (len(keys) + 1))
    for i, a in enumerate(rows):
        cells = []
        for j, b in enumerate(rows):
            if j <= i:
                cells.append("")
                continue
            test = stats.welch(a.values("top1"), b.values("top1"))
            cells.append("–" if test is None else f"{test.p:.3g}")
        lines.append(f"| `{a.row.key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


FOOTER = (
    "Ours: test top-1 and many/medium/few in percent, mean ± sample std (n − 1) over n seeds; "
    "95 % CI: mean ± t(0.975, n − 1)·s/√n; Δ = ours − published; † the published number lies "
    "outside our interval. Welch p-values: two-sided, unequal variances; – where a row has fewer "
    "than two runs or both have zero variance."
)


def render(table: recipes.Table, rows: Sequence[RowResult], seeds: Sequence[int]) -> str:
    """The markdown the tool prints and writes: header, main table, footer, Welch table."""
    parts = [
        f"## {table.key}: {table.title}",
        "",
        f"Paper: {table.paper}. Seeds: {', '.join(map(str, seeds))}.",
        "",
        main_table(table, rows),
        FOOTER,
        "",
        welch_table(rows),
    ]
    sources = sorted({r.row.reference.source for r in rows if r.row.reference is not None})
    if sources:
        parts += ["Sources:", ""] + [f"- `{s}`: {recipes.SOURCES[s]}." for s in sources] + [""]
    if table.measured:
        parts += [f"Published column of this table: {table.measured}", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------- report
def per_class(run: compare.Run) -> list[tuple[int, float]]:
    """(train count, test accuracy) of each class of one experiment, from its DVC outputs."""
    import csv
    import io

    import dvc.api

    text = dvc.api.read(PER_CLASS_FILE, repo=".", rev=run.rev)
    return [
        (int(r["train_count"]), float(r["accuracy"])) for r in csv.DictReader(io.StringIO(text))
    ]


def figures(table: recipes.Table, rows: Sequence[RowResult], folder: Path) -> list[Path]:
    """Per-class accuracy vs training count, and many/medium/few/top-1 per row; PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.runs]
    paths = [folder / f"{table.key}-per-class.png", folder / f"{table.key}-shots.png"]

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^v<>ph*"
    for i, r in enumerate(done):
        curves = [per_class(run) for run in r.runs]
        counts = [c for c, _ in curves[0]]
        mean = [sum(curve[k][1] for curve in curves) / len(curves) for k in range(len(counts))]
        pairs = sorted(zip(counts, mean, strict=True))
        ax.plot(
            [c for c, _ in pairs],
            [m for _, m in pairs],
            marker=markers[i % len(markers)],
            linewidth=1,
            markersize=4,
            label=f"{r.row.key} (n={len(r.runs)})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy of the class, % (mean over seeds)")
    ax.set_title(f"{table.key}: per-class accuracy against training count")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    metrics = ("top1", "many", "medium", "few")
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(done) + 2), 5))
    width = 0.8 / len(metrics)
    for m, metric in enumerate(metrics):
        xs, heights, errs = [], [], []
        for i, r in enumerate(done):
            s = stats.summary(r.values(metric))
            xs.append(i + (m - 1.5) * width)
            heights.append(s.mean or 0.0)
            errs.append(s.std or 0.0)
        ax.bar(
            xs,
            heights,
            width,
            yerr=errs,
            capsize=2,
            error_kw={"elinewidth": 0.8, "ecolor": "dimgray"},
            label=metric,
        )
        pub = [
            (x, r.row.reference.get(metric))
            for x, r in zip(xs, done, strict=True)
            if r.row.reference is not None and r.row.reference.get(metric) is not None
        ]
        if pub:
            ax.scatter(
                [x for x, _ in pub],
                [v for _, v in pub],
                marker="_",
                s=200,
                color="black",
                zorder=3,
                label="published / committed" if m == 0 else None,
            )
    ax.set_xticks(range(len(done)))
    ax.set_xticklabels([r.row.key for r in done], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy, % (mean ± std over seeds)")
    ax.set_title(f"{table.key}: top-1 and many / medium / few per row")
    ax.set_ylim(0, 105)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def report(
    table: recipes.Table, rows: Sequence[RowResult], seeds: Sequence[int], folder: Path
) -> list[Path]:
    """Write ``<table>.md``, ``<table>.json`` and the figures under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{table.key}.md"
    paths = figures(table, rows, folder) if any(r.runs for r in rows) else []
    text = render(table, rows, seeds)
    text += "".join(f"\n![{p.stem}]({p.name})\n" for p in paths)
    md.write_text(text)
    raw = folder / f"{table.key}.json"
    raw.write_text(
        json.dumps(
            {
                r.row.key: [
                    {
                        "experiment": run.name,
                        "rev": run.rev,
                        "seed": run.params.get("seed"),
                        "metrics": dict(run.metrics),
                    }
                    for run in r.runs
                ]
                for r in rows
            },
            indent=1,
        )
    )
    return [md, raw, *paths]


# -------------------------------------------------------------------------------------- CLI
def listing() -> str:
    """Every table and row with its paper and published numbers (``--list``)."""
    lines = []
    for t in recipes.TABLES:
        lines.append(f"{t.key}: {t.title} ({t.paper})")
        for row in t.rows:
            pub = row.reference
            text = "no published number read" if pub is None else recipes.published_text(pub)
            lines.append(f"  {row.key:<18} {row.method}: {text}")
    return "\n".join(lines) + "\n"


def _seeds(text: str) -> list[int]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items or not all(s.isdigit() for s in items) or len(set(items)) != len(items):
        raise ReproduceError(
            f"--seeds: expected distinct integers >= 0 separated by commas, got {text!r}"
        )
    return [int(s) for s in items]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.reproduce", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    p.add_argument("table", nargs="?", help="a table of tools/recipes/ (see --list)")
    p.add_argument("--list", action="store_true", help="list every table and row, and exit")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--rows", help="comma-separated row keys (default: every row of the table)")
    p.add_argument("--jobs", type=int, default=1, help="queue workers (default 1)")
    p.add_argument(
        "-S",
        "--set-param",
        dest="sets",
        action="append",
        default=[],
        help="extra `dvc exp run -S` override for every row, e.g. a data path (repeatable)",
    )
    p.add_argument("--no-run", action="store_true", help="queue nothing; tabulate what exists")
    p.add_argument("--report", type=Path, help="folder for the markdown, JSON and PNG report")
    p.add_argument("--poll", type=float, default=POLL_SECONDS, help="seconds between polls")
    p.add_argument("--dvc", default="dvc", help="the dvc executable")
    p.add_argument(
        "--dry-run", action="store_true", help="print the job scripts (or queue commands) only"
    )
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: DVC's queue on this machine (default); slurm: one sbatch job per run",
    )
    s = p.add_argument_group("slurm executor (--executor slurm; docs/scale-out.md)")
    s.add_argument("--slurm-partition", help="--partition of every job (default: the cluster's)")
    s.add_argument("--slurm-gpus", type=int, default=0, help="--gpus-per-node (default 0)")
    s.add_argument("--slurm-cpus", type=int, default=1, help="--cpus-per-task (default 1)")
    s.add_argument("--slurm-time", help="--time of every job, e.g. 12:00:00")
    s.add_argument(
        "--slurm-arg", action="append", help="another #SBATCH option, e.g. --account=lab"
    )
    s.add_argument(
        "--slurm-setup",
        action="append",
        help="a shell line every job runs first, e.g. 'source ~/venv/bin/activate' (repeatable)",
    )
    s.add_argument("--slurm-logs", type=Path, help="folder of the job logs, on a shared filesystem")
    s.add_argument(
        "--git-remote", default="origin", help="the git remote the jobs clone and push to"
    )
    s.add_argument("--resubmit-failed", action="store_true", help="submit failed runs again")
    s.add_argument("--wait", action="store_true", help="return once every job has ended")
    return p


def _rows(table: recipes.Table, text: str | None) -> list[recipes.Row]:
    if not text:
        return list(table.rows)
    try:
        return [table.row(k.strip()) for k in text.split(",") if k.strip()]
    except KeyError as err:
        raise ReproduceError(err.args[0]) from None


def reproduce(args: argparse.Namespace, log: Callable[[str], None]) -> tuple[str, bool]:
    """Validate, run (unless --no-run), tabulate and report; returns the text and completeness."""
    try:
        table = recipes.table(args.table)
    except KeyError as err:
        raise ReproduceError(err.args[0]) from None
    if args.jobs < 1:
        raise ReproduceError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    seeds = _seeds(args.seeds)
    todo = jobs(table, _rows(table, args.rows), seeds, args.sets, Path(PARAMS_FILE))
    log(f"reproduce: {table.key}: {len(todo)} runs validated")
    runs = [(canonical(j.params), slurm.Run(table.key, j.row, j.seed, j.overrides)) for j in todo]
    if args.dry_run:
        if args.executor == "slurm":
            try:
                return slurm.dry_run(args.dvc, runs, slurm.options(args)), True
            except slurm.SlurmError as err:
                raise ReproduceError(str(err)) from None
        sets = (" ".join(f"-S {shlex.quote(s)}" for s in j.overrides) for j in todo)
        return "".join(f"{args.dvc} exp run --queue {x}\n" for x in sets), True
    failed: list[str] = []
    where, pending = " (see `dvc queue logs <name>`)", ""
    if args.executor == "slurm":
        failed, pending = _slurm(args, table, runs, log)
        where = " (rerun with --resubmit-failed to submit them again)"
    elif not args.no_run:
        statuses = run_jobs(args.dvc, todo, args.jobs, args.poll, log)
        failed = [f"{label} ({s})" for label, s in statuses.items() if s == "Failed"]
    rows = results(table, todo, compare.exp_show(args.dvc))
    text = render(table, rows, seeds)
    missing = [
        f"{r.row.key} ({len(r.runs)} of {len(seeds)})" for r in rows if len(r.runs) < len(seeds)
    ]
    if failed:
        text += "\nFailed: " + ", ".join(failed) + f"{where}.\n"
    if pending:
        text += f"\nPending: {pending}: run this command again later.\n"
    if missing:
        text += "\nMissing runs: " + ", ".join(missing) + ".\n"
    if args.report:
        for path in report(table, rows, seeds, args.report):
            log(f"reproduce: wrote {path}")
    return text, not failed and not missing


def _slurm(
    args: argparse.Namespace,
    table: recipes.Table,
    runs: Sequence[tuple[str, slurm.Run]],
    log: Callable[[str], None],
) -> tuple[list[str], str]:
    """Submit and follow the runs as Slurm jobs; returns the failed and the pending runs."""
    try:
        opts = slurm.options(args)
        if args.no_run:
            slurm.pull(args.dvc, opts.git_remote)
            return [], ""
        status = slurm.execute(
            args.dvc,
            table.key,
            runs,
            lambda: set(known(compare.exp_show(args.dvc)).finished),
            opts,
            resubmit_failed=args.resubmit_failed,
            wait=args.wait,
            poll=args.poll,
            log=log,
        )
    except slurm.SlurmError as err:
        raise ReproduceError(str(err)) from None
    failed = [f"{label} (job {job} {state.lower()}; log {path})" for label, job, path, state in
              status.failed]  # fmt: skip
    return failed, ", ".join(f"{label} ({how})" for label, how in status.pending)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.list:
        sys.stdout.write(listing())
        return 0
    if not args.table:
        log("reproduce: error: expected a table name (see --list)")
        return 2
    try:
        text, complete = reproduce(args, log)
    except CompareError as err:
        log(f"reproduce: error: {err}")
        return 2
    sys.stdout.write(text)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
