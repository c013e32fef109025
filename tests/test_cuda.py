"""The CUDA suite: every branch of the training path that only a GPU takes (``pytest -m cuda``).

On CUDA the defaults switch on what the CPU never runs: bf16 autocast, channels_last,
``torch.compile`` with static shapes, fused SGD, cuDNN/cuBLAS determinism, augmentation and sampling
draws from device generators, NCCL. Each test here is either CUDA-only (skipped with its reason
without a GPU) or parametrized over ``cpu`` and ``cuda`` (:mod:`gpu`): the CPU variant runs in
every test run, so the logic of the check is proved before a GPU runs it. Networks one by one are in
``test_cuda_nets.py``; ``python -m benchmarks.gpu_check`` runs both files first.

Tiny data throughout (tens of images, 8×8 pixels, a small network) so the whole suite compiles in
seconds per test on a GPU machine. Where the CPU variant compiles, it uses dynamo's ``eager``
backend: the tracing, guards and recompilation decisions under test are dynamo's and identical,
while Inductor's C++ code generation takes over a minute per graph on a 2-core CPU.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import Crash, CrashingSource, Repo
from gpu import CUDA, DEVICES, TWO_GPUS, cuda_only
from scipy import stats
from test_augment import candidates, match, random_images
from torch import nn
from torch._dynamo.utils import counters
from torchvision.io import encode_jpeg

from benchmarks import decode_speed
from longtail import losses, samplers
from longtail.config import OptimConfig, TrainConfig
from longtail.data.augment import random_crop_flip
from longtail.data.base import TensorSource
from longtail.data.imagelist import FileSource
from longtail.data.video import ClipAugment, ClipSource
from longtail.meta import MetaSampler, MetaSource, balanced_batch, gumbel_noise, meta_loss
from longtail.train import Checkpointer, Trainer, build_optimizer, set_determinism

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CLASSES = 4
P_VALUE = 1e-3


# ------------------------------------------------------------------------------------- helpers
class TinyNet(nn.Module):
    """conv-BN-ReLU, global pool, linear: the ops of the CIFAR ResNet at a fraction of the cost."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))  # (B, 8)
        return self.fc(features), features


def tiny_net(seed: int = 0) -> TinyNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyNet()


def tiny_source(n: int, device: str, seed: int = 0) -> TensorSource:
    """``n`` random 8×8 images, classes 0..3 with a long tail, cropped and flipped on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([min(i % 7, CLASSES - 1) for i in range(n)])  # 0, 1, 2, 3, 3, 3, 3, ...
    return TensorSource(
        images, labels, mean=MEAN, std=STD, padding=2, flip=True, device=torch.device(device)
    )


def trainer(
    device: str,
    *,
    epochs: int = 2,
    n: int = 40,
    batch_size: int = 16,
    compile: str = "auto",
    loss: str = "ce",
    sampler: str = "instance",
    train_source: Any = None,
    checkpointer: Checkpointer | None = None,
    log_epoch: Any = None,
) -> Trainer:
    """A Trainer as the stages build it, on ``device`` with its default fast path."""
    source = train_source or tiny_source(n, device)
    counts = torch.bincount(source.labels, minlength=CLASSES).tolist()
    extra = {} if log_epoch is None else {"log_epoch": log_epoch}
    return Trainer(
        model=tiny_net(),
        loss=losses.create(loss, counts),
        sampler=samplers.create(sampler, source.labels, seed=0, num_classes=CLASSES),
        train_source=source,
        val_source=tiny_source(12, device, seed=1),
        optim=OptimConfig(epochs=epochs, batch_size=batch_size, lr=0.05, warmup_epochs=0),
        train_cfg=TrainConfig(compile=compile, checkpoint_minutes=0.0, log_every_epochs=1),
        device=torch.device(device),
        seed=0,
        num_classes=CLASSES,
        train_counts=counts,
        many_shot=10,
        few_shot=3,
        checkpointer=checkpointer,
        log=lambda line: None,
        **extra,
    )


def without_seconds(history: list[dict[str, float]]) -> str:
    """The history without wall times, as text: NaN (an empty shot group) equals NaN."""
    return json.dumps([{k: v for k, v in h.items() if k != "seconds"} for h in history])


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(autouse=True)
def _fresh_dynamo_and_determinism() -> Any:
    """Each test compiles from scratch and leaves the global determinism switches as it was."""
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    counters.clear()
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        getattr(inductor, "deterministic", None),
    )
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:3]
    if before[3] is not None:
        inductor.deterministic = before[3]
    torch._dynamo.reset()


@pytest.fixture
def eager_backend_on_cpu(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """On the CPU, ``torch.compile`` traces with dynamo and runs the graphs eagerly (module doc)."""
    if device == "cpu":
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))


# ------------------------------------------------------------------------- compile, static shapes
@pytest.mark.parametrize("device", DEVICES)
def test_full_and_last_batch_compile_once_each_and_epoch_two_does_not_recompile(
    device: str, eager_backend_on_cpu: None
) -> None:
    graphs: list[int] = []
    run = trainer(
        device,
        n=40,  # batches of 16, 16 and 8: two static shapes
        compile="on",
        log_epoch=lambda epoch, metrics: graphs.append(counters["stats"]["unique_graphs"]),
    )
    assert run.fast.compile
    history = run.fit()
    assert graphs == [2, 2], f"compiled graphs after epochs 1 and 2: expected [2, 2], got {graphs}"
    assert not counters["recompiles"], dict(counters["recompiles"])
    assert all(np.isfinite(h["train/loss"]) for h in history)


# ------------------------------------------------------------------------------------ fused SGD
@pytest.mark.parametrize("device", DEVICES)
def test_fused_sgd_equals_foreach_sgd(device: str) -> None:
    """The project's optimiser (fused on CUDA, foreach on the CPU) against the other kind."""
    cfg = OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x, y = next(tiny_source(16, device).batches(torch.arange(16), 16, train=False, generator=None))
    results = []
    for fused in (True, False):
        model = tiny_net().to(device)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True,
            fused=fused, foreach=None if fused else True,
        )  # fmt: skip
        for _ in range(5):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x)[0], y).backward()
            optimizer.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    project = build_optimizer(tiny_net().to(device).parameters(), cfg, torch.device(device))
    kind = "fused" if project.defaults.get("fused") else "foreach"
    assert kind == {"cuda": "fused", "cpu": "foreach"}[device]


# ---------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("determinism", [True, False], ids=["determinism", "no-determinism"])
def test_determinism_two_runs_identical_and_off_runs(device: str, determinism: bool) -> None:
    """CDB-CE (validation updates its weights) on the default fast path, twice from one seed."""
    set_determinism(determinism, torch.device(device))
    runs = [trainer(device, loss="cdb_ce") for _ in range(2)]
    histories = [r.fit() for r in runs]
    assert all(np.isfinite(h["train/loss"]) and "val/top1" in h for h in histories[0])
    histories = [without_seconds(h) for h in histories]
    if determinism:
        assert histories[0] == histories[1]
        assert same_state(runs[0].model, runs[1].model)
        assert torch.equal(runs[0].loss.weights, runs[1].loss.weights)


# ------------------------------------------------------------------------- crop/flip on the device
@pytest.mark.parametrize("device", DEVICES)
def test_crop_flip_draws_on_the_device_are_uniform(device: str) -> None:
    """Every output is one candidate crop/flip; offsets and flips are uniform (χ², p > 1e-3)."""
    padding, draws = 2, 3000
    image = random_images((1, 8, 8), seed=5)
    gen = torch.Generator(device=device).manual_seed(6)
    out = random_crop_flip(
        image.expand(draws, -1, -1, -1).contiguous().to(device),
        padding=padding,
        flip=True,
        generator=gen,
    )
    assert out.device.type == device and out.dtype == torch.uint8
    found = match(out.cpu(), candidates(image, padding))
    positions = (2 * padding + 1) ** 2
    assert stats.chisquare(torch.bincount(found // 2, minlength=positions)).pvalue > P_VALUE
    assert stats.chisquare(torch.bincount(found % 2, minlength=2)).pvalue > P_VALUE


# ----------------------------------------------------------------- samplers and device generators
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [n for n in samplers.names() if n != "meta"])
def test_every_sampler_trains_on_the_device(device: str, name: str) -> None:
    """Each sampler's order drives an epoch whose batches are drawn on the device (meta: below)."""
    run = trainer(device, epochs=1, compile="off", sampler=name)
    (metrics,) = run.fit()
    assert np.isfinite(metrics["train/loss"])
    assert run.scheduler.last_epoch == run.steps_per_epoch == 3  # every batch of the order stepped
    assert run._generator(0).device.type == device


def clip_source(tmp_path: Path, device: str) -> ClipSource:
    gen = np.random.default_rng(0)
    paths, frames = [], [5, 9, 12]
    for i, t in enumerate(frames):
        paths.append(tmp_path / f"clip{i}.npy")
        np.save(paths[-1], gen.integers(0, 256, (t, 10, 12, 3), dtype=np.uint8))
    return ClipSource(
        paths,
        frames,
        torch.tensor([0, 1, 2]),
        frame_size=(10, 12),
        segments=4,
        mean=MEAN,
        std=STD,
        augment=ClipAugment(square=True, flip=True, degrees=10.0),
        device=torch.device(device),
    )


def file_source(tmp_path: Path, device: str) -> FileSource:
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=gen)
        (tmp_path / f"img{i}.jpg").write_bytes(encode_jpeg(image).numpy().tobytes())
    return FileSource(
        tmp_path,
        [f"img{i}.jpg" for i in range(3)],
        torch.tensor([0, 1, 2]),
        size=16,
        mean=MEAN,
        std=STD,
        color_jitter=True,
        workers=0,
        device=torch.device(device),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["tensor", "clips", "files"])
def test_sources_draw_from_a_device_generator_repeatably(
    device: str, kind: str, tmp_path: Path
) -> None:
    """Training batches drawn with a device generator: on the device, repeatable from the seed."""
    source = {
        "tensor": lambda: tiny_source(6, device),
        "clips": lambda: clip_source(tmp_path, device),
        "files": lambda: file_source(tmp_path, device),
    }[kind]()
    order = torch.tensor([2, 0, 1, 1])
    outs = []
    for seed in (3, 3, 4):
        gen = torch.Generator(device=device).manual_seed(seed)
        outs.append(list(source.batches(order, 2, train=True, generator=gen)))
    for x, y in outs[0]:
        assert x.device.type == device and y.device.type == device and x.dtype == torch.float32
    assert all(torch.equal(a[0], b[0]) for a, b in zip(outs[0], outs[1], strict=True))
    assert not all(torch.equal(a[0], c[0]) for a, c in zip(outs[0], outs[2], strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_meta_draws_from_a_device_generator(device: str) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    noise = gumbel_noise(4, 7, gen)
    assert noise.device.type == device and noise.shape == (4, 7) and bool(noise.isfinite().all())
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    idx = balanced_batch(labels, 6, gen)
    assert idx.device.type == device
    assert torch.bincount(labels.to(device)[idx], minlength=3).tolist() == [2, 2, 2]


# --------------------------------------------------------------------------------- BALMS meta step
class FeatureSource:
    """Fixed feature rows on a device (what a frozen backbone hands the meta step)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels, self.in_channels = features, labels, features.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order, batch_size, *, train, generator):
        order = order.to(self.features.device)
        labels = self.labels.to(self.features.device)
        for idx in order.split(batch_size):
            yield self.features[idx], labels[idx]


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


@pytest.mark.parametrize("device", DEVICES)
def test_balms_meta_step_on_the_device(device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 20 + [1] * 8 + [2] * 3 + [3] * 1)
    val_labels = torch.arange(CLASSES).repeat(3)
    train = FeatureSource(torch.randn(len(labels), 5, generator=gen).to(device), labels)
    val = FeatureSource(torch.randn(len(val_labels), 5, generator=gen).to(device), val_labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = Head().to(device)
    sampler = MetaSampler(labels, seed=0, lr=0.05)
    optimizer = build_optimizer(head.parameters(), OptimConfig(lr=0.1), torch.device(device))
    counts = torch.bincount(labels, minlength=CLASSES).double()
    source = MetaSource(
        train, val, sampler, head, optimizer, shift=counts.log().float().to(device),
        meta_batch_size=8,
    )  # fmt: skip
    start = sampler.logits.detach().clone()
    step = torch.Generator(device=device).manual_seed(1)
    for x, y in source.batches(sampler.indices(), 8, train=True, generator=step):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(x)[0], y).backward()
        optimizer.step()
    assert sampler.logits.device.type == device and bool(sampler.logits.isfinite().all())
    assert not torch.equal(sampler.logits.detach().cpu(), start.cpu())  # the logits learned
    # The meta loss on the device equals the same computation in float64 on the CPU.
    x, y = next(train.batches(torch.arange(8), 8, train=True, generator=step))
    mx, my = next(val.batches(torch.arange(8), 8, train=False, generator=step))
    weights = torch.ones(8, device=device, requires_grad=True)
    hyper = {n: {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 5e-4,
                 "nesterov": False} for n, _ in head.named_parameters()}  # fmt: skip
    shift = counts.log()
    values = []
    for dev, dtype in ((device, torch.float32), ("cpu", torch.float64)):
        params = {n: p.detach().to(dev, dtype).requires_grad_() for n, p in head.named_parameters()}
        w = weights.detach().to(dev, dtype).requires_grad_()
        loss = meta_loss(
            head.to(dev, dtype), params, (x.to(dev, dtype), y.to(dev)), w,
            (mx.to(dev, dtype), my.to(dev)), shift=shift.to(dev, dtype),
            buffers=dict.fromkeys(params), hyper=hyper,
        )  # fmt: skip
        (grad,) = torch.autograd.grad(loss, [w])
        values.append((float(loss.detach()), grad.double().cpu()))
    assert abs(values[0][0] - values[1][0]) < 1e-5
    torch.testing.assert_close(values[0][1], values[1][1], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------- checkpoint, resume
@pytest.mark.parametrize("device", DEVICES)
def test_resume_inside_an_epoch_equals_the_uninterrupted_run(device: str, tmp_path: Path) -> None:
    """Under determinism: killed in epoch 2 after 1 step, resumed, identical to never killed."""
    set_determinism(True, torch.device(device))
    whole = trainer(device, epochs=3)
    expected = without_seconds(whole.fit())
    ckpt = Checkpointer(tmp_path / "run.ckpt", signature="same", log=lambda line: None)
    crashing = CrashingSource(
        tiny_source(40, device), after=4
    )  # 3 steps per epoch: epoch 2, step 1
    killed = trainer(device, epochs=3, train_source=crashing, checkpointer=ckpt)
    with pytest.raises(Crash):
        killed.fit()
    resumed = trainer(device, epochs=3, checkpointer=ckpt)
    assert resumed.resume() and (resumed.start_epoch, resumed.start_step) == (1, 1)
    assert without_seconds(resumed.fit()) == expected
    assert same_state(resumed.model, whole.model)


# ----------------------------------------------------------------------------------- decode_jpeg
@pytest.mark.parametrize("device", DEVICES)
def test_decode_jpeg_on_the_device_matches_pil(device: str, tmp_path: Path) -> None:
    """nvJPEG on CUDA, libjpeg-turbo on the CPU, against PIL's decode, resize and crop."""
    paths = decode_speed.write_synthetic_folder(tmp_path, 6, 80, seed=0)
    pil = torch.stack([decode_speed.PilFolder(paths, 32)[i] for i in range(6)])
    batch = decode_speed.decode_batch(paths, 32, torch.device(device))
    assert batch.device.type == device and batch.dtype == torch.uint8 and batch.shape == pil.shape
    diff = (batch.cpu().int() - pil.int()).abs()
    # Decoders differ in IDCT and chroma upsampling: a level or two on average, never an image.
    assert float(diff.float().mean()) < 2.0 and int(diff.max()) <= 32


# -------------------------------------------------------------------------------- torchrun, NCCL
ALL_REDUCE = """
import os, torch, torch.distributed as dist
device = torch.device("{device}", int(os.environ["LOCAL_RANK"])) if "{device}" == "cuda" else None
if device is not None:
    torch.cuda.set_device(device)
dist.init_process_group("{backend}")
x = torch.ones(3, device=device) * (dist.get_rank() + 1)
dist.all_reduce(x)
dist.barrier()
print("rank", dist.get_rank(), "of", dist.get_world_size(), dist.get_backend(), x.tolist())
dist.destroy_process_group()
"""


def torchrun(nproc: int, script: Path) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(nproc), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize(
    ("device", "nproc"),
    [
        pytest.param("cpu", 1, id="gloo-1"),
        pytest.param("cuda", 1, id="nccl-1", marks=CUDA),
        pytest.param("cuda", 2, id="nccl-2", marks=TWO_GPUS),
    ],
)
@pytest.mark.e2e
def test_torchrun_process_group_all_reduces(device: str, nproc: int, tmp_path: Path) -> None:
    backend = "nccl" if device == "cuda" else "gloo"
    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE.format(device=device, backend=backend))
    out = torchrun(nproc, script)
    total = float(sum(range(1, nproc + 1)))
    for rank in range(nproc):
        assert f"rank {rank} of {nproc} {backend} {[total] * 3}" in out


def prepared(repo: Repo, update: dict) -> Repo:
    repo.params(update)
    for stage in ("download", "inject_imbalance", "extract_frames"):
        repo.stage(stage)
    return repo


@cuda_only
@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=TWO_GPUS)])
def test_pretrain_under_torchrun_on_cuda(repo: Repo, nproc: int, monkeypatch) -> None:
    """The training stage through the launcher and torchrun (NCCL with two GPUs)."""
    monkeypatch.setenv("LONGTAIL_TORCHRUN_ARGS", "--standalone")  # torchrun even for one process
    # compile off: this checks the launch and NCCL; compiling is checked above and in gpu_check.
    update = {"device": "cuda", "dist": {"nproc": nproc}, "pretrain": {"epochs": 1}}
    prepared(repo, {**update, "train": {"compile": "off", "log_every_epochs": 1}})
    out = repo.run(sys.executable, "-m", "stages.launch", str(nproc), "pretrain").stdout
    expected = f"world size {nproc} (nccl)" if nproc > 1 else "world size 1:"
    assert expected in out, out
    assert json.loads((repo.root / "metrics" / "pretrain.json").read_text())["epochs"] == 1


# ---------------------------------------------------------------------------- the digits pipeline
@cuda_only
def test_digits_pipeline_end_to_end_on_cuda(repo: Repo) -> None:
    # Tiny epochs, compile off: the wiring of device: cuda through every stage. The default
    # pipeline (compiled) runs in ``python -m benchmarks.gpu_check``'s digits part.
    prepared(repo, {"device": "cuda", "train": {"compile": "off", "log_every_epochs": 1}})
    for args in (("launch", "1", "pretrain"), ("launch", "1", "finetune"), ("evaluate",)):
        repo.run(sys.executable, "-m", f"stages.{args[0]}", *args[1:])
    result = json.loads((repo.root / "metrics" / "evaluate.json").read_text())
    assert {"top1", "many", "medium", "few"} <= result.keys()
    assert 0 <= result["top1"] <= 100
