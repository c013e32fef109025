"""The one training loop, used by ``pretrain`` and ``finetune`` alike.

Methods differ in the objects handed in (network, loss, sampler, the parameters to optimise), never
in branches here: a loss's state moves only through ``loss.set_epoch(epoch, total)`` before an epoch
and ``loss.update(per_class_val_accuracy)`` after it (CDB-CE's difficulty weights). Model selection
never looks at ``test``: each epoch is scored on ``val``, and ``train.keep`` picks which epoch's
weights the stage returns (``last``, or ``best``: the best val mean per-class accuracy).

The step is free of host syncs (no ``.item()``, no Python check of a tensor): loss sums accumulate
on the device, and the NaN/inf check runs once per epoch on those sums and on the weights. On CUDA
the fast path (bf16 autocast, channels_last, fused SGD, ``torch.compile`` with static shapes) is on
by default; on the CPU the exact fp32 path runs, bit for bit repeatable.

Never lose work. A checkpoint is written atomically after every epoch and, inside long epochs,
every ``train.checkpoint_minutes``. It holds the model, optimiser, LR schedule, loss state (CDB-CE's
weights, FBL's epoch), sampler state, the RNG states (Python, NumPy, torch CPU and CUDA, and the
augmentation generator inside an epoch), the epoch, the step inside it, the running loss sums, the
DVCLive step and the per-epoch history, so a resumed run continues exactly where the killed one
stopped: on the CPU it ends bit for bit where an uninterrupted run ends. Nothing is carried between
epochs in random state: the order and the augmentation of epoch ``e`` are pure functions of
``(seed, e)``. A rerun resumes only when the checkpoint's signature (a hash of the stage's params,
its code and its inputs, computed by the caller) matches, and otherwise says so and starts fresh.
An unreadable (truncated, foreign) checkpoint is never loaded. A checkpoint holds only tensors,
numbers, strings, lists and dicts and is read with ``weights_only=True``; one that holds anything
else (a tampered file, or one from an older version) stops the stage with a message, and is left
for the user to delete.

Several processes (:mod:`longtail.distributed`, started by torchrun). The loop is the same on every
rank: ``optim.batch_size`` is the global batch, each rank takes its share of it from its padded
slice of the sampler's global order and trains a DistributedDataParallel copy of the model (the
learning rate is unchanged: the averaged gradient is the global batch's). Each rank augments with
its own generator (rank 0's is the single process's). Before validation every rank takes rank 0's
buffers, scores its strided share of ``val`` and the confusion counts are summed, so the metrics
and CDB-CE's weights are those of the whole split. Only rank 0 prints, logs and writes the
checkpoint, which holds every rank's random state; on resume rank 0 reads it and broadcasts it.
Mid-epoch checkpoints are agreed by a vote that costs no device sync (:class:`Vote`).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longtail import distributed, io
from longtail.config import ConfigError, OptimConfig, TrainConfig
from longtail.data.base import Source
from longtail.distributed import Vote, World
from longtail.metrics import confusion_matrix, per_class_accuracy, summarize


class TrainingDiverged(RuntimeError):
    """The epoch's accumulated loss, or the network's weights, became NaN or infinite."""


# ------------------------------------------------------------------------------ device and speed
def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: cuda was requested but torch.cuda.is_available() is False "
            "(no GPU, or a CPU-only torch); set device: auto or device: cpu"
        )
    return torch.device(name)


def set_cpu_threads(threads: int | None, device: torch.device) -> None:
    """torch's intra-op thread count for a CPU run (``None`` keeps torch's default).

    The thread count changes the floating-point summation order, hence the last digits of every
    result: a fixed count (``train.cpu_threads``) makes CPU runs comparable across machines with
    different core counts. CUDA runs are left alone.
    """
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)


def set_determinism(enabled: bool, device: torch.device) -> None:
    """Make runs repeat exactly (CPU: bit for bit; CUDA: PyTorch's documented switches).

    On: ``torch.use_deterministic_algorithms(True)`` (deterministic kernels, an error for an op
    that has none; it also fills new uninitialised memory), cuDNN's deterministic algorithms and no
    cuDNN autotuning (``cudnn.benchmark``), ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for cuBLAS (set
    before the first CUDA call unless already set) and Inductor's deterministic mode (no kernel
    benchmarking that changes numerics) for ``torch.compile``. Off on CUDA: cuDNN autotuning is on.
    What determinism costs is in the README. The CPU path is repeatable either way on one machine
    with one thread count; the switch makes sure no op picks a racy kernel.

    ``torch.use_deterministic_algorithms`` imports Inductor's config (1-2 s, most of a training
    stage's start on the CPU) only to copy the switch into it. On CUDA it does so; on the CPU the
    switch is set without that import, and :func:`inductor_determinism` copies it when a model is
    compiled.
    """
    cuda = device.type == "cuda"
    if enabled and cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if cuda or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(enabled)
    else:
        torch._C._set_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled and cuda


def inductor_determinism() -> None:
    """Inductor's deterministic mode follows the global switch (before ``torch.compile``)."""
    import torch._inductor.config as inductor

    if hasattr(inductor, "deterministic"):  # absent from older PyTorch releases
        inductor.deterministic = torch.are_deterministic_algorithms_enabled()


@dataclass(frozen=True)
class FastPath:
    """Resolved speed switches of ``train`` (``auto``: on for CUDA, off for the CPU)."""

    bf16: bool
    channels_last: bool
    compile: bool

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device) -> FastPath:
        cuda = device.type == "cuda"
        return cls(
            bf16=cfg.amp == "bf16" or (cfg.amp == "auto" and cuda),
            channels_last=cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda),
            compile=cfg.compile == "on" or (cfg.compile == "auto" and cuda),
        )

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def prepare_model(self, model: nn.Module) -> None:
        """channels_last weights: the 2-D format for image networks, the 3-D one for video.

        ``Module.to(memory_format=channels_last)`` refuses 5-D convolution weights, so a network
        with any (the 3D ResNets) takes ``channels_last_3d``.
        """
        if not self.channels_last:
            return
        video = any(p.dim() == 5 for p in model.parameters())
        model.to(memory_format=torch.channels_last_3d if video else torch.channels_last)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        if self.channels_last and x.dim() == 5:
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x


# ---------------------------------------------------------------------------- optimiser, schedule
def without_decay(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], exempt: nn.Parameter | None
) -> list:
    """``params`` (parameters or SGD groups) with ``exempt`` moved to its own group, decay 0.

    The exempt parameter's group follows the group it came from (same LR); ``None`` or a
    parameter that is not optimised changes nothing (the list comes back as given).
    """
    items = list(params)
    if exempt is None or not any(_holds(item, exempt) for item in items):
        return items
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    out: list[dict[str, Any]] = []
    for group in groups:
        kept = [p for p in group["params"] if p is not exempt]
        if kept:
            out.append({**group, "params": kept})
        if len(kept) < len(group["params"]):
            out.append({**group, "params": [exempt], "weight_decay": 0.0})
    return out


def _holds(item: nn.Parameter | dict[str, Any], p: nn.Parameter) -> bool:
    if isinstance(item, dict):
        return any(q is p for q in item["params"])
    return item is p


def classifier_bias(model: nn.Module) -> nn.Parameter | None:
    """The bias of ``model.fc`` (every network and classifier wrapper here names it ``fc``)."""
    fc = getattr(model, "fc", None)
    return getattr(fc, "bias", None)


def build_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
    cfg: OptimConfig,
    device: torch.device,
    classifier_bias: nn.Parameter | None = None,
) -> torch.optim.SGD:
    """SGD with momentum and weight decay; fused on CUDA, foreach on the CPU.

    With ``cfg.bias_decay`` false, ``classifier_bias`` trains without weight decay (CDB-CE's CIFAR
    code gives ``linear.bias`` a group of its own with ``weight_decay`` 0).
    """
    fused = device.type == "cuda"
    if not cfg.bias_decay:
        params = without_decay(params, classifier_bias)
    return torch.optim.SGD(
        list(params),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        fused=fused,
        foreach=None if fused else True,
    )


def lr_factor(step: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """Multiplier of the base LR at optimiser step ``step`` (linear warmup, then the schedule).

    ``cfg.lr_update`` says when the LR changes. ``step``: every optimiser step; warmup ramps
    linearly from 1 / (warmup_epochs × steps per epoch) to 1. ``epoch``: once per epoch, as a
    scheduler stepped after each epoch (LDAM-DRW's ``adjust_learning_rate``, CDB-CE's
    MultiStepLR, torch's CosineAnnealingLR): epoch e holds the value at e, warmup epoch e holds
    (e + 1) / warmup_epochs. ``epoch_prestep``: a scheduler stepped *before* each epoch
    (classifier-balancing's and BALMS's ``run_networks.py``): epoch e holds the value at e + 1.
    The step schedule multiplies by ``lr_decay`` at each epoch in ``milestones``; cosine anneals
    to zero over the epochs after warmup.
    """
    epoch = step / steps_per_epoch
    if cfg.lr_update != "step":
        epoch = step // steps_per_epoch + (cfg.lr_update == "epoch_prestep")
    warm = cfg.warmup_epochs
    if warm > 0 and epoch < warm:
        if cfg.lr_update == "step":
            return (step + 1) / (warm * steps_per_epoch)
        return (epoch + 1) / warm
    if cfg.schedule == "step":
        return cfg.lr_decay ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min((epoch - warm) / span, 1.0)))
    return 1.0


def canonical(obj: Any) -> Any:
    """A copy of nested dicts / lists whose strings are interned and tensors cloned.

    Pickle shares repeated objects by identity, so the same values can be written as different
    bytes: strings read back from a checkpoint are not the interned ones of a fresh run. A file
    written from this copy has the same bytes (the same DVC hash) whether the run was resumed.
    """
    if isinstance(obj, dict):
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(canonical(v) for v in obj)
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    return obj


# ------------------------------------------------------------------------------ kept weights
class KeepLast:
    """``train.keep: last``: the network of the last epoch is the stage's result."""

    needs_val = False

    def observe(self, epoch: int, score: float | None, model: nn.Module) -> None:
        """Called after every epoch with the val mean per-class accuracy (None without val)."""

    def restore(self, model: nn.Module, last_epoch: int) -> int:
        """Put the kept weights into ``model``; returns the kept epoch (0-based)."""
        return last_epoch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class KeepBest(KeepLast):
    """``train.keep: best``: the weights of the epoch with the best val mean per-class accuracy.

    The earliest epoch wins a tie (a strictly greater score replaces it), as in CDB-CE's CIFAR
    code (``val_accuracy > best_val_accuracy``). The score is that of ``val``, never ``test``.
    A CPU copy of the state dict (parameters and buffers) is taken at each new best; it goes into
    the checkpoint, so a resumed run keeps the same epoch.
    """

    needs_val = True

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.score = -math.inf
        self.weights: dict[str, torch.Tensor] = {}

    def observe(self, epoch: int, score: float | None, model: nn.Module) -> None:
        if score is not None and score > self.score:
            self.epoch, self.score = epoch, score
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module, last_epoch: int) -> int:
        if self.epoch is None:
            return last_epoch
        model.load_state_dict(self.weights)
        return self.epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "score": self.score, "weights": dict(self.weights)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.score = state["epoch"], float(state["score"])
        self.weights = dict(state["weights"])


KEEPS: dict[str, type[KeepLast]] = {"last": KeepLast, "best": KeepBest}


# ------------------------------------------------------------------------------------ checkpoints
class Checkpointer:
    """Atomic checkpoints at ``path`` that resume only under the same ``signature``.

    Args:
        path: the checkpoint file (a persisted, uncached DVC output).
        signature: hash of what the run depends on (params, code, inputs); stored in the file.
        log: receives the one-line reason when a stored checkpoint is not used.
        meta: stored alongside for a reader (the resolved config); never compared.
    """

    def __init__(
        self,
        path: Path,
        signature: str,
        log: Callable[[str], None] = print,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.path, self.signature, self.log = Path(path), signature, log
        self.meta = dict(meta or {})

    def load(self) -> dict[str, Any] | None:
        """The stored state if it is readable and has this signature, else None (and says why)."""
        if not self.path.exists():
            return None
        try:  # weights_only: a checkpoint holds tensors and plain values, never code
            state = io.load_torch(self.path, self._remedy())
        except io.UnsafeFileError:
            raise  # a tampered or outdated file: the user decides, it is not overwritten
        except Exception as err:  # a truncated or foreign file: never resume from it
            self.log(
                f"checkpoint {self.path} is unreadable ({type(err).__name__}: "
                f"{str(err)[:120]}); starting fresh"
            )
            return None
        if not isinstance(state, dict) or "signature" not in state:
            self.log(f"checkpoint {self.path} is not a training checkpoint; starting fresh")
            return None
        if state["signature"] != self.signature:
            self.log(
                f"checkpoint {self.path} has a different signature (stored "
                f"{str(state['signature'])[:12]}, now {self.signature[:12]}: params, code or "
                "input data changed); starting fresh"
            )
            return None
        return state

    def _remedy(self) -> str:
        return (
            f"Delete it (rm {self.path}) to train from the first epoch, or put back a checkpoint "
            "you trust; one written by an older version of longtail is deleted the same way."
        )

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` with the signature, atomically (temp file, fsync, rename)."""
        io.save_torch({**state, "signature": self.signature, "meta": self.meta}, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Global RNG states (Python, NumPy, torch CPU and CUDA) as tensors, numbers and lists.

    Plain values so that a checkpoint loads with ``weights_only=True``: Python's state tuple as a
    list, NumPy's legacy MT19937 state as its dict form with the key as an int64 tensor.
    """
    version, internal, gauss_next = random.getstate()
    numpy = np.random.get_state(legacy=False)  # {"bit_generator", "state": {key, pos}, ...}
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "bit_generator": numpy["bit_generator"],
            "state": {
                "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),  # (624,)
                "pos": int(numpy["state"]["pos"]),
            },
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    np.random.set_state(
        {
            **numpy,
            "state": {
                "key": numpy["state"]["key"].numpy().astype(np.uint32),
                "pos": numpy["state"]["pos"],
            },
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(
    model: nn.Module,
    source: Source,
    batch_size: int,
    fast: FastPath,
    device: torch.device,
    order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, C) float32, labels (N,))`` of ``source`` in ``order``, on the device."""
    was_training = model.training
    model.eval()
    order = torch.arange(len(source)) if order is None else order
    gen = torch.Generator(device=device)  # unused: evaluation draws nothing
    outs, ys = [], []
    for x, y in source.batches(order, batch_size, train=False, generator=gen):
        with fast.autocast(device):
            logits, _ = model(fast.prepare_input(x))
        outs.append(logits.float())
        ys.append(y)
    model.train(was_training)
    if not outs:
        return torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.int64, device=device)
    return torch.cat(outs), torch.cat(ys)


def evaluate_confusion(
    model: nn.Module,
    source: Source,
    num_classes: int,
    batch_size: int,
    fast: FastPath,
    device: torch.device,
    world: World | None = None,
) -> torch.Tensor:
    """(C, C) confusion matrix of ``model`` on ``source``.

    With several processes each rank scores its strided share of ``source`` (no padding, so no
    sample counts twice) and the counts are summed: every rank returns the whole matrix.
    """
    world = world or World()
    order = world.shard(len(source))
    logits, labels = predict(model, source, batch_size, fast, device, order)
    if len(labels) == 0:
        conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    else:
        conf = confusion_matrix(logits.argmax(1), labels, num_classes)
    return world.all_reduce(conf)


# ----------------------------------------------------------------------------------------- trainer
@dataclass
class Trainer:
    """Runs ``epochs`` of training with ``loss`` over ``sampler``'s order of ``train_source``.

    Args:
        model: returns ``(logits, features)``.
        loss: a :class:`longtail.losses.LongTailLoss`.
        sampler: a :mod:`longtail.samplers` sampler over the training labels.
        params: the parameters to optimise (all of ``model``'s by default), or SGD parameter
            groups (dicts with ``params`` and their own ``lr``: partial fine-tuning).
        train_mode: puts the model in its training mode (decoupled retraining keeps a frozen
            backbone in eval mode).
        checkpointer: where checkpoints go; None trains without them. Every rank holds one; rank
            0 reads and writes the file.
        log_epoch: receives ``(epoch, metrics)`` after the epoch's checkpoint is on disk (the stage
            forwards them to DVCLive); called on rank 0 only.
        log: the terminal (resume notices, one line per ``log_every_epochs``); rank 0 only.
        history: the per-epoch metrics so far (restored by :meth:`resume`).
        world: the processes that train together (one by default); ``sampler`` must be built for
            the same rank and world size.
        sync_bn: with several processes, SyncBatchNorm instead of per-rank BatchNorm statistics.
        carry: an earlier stage's :meth:`carry_state` to continue (``finetune.optimizer:
            continue``): its SGD state and momentum buffers, its LR schedule position and step
            count, and its epoch count, which offsets the epochs seen by the augmentation
            generator, the sampler and the loss, so the two stages run as one.
    """

    model: nn.Module
    loss: nn.Module
    sampler: Any
    train_source: Source
    val_source: Source | None
    optim: OptimConfig
    train_cfg: TrainConfig
    device: torch.device
    seed: int
    num_classes: int
    train_counts: list[int]
    many_shot: int = 100
    few_shot: int = 20
    stage: str = "train"
    loss_name: str = "loss"
    params: list[nn.Parameter] | list[dict[str, Any]] | None = None
    train_mode: Callable[[nn.Module], None] | None = None
    checkpointer: Checkpointer | None = None
    log_epoch: Callable[[int, dict[str, float]], None] = field(default=lambda e, m: None)
    log: Callable[[str], None] = print
    history: list[dict[str, float]] = field(default_factory=list)
    world: World = field(default_factory=World)
    sync_bn: bool = False
    carry: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        assert (self.sampler.rank, self.sampler.world_size) == (self.world.rank, self.world.size)
        self.fast = FastPath.resolve(self.train_cfg, self.device)
        self.model.to(self.device)
        self.loss.to(self.device)
        self.fast.prepare_model(self.model)
        params = self.params if self.params is not None else list(self.model.parameters())
        self.optimizer = build_optimizer(
            params, self.optim, self.device, classifier_bias(self.model)
        )
        self.keeper = KEEPS[self.train_cfg.keep]()
        self.batch_size = distributed.per_rank_batch(
            self.optim.batch_size, self.world, f"{self.stage}.batch_size"
        )
        # Every rank takes ceil(N / world) samples (padded), hence the same number of steps; it is
        # ceil(N / global batch), the single process's count.
        self.rank_length = -(-len(self.sampler.labels) // self.world.size)
        self.steps_per_epoch = max(1, math.ceil(self.rank_length / self.batch_size))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.steps_per_epoch, self.optim)
        )
        self.epoch_offset = 0
        if self.carry is not None:
            self._continue_from(self.carry)
        # ``forward`` evaluates (the plain model: no collective, whatever the rank's share of val);
        # ``train_forward`` trains (DDP around the model with several processes).
        self.forward = self._compiled(self.model)
        ddp = distributed.wrap(self.model, self.world, self.device, self.sync_bn)
        self.train_forward = self.forward if ddp is self.model else self._compiled(ddp)
        self._vote = Vote(self.world)
        self.start_epoch, self.start_step = 0, 0
        self.logger_step = 0
        self._acc: dict[str, torch.Tensor] = {}
        self._aug_state: torch.Tensor | None = None
        self._last_lr: float | None = None  # the LR of the last optimiser step, for error messages
        self._val_score: float | None = None  # val mean per-class accuracy of the epoch (keep)
        self.kept_epoch: int | None = None  # set by fit: the epoch whose weights the model holds

    def _compiled(self, model: nn.Module) -> nn.Module:
        if not self.fast.compile:
            return model
        inductor_determinism()
        return torch.compile(model, dynamic=False)

    def _say(self, line: str) -> None:
        """Print on rank 0 only."""
        if self.world.is_main:
            self.log(line)

    # -- continuing an earlier stage (finetune.optimizer: continue) -----------------------------
    def carry_state(self) -> dict[str, Any]:
        """What a following stage needs to continue this run's optimiser (tensors and plain
        values only, so a ``weights_only`` load reads it): SGD state with its momentum buffers,
        the LR schedule's position (its step count), the steps per epoch and the epochs done."""
        return canonical(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epoch_offset + self.optim.epochs,
            }
        )

    def _continue_from(self, carry: Mapping[str, Any]) -> None:
        """Take over an earlier stage's optimiser, schedule position and epoch count."""
        if carry["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"{self.stage}: continuing the earlier stage's optimiser expects its "
                f"{carry['steps_per_epoch']} steps per epoch, so that the LR schedule's epochs "
                f"line up; got {self.steps_per_epoch} (same training set and batch_size needed)"
            )
        self.optimizer.load_state_dict(carry["optimizer"])
        self.scheduler.load_state_dict(carry["scheduler"])
        self.epoch_offset = int(carry["epochs"])

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self, epoch: int, step_in_epoch: int, gen: torch.Generator | None) -> dict:
        """Everything needed to continue: ``epoch`` epochs done plus ``step_in_epoch`` steps.

        The random state and loss sums of rank 0 sit at the top level; with several processes
        ``ranks`` lists every rank's (a collective: every rank calls this, rank 0 gets the list).
        """
        own = self._rank_state(gen)
        state = {
            "stage": self.stage,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loss": self.loss.state_dict(),
            "sampler": self.sampler.state_dict(),
            **own,
            "epoch": epoch,
            "epochs": self.optim.epochs,
            "step_in_epoch": step_in_epoch,
            "global_step": epoch * self.steps_per_epoch + step_in_epoch,
            "last_lr": self._last_lr,
            "logger_step": self.logger_step,
            "history": [dict(h) for h in self.history],
            "keep": self.keeper.state_dict(),
        }
        if self.world.active:
            state["ranks"] = self.world.gather_objects(own)
        return state

    def _rank_state(self, gen: torch.Generator | None) -> dict[str, Any]:
        """What differs between ranks: RNG states, the augmentation generator, the loss sums."""
        return {
            "rng": rng_state(),
            "aug_generator": gen.get_state() if gen is not None else None,
            "accumulators": {k: v.detach().cpu() for k, v in self._acc.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (each rank takes its own entry of ``ranks``)."""
        own = state["ranks"][self.world.rank] if self.world.active else state
        assert not self.world.active or len(state["ranks"]) == self.world.size
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss.load_state_dict(state["loss"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(own["rng"])
        self.start_epoch, self.start_step = state["epoch"], state["step_in_epoch"]
        self._acc = {k: v.to(self.device) for k, v in own["accumulators"].items()}
        self._aug_state = own["aug_generator"]
        self._last_lr = state.get("last_lr")
        self.logger_step = state["logger_step"]
        self.history = [dict(h) for h in state["history"]]
        self.keeper.load_state_dict(state.get("keep", {}))

    def resume(self) -> bool:
        """Load the checkpoint if it matches; True when the run continues from it.

        A checkpoint of the finished run (every epoch done) is resumed too: :meth:`fit` then trains
        nothing and the caller rewrites its outputs from the restored state, which is what a kill
        between the last checkpoint and the last output needs.
        """
        if self.checkpointer is None:
            return False
        state, refused = None, None
        if self.world.is_main:
            try:
                state = self.checkpointer.load()
            except io.UnsafeFileError as err:
                refused = str(err)
        # The other nodes need no copy of the file; they learn of a refusal instead of waiting.
        state, refused = self.world.broadcast_object((state, refused))
        if refused is not None:
            raise io.UnsafeFileError(refused)
        if state is None:
            return False
        self.load_state_dict(state)
        self._say(self._resume_message())
        return True

    def _save(self, epoch: int, step_in_epoch: int, gen: torch.Generator | None) -> None:
        """Write the checkpoint (rank 0; every rank takes part in gathering the state)."""
        state = self.state_dict(epoch, step_in_epoch, gen)
        if self.world.is_main:
            self.checkpointer.save(state)

    def _resume_message(self) -> str:
        done, total = self.start_epoch, self.optim.epochs
        where = self.checkpointer.path if self.checkpointer else "-"
        if done >= total:
            return (
                f"[{self.stage}] {where} holds the finished run ({done}/{total} epochs): "
                "nothing to train, rewriting the outputs from it"
            )
        step = f", step {self.start_step}/{self.steps_per_epoch}" if self.start_step else ""
        return f"[{self.stage}] resuming from epoch {done + 1}/{total}{step} ({where})"

    # -- one epoch -------------------------------------------------------------------------------
    def _generator(self, epoch: int) -> torch.Generator:
        """The augmentation generator of ``epoch``: a pure function of ``(seed, epoch, rank)``.

        Rank 0's is the single process's; the other ranks' are offset so that no two ranks
        augment alike.
        """
        gen = torch.Generator(device=self.device)
        epoch += self.epoch_offset  # a continued run goes on with the next epochs' draws
        gen.manual_seed(self.seed * 1_000_003 + epoch * 7919 + 17 + self.world.rank * 104_729)
        return gen

    def _set_train_mode(self) -> None:
        if self.train_mode is None:
            self.model.train()
        else:
            self.train_mode(self.model)

    def _begin_epoch(self, epoch: int, gen: torch.Generator) -> int:
        """Steps of ``epoch`` already done: restores their generator state and loss sums."""
        if epoch == self.start_epoch and self.start_step:
            assert self._aug_state is not None, "a mid-epoch checkpoint without its generator"
            gen.set_state(self._aug_state)
            skip, self.start_step = self.start_step, 0
            return skip
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self._acc = {"loss": zero.clone(), "correct": zero.clone(), "count": zero.clone()}
        return 0

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the sampler's order; returns the epoch's training metrics.

        Raises:
            TrainingDiverged: the epoch's loss or the weights are NaN or infinite; the checkpoint
                on disk is the last good one.
        """
        run_epoch, run_epochs = self.epoch_offset + epoch, self.epoch_offset + self.optim.epochs
        self.loss.set_epoch(run_epoch, run_epochs)
        self.sampler.set_epoch(run_epoch, run_epochs)
        gen = self._generator(epoch)
        step = self._begin_epoch(epoch, gen)
        self._set_train_mode()
        order = self._rank_order()[step * self.batch_size :]
        last_save = time.monotonic()
        for x, y in self.train_source.batches(order, self.batch_size, train=True, generator=gen):
            self._step(x, y)
            step += 1
            if self._vote(self._checkpoint_due(last_save)):  # the same answer on every rank
                # A checkpoint must be good: check first (a host sync, once per checkpoint).
                self._check_finite(epoch, step, reduce=True)
                self.world.sync_buffers(self.model)
                self._save(epoch, step, gen)
                last_save = time.monotonic()
                self._vote.reset()
        self._vote.reset()
        self.world.sync_buffers(self.model)
        loss_sum, correct, count = self._check_finite(epoch, step, reduce=True)
        return {
            "train/loss": loss_sum / max(count, 1.0),
            "train/acc": 100.0 * correct / max(count, 1.0),
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _rank_order(self) -> torch.Tensor:
        """This rank's slice of the epoch's global order, padded to ``rank_length``."""
        indices = self.sampler.indices()
        if not self.world.active:
            return indices
        return distributed.equal_slices(indices, len(self.sampler.labels), self.world)

    def _checkpoint_due(self, last_save: float) -> bool:
        minutes = self.train_cfg.checkpoint_minutes
        return self.checkpointer is not None and time.monotonic() - last_save > 60 * minutes

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.fast.autocast(self.device):
            logits, features = self.train_forward(self.fast.prepare_input(x))
            loss = self.loss(logits, y, features)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._last_lr = self.optimizer.param_groups[0]["lr"]  # a Python float: no sync
        self.optimizer.step()
        self.scheduler.step()
        n = y.shape[0]
        self._acc["loss"] += loss.detach().double() * n
        self._acc["correct"] += (logits.detach().argmax(1) == y).sum()
        self._acc["count"] += n

    # -- NaN / inf -------------------------------------------------------------------------------
    def _weights_finite(self) -> torch.Tensor:
        """() bool on the device: every floating parameter and buffer of the model is finite."""
        tensors = [
            t for t in chain(self.model.parameters(), self.model.buffers()) if t.is_floating_point()
        ]
        if not tensors:
            return torch.ones((), dtype=torch.bool, device=self.device)
        return torch.stack([t.detach().isfinite().all() for t in tensors]).all()

    def _check_finite(self, epoch: int, step: int, reduce: bool) -> tuple[float, float, float]:
        """One host sync: the loss sums (summed over processes when ``reduce``) and the check.

        Returns:
            ``(loss sum, correct, count)`` of the epoch so far.
        """
        sums = torch.stack([self._acc["loss"], self._acc["correct"], self._acc["count"]])
        bad_weights = (~self._weights_finite()).to(torch.float64)
        packed = torch.cat([sums.to(torch.float64), bad_weights[None]])  # (4,)
        if reduce:
            packed = self.world.all_reduce(packed)
        loss_sum, correct, count, bad = packed.tolist()  # host sync
        if not math.isfinite(loss_sum) or bad > 0:
            raise TrainingDiverged(self._diverged_message(epoch, step, loss_sum, count))
        return loss_sum, correct, count

    def _diverged_message(self, epoch: int, step: int, loss_sum: float, count: float) -> str:
        lr = self._last_lr if self._last_lr is not None else self.optimizer.param_groups[0]["lr"]
        if math.isfinite(loss_sum):
            what = f"the network's weights became NaN or infinite (loss {self.loss_name!r} finite)"
        else:
            what = f"loss {self.loss_name!r} is {loss_sum / max(count, 1.0)}"
        where = self.checkpointer.path if self.checkpointer else "nowhere (no checkpointer)"
        return (
            f"[{self.stage}] training diverged in epoch {epoch + 1}/{self.optim.epochs}, "
            f"step {step}/{self.steps_per_epoch}: {what}; last learning rate {lr:.4g}. "
            f"The last good checkpoint is kept at {where}. Lower the learning rate "
            f"({self.stage}.lr), add warmup ({self.stage}.warmup_epochs) or check the loss options."
        )

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Score ``val``, feed per-class accuracy to the loss, return the val metrics."""
        if self.val_source is None or len(self.val_source) == 0:
            return {}
        # The eager model: a few large eval batches gain little from compiling, and the compiled
        # module would compile new graphs (eval mode, no grad, each eval shape) at first use.
        conf = evaluate_confusion(
            self.model,
            self.val_source,
            self.num_classes,
            self.train_cfg.eval_batch_size,
            self.fast,
            self.device,
            self.world,
        )  # (C, C) counts summed over the ranks' shares: the whole split's
        correct, total = conf.diag(), conf.sum(1)
        self.loss.update(per_class_accuracy(correct, total).float().nan_to_num(1.0))
        summary = summarize(conf, self.train_counts, self.many_shot, self.few_shot)
        self._val_score = summary["mean_class_accuracy"]
        return {f"val/{k}": summary[k] for k in ("top1", "many", "medium", "few")}

    # -- the run -----------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, float]]:
        """Train from scratch or from the checkpoint; returns the per-epoch metrics.

        After every epoch: the checkpoint is written, then ``log_epoch`` is called, then the
        terminal line printed, so a printed epoch line means its checkpoint is on disk. At the end
        the model holds the kept weights (``train.keep``); :attr:`kept_epoch` says which epoch's.

        Raises:
            ValueError: ``train.keep: best`` without a val split.
        """
        has_val = self.val_source is not None and len(self.val_source) > 0
        if self.keeper.needs_val and not has_val:
            raise ValueError(
                f"train.keep: best selects the epoch on val, so {self.stage} expects a val split "
                "(set data.val_per_class > 0); got 0 val samples"
            )
        for epoch in range(self.start_epoch, self.optim.epochs):
            t0 = time.perf_counter()
            self._val_score = None
            metrics = {**self.train_one_epoch(epoch), **self.validate()}
            self.keeper.observe(epoch, self._val_score, self.model)
            metrics["epoch"] = epoch
            metrics["seconds"] = time.perf_counter() - t0
            self.history.append(metrics)
            self.logger_step += 1
            if self.checkpointer is not None:
                self._save(epoch + 1, 0, None)
            if self.world.is_main:
                self.log_epoch(epoch, metrics)
            if (epoch + 1) % self.train_cfg.log_every_epochs == 0 or epoch + 1 == self.optim.epochs:
                self._say(_format_epoch(self.stage, epoch, self.optim.epochs, metrics))
        self.kept_epoch = self.keeper.restore(self.model, self.optim.epochs - 1)
        return self.history


def _format_epoch(stage: str, epoch: int, total: int, m: dict[str, float]) -> str:
    parts = [
        f"[{stage}] epoch {epoch + 1}/{total}",
        f"loss {m['train/loss']:.4f}",
        f"train {m['train/acc']:.1f}%",
    ]
    if "val/top1" in m:
        parts.append(f"val {m['val/top1']:.1f}% (few {m['val/few']:.1f}%)")
    parts.append(f"lr {m['lr']:.3g}  {m['seconds']:.2f}s")
    return "  ".join(parts)
