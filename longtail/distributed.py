"""Data-parallel training with PyTorch's own engine: one process per GPU (or CPU rank), torchrun.

Never ``DataParallel``. A stage started by ``torchrun`` finds ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in its environment; :func:`init` joins the process group (NCCL on CUDA, gloo on the
CPU) and returns a :class:`World`. Without those variables the world is one plain process and every
collective is the identity, so single-process code needs no branch. ``stages/launch.py`` starts
``torchrun`` when ``dist.nproc > 1``.

Conventions (docs/scale-out.md):

- ``batch_size`` in params is the *global* batch; each rank takes ``batch_size / world_size``
  (:func:`per_rank_batch`) and the learning rate is unchanged, so rank ``r``'s batch ``k`` is the
  strided share ``r::world_size`` of the single process's batch ``k``, and the average of the
  ranks' gradients is the gradient of the global batch.
- Every sampler gives each rank ``global_order[rank::world_size]`` of one seeded global order; the
  slices are padded to equal length (:func:`equal_slices`: at most one repeated sample per rank)
  so that every rank takes the same number of steps.
- Evaluation is split the same way (:meth:`World.shard`) without padding and the confusion matrices
  (counts) are summed, so no sample is counted twice; CDB-CE's per-class accuracy comes from those
  summed counts.
- Only rank 0 writes outputs, checkpoints, metrics and DVCLive logs. Checkpoints hold every rank's
  random state (:meth:`World.gather_objects`); a resumed run reads the file on rank 0 and
  broadcasts it (:meth:`World.broadcast_object`), so the other nodes of a multi-node run need no
  copy of it.

Small control messages (checkpoint votes, gathered RNG states, the resumed state) go through a gloo
group on the CPU, so they never wait on a GPU stream.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "Vote",
    "World",
    "env_world",
    "equal_slices",
    "init",
    "per_rank_batch",
    "rank_device",
    "shutdown",
    "wrap",
]

_CPU_GROUP: Any = None  # the gloo group of control messages (the default group when it is gloo)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives do something."""
        return self.size > 1

    def backend(self) -> str:
        """The process group's backend (``nccl``, ``gloo``), or ``none`` outside a group."""
        return str(dist.get_backend()) if dist.is_initialized() else "none"

    # ------------------------------------------------------------------------- tensors
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes (in place and returned); identity in one process."""
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def all_reduce_autograd(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes as a differentiable op (its backward sums the gradients too)."""
        if not self.active:
            return tensor
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(tensor)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``tensor`` on every process (in place and returned)."""
        if self.active:
            dist.broadcast(tensor, src)
        return tensor

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm's running statistics).

        DDP broadcasts them before each training forward, after which each rank updates them with
        its own share of the batch; before an evaluation or a checkpoint they are made equal again,
        so every rank evaluates, and rank 0 saves, one network.
        """
        if self.active:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.active:
            dist.barrier(group=_CPU_GROUP)

    # ------------------------------------------------------------------------- objects
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (any picklable object) on every process."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=_CPU_GROUP)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0; None on the other ranks."""
        if not self.active:
            return [obj]
        out = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=_CPU_GROUP)
        return out

    # ------------------------------------------------------------------------- data
    def shard(self, length: int) -> torch.Tensor:
        """This rank's strided share ``arange(length)[rank::size]`` of an evaluation, unpadded."""
        return torch.arange(self.rank, length, self.size)


class Vote:
    """ "Does any rank say yes?" without a device sync (mid-epoch checkpoints agree on it).

    Each rank decides from its own clock whether a checkpoint is due; saving one is collective, so
    the ranks must agree. In one process the answer is the process's own vote, at once. With
    several, each step's votes are summed over the CPU group in the background and read one step
    later: every rank reads the same sum at the same step, and no rank waits on its GPU.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self._pending: tuple[torch.Tensor, Any] | None = None

    def __call__(self, yes: bool) -> bool:
        """Cast this step's vote; returns whether any rank voted yes (last step's votes if many)."""
        if not self.world.active:
            return yes
        agreed = self._collect()
        flag = torch.tensor([int(yes)], dtype=torch.int64)
        self._pending = (flag, dist.all_reduce(flag, group=_CPU_GROUP, async_op=True))
        return agreed

    def reset(self) -> None:
        """Forget the votes in flight (after a checkpoint, or at the end of an epoch)."""
        self._collect()

    def _collect(self) -> bool:
        if self._pending is None:
            return False
        flag, work = self._pending
        work.wait()
        self._pending = None
        return bool(flag.item() > 0)


def env_world() -> World:
    """The world described by torchrun's environment variables (one process without them)."""
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init(
    device: torch.device,
    backend: str = "auto",
    timeout_minutes: float = 30.0,
    init_method: str | None = None,
) -> World:
    """Join the process group if torchrun started this process; returns the world.

    Args:
        device: the resolved training device; CUDA ranks use ``cuda:<local_rank>``.
        backend: ``auto`` (NCCL on CUDA, gloo on the CPU), ``nccl`` or ``gloo``.
        timeout_minutes: how long a collective may wait for a slow rank.
        init_method: where the ranks meet (default ``env://``: torchrun's ``MASTER_ADDR``).

    Raises:
        ValueError: NCCL without CUDA, or more ranks on this machine than GPUs.
    """
    world = env_world()
    if not world.active or dist.is_initialized():
        return world
    backend = _resolve_backend(backend, device)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise ValueError(
                f"dist.nproc: expected at most one process per GPU ({count} on this machine), "
                f"got local rank {world.local_rank}"
            )
        torch.cuda.set_device(world.local_rank)
    _die_with_launcher()
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=world.rank,
        world_size=world.size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    global _CPU_GROUP
    _CPU_GROUP = None if backend == "gloo" else dist.new_group(backend="gloo")
    return world


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"dist.backend: nccl expects CUDA devices; got device {device.type} "
            "(set dist.backend: auto or gloo)"
        )
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"dist.backend: expected one of auto, nccl, gloo; got {backend!r}")
    return backend


def _die_with_launcher() -> None:
    """Linux: end this rank with SIGKILL when its parent (the torchrun agent) dies.

    torchrun starts every rank in a session of its own, so without this a killed agent (``kill
    -9``, the OOM killer) would leave its ranks training on, writing outputs no one waits for.
    """
    if sys.platform != "linux" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() == 1:  # the agent died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: ``cuda:<local_rank>`` on CUDA, ``device`` otherwise."""
    if device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    global _CPU_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _CPU_GROUP = None


def per_rank_batch(batch_size: int, world: World, key: str) -> int:
    """The per-rank share of the global batch ``batch_size`` (it must divide evenly).

    Raises:
        ValueError: naming ``key`` (``pretrain.batch_size``) when it does not divide.
    """
    if batch_size % world.size:
        raise ValueError(
            f"{key}: expected a global batch size divisible by the {world.size} processes; "
            f"got {batch_size}"
        )
    return batch_size // world.size


def equal_slices(rank_order: torch.Tensor, global_length: int, world: World) -> torch.Tensor:
    """Pad this rank's slice of a global order so that every rank has ``ceil(L / size)`` items.

    The ranks' slices ``global[rank::size]`` differ in length by at most one; the shorter ones
    repeat their first element, so all ranks take the same number of steps.

    Raises:
        ValueError: fewer items than ranks (a rank would have nothing to repeat).
    """
    target = -(-global_length // world.size)
    missing = target - len(rank_order)
    if missing <= 0:
        return rank_order
    if len(rank_order) == 0:
        raise ValueError(
            f"training set: expected at least one sample per process ({world.size}), "
            f"got {global_length}"
        )
    return torch.cat([rank_order, rank_order[:missing]])


def wrap(model: nn.Module, world: World, device: torch.device, sync_bn: bool) -> nn.Module:
    """DistributedDataParallel around ``model`` when several processes train; else ``model``.

    ``sync_bn`` first converts ``model``'s BatchNorm layers, in place, to SyncBatchNorm:
    statistics over the global batch instead of each rank's share (one all-reduce per BN layer per
    step; PyTorch implements it on CUDA only). The parameters stay the same objects, so optimisers
    built on them need no change, and the state dict keeps its keys.
    """
    if not world.active:
        return model
    if sync_bn:
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert converted is model, "a BatchNorm layer as the root module cannot be converted"
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
