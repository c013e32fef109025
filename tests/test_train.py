"""The training loop: exact resume (epoch ends and inside an epoch), NaN stops, determinism.

A tiny conv net on 48 random 6x6 images in memory; every run takes milliseconds. "Bit for bit" is
``torch.equal`` on every tensor of the final states and ``==`` on every metric except the
wall-clock ``seconds``.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import trainers
from conftest import Crash, CrashingSource
from torch import nn

from longtail import losses, samplers, train
from longtail.config import ConfigError, OptimConfig
from longtail.data.base import TensorSource
from longtail.losses import LongTailLoss, cross_entropy_loss
from longtail.train import Checkpointer, Trainer, TrainingDiverged, lr_factor

CLASSES = 4
COUNTS = [20, 14, 9, 5]  # long-tailed train counts, 48 images
EPOCHS = 4
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------ fixtures
class TinyNet(nn.Module):
    """conv -> BN -> ReLU -> mean pool -> linear; returns (logits, features) like every net."""

    def __init__(self, init_seed: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, CLASSES)
        gen = torch.Generator().manual_seed(init_seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.bn(self.conv(x))).mean((2, 3))  # (B, 6)
        return self.fc(f), f


def source(n_per_class: list[int], seed: int) -> TensorSource:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    images = torch.randint(0, 256, (len(labels), 1, 6, 6), generator=gen, dtype=torch.uint8)
    return TensorSource(images, labels, mean=(0.5,), std=(0.25,), padding=1, flip=True, device=CPU)


def crash_after(last: int) -> Callable[[int, dict], None]:
    """A ``log_epoch`` that crashes once epoch ``last`` (0-based) is checkpointed."""

    def log_epoch(epoch: int, metrics: dict) -> None:
        if epoch == last:
            raise Crash

    return log_epoch


def make_trainer(
    tmp_path: Path,
    *,
    loss: LongTailLoss | None = None,
    init_seed: int = 0,
    train_source: object = None,
    signature: str = "sig",
    lines: list[str] | None = None,
    carry: dict | None = None,
    **optim: object,
) -> Trainer:
    options = {
        "epochs": EPOCHS,
        "batch_size": 16,
        "lr": 0.05,
        "warmup_epochs": 1,
        "schedule": "cosine",
        **optim,
    }
    log = lines.append if lines is not None else (lambda line: None)
    return trainers.make_trainer(
        TinyNet(init_seed),
        train_source if train_source is not None else source(COUNTS, 1),
        source([3] * CLASSES, 2),
        COUNTS,
        optim=OptimConfig(**options),
        loss=loss if loss is not None else "ce",
        sampler=samplers.create("class_balanced", source(COUNTS, 1).labels, seed=3),
        seed=5,
        many_shot=15,
        few_shot=8,
        stage="pretrain",
        loss_name=loss.__class__.__name__ if loss is not None else "ce",
        checkpointer=Checkpointer(tmp_path / "pretrain.ckpt", signature, log=log),
        log=log,
        carry=carry,
    )


def without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def assert_same_state(a: dict, b: dict) -> None:
    """Every tensor equal (torch.equal), every other leaf equal, same keys, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    else:
        assert a == b


def assert_same_run(a: Trainer, b: Trainer) -> None:
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    assert_same_state(a.optimizer.state_dict(), b.optimizer.state_dict())
    assert_same_state(a.scheduler.state_dict(), b.scheduler.state_dict())
    assert_same_state(a.loss.state_dict(), b.loss.state_dict())
    assert without_seconds(a.history) == without_seconds(b.history)


@pytest.fixture
def deterministic() -> Iterator[None]:
    """``set_determinism(True)`` for one test, then the process's previous switches."""
    before = torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    train.set_determinism(True, CPU)
    yield
    torch.use_deterministic_algorithms(before)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


@pytest.fixture
def always_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that moves an hour per reading: a mid-epoch checkpoint after every step."""
    ticks = itertools.count()
    monkeypatch.setattr(train.time, "monotonic", lambda: 3600.0 * next(ticks))


# ------------------------------------------------------------------------------------ schedule
def test_lr_factor_closed_forms() -> None:
    warm = OptimConfig(epochs=4, warmup_epochs=2, schedule="cosine")
    assert lr_factor(0, 5, warm) == 1 / 10 and lr_factor(9, 5, warm) == 1.0
    assert lr_factor(15, 5, warm) == pytest.approx(0.5)  # halfway through the 2 cosine epochs
    step = OptimConfig(epochs=6, schedule="step", milestones=(2, 4), lr_decay=0.1)
    assert [lr_factor(s, 1, step) for s in range(6)] == [1, 1, 0.1, 0.1, 0.1**2, 0.1**2]
    assert lr_factor(4, 1, OptimConfig(epochs=4, schedule="cosine")) == 0.0


def ldam_drw_adjust_learning_rate(epoch: int, lr: float, first: int, second: int) -> float:
    """kaidic/LDAM-DRW cifar_train.py ``adjust_learning_rate``, called with the 0-based epoch
    before the epoch trains; its milestones 160 / 180 are ``first`` / ``second`` here."""
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    if epoch > second:
        return lr * 0.0001
    if epoch > first:
        return lr * 0.01
    return lr


def step_lrs(trainer: Trainer) -> list[float]:
    """Trains ``trainer`` and returns the LR of every optimiser step, in order."""
    seen: list[float] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"])
    )
    trainer.fit()
    return seen


LDAM_DRW = {"schedule": "step", "milestones": (6, 7), "lr_decay": 0.01, "warmup_epochs": 5}


def test_per_epoch_lr_is_ldam_drws_adjust_learning_rate(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, epochs=8, lr_update="epoch", **LDAM_DRW)
    steps = trainer.steps_per_epoch  # 48 images, batch 16: 3
    want = [ldam_drw_adjust_learning_rate(e, 0.05, 6, 7) for e in range(8) for _ in range(steps)]
    assert step_lrs(trainer) == pytest.approx(want, rel=1e-12, abs=0)
    assert want[:steps] == [0.01] * steps  # warmup epoch 0 holds lr / 5, not a ramp from ~0


def test_per_epoch_lr_carries_over_a_continued_optimizer(tmp_path: Path) -> None:
    """DRW as one run: finetune.optimizer: continue picks the schedule up at pretrain's end."""
    pre = make_trainer(tmp_path / "pre", epochs=6, lr_update="epoch", **LDAM_DRW)
    first = step_lrs(pre)
    fine = make_trainer(
        tmp_path / "fine", epochs=2, lr_update="epoch", carry=pre.carry_state(), **LDAM_DRW
    )
    steps = pre.steps_per_epoch
    want = [ldam_drw_adjust_learning_rate(e, 0.05, 6, 7) for e in range(8) for _ in range(steps)]
    assert first + step_lrs(fine) == pytest.approx(want, rel=1e-12, abs=0)


def torch_schedule(make: Callable, epochs: int, before: bool) -> list[float]:
    """Per-epoch LRs of a torch scheduler stepped once per epoch, after it or before it."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    lrs = []
    for _ in range(epochs):
        if before:
            opt.step()  # keeps torch from warning about the order; no gradient, nothing moves
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        if not before:
            opt.step()
            sched.step()
    return lrs


@pytest.mark.parametrize("spe", [1, 4])
def test_per_epoch_cosine_is_torchs_cosine_annealing(spe: int) -> None:
    cos = OptimConfig(epochs=7, schedule="cosine", lr_update="epoch")
    ours = [lr_factor(s, spe, cos) for s in range(7 * spe)]
    annealing = torch_schedule(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7), 7, False)
    assert ours == pytest.approx([lr for lr in annealing for _ in range(spe)], rel=1e-12, abs=1e-15)
    # classifier-balancing steps the scheduler at the top of each epoch: epoch e runs at e + 1
    kang = OptimConfig(epochs=7, schedule="cosine", lr_update="epoch_prestep")
    ours = [lr_factor(s, spe, kang) for s in range(7 * spe)]
    annealing = torch_schedule(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7), 7, True)
    assert ours == pytest.approx([lr for lr in annealing for _ in range(spe)], rel=1e-12, abs=1e-15)
    assert ours[-1] == pytest.approx(0.0, abs=1e-15)  # its last epoch trains at eta_min


def test_per_epoch_step_schedule_is_torchs_step_lr() -> None:
    for lr_update, before in (("epoch", False), ("epoch_prestep", True)):
        cfg = OptimConfig(epochs=9, schedule="step", milestones=(3, 6, 9), lr_update=lr_update)
        ours = [lr_factor(s, 2, cfg) for s in range(18)]
        step = torch_schedule(lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.1), 9, before)
        assert ours == pytest.approx([lr for lr in step for _ in range(2)], rel=1e-12)


def test_per_epoch_warmup_holds_each_epoch() -> None:
    cfg = OptimConfig(epochs=6, warmup_epochs=2, schedule="cosine", lr_update="epoch")
    ours = [lr_factor(s, 3, cfg) for s in range(18)]
    cosine = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert ours == pytest.approx([f for f in [0.5, 1.0, *cosine] for _ in range(3)], rel=1e-12)
    per_step = OptimConfig(epochs=6, warmup_epochs=2, schedule="cosine")
    assert [lr_factor(s, 3, per_step) for s in range(6)] == pytest.approx(
        [(s + 1) / 6 for s in range(6)]
    )


# ------------------------------------------------------------------------------------- resume
def test_fresh_runs_are_identical(tmp_path: Path, deterministic: None) -> None:
    a = make_trainer(tmp_path / "a")
    b = make_trainer(tmp_path / "b")
    a.fit()
    b.fit()
    assert_same_run(a, b)
    assert len(a.history) == EPOCHS


def test_resume_at_epoch_end_is_bit_identical(tmp_path: Path, deterministic: None) -> None:
    reference = make_trainer(tmp_path / "ref")
    reference.fit()

    killed = make_trainer(tmp_path / "run")
    killed.log_epoch = crash_after(1)  # once the second epoch's checkpoint is on disk
    with pytest.raises(Crash):
        killed.fit()

    lines: list[str] = []
    resumed = make_trainer(tmp_path / "run", init_seed=99, lines=lines)  # init is overwritten
    logged: list[int] = []
    resumed.log_epoch = lambda epoch, metrics: logged.append(epoch)
    assert resumed.resume()
    assert lines[0].startswith("[pretrain] resuming from epoch 3/4 (")
    resumed.fit()
    assert logged == [2, 3]
    assert_same_run(reference, resumed)
    assert resumed.logger_step == EPOCHS


def test_resume_inside_an_epoch_is_bit_identical(
    tmp_path: Path, deterministic: None, always_due: None
) -> None:
    reference = make_trainer(tmp_path / "ref")
    reference.fit()
    # 48 samples, batch 16: 3 steps per epoch; the crash comes before step 2 of epoch 2 (1-based).
    crashing = CrashingSource(source(COUNTS, 1), after=4)
    with pytest.raises(Crash):
        make_trainer(tmp_path / "run", train_source=crashing).fit()
    state = torch.load(tmp_path / "run" / "pretrain.ckpt", weights_only=False)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)
    assert state["aug_generator"] is not None and state["accumulators"]["count"] == 16

    lines: list[str] = []
    resumed = make_trainer(tmp_path / "run", init_seed=7, lines=lines)
    assert resumed.resume()
    assert lines[0].startswith("[pretrain] resuming from epoch 2/4, step 1/3 (")
    resumed.fit()
    assert_same_run(reference, resumed)


def test_cdb_ce_weights_are_restored(tmp_path: Path, deterministic: None) -> None:
    def cdb() -> LongTailLoss:
        return losses.create("cdb_ce", COUNTS, tau=1.5)

    reference = make_trainer(tmp_path / "ref", loss=cdb())
    reference.fit()
    assert not torch.equal(reference.loss.weights, torch.ones(CLASSES))  # they were updated

    killed = make_trainer(tmp_path / "run", loss=cdb())
    killed.log_epoch = crash_after(1)
    with pytest.raises(Crash):
        killed.fit()
    stored = torch.load(tmp_path / "run" / "pretrain.ckpt", weights_only=False)["loss"]
    assert torch.equal(stored["weights"], killed.loss.weights)

    resumed = make_trainer(tmp_path / "run", loss=cdb())
    assert torch.equal(resumed.loss.weights, torch.ones(CLASSES))  # before loading: all ones
    assert resumed.resume()
    assert torch.equal(resumed.loss.weights, stored["weights"])
    resumed.fit()
    assert_same_run(reference, resumed)


def test_checkpoint_contents(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, epochs=2)
    trainer.fit()
    state = torch.load(tmp_path / "pretrain.ckpt", weights_only=False)
    for key in ("model", "optimizer", "scheduler", "loss", "sampler", "rng", "history"):
        assert key in state
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert (state["epoch"], state["step_in_epoch"], state["logger_step"]) == (2, 0, 2)
    assert state["signature"] == "sig" and state["sampler"]["epoch"] == 1


def test_epoch_line_comes_after_its_checkpoint(tmp_path: Path) -> None:
    seen: list[int] = []

    def line(text: str) -> None:
        if " epoch " in text:
            seen.append(torch.load(tmp_path / "pretrain.ckpt", weights_only=False)["epoch"])

    trainer = make_trainer(tmp_path, epochs=3)
    trainer.log = line
    trainer.fit()
    assert seen == [1, 2, 3]


def test_finished_checkpoint_trains_nothing(tmp_path: Path) -> None:
    done = make_trainer(tmp_path)
    done.fit()
    lines: list[str] = []
    again = make_trainer(tmp_path, init_seed=3, lines=lines)
    again.log_epoch = lambda epoch, metrics: pytest.fail("no epoch may run")
    assert again.resume()
    assert lines == [
        f"[pretrain] {tmp_path / 'pretrain.ckpt'} holds the finished run (4/4 epochs): "
        "nothing to train, rewriting the outputs from it"
    ]
    assert again.fit() == again.history
    assert_same_run(done, again)


# ---------------------------------------------------------------------- checkpoints not loaded
@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -1])
def test_truncated_checkpoint_is_never_loaded(tmp_path: Path, keep: float) -> None:
    make_trainer(tmp_path, epochs=2).fit()
    path = tmp_path / "pretrain.ckpt"
    blob = path.read_bytes()
    cut = int(len(blob) * keep) if isinstance(keep, float) else keep
    path.write_bytes(blob[:cut])  # what a copy interrupted half-way leaves
    lines: list[str] = []
    trainer = make_trainer(tmp_path, epochs=2, lines=lines)
    assert not trainer.resume()
    assert trainer.start_epoch == 0 and trainer.history == []
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint {path} is unreadable (")
    assert lines[0].endswith("); starting fresh")
    trainer.fit()  # a fresh run writes a readable checkpoint over it
    assert torch.load(path, weights_only=False)["epoch"] == 2


def test_changed_signature_starts_fresh(tmp_path: Path) -> None:
    make_trainer(tmp_path, epochs=2, signature="tau=1.5").fit()
    lines: list[str] = []
    trainer = make_trainer(tmp_path, epochs=2, signature="tau=2.0", lines=lines)
    assert not trainer.resume() and trainer.start_epoch == 0
    assert lines == [
        f"checkpoint {tmp_path / 'pretrain.ckpt'} has a different signature (stored tau=1.5, "
        "now tau=2.0: params, code or input data changed); starting fresh"
    ]


def test_foreign_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "pretrain.ckpt")
    lines: list[str] = []
    assert not make_trainer(tmp_path, lines=lines).resume()
    assert lines == [
        f"checkpoint {tmp_path / 'pretrain.ckpt'} is not a training checkpoint; starting fresh"
    ]


# ------------------------------------------------------------------------------------ NaN / inf
class NanFromEpoch(LongTailLoss):
    """CE multiplied by a buffer that becomes NaN from epoch ``bad`` on (a forced divergence)."""

    def __init__(self, class_counts: list[int], *, bad: int) -> None:
        super().__init__(class_counts)
        self.bad = bad
        self.register_buffer("scale", torch.ones(()))

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.scale.fill_(float("nan") if epoch >= self.bad else 1.0)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor):
        return cross_entropy_loss(logits, targets) * self.scale


class _InfGrad(torch.autograd.Function):
    """Identity forward; infinite gradient backward (finite loss, weights blow up)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


class InfGradFromEpoch(NanFromEpoch):
    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor):
        if bool(self.scale.isnan()):  # test only: a host sync is fine here
            logits = _InfGrad.apply(logits)
        return cross_entropy_loss(logits, targets)


def test_nan_loss_stops_with_stage_epoch_loss_and_lr(tmp_path: Path) -> None:
    trainer = make_trainer(
        tmp_path, loss=NanFromEpoch(COUNTS, bad=2), schedule="constant", warmup_epochs=0
    )
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    assert str(err.value) == (
        "[pretrain] training diverged in epoch 3/4, step 3/3: loss 'NanFromEpoch' is nan; "
        f"last learning rate 0.05. The last good checkpoint is kept at {tmp_path / 'pretrain.ckpt'}"
        ". Lower the learning rate (pretrain.lr), add warmup (pretrain.warmup_epochs) or check "
        "the loss options."
    )
    state = torch.load(tmp_path / "pretrain.ckpt", weights_only=False)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())


def test_non_finite_weights_stop_even_with_a_finite_loss(tmp_path: Path) -> None:
    # batch 48 = one step per epoch: the bad step's loss is finite, its update is not.
    trainer = make_trainer(
        tmp_path, loss=InfGradFromEpoch(COUNTS, bad=1), batch_size=48, warmup_epochs=0
    )
    with pytest.raises(TrainingDiverged, match=r"epoch 2/4, step 1/1: the network's weights"):
        trainer.fit()
    assert torch.load(tmp_path / "pretrain.ckpt", weights_only=False)["epoch"] == 1


def test_nan_inside_an_epoch_is_never_checkpointed(tmp_path: Path, always_due: None) -> None:
    trainer = make_trainer(tmp_path, loss=NanFromEpoch(COUNTS, bad=1))
    with pytest.raises(TrainingDiverged, match=r"epoch 2/4, step 1/3: loss 'NanFromEpoch' is nan"):
        trainer.fit()
    state = torch.load(tmp_path / "pretrain.ckpt", weights_only=False)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)  # the end of the last good epoch


# ------------------------------------------------------------------------------ device, RNG
def test_cuda_without_a_gpu_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match=r"device: cuda was requested .* set device: auto"):
        train.resolve_device("cuda")
    assert train.resolve_device("auto") == CPU


def test_cuda_determinism_switches(monkeypatch: pytest.MonkeyPatch, deterministic: None) -> None:
    # Only flags and the environment are touched (no CUDA call), so this runs without a GPU.
    import torch._inductor.config as inductor

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    for module, name in [
        (torch.backends.cudnn, "deterministic"),
        (torch.backends.cudnn, "benchmark"),
        (inductor, "deterministic"),
    ]:
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    cuda = torch.device("cuda")
    train.set_determinism(True, cuda)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert inductor.deterministic
    train.set_determinism(False, cuda)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark


def test_rng_state_round_trip() -> None:
    state = train.rng_state()
    first = (torch.rand(3), random.random(), np.random.rand())
    train.set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
