"""Never lose work, end to end: SIGKILL a training stage, rerun it, get the uninterrupted result.

The stages run as subprocesses of a copy of the repository on digits-LT at tiny settings (159
train images, batch 64, ResNet-32). Each kill waits on an event, never on a clock: the test reads
the stage's output until the line of its second epoch, which the training loop prints only once
that epoch's checkpoint is on disk, then sends SIGKILL. "Equal" means ``torch.equal`` on every
tensor and ``==`` on every metric and DVCLive curve except the wall-clock ``seconds``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, TRACKED, Repo, copy_repo, merge

from longtail import config, data, pipeline
from longtail.train import TrainingDiverged

PRETRAIN_EPOCHS, FINETUNE_EPOCHS = 6, 5
SMALL = merge(
    TINY,
    {
        "data": {"n_max": 40, "imbalance": 10, "val_per_class": 5, "test_per_class": 5},
        "pretrain": {"epochs": PRETRAIN_EPOCHS},
        "finetune": {"epochs": FINETUNE_EPOCHS},
        "loss": {"name": "cdb_ce", "tau": 1.0},
        "determinism": True,
        "device": "cpu",
    },
)
OUTPUTS = {
    "pretrain": [
        "checkpoints/pretrain.ckpt",
        "models/pretrain.pt",
        "metrics/pretrain.json",
        "dvclive/pretrain",
    ],
    "finetune": [
        "checkpoints/finetune.ckpt",
        "models/final.pt",
        "metrics/finetune.json",
        "dvclive/finetune",
    ],
}


# ------------------------------------------------------------------------------------ helpers


def prepare_data(root: Path) -> None:
    """download, inject_imbalance and extract_frames, in this process (their own tests run them
    as stages)."""
    cfg = config.load(root / "params.yaml")
    family = data.get(cfg.data.name)
    raw, prepared = root / "data/raw" / cfg.data.name, root / "data/prepared"
    family.download(cfg.data, raw)
    family.prepare(cfg.data, cfg.seed, raw, prepared)
    family.extract(cfg.frames, raw, prepared, root / "data/frames")


def remove(repo: Repo, stage: str) -> None:
    for name in OUTPUTS[stage]:
        path = repo.root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def kill_after_epoch(repo: Repo, stage: str, epoch: int) -> str:
    """Start ``stage``, SIGKILL it once its line for ``epoch`` (1-based) appears; its output."""
    env = {**repo.env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=repo.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in proc.stdout:  # blocks on the child's output: no clock involved
        seen.append(line)
        if line.startswith(f"[{stage}] epoch {epoch}/"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    seen.append(proc.stdout.read())
    proc.wait()
    output = "".join(seen)
    assert proc.returncode == -signal.SIGKILL, f"the stage ended on its own:\n{output}"
    return output


def checkpoint(repo: Repo, stage: str) -> dict:
    return torch.load(repo.root / f"checkpoints/{stage}.ckpt", weights_only=False)


def metrics(repo: Repo, stage: str, drop: tuple[str, ...] = ("seconds",)) -> str:
    """The stage's metrics JSON without ``drop``, as canonical text (NaN compares equal)."""
    blob = json.loads((repo.root / f"metrics/{stage}.json").read_text())
    return json.dumps({k: v for k, v in blob.items() if k not in drop}, sort_keys=True)


def curves(repo: Repo, stage: str) -> dict[str, str]:
    """Every DVCLive history file (text) except the wall-clock one, and the summary."""
    live = repo.root / "dvclive" / stage
    out = {
        str(p.relative_to(live)): p.read_text()
        for p in sorted(live.rglob("*.tsv"))
        if p.name != "seconds.tsv"
    }
    summary = json.loads((live / "metrics.json").read_text())
    summary.pop("seconds")
    out["metrics.json"] = json.dumps(summary, sort_keys=True)
    return out


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_model(repo: Repo, reference: Repo, name: str) -> None:
    mine, theirs = repo.root / "models" / name, reference.root / "models" / name
    mine_state = torch.load(mine, weights_only=False)["state_dict"]
    assert_same_tensors(mine_state, torch.load(theirs, weights_only=False)["state_dict"])
    assert mine.read_bytes() == theirs.read_bytes()  # same md5 for DVC: downstream stays cached


def epoch_lines(output: str, stage: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^\[{stage}\] epoch (\d+)/", output, re.MULTILINE)]


def no_temps(repo: Repo) -> list[Path]:
    return [p for d in ("checkpoints", "models") for p in (repo.root / d).glob("*.tmp")]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """Prepared data plus uninterrupted pretrain and finetune (CDB-CE) runs."""
    root = tmp_path_factory.mktemp("reference")
    repo = copy_repo(REPO, root, TRACKED)
    repo.params(SMALL)
    prepare_data(root)
    repo.stage("pretrain")
    repo.stage("finetune")
    return repo


@pytest.fixture
def clone(reference: Repo, tmp_path: Path) -> Repo:
    """A copy of the reference repository, outputs included, for one test to change."""
    names = [*TRACKED, "data", "checkpoints", "models", "metrics", "dvclive"]
    return copy_repo(reference.root, tmp_path / "repo", names)


# -------------------------------------------------------------------------------- the kill tests
def test_two_fresh_runs_give_identical_results(clone: Repo, reference: Repo) -> None:
    remove(clone, "pretrain")
    output = clone.stage("pretrain").stdout
    assert "resuming" not in output and "finished run" not in output
    assert metrics(clone, "pretrain") == metrics(reference, "pretrain")
    assert_same_model(clone, reference, "pretrain.pt")
    assert curves(clone, "pretrain") == curves(reference, "pretrain")


def test_sigkill_in_pretrain_then_rerun_equals_uninterrupted(clone: Repo, reference: Repo) -> None:
    remove(clone, "pretrain")
    kill_after_epoch(clone, "pretrain", 2)
    done = checkpoint(clone, "pretrain")["epoch"]
    assert 2 <= done < PRETRAIN_EPOCHS
    assert not (clone.root / "models/pretrain.pt").exists()

    rerun = clone.stage("pretrain").stdout
    expected = f"[pretrain] resuming from epoch {done + 1}/{PRETRAIN_EPOCHS} ("
    assert expected in rerun
    assert epoch_lines(rerun, "pretrain") == list(range(done + 1, PRETRAIN_EPOCHS + 1))
    assert metrics(clone, "pretrain") == metrics(reference, "pretrain")
    assert_same_model(clone, reference, "pretrain.pt")
    assert curves(clone, "pretrain") == curves(reference, "pretrain")
    mine, theirs = checkpoint(clone, "pretrain"), checkpoint(reference, "pretrain")
    assert mine["signature"] == theirs["signature"]
    states = zip(
        mine["optimizer"]["state"].values(), theirs["optimizer"]["state"].values(), strict=True
    )
    for a, b in states:
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert no_temps(clone) == []


def test_sigkill_in_finetune_restores_cdb_ce_weights(clone: Repo, reference: Repo) -> None:
    remove(clone, "finetune")
    kill_after_epoch(clone, "finetune", 2)
    killed = checkpoint(clone, "finetune")
    assert 2 <= killed["epoch"] < FINETUNE_EPOCHS
    assert not torch.equal(killed["loss"]["weights"], torch.ones(10))  # measured on val

    rerun = clone.stage("finetune").stdout
    assert f"[finetune] resuming from epoch {killed['epoch'] + 1}/{FINETUNE_EPOCHS} (" in rerun
    assert metrics(clone, "finetune") == metrics(reference, "finetune")
    assert_same_model(clone, reference, "final.pt")
    assert curves(clone, "finetune") == curves(reference, "finetune")
    assert_same_tensors(
        checkpoint(clone, "finetune")["loss"], checkpoint(reference, "finetune")["loss"]
    )


def test_kill_after_last_checkpoint_rewrites_outputs_only(clone: Repo, reference: Repo) -> None:
    # Every output is written atomically, so a kill between the last checkpoint and the end of the
    # stage leaves each output old or absent; absent is the harder case.
    for name in ("models/pretrain.pt", "metrics/pretrain.json"):
        (clone.root / name).unlink()
    shutil.rmtree(clone.root / "dvclive/pretrain")
    rerun = clone.stage("pretrain").stdout
    assert (
        f"holds the finished run ({PRETRAIN_EPOCHS}/{PRETRAIN_EPOCHS} epochs): nothing to train"
        in rerun
    )
    assert epoch_lines(rerun, "pretrain") == []
    assert metrics(clone, "pretrain", drop=()) == metrics(reference, "pretrain", drop=())
    assert_same_model(clone, reference, "pretrain.pt")
    assert curves(clone, "pretrain") == curves(reference, "pretrain")


def test_changed_param_starts_fresh(clone: Repo, reference: Repo) -> None:
    # dvc exp run -S loss.tau=2.0 after a tau=1.0 run: the stored checkpoint is not used.
    clone.params({"loss": {"tau": 2.0}})
    rerun = clone.stage("finetune").stdout
    assert "checkpoints/finetune.ckpt has a different signature" in rerun
    assert "starting fresh" in rerun and "resuming" not in rerun
    assert epoch_lines(rerun, "finetune") == list(range(1, FINETUNE_EPOCHS + 1))
    assert checkpoint(clone, "finetune")["meta"]["loss"]["tau"] == 2.0
    assert metrics(clone, "finetune") != metrics(reference, "finetune")


# ----------------------------------------------------------------------------- signature inputs
def test_signature_follows_code_and_manifests(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "code").mkdir()
    (tmp_path / "code/loss.py").write_text("tau = 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.csv").write_text("label\n0\n")
    (tmp_path / "data/train_images.npy").write_bytes(b"\x00" * 8)
    inputs = [Path("code"), Path("data")]
    base = pipeline.signature({"lr": 0.1}, inputs)
    assert pipeline.signature({"lr": 0.1}, inputs) == base
    assert pipeline.signature({"lr": 0.2}, inputs) != base
    changes = {
        "code/loss.py": "tau = 2\n",  # code: by content
        "data/train.csv": "label\n1\n",  # manifest: by content
        "data/train_images.npy": b"\x00" * 9,  # array: by name and size
    }
    for name, new in changes.items():
        old = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(new.encode() if isinstance(new, str) else new)
        assert pipeline.signature({"lr": 0.1}, inputs) != base, name
        (tmp_path / name).write_bytes(old)
    (tmp_path / "code/__pycache__").mkdir()
    (tmp_path / "code/__pycache__/loss.pyc").write_bytes(b"cache")
    assert pipeline.signature({"lr": 0.1}, inputs) == base
    with pytest.raises(FileNotFoundError, match=r"missing is missing: run the stage"):
        pipeline.signature({}, [Path("missing")])


# ---------------------------------------------------------------------------------- DVCLive replay
def test_replayed_curves_equal_live_ones(tmp_path: Path) -> None:
    history = [
        {"train/loss": 2.5 - e, "lr": 0.1 / (e + 1), "val/top1": 10.0 * e, "epoch": e}
        for e in range(3)
    ]
    live = pipeline.EpochLogger(tmp_path / "live")
    for epoch, m in enumerate(history):
        live(epoch, m)
    live.close()
    # A killed run logged epoch 3 to DVCLive but its checkpoint holds 2 epochs: replay rebuilds.
    replayed_dir = tmp_path / "replayed"
    stale = pipeline.EpochLogger(replayed_dir)
    for epoch, m in enumerate(history):
        stale(epoch, m)
    stale.live = None
    resumed = pipeline.EpochLogger(replayed_dir)
    resumed.replay(history[:2])
    assert resumed.step == 2
    resumed(2, history[2])
    resumed.close()
    files = sorted(p.relative_to(tmp_path / "live") for p in (tmp_path / "live").rglob("*.*"))
    assert files == sorted(p.relative_to(replayed_dir) for p in replayed_dir.rglob("*.*"))
    for name in files:
        assert (replayed_dir / name).read_text() == (tmp_path / "live" / name).read_text(), name
    assert (tmp_path / "live/plots/metrics/train/loss.tsv").read_text() == (
        "step\tloss\n0\t2.5\n1\t1.5\n2\t0.5\n"
    )


# --------------------------------------------------------------------------- the stage's message
def test_divergence_stops_the_stage_with_its_message(capsys: pytest.CaptureFixture) -> None:
    message = (
        "[pretrain] training diverged in epoch 3/6, step 3/3: loss 'ce' is nan; last learning "
        "rate 0.05. The last good checkpoint is kept at checkpoints/pretrain.ckpt. Lower the "
        "learning rate (pretrain.lr), add warmup (pretrain.warmup_epochs) or check the loss "
        "options."
    )

    def main() -> None:
        raise TrainingDiverged(message)

    with pytest.raises(SystemExit) as exit_:
        pipeline.run_stage(main)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_ctrl_c_says_how_to_resume(capsys: pytest.CaptureFixture) -> None:
    def main() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        pipeline.run_stage(main)
    assert exit_.value.code == 130
    assert "run dvc repro again to continue" in capsys.readouterr().err
