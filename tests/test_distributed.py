"""Data-parallel training on the CPU: two gloo processes against one.

Three kinds of checks. Pure functions (the launcher's command line, per-rank batches, padded
slices, the samplers' per-rank shares, the config) run in the test process. The loop's pieces
(evaluation, CDB-CE's weights, training on the global batch, resuming inside an epoch, the BALMS
meta step) run once on two gloo ranks started with ``torch.multiprocessing`` (a file rendezvous in
a temp directory; one start for all of them, since each start imports torch twice) and are
compared with the same code in this process. The stages run end to end through ``python -m
stages.launch 2 ...`` (torchrun) in copies of the repository at tiny settings; the kill test waits
on the stage's output lines, never on a clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import trainers
from conftest import (
    DATA_STAGES,
    REPO,
    TINY,
    TRACKED,
    Crash,
    CrashingSource,
    Repo,
    copy_repo,
    merge,
)
from torch import nn

from longtail import config, data, distributed, losses, samplers, train
from longtail.config import ConfigError, OptimConfig, TrainConfig
from longtail.data.base import TensorSource
from longtail.decouple import FeatureHead
from longtail.distributed import World
from longtail.meta import (
    MetaSampler,
    MetaSource,
    gumbel_noise,
    initial_logits,
    meta_loss,
    straight_through_draw,
)
from longtail.train import Checkpointer, Trainer

CPU = torch.device("cpu")
CLASSES = 4
COUNTS = [20, 14, 9, 5]  # 48 training images: 24 per rank, 3 steps of 8 per rank at batch 16


# ------------------------------------------------------------------------------- two processes
def run_ranks(fn: Callable[..., Any], folder: Path, world_size: int = 2) -> list[Any]:
    """``fn(world, folder)`` on ``world_size`` gloo ranks; each rank's return value, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.multiprocessing.spawn(
        _rank_main, args=(world_size, str(folder), fn), nprocs=world_size, join=True
    )
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _rank_main(rank: int, world_size: int, folder: str, fn: Callable[..., Any]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    world = distributed.init(CPU, "gloo", init_method=f"file://{folder}/rendezvous")
    assert world == World(rank=rank, size=world_size, local_rank=rank)
    result = fn(world, folder)
    torch.save(result, f"{folder}/rank{rank}.pt")
    distributed.shutdown()


def every_case(world: World, folder: str) -> dict[str, Any]:
    """All the loop's cases below, on one world (the ranks start once)."""
    return {name: case(world, folder) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(every_case, tmp_path_factory.mktemp("ranks"))


# ------------------------------------------------------------------------------------ the loop
class TinyNet(nn.Module):
    """conv -> (BN) -> ReLU -> mean pool -> linear; returns (logits, features)."""

    def __init__(self, init_seed: int, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.fc = nn.Linear(6, CLASSES)
        gen = torch.Generator().manual_seed(init_seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.bn(self.conv(x))).mean((2, 3))  # (B, 6)
        return self.fc(f), f


def source(n_per_class: list[int], seed: int, augment: bool = True) -> TensorSource:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    images = torch.randint(0, 256, (len(labels), 1, 6, 6), generator=gen, dtype=torch.uint8)
    pad, flip = (1, True) if augment else (0, False)
    return TensorSource(
        images, labels, mean=(0.5,), std=(0.25,), padding=pad, flip=flip, device=CPU
    )


def make_trainer(
    world: World,
    *,
    loss: str = "ce",
    bn: bool = True,
    augment: bool = True,
    init_seed: int = 0,
    sampler: str = "class_balanced",
    train_source: Any = None,
    checkpoint: Path | None = None,
    **optim: Any,
) -> Trainer:
    options = {"epochs": 3, "batch_size": 16, "lr": 0.05, "warmup_epochs": 1, **optim}
    labels = source(COUNTS, 1).labels
    return trainers.make_trainer(
        TinyNet(init_seed, bn=bn),
        train_source or source(COUNTS, 1, augment),
        source([7, 5, 4, 3], 2),  # 19 images: the ranks' shares differ in size
        COUNTS,
        optim=OptimConfig(**options),
        train_cfg=TrainConfig(amp="off", channels_last="off", compile="off", eval_batch_size=4),
        loss=losses.create(loss, COUNTS, **({"tau": 1.5} if loss == "cdb_ce" else {})),
        sampler=samplers.create(sampler, labels, seed=3, rank=world.rank, world_size=world.size),
        seed=5,
        many_shot=15,
        few_shot=8,
        stage="pretrain",
        checkpointer=Checkpointer(checkpoint, "sig", log=lambda line: None) if checkpoint else None,
        world=world,
    )


def validate(world: World, folder: str) -> dict[str, Any]:
    """Val confusion, metrics and CDB-CE weights of an untrained network (the same weights)."""
    trainer = make_trainer(world, loss="cdb_ce")
    conf = train.evaluate_confusion(
        trainer.forward, trainer.val_source, CLASSES, 4, trainer.fast, CPU, world
    )
    metrics = trainer.validate()
    return {"confusion": conf, "metrics": metrics, "weights": trainer.loss.weights.clone()}


@pytest.mark.e2e
def test_evaluation_and_cdb_ce_weights_of_two_ranks_equal_one_process(two_ranks: list) -> None:
    one = validate(World(), "")
    assert int(one["confusion"].sum()) == 19
    assert not torch.equal(one["weights"], torch.ones(CLASSES))  # measured, not the initial 1s
    for rank in two_ranks:
        two = rank["validate"]
        assert torch.equal(two["confusion"], one["confusion"])  # summed counts, no sample twice
        assert two["metrics"] == one["metrics"]
        assert torch.equal(two["weights"], one["weights"])


def global_batch(world: World, folder: str) -> dict[str, Any]:
    """Three epochs without BatchNorm or augmentation (nothing that depends on the rank)."""
    trainer = make_trainer(world, bn=False, augment=False, sampler="instance")
    trainer.fit()
    return {"model": trainer.model.state_dict(), "history": trainer.history}


@pytest.mark.e2e
def test_two_ranks_train_like_one_process_on_the_global_batch(two_ranks: list) -> None:
    one = global_batch(World(), "")
    first, second = (rank["global_batch"] for rank in two_ranks)
    for key, value in one["model"].items():
        assert torch.equal(first["model"][key], second["model"][key]), key  # in sync
        # The mean of two half-batch gradients is the global batch's, up to rounding.
        assert torch.allclose(first["model"][key], value, rtol=1e-4, atol=1e-5), key
    assert not torch.allclose(first["model"]["fc.weight"], TinyNet(0, bn=False).fc.weight)
    for mine, theirs in zip(first["history"], one["history"], strict=True):
        assert mine["train/loss"] == pytest.approx(theirs["train/loss"], rel=1e-4)
        assert mine["val/top1"] == theirs["val/top1"]


def resume_inside_epoch(world: World, folder: str) -> dict[str, Any]:
    """An uninterrupted run, and one crashed inside epoch 2 then resumed from its checkpoint."""
    train.set_determinism(True, CPU)
    reference = make_trainer(world, loss="cdb_ce")
    reference.fit()
    path = Path(folder) / "pretrain.ckpt"
    ticks = iter(range(10**6))
    clock = train.time.monotonic
    train.time.monotonic = lambda: 3600.0 * next(ticks)  # every rank votes for every step
    try:
        crashing = CrashingSource(source(COUNTS, 1), after=5)
        with pytest.raises(Crash):
            make_trainer(world, loss="cdb_ce", train_source=crashing, checkpoint=path).fit()
    finally:
        train.time.monotonic = clock
    stored = torch.load(path, weights_only=False)
    resumed = make_trainer(world, loss="cdb_ce", init_seed=9, checkpoint=path)
    assert resumed.resume()
    resumed.fit()
    return {
        "reference": reference.model.state_dict(),
        "resumed": resumed.model.state_dict(),
        "loss": (reference.loss.weights, resumed.loss.weights),
        "history": (reference.history, resumed.history),
        "stored": (stored["epoch"], stored["step_in_epoch"], stored.get("ranks")),
    }


@pytest.mark.e2e
def test_two_ranks_resume_inside_an_epoch_bit_for_bit(two_ranks: list) -> None:
    first, second = (rank["resume"] for rank in two_ranks)
    # 3 steps per epoch; the vote is read one step late, so step 2 of epoch 2 was checkpointed
    # (5 batches done) and the crash came before the 6th.
    epoch, step, ranks = first["stored"]
    assert (epoch, step) == (1, 2)
    assert len(ranks) == 2  # every rank's random state and loss sums
    assert not torch.equal(ranks[0]["aug_generator"], ranks[1]["aug_generator"])
    assert ranks[0]["accumulators"]["count"] == ranks[1]["accumulators"]["count"] == 16
    for rank in (first, second):
        for key, value in rank["reference"].items():
            assert torch.equal(rank["resumed"][key], value), key
            assert torch.equal(second["reference"][key], first["reference"][key]), key  # BN too
        assert torch.equal(*rank["loss"])
        runs = [
            [{k: v for k, v in h.items() if k != "seconds"} for h in r] for r in rank["history"]
        ]
        assert runs[0] == runs[1]


# ---------------------------------------------------------------------------------- BALMS meta
class FeatureSource:
    """Fixed feature rows as a source (the frozen-backbone features of decoupled retraining)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels, self.in_channels = features, labels, features.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order, batch_size, *, train, generator):
        for idx in order.split(batch_size):
            yield self.features[idx], self.labels[idx]


META_COUNTS = torch.tensor([12, 8, 5, 3, 2])  # 30 training rows, 5 classes


def meta_gradient(world: World) -> torch.Tensor:
    """The class logits' meta gradient for one global batch of 8 and meta batch of 6, float64.

    Each rank takes rows ``rank::world_size`` of the global batch and meta batch.
    """
    gen = torch.Generator().manual_seed(11)
    labels = torch.repeat_interleave(torch.arange(5), META_COUNTS)
    features = torch.randn(len(labels), 3, generator=gen, dtype=torch.float64)
    noise = gumbel_noise(8, len(labels), gen).double()  # (B, N)
    meta_x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    meta_y = torch.tensor([0, 1, 2, 3, 4, 0])
    head = FeatureHead(nn.Linear(3, 5).double())
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    params = {n: p.detach().requires_grad_() for n, p in head.named_parameters()}
    hyper = {n: {"lr": 0.5, "momentum": 0.9, "dampening": 0.0, "weight_decay": 5e-4,
                 "nesterov": False} for n in params}  # fmt: skip
    buffers = {
        n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()
    }
    logits = nn.Parameter(initial_logits(META_COUNTS, 0.5).double())
    mine = slice(world.rank, None, world.size)
    indices, weights = straight_through_draw(logits, labels, noise[mine])
    loss = meta_loss(
        head,
        params,
        (features[indices], labels[indices]),
        weights,
        (meta_x[mine], meta_y[mine]),
        shift=META_COUNTS.double().log(),
        buffers=buffers,
        hyper=hyper,
        batch_share=1 / world.size,
        meta_share=len(meta_y[mine]) / len(meta_y),
        sum_over_ranks=world.all_reduce_autograd if world.active else None,
    )
    (grad,) = torch.autograd.grad(loss, [logits])
    return world.all_reduce(grad)


def meta_steps(world: World) -> torch.Tensor:
    """The class logits after two MetaSource steps; each rank draws from its own generator."""
    gen = torch.Generator().manual_seed(12)
    labels = torch.repeat_interleave(torch.arange(5), META_COUNTS)
    train_rows = FeatureSource(torch.randn(len(labels), 3, generator=gen), labels)
    meta_rows = FeatureSource(torch.randn(10, 3, generator=gen), torch.arange(10) % 5)
    sampler = MetaSampler(labels, seed=0, rank=world.rank, world_size=world.size, lr=0.05)
    head = FeatureHead(nn.Linear(3, 5))
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    meta = MetaSource(
        train_rows,
        meta_rows,
        sampler,
        head,
        optimizer,
        shift=META_COUNTS.float().log(),
        meta_batch_size=6,
        world=world,
    )
    draws = torch.Generator().manual_seed(100 + world.rank)
    for _ in meta.batches(torch.arange(8), 4, train=True, generator=draws):
        pass
    return sampler.logits.detach().clone()


def meta_case(world: World, folder: str) -> dict[str, torch.Tensor]:
    return {"gradient": meta_gradient(world), "logits": meta_steps(world)}


@pytest.mark.e2e
def test_meta_gradient_of_two_ranks_is_the_global_batch_gradient(two_ranks: list) -> None:
    one = meta_gradient(World())
    assert one.abs().max() > 1e-6
    for rank in two_ranks:
        assert torch.allclose(rank["meta"]["gradient"], one, rtol=1e-10, atol=1e-12)


@pytest.mark.e2e
def test_meta_logits_stay_identical_on_every_rank(two_ranks: list) -> None:
    first, second = (rank["meta"]["logits"] for rank in two_ranks)
    assert torch.equal(first, second)
    assert not torch.allclose(first, initial_logits(META_COUNTS, 0.0))  # they moved


def test_meta_source_takes_the_world_of_its_sampler() -> None:
    labels = torch.repeat_interleave(torch.arange(5), META_COUNTS)
    rows = FeatureSource(torch.zeros(len(labels), 3), labels)
    head = FeatureHead(nn.Linear(3, 5))
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)

    def build(rank: int, size: int, world: World, meta_batch_size: int = 6) -> MetaSource:
        sampler = MetaSampler(labels, seed=0, rank=rank, world_size=size)
        return MetaSource(
            rows,
            rows,
            sampler,
            head,
            optimizer,
            shift=torch.zeros(5),
            meta_batch_size=meta_batch_size,
            world=world,
        )

    with pytest.raises(ValueError, match="expected rank 1 of world_size 2 as in the process group"):
        build(0, 2, World(rank=1, size=2))
    with pytest.raises(ValueError, match="meta_batch_size: expected at least one meta image per"):
        build(0, 4, World(rank=0, size=4), meta_batch_size=3)
    assert build(1, 2, World(rank=1, size=2)).meta_share == 3


CASES = {
    "validate": validate,
    "global_batch": global_batch,
    "resume": resume_inside_epoch,
    "meta": meta_case,
}


# ------------------------------------------------------------------------ samplers and slices
# Every registered sampler, and the BALMS meta step's learnable one.
BUILDERS = {**{n: partial(samplers.create, n) for n in samplers.names()}, "meta": MetaSampler}


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_ranks_share_the_single_process_order(name: str, world_size: int) -> None:
    # 76 images (not a multiple of 3), a long tail down to one image and an empty class.
    counts = torch.tensor([40, 20, 10, 5, 0, 1])
    labels = torch.repeat_interleave(torch.arange(6), counts)
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]

    def build(rank: int, size: int) -> samplers.Sampler:
        sampler = BUILDERS[name](labels, seed=4, rank=rank, world_size=size)
        sampler.set_epoch(5, 10)
        sampler.attached = True  # meta: its order fixes only the number and size of batches
        return sampler

    single = build(0, 1).indices()
    union = torch.empty_like(single)
    for rank in range(world_size):
        share = build(rank, world_size).indices()
        union[rank::world_size] = share
        world = World(rank=rank, size=world_size)
        padded = distributed.equal_slices(share, len(labels), world)
        assert len(padded) == -(-len(labels) // world_size)  # every rank takes as many steps
        assert torch.equal(padded[: len(share)], share)
    assert torch.equal(union, single)
    assert torch.equal(torch.bincount(labels[union], minlength=6), torch.bincount(labels[single]))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_the_order_of_four_images_per_class_visit(world_size: int) -> None:
    """samples_per_class 4: rank r takes positions r, r + W, ... of the one global order, so the
    ranks' step-k batches together are exactly the single process's step-k batch."""
    counts = torch.tensor([40, 20, 10, 5, 0, 1])
    labels = torch.repeat_interleave(torch.arange(6), counts)
    options = samplers.stage_options("class_balanced", samples_per_class=4)

    def build(rank: int, size: int) -> samplers.Sampler:
        sampler = samplers.create(
            "class_balanced", labels, seed=4, rank=rank, world_size=size, **options
        )
        sampler.set_epoch(5, 10)
        return sampler

    single = build(0, 1).indices()
    visits = labels[single][:76].view(19, 4)
    assert torch.equal(visits, visits[:, :1].expand(19, 4))  # 4 consecutive images per visit
    batch = 12 * world_size  # the global batch; each rank takes 12 of it
    shares = [build(rank, world_size).indices() for rank in range(world_size)]
    for step, global_batch in enumerate(single.split(batch)):
        parts = [share[step * 12 : (step + 1) * 12] for share in shares]
        assert torch.equal(torch.cat(parts).sort().values, global_batch.sort().values)


def test_per_rank_batch_and_padding() -> None:
    assert distributed.per_rank_batch(128, World(size=4), "pretrain.batch_size") == 32
    message = (
        "finetune.batch_size: expected a global batch size divisible by the 3 processes; got 128"
    )
    with pytest.raises(ValueError, match=message):
        distributed.per_rank_batch(128, World(size=3), "finetune.batch_size")
    share = torch.tensor([7, 3])  # rank 1 of 2 over 5 items: 2 of them
    assert distributed.equal_slices(share, 5, World(rank=1, size=2)).tolist() == [7, 3, 7]
    with pytest.raises(ValueError, match="expected at least one sample per process"):
        distributed.equal_slices(torch.tensor([], dtype=torch.int64), 1, World(rank=1, size=2))


def test_single_process_world_is_the_identity() -> None:
    world = World()
    t = torch.tensor([1.0, 2.0])
    assert world.all_reduce(t) is t and world.all_reduce_autograd(t) is t
    assert world.broadcast_object({"a": 1}) == {"a": 1}
    assert world.gather_objects("x") == ["x"]
    assert world.shard(5).tolist() == [0, 1, 2, 3, 4]
    assert World(rank=1, size=2).shard(5).tolist() == [1, 3]
    vote = distributed.Vote(world)
    assert vote(True) and not vote(False)  # one process: its own vote, at once
    assert distributed.env_world() == World()  # no torchrun variables in the test process
    model = TinyNet(0)
    assert distributed.wrap(model, world, CPU, sync_bn=True) is model


def test_trainer_refuses_a_global_batch_the_ranks_cannot_share() -> None:
    with pytest.raises(ValueError, match=r"pretrain\.batch_size: expected a global batch size "):
        make_trainer(World(rank=0, size=3), batch_size=16)


def test_sync_bn_on_the_cpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import common

    cfg = config.parse({"device": "cpu", "dist": {"nproc": 2, "sync_bn": True}})
    monkeypatch.setattr(distributed, "init", lambda device, backend: World(rank=0, size=2))
    with pytest.raises(ConfigError, match=r"dist\.sync_bn: SyncBatchNorm expects CUDA devices"):
        common.start(cfg)


def test_dist_section_is_validated() -> None:
    cfg = config.parse({"dist": {"nproc": "2", "backend": "gloo", "sync_bn": "true"}})
    assert (cfg.dist.nproc, cfg.dist.backend, cfg.dist.sync_bn) == (2, "gloo", True)
    assert config.parse({}).dist == config.DistConfig(nproc=1, backend="auto", sync_bn=False)
    with pytest.raises(ConfigError, match=r"dist\.nproc: expected a number >= 1"):
        config.parse({"dist": {"nproc": 0}})
    with pytest.raises(ConfigError, match=r"dist\.backend: expected one of auto, nccl, gloo"):
        config.parse({"dist": {"backend": "mpi"}})
    with pytest.raises(ValueError, match=r"dist\.backend: nccl expects CUDA devices"):
        distributed._resolve_backend("nccl", CPU)


# ---------------------------------------------------------------------------------- launcher
def test_launcher_command_lines() -> None:
    from stages import launch

    assert launch.parse(["2", "pretrain"]) == (2, "pretrain")
    for bad in (["0", "pretrain"], ["two", "finetune"], ["2", "evaluate"], []):
        with pytest.raises(ValueError, match=r"stages.launch: expected python -m stages.launch N"):
            launch.parse(bad)
    assert launch.command(1, "pretrain", None) is None  # in this process
    head = [sys.executable, "-m", "torch.distributed.run"]
    tail = ["--nproc-per-node", "4", "-m", "stages.finetune"]
    assert launch.command(4, "finetune", None) == [*head, "--standalone", *tail]
    nodes = "--nnodes 2 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id 7"
    assert launch.command(4, "finetune", nodes) == [*head, *nodes.split(), *tail]
    one = launch.command(1, "pretrain", nodes)  # one process per node, still torchrun
    assert one is not None and one[-3:] == ["1", "-m", "stages.pretrain"]


def test_launcher_checks_the_process_count_against_params() -> None:
    from stages import launch

    cfg = config.parse({"dist": {"nproc": 3}, "pretrain": {"batch_size": 96}})
    launch.check(cfg, 3, "pretrain")
    with pytest.raises(ValueError, match=r"dist.nproc: .* params.yaml \(3\); got 2"):
        launch.check(cfg, 2, "pretrain")
    with pytest.raises(ValueError, match=r"finetune\.batch_size: expected a global batch size"):
        launch.check(cfg, 3, "finetune")  # finetune.batch_size 128 does not divide by 3
    passthrough = config.parse({"dist": {"nproc": 3}, "finetune": {"mode": "tau_norm"}})
    launch.check(passthrough, 3, "finetune")  # no training: any batch size


# ------------------------------------------------------------------------ stages, end to end
SMALL = merge(
    TINY,
    {
        "data": {"n_max": 40, "imbalance": 10, "val_per_class": 5, "test_per_class": 5},
        "pretrain": {"epochs": 6},
        "determinism": True,
        "device": "cpu",
        "dist": {"nproc": 2},
    },
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """Prepared digits-LT and an uninterrupted two-process pretrain."""
    root = tmp_path_factory.mktemp("reference")
    repo = copy_repo(REPO, root, TRACKED)
    repo.params(SMALL)
    cfg = config.load(root / "params.yaml")
    family = data.get(cfg.data.name)
    raw, prepared = root / "data/raw" / cfg.data.name, root / "data/prepared"
    family.download(cfg.data, raw)
    family.prepare(cfg.data, cfg.seed, raw, prepared)
    family.extract(cfg.frames, raw, prepared, root / "data/frames")
    repo.run(sys.executable, "-m", "stages.launch", "2", "pretrain")
    return repo


@pytest.fixture
def clone(reference: Repo, tmp_path: Path) -> Repo:
    return copy_repo(reference.root, tmp_path / "repo", [*TRACKED, "data", "models", "checkpoints"])


def kill_after_epoch(repo: Repo, stage: str, epoch: int) -> str:
    """Start ``stages.launch 2 stage``; SIGKILL torchrun once rank 0 prints ``epoch``'s line.

    The ranks die with torchrun; the output ends (EOF) once the last of them is gone.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.launch", "2", stage],
        cwd=repo.root,
        env={**repo.env(), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in proc.stdout:  # blocks on the children's output: no clock involved
        seen.append(line)
        if line.startswith(f"[{stage}] epoch {epoch}/"):
            os.kill(proc.pid, signal.SIGKILL)  # the launcher exec'd torchrun: the same pid
            break
    seen.append(proc.stdout.read())  # EOF: every rank holding the pipe has ended
    proc.wait()
    output = "".join(seen)
    assert proc.returncode == -signal.SIGKILL, f"the stage ended on its own:\n{output}"
    return output


def model_bytes(repo: Repo, name: str) -> bytes:
    return (repo.root / "models" / name).read_bytes()


def metrics(repo: Repo, stage: str) -> dict:
    blob = json.loads((repo.root / f"metrics/{stage}.json").read_text())
    blob.pop("seconds")
    return blob


def test_sigkill_with_two_ranks_then_rerun_equals_uninterrupted(
    clone: Repo, reference: Repo
) -> None:
    for name in ("checkpoints/pretrain.ckpt", "models/pretrain.pt"):
        (clone.root / name).unlink()
    output = kill_after_epoch(clone, "pretrain", 2)
    assert "world size 2 (gloo): per-rank batch 32, global batch 64, effective lr 0.1" in output
    killed = torch.load(clone.root / "checkpoints/pretrain.ckpt", weights_only=False)
    assert 2 <= killed["epoch"] < 6 and len(killed["ranks"]) == 2
    assert not (clone.root / "models/pretrain.pt").exists()

    rerun = clone.run(sys.executable, "-m", "stages.launch", "2", "pretrain").stdout
    assert f"[pretrain] resuming from epoch {killed['epoch'] + 1}/6 (" in rerun
    assert rerun.count("[pretrain] epoch ") == 6 - killed["epoch"]  # rank 0 alone prints
    assert model_bytes(clone, "pretrain.pt") == model_bytes(reference, "pretrain.pt")
    assert metrics(clone, "pretrain") == metrics(reference, "pretrain")
    for curve in ("train/loss.tsv", "val/top1.tsv"):
        path = f"dvclive/pretrain/plots/metrics/{curve}"
        assert (clone.root / path).read_text() == (reference.root / path).read_text()


def test_balms_retraining_on_two_ranks(clone: Repo) -> None:
    clone.params(
        {
            "loss": {"name": "balanced_softmax"},
            "finetune": {"mode": "classifier", "sampler": "meta", "augment": False},
        }
    )
    out = clone.run(sys.executable, "-m", "stages.launch", "2", "finetune").stdout
    assert "[finetune] world size 2 (gloo): per-rank batch 32, global batch 64" in out
    assert json.loads((clone.root / "metrics/finetune.json").read_text())["mode"] == "classifier"
    rates = (clone.root / "plots/finetune/meta_sampling.csv").read_text().splitlines()
    assert rates[0] == "epoch,class,train_count,sigmoid,class_prob" and len(rates) == 11
    state = torch.load(clone.root / "checkpoints/finetune.ckpt", weights_only=False)
    assert state["meta"]["world"] == {"size": 2, "sync_bn": False}
    assert state["sampler"]["logits"].shape == (10,)


def test_dvc_exp_run_with_two_processes(dvc_repo: Repo) -> None:
    repo = dvc_repo  # the default pipeline reproduced on one process and committed
    exp = repo.dvc("exp", "run", "-S", "dist.nproc=2")
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in exp.stdout
    for stage in ("pretrain", "finetune"):
        assert f"> python -m stages.launch 2 {stage}" in exp.stdout  # DVC resolved ${dist.nproc}
        assert f"[{stage}] world size 2 (gloo): per-rank batch 32, global batch 64" in exp.stdout
        assert exp.stdout.count(f"[{stage}] epoch 1/2") == 1  # rank 0 alone prints
        curve = (repo.root / f"dvclive/{stage}/plots/metrics/val/top1.tsv").read_text()
        first = 0 if stage == "pretrain" else 2  # finetune's steps continue after pretrain's
        steps = [line.split("\t")[0] for line in curve.splitlines()]
        assert steps == ["step", str(first), str(first + 1)]
        state = torch.load(repo.root / f"checkpoints/{stage}.ckpt", weights_only=False)
        assert len(state["ranks"]) == 2
    assert "> python -m stages.evaluate" in exp.stdout
    result = json.loads((repo.root / "metrics/evaluate.json").read_text())
    assert result["num_many"] + result["num_medium"] + result["num_few"] == 10
    lock = (repo.root / "dvc.lock").read_text()
    assert "cmd: python -m stages.launch 2 pretrain" in lock and "dist.nproc: 2" in lock
    # Back to one process: exactly the training stages are out of date, by command and param.
    repo.params({"dist": {"nproc": 1}})
    status = json.loads(repo.dvc("status", "--json").stdout)
    assert sorted(status) == ["finetune", "pretrain"]
    for stage in status.values():
        assert "changed command" in stage
        assert {"changed deps": {"params.yaml": {"dist.nproc": "modified"}}} in stage
