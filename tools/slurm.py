"""Slurm executor of ``tools.reproduce``: one ``sbatch`` job per row × seed, results as DVC
experiments pushed by the job and pulled back.

    python -m tools.reproduce digits --seeds 0,1 --executor slurm --slurm-partition gpu \\
        --slurm-gpus 1                       # submit; prints the job ids and returns
    python -m tools.reproduce digits --seeds 0,1 --executor slurm ...   # finished / failed / table
    python -m tools.reproduce digits --seeds 0,1 --executor slurm ... --resubmit-failed
    python -m tools.reproduce digits --seeds 0,1 --executor slurm ... --dry-run  # print the scripts

Plain ``sbatch`` (one job per run, no extra dependency), the way a user would write the job by
hand. Each job script clones the git remote at the submitting commit into a scratch folder on the
node, runs ``dvc exp run --pull`` with the row's ``-S`` overrides (the same overrides the local
queue receives) under the name ``<table>-<row>-s<seed>-<job id>``, and ``dvc exp push``\\ es the
experiment to the git remote and its outputs to the DVC remote. ``--pull`` fetches the data
stages' outputs recorded in ``dvc.lock`` from the DVC remote, so ``download`` and
``inject_imbalance`` are not rerun on the node when the row keeps the commit's data params (the
submitting checkout pushes them before the first submission).

The submitting checkout keeps a ledger, ``.dvc/tmp/reproduce/slurm-<table>.json``: for each
run (commit and params), its job id and log file. A later call pulls the experiments of the commit
(``dvc exp pull``), asks ``squeue`` which jobs still wait or run, and reports every run as finished
(an experiment with its params exists), pending or running (its job id), or failed: its job is
gone from the queue and no experiment came back (killed, cancelled, out of time, a failing stage);
the report names the job's log. ``--resubmit-failed`` submits those again; nothing else is ever
submitted twice.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LEDGER = Path(".dvc/tmp/reproduce")
DATA_STAGES = ("download", "inject_imbalance", "extract_frames")
ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
)


class SlurmError(Exception):
    """A Slurm or git command that failed, or a checkout that cannot be submitted from."""


@dataclass(frozen=True)
class Options:
    """What every job asks of Slurm, and where the jobs find the code and write their logs.

    Attributes:
        partition: ``--partition`` (None: the cluster's default).
        gpus: ``--gpus-per-node`` (0: none requested).
        cpus: ``--cpus-per-task``.
        time: ``--time`` (None: the partition's default).
        extra: further ``#SBATCH`` options as written, e.g. ``--account=lab``.
        setup: shell lines run before the experiment (load modules, activate an environment).
        git_remote: the git remote (name in this checkout) that the jobs clone and push to.
        logs: the folder of the jobs' logs, as the nodes see it (a shared filesystem).
    """

    partition: str | None
    gpus: int
    cpus: int
    time: str | None
    extra: tuple[str, ...]
    setup: tuple[str, ...]
    git_remote: str
    logs: Path


@dataclass(frozen=True)
class Run:
    """One row × seed as a job: its table, row, seed and the ``-S`` overrides."""

    table: str
    row: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def stem(self) -> str:
        return f"{self.table}-{self.row}-s{self.seed}".replace("_", "-")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the current directory, output captured."""
    proc = subprocess.run(list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise SlurmError(
            f"`{shlex.join(args)}`: expected exit status 0, got {proc.returncode}:\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


# ------------------------------------------------------------------------------- the job script
def script(job: Run, commit: str, url: str, opts: Options, dvc: str = "dvc") -> str:
    """The job script of one run: clone at ``commit``, ``dvc exp run --pull``, ``exp push``."""
    head = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job.stem}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={opts.cpus}",
    ]
    head += [f"#SBATCH --partition={opts.partition}"] if opts.partition else []
    head += [f"#SBATCH --gpus-per-node={opts.gpus}"] if opts.gpus else []
    head += [f"#SBATCH --time={opts.time}"] if opts.time else []
    head += [f"#SBATCH {x}" for x in opts.extra]
    head.append(f"#SBATCH --output={opts.logs.resolve() / job.stem}-%j.log")
    sets = " ".join(f"-S {shlex.quote(s)}" for s in job.overrides)
    body = [
        f"# tools.reproduce {job.table}: row {job.row}, seed {job.seed}, at commit {commit}",
        "set -euo pipefail",
        *opts.setup,
        f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH",
        'work=$(mktemp -d "${TMPDIR:-/tmp}/longtail-$SLURM_JOB_ID-XXXXXX")',
        "trap 'rm -rf \"$work\"' EXIT",
        f'git clone --quiet {shlex.quote(url)} "$work/repo"',
        'cd "$work/repo"',
        f"git checkout --quiet --detach {commit}",
        f'name="{job.stem}-$SLURM_JOB_ID"',
        "# the data stages' outputs of dvc.lock come from the DVC remote (--pull), not rebuilt",
        f'{dvc} exp run --pull --name "$name" {sets}',
        f'{dvc} exp push origin "$name"',
        'echo "tools.reproduce: pushed experiment $name"',
    ]
    return "\n".join([*head, *body]) + "\n"


# ------------------------------------------------------------------------------- the checkout
def commit_and_url(remote: str) -> tuple[str, str]:
    """HEAD and the git remote's URL, once HEAD is known to be on that remote.

    Raises:
        SlurmError: uncommitted changes to tracked files (a job would not see them), or HEAD
            missing from every branch of ``remote``.
    """
    dirty = run("git", "status", "--porcelain", "--untracked-files=no").stdout.strip()
    if dirty:
        raise SlurmError(
            "expected a clean checkout (the jobs clone the commit, not this workspace); got "
            f"uncommitted changes:\n{dirty}\ncommit and push them, or pass them as -S overrides"
        )
    commit = run("git", "rev-parse", "HEAD").stdout.strip()
    url = run("git", "remote", "get-url", remote).stdout.strip()
    if Path(url).is_dir():  # a path on a shared filesystem: the same from the nodes
        url = str(Path(url).resolve())
    run("git", "fetch", "--quiet", remote)
    if not run("git", "branch", "--remotes", "--contains", commit).stdout.strip():
        raise SlurmError(
            f"expected commit {commit[:12]} on git remote {remote} ({url}), where the jobs clone "
            f"it; got it only here: `git push {remote}` first"
        )
    return commit, url


def push_data(dvc: str) -> None:
    """Push the data stages' outputs to the DVC remote, where the jobs pull them from.

    Raises:
        SlurmError: they are not in this checkout's cache (run ``dvc repro extract_frames``).
    """
    proc = run(dvc, "push", *DATA_STAGES, check=False)
    if proc.returncode != 0:
        raise SlurmError(
            "expected the data stages' outputs in this checkout's DVC cache, to push them once "
            "for every job (`dvc repro extract_frames` makes them); `dvc push` said:\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )


def pull(dvc: str, remote: str) -> None:
    """Pull the experiments of HEAD that jobs pushed (git refs and DVC outputs)."""
    run(dvc, "exp", "pull", "--rev", "HEAD", remote)


# ------------------------------------------------------------------------------------- ledger
def ledger_path(table: str) -> Path:
    return LEDGER / f"slurm-{table}.json"


def entry_key(commit: str, params: str) -> str:
    """The ledger's key of a run: its commit and params (a new commit starts a new table)."""
    return hashlib.sha256(f"{commit}\n{params}".encode()).hexdigest()[:20]


def load_ledger(table: str) -> dict[str, dict]:
    """Run key -> {row, seed, commit, job, log, earlier}: every job this checkout submitted."""
    path = ledger_path(table)
    return json.loads(path.read_text()) if path.exists() else {}


def save_ledger(table: str, ledger: Mapping[str, dict]) -> None:
    path = ledger_path(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
    tmp.replace(path)


# ------------------------------------------------------------------------------- Slurm calls
def submit(text: str, folder: Path, stem: str) -> str:
    """``sbatch`` the script ``text`` (kept as ``folder/<stem>.sbatch``); returns the job id."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.sbatch"
    path.write_text(text)
    out = run("sbatch", "--parsable", str(path)).stdout.strip()
    job = out.split(";")[0]
    if not job.isdigit():
        raise SlurmError(f"sbatch {path}: expected a job id, got {out!r}")
    return job


def active() -> dict[str, str]:
    """Job id -> state of this user's jobs that still wait or run (``squeue``)."""
    out = run("squeue", "--noheader", "--user", getpass.getuser(), "--format", "%i|%T").stdout
    states = dict(line.split("|", 1) for line in out.split() if "|" in line)
    return {job: state for job, state in states.items() if state in ACTIVE_STATES}


def final_state(job: str) -> str:
    """How a job that left the queue ended, as far as Slurm still knows (``unknown`` if not)."""
    proc = run("sacct", "--noheader", "--parsable2", "-X", "-o", "State", "-j", job, check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.split()[0]
    proc = run("scontrol", "show", "job", "--oneliner", job, check=False)
    for word in proc.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "unknown"


# ----------------------------------------------------------------------------------- one pass
@dataclass(frozen=True)
class Status:
    """Every run's state after a pass: labels, ``(label, job and state)``, ``(label, job, log,
    how it ended)``."""

    finished: tuple[str, ...] = ()
    pending: tuple[tuple[str, str], ...] = ()
    failed: tuple[tuple[str, str, str, str], ...] = ()


def sort_out(
    todo: Sequence[tuple[str, Run]],
    finished: set[str],
    ledger: Mapping[str, dict],
    waiting: Mapping[str, str],
) -> dict[str, list[tuple[str, Run]]]:
    """Each run by state: ``finished``, ``pending``, ``failed``, ``new`` (never submitted).

    Args:
        todo: (params key, run) of every row × seed.
        finished: params keys of the finished experiments of the commit.
        ledger: params key -> the last job submitted for it.
        waiting: job id -> state of the jobs still in the queue.
    """
    out: dict[str, list[tuple[str, Run]]] = {"finished": [], "pending": [], "failed": [], "new": []}
    for key, job in todo:
        entry = ledger.get(key)
        if key in finished:
            state = "finished"
        elif entry is None:
            state = "new"
        else:
            state = "pending" if entry["job"] in waiting else "failed"
        out[state].append((key, job))
    return out


def label(job: Run) -> str:
    return f"{job.row} seed {job.seed}"


def execute(
    dvc: str,
    table: str,
    todo: Sequence[tuple[str, Run]],
    finished: Callable[[], set[str]],
    opts: Options,
    *,
    resubmit_failed: bool,
    wait: bool,
    poll: float,
    log: Callable[[str], None],
) -> Status:
    """Submit the runs that have no job yet (and the failed ones on request); report them all.

    Args:
        finished: the params keys of the finished experiments of HEAD (after a pull).
        wait: poll ``squeue`` until no job of ``todo`` waits or runs, then pull and report.

    Returns:
        The state after this call (a run submitted now is pending).
    """
    commit, url = commit_and_url(opts.git_remote)
    everything = load_ledger(table)
    ledger = {
        k: everything[entry_key(commit, k)] for k, _ in todo if entry_key(commit, k) in everything
    }
    pull(dvc, opts.git_remote)
    by_state = sort_out(todo, finished(), ledger, active())
    submitting = by_state["new"] + (by_state["failed"] if resubmit_failed else [])
    if submitting:
        push_data(dvc)
        opts.logs.mkdir(parents=True, exist_ok=True)  # Slurm does not create it
    for key, job in submitting:
        text = script(job, commit, url, opts, dvc)
        job_id = submit(text, LEDGER / "scripts", f"{job.stem}-{commit[:12]}")
        earlier = ledger.get(key)
        ledger[key] = {
            "row": job.row,
            "seed": job.seed,
            "commit": commit,
            "job": job_id,
            "log": str(opts.logs.resolve() / f"{job.stem}-{job_id}.log"),
            "earlier": [*earlier["earlier"], earlier["job"]] if earlier else [],
        }
        everything[entry_key(commit, key)] = ledger[key]
        save_ledger(table, everything)
        log(f"reproduce: {job.row}  seed {job.seed}  submitted job {job_id}")
    log(
        f"reproduce: {len(todo)} runs: {len(by_state['finished'])} finished, "
        f"{len(by_state['pending'])} pending or running, {len(by_state['failed'])} failed, "
        f"{len(submitting)} submitted now"
    )
    while wait and any(ledger[k]["job"] in active() for k, _ in todo if k in ledger):
        time.sleep(poll)
    if wait:
        pull(dvc, opts.git_remote)
    by_state = sort_out(todo, finished(), ledger, active()) if wait or submitting else by_state
    waiting = active()
    return Status(
        finished=tuple(label(j) for _, j in by_state["finished"]),
        pending=tuple(
            (label(j), f"job {ledger[k]['job']} {waiting.get(ledger[k]['job'], '').lower()}")
            for k, j in by_state["pending"]
        ),
        failed=tuple(
            (label(j), ledger[k]["job"], ledger[k]["log"], final_state(ledger[k]["job"]))
            for k, j in by_state["failed"]
        ),
    )


def dry_run(dvc: str, todo: Sequence[tuple[str, Run]], opts: Options) -> str:
    """Every job script, as ``--dry-run`` prints them (nothing is checked or submitted)."""
    commit = run("git", "rev-parse", "HEAD").stdout.strip()
    url = run("git", "remote", "get-url", opts.git_remote, check=False).stdout.strip()
    return "\n".join(script(job, commit, url or opts.git_remote, opts, dvc) for _, job in todo)


def options(args: argparse.Namespace) -> Options:
    """The :class:`Options` of the parsed command line of ``tools.reproduce``.

    Raises:
        SlurmError: a negative GPU count or fewer than one CPU.
    """
    if args.slurm_gpus < 0 or args.slurm_cpus < 1:
        raise SlurmError(
            "--slurm-gpus / --slurm-cpus: expected a count >= 0 / >= 1; got "
            f"{args.slurm_gpus} / {args.slurm_cpus}"
        )
    return Options(
        partition=args.slurm_partition,
        gpus=args.slurm_gpus,
        cpus=args.slurm_cpus,
        time=args.slurm_time,
        extra=tuple(args.slurm_arg or ()),
        setup=tuple(args.slurm_setup or ()),
        git_remote=args.git_remote,
        logs=args.slurm_logs or LEDGER / "logs",
    )
