"""tools/slurm.py: the job script, the run states, and a table run on a real Slurm cluster.

The first tests need nothing but Python. The ``slurm`` tests need a cluster with a ``debug``
partition and generic ``gpu`` resources (``sudo tools/slurm_test_cluster.sh`` starts one on this
machine; they are skipped with that command as the reason without it) and run, as a user would:
a two-row, two-seed digits table at one epoch per stage submitted with ``--executor slurm``
against a bare git repository and a local-folder DVC remote standing for the shared remotes; one
job killed with ``scancel`` while it runs; the rerun reporting it failed with its log and
resubmitting it alone; and the finished table equal, number for number, to the same table run by
DVC's local queue in a fresh clone (the CPU runs are deterministic).
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Repo, copy_repo, git_init

from tools import recipes, reproduce, slurm

# Every test here starts sbatch, DVC or git processes (or a Slurm cluster).
pytestmark = pytest.mark.e2e

PARTITION = "debug"
TINY_SETS = ["-S", "pretrain.epochs=1", "-S", "finetune.epochs=1"]


def options(**change: object) -> slurm.Options:
    base = {
        "partition": "gpu",
        "gpus": 1,
        "cpus": 4,
        "time": "2:00:00",
        "extra": ("--account=lab",),
        "setup": ("module load cuda",),
        "git_remote": "origin",
        "logs": Path("/shared/logs"),
    }
    return slurm.Options(**{**base, **change})


def test_job_script_clones_the_commit_runs_the_overrides_and_pushes() -> None:
    job = slurm.Run("digits", "cdb_ce", 3, ("loss.name=cdb_ce", "data.root='/a b'", "seed=3"))
    text = slurm.script(job, "c" * 40, "git@host:lab/longtail.git", options())
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in (
        "#SBATCH --job-name=digits-cdb-ce-s3",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --time=2:00:00",
        "#SBATCH --account=lab",
        "#SBATCH --output=/shared/logs/digits-cdb-ce-s3-%j.log",
        "module load cuda",
        'git clone --quiet git@host:lab/longtail.git "$work/repo"',
        f"git checkout --quiet --detach {'c' * 40}",
        'name="digits-cdb-ce-s3-$SLURM_JOB_ID"',
        'dvc exp push origin "$name"',
    ):
        assert line in lines, line
    run = next(line for line in lines if line.startswith("dvc exp run"))
    assert run.split()[:5] == ["dvc", "exp", "run", "--pull", "--name"]
    # Every override reaches DVC as one word, whatever its characters.
    words = shlex.split(run)
    assert words[words.index("-S") :] == [
        "-S",
        "loss.name=cdb_ce",
        "-S",
        "data.root='/a b'",
        "-S",
        "seed=3",
    ]
    bare = slurm.script(job, "c" * 40, "/srv/git", options(partition=None, gpus=0, time=None))
    assert "--partition" not in bare and "--gpus" not in bare and "--time" not in bare


def test_runs_are_sorted_by_experiments_ledger_and_queue() -> None:
    runs = [(f"k{i}", slurm.Run("t", "r", i, ())) for i in range(5)]
    ledger = {"k0": {"job": "10"}, "k1": {"job": "11"}, "k2": {"job": "12"}, "k3": {"job": "13"}}
    states = slurm.sort_out(runs, {"k0", "k3"}, ledger, {"11": "RUNNING", "13": "RUNNING"})
    assert {state: [k for k, _ in got] for state, got in states.items()} == {
        "finished": ["k0", "k3"],  # an experiment came back: finished, whatever the queue says
        "pending": ["k1"],
        "failed": ["k2"],  # left the queue without an experiment
        "new": ["k4"],
    }
    assert slurm.entry_key("a" * 40, "k0") != slurm.entry_key("b" * 40, "k0")  # per commit


def test_dry_run_prints_one_script_per_row_and_seed(capsys: pytest.CaptureFixture) -> None:
    args = ["digits", "--rows", "ce,fbl", "--seeds", "0,1", "--executor", "slurm", "--dry-run"]
    assert reproduce.main([*args, "--slurm-partition", "gpu", "--slurm-gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 4
    for row in ("ce", "fbl"):
        for seed in (0, 1):
            assert f"#SBATCH --job-name=digits-{row}-s{seed}\n" in out
    assert out.count("#SBATCH --gpus-per-node=2\n") == 4
    assert reproduce.main(["digits", "--rows", "ce", "--seeds", "0", "--dry-run"]) == 0
    local = capsys.readouterr().out.splitlines()
    assert len(local) == 1 and local[0].startswith("dvc exp run --queue -S ")
    assert local[0].endswith(" -S seed=0")
    assert reproduce.main([*args, "--slurm-cpus", "0"]) == 2
    assert "--slurm-gpus / --slurm-cpus: expected a count >= 0 / >= 1; got 0 / 0" in (
        capsys.readouterr().err
    )


def test_submitting_needs_a_clean_checkout_whose_commit_is_on_the_remote(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_init(repo)
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "git")], check=True)
    repo.run("git", "remote", "add", "origin", str(tmp_path / "git"))
    monkeypatch.chdir(repo.root)
    with pytest.raises(
        slurm.SlurmError, match=r"expected commit [0-9a-f]{12} on git remote origin"
    ):
        slurm.commit_and_url("origin")
    repo.run("git", "push", "-q", "origin", "HEAD:main")
    head = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    assert slurm.commit_and_url("origin") == (head, str((tmp_path / "git").resolve()))
    (repo.root / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(slurm.SlurmError, match=r"expected a clean checkout .*\nM params.yaml"):
        slurm.commit_and_url("origin")


# ------------------------------------------------------------------------------- on a cluster
@functools.cache
def cluster_reason() -> str | None:
    """Why the cluster tests cannot run here, or None (asked once, when a cluster test runs:
    ``sinfo`` waits seconds for a controller that is down)."""
    if shutil.which("sbatch") is None:
        return "no Slurm here: `sudo tools/slurm_test_cluster.sh` starts a test cluster"
    proc = subprocess.run(
        ["sinfo", "--noheader", "--partition", PARTITION, "--format", "%t %G"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not re.search(r"^(idle|mix|alloc)\S* gpu:", proc.stdout, re.M):
        return (
            f"no up node with gpu resources in partition {PARTITION} ({proc.stdout.strip()!r}): "
            "`sudo tools/slurm_test_cluster.sh` starts the test cluster"
        )
    return None


@pytest.fixture
def _cluster() -> None:
    """Skips the test, with the reason, where no test cluster is up."""
    reason = cluster_reason()
    if reason is not None:
        pytest.skip(reason)


cluster = pytest.mark.usefixtures("_cluster")


@pytest.fixture
def shared(repo: Repo, tmp_path: Path) -> Repo:
    """The project with its data prepared, committed and pushed to a bare git repository and a
    folder DVC remote (the remotes a cluster's nodes reach)."""
    copy_repo(REPO, repo.root, ["tools"])
    git_init(repo)
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "git")], check=True)
    repo.run("git", "remote", "add", "origin", str(tmp_path / "git"))
    repo.dvc("remote", "add", "-d", "shared", str(tmp_path / "dvc"))
    repo.dvc("repro", "extract_frames")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-qm", "data and remotes")
    repo.run("git", "push", "-q", "origin", "HEAD:main")
    return repo


def squeue_state(job: str) -> str:
    out = subprocess.run(
        ["squeue", "--noheader", "--jobs", job, "--format", "%T"], capture_output=True, text=True
    ).stdout
    return out.strip()


@pytest.mark.slurm
@cluster
def test_table_on_slurm_kill_resubmit_and_equal_local_queue(shared: Repo, tmp_path: Path) -> None:
    table = recipes.table("digits")
    rows = ["ce", "cdb_ce"]
    command = [sys.executable, "-m", "tools.reproduce", "digits", "--seeds", "0,1"]
    command += ["--rows", ",".join(rows), *TINY_SETS, "--poll", "1"]
    on_slurm = [*command, "--executor", "slurm", "--slurm-partition", PARTITION]
    on_slurm += ["--slurm-gpus", "1", "--slurm-logs", str(tmp_path / "logs")]

    first = shared.run(*on_slurm, check=False)
    assert first.returncode == 1, first.stderr  # submitted, nothing finished yet
    submitted = re.findall(
        r"^reproduce: (\S+)  seed (\d)  submitted job (\d+)$", first.stderr, re.M
    )
    assert [(r, int(s)) for r, s, _ in submitted] == [(r, s) for r in rows for s in (0, 1)]
    assert "4 runs: 0 finished, 0 pending or running, 0 failed, 4 submitted now" in first.stderr
    assert "Pending: ce seed 0 (job " in first.stdout

    # Kill the first job while it runs (two run at once: the node has two "GPUs").
    victim_row, victim_seed, victim = submitted[0]
    while (state := squeue_state(victim)) == "PENDING":
        subprocess.run(["sleep", "1"], check=True)
    assert state == "RUNNING", f"job {victim} ended before it could be killed: {state!r}"
    subprocess.run(["scancel", victim], check=True)

    second = shared.run(*on_slurm, "--wait", check=False)
    assert second.returncode == 1, second.stderr
    assert "0 submitted now" in second.stderr  # a failed run is not resubmitted unasked
    log = tmp_path / "logs" / f"digits-{victim_row.replace('_', '-')}-s{victim_seed}-{victim}.log"
    failed = f"Failed: {victim_row} seed {victim_seed} (job {victim} cancelled; log {log})"
    assert failed in second.stdout
    assert "CANCELLED" in log.read_text()
    assert f"Missing runs: {victim_row} (1 of 2)." in second.stdout

    third = shared.run(*on_slurm, "--resubmit-failed", "--wait", check=False)
    assert third.returncode == 0, third.stdout + third.stderr
    again = re.findall(r"^reproduce: (\S+)  seed (\d)  submitted job (\d+)$", third.stderr, re.M)
    assert [(r, s) for r, s, _ in again] == [(victim_row, victim_seed)]
    assert "4 runs: 3 finished, 0 pending or running, 1 failed, 1 submitted now" in third.stderr
    for line in [ln for ln in third.stdout.splitlines() if ln.startswith("| `")][: len(rows)]:
        assert line.split(" | ")[4] == "2", line  # n = 2 seeds in every row
    show = yaml.safe_load(shared.dvc("exp", "show", "--json").stdout)
    names = sorted(e["name"] for b in show for e in b.get("experiments") or [])
    assert len(names) == 4 and all(re.fullmatch(r"digits-[a-z-]+-s\d-\d+", n) for n in names)

    # The same table through DVC's local queue, in a fresh clone of the shared remotes.
    local = Repo(tmp_path / "local")
    subprocess.run(
        ["git", "clone", "-qb", "main", str(tmp_path / "git"), str(local.root)], check=True
    )
    local.run("git", "config", "user.email", "test@example.com")
    local.run("git", "config", "user.name", "test")
    local.dvc("pull", "download", "inject_imbalance", "extract_frames")
    queued = local.run(*command, "--jobs", "1")
    assert "4 runs: 0 reused, 0 already queued, 4 queued now" in queued.stderr
    assert queued.stdout == third.stdout
    assert table.key in queued.stdout


@pytest.mark.slurm
@cluster
def test_multinode_sbatch_script_trains_evaluates_and_pushes(shared: Repo, tmp_path: Path) -> None:
    """tools/slurm_multinode.sbatch as documented, on the test cluster's one node: two tasks
    stand for two nodes (two torchrun agents, ``--nnodes 2``), one process each."""
    params = yaml.safe_load((shared.root / "params.yaml").read_text())
    assert params["dist"]["nproc"] == 1  # one process per "node"
    shared.dvc("push")
    for name in ("data", "models", "dvclive", "plots", "checkpoints"):
        shutil.rmtree(shared.root / name, ignore_errors=True)  # every input comes from the remote
    log = tmp_path / "multinode.log"
    submit = ["sbatch", "--parsable", "--wait", f"--partition={PARTITION}", "--nodes=1"]
    submit += ["--ntasks-per-node=2", "--gpus-per-node=1", "--cpus-per-task=1", f"--output={log}"]
    done = shared.run(*submit, "tools/slurm_multinode.sbatch", check=False)
    text = log.read_text()
    assert done.returncode == 0, text
    for stage in ("pretrain", "finetune"):
        assert f"[{stage}] world size 2 (gloo): per-rank batch 32, global batch 64" in text
        assert text.count(f"[{stage}] epoch 2/2") == 1  # rank 0 alone prints
    assert "Running stage 'evaluate'" in text
    assert "Running stage 'pretrain'" not in text  # dvc commit recorded what the agents trained
    status = shared.dvc("status", "--json")
    assert yaml.safe_load(status.stdout) == {}, status.stdout
    result = yaml.safe_load((shared.root / "metrics/evaluate.json").read_text())
    assert result["num_many"] + result["num_medium"] + result["num_few"] == 10
    cloud = shared.dvc("status", "--cloud", "--json")
    assert yaml.safe_load(cloud.stdout) == {}, cloud.stdout  # everything pushed
