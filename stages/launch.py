"""Launcher of the training stages: ``python -m stages.launch N pretrain`` runs ``pretrain`` on N
processes.

dvc.yaml runs ``python -m stages.launch ${dist.nproc} pretrain`` (and ``finetune``): DVC fills in
the process count from params.yaml and records the resolved command in dvc.lock, so ``dvc exp run
-S dist.nproc=4`` reruns the training stages. ``N`` must equal ``dist.nproc`` (params.yaml stays the
one source of it; the command line only makes it visible to DVC).

- ``N == 1``: the stage runs in this process, exactly as ``python -m stages.<stage>``.
- ``N > 1``: this process becomes (exec, same pid) ``torchrun --standalone --nproc-per-node N -m
  stages.<stage>``: one process per GPU on CUDA, gloo processes on the CPU. Ctrl-C and kill reach
  torchrun, which stops its ranks; a rank also dies with torchrun if that is killed outright.
- Several machines: set ``LONGTAIL_TORCHRUN_ARGS`` to the rendezvous arguments, e.g. ``--nnodes 2
  --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id job42``; they replace
  ``--standalone`` (torchrun is used even for N == 1) and ``N`` is the number of processes per
  machine. Every machine runs the same command (docs/scale-out.md; tests/test_multinode.py runs
  two agents on one machine this way).

Before starting anything the launcher validates params.yaml and the process count (the global
batch must divide among the N processes of every node, ``--nnodes`` of ``LONGTAIL_TORCHRUN_ARGS``
times N; at most one process per GPU), so a bad value gives one error line instead of one per
process.
"""

from __future__ import annotations

import os
import runpy
import shlex
import sys

from longtail import modes
from longtail.config import Config
from longtail.distributed import World, per_rank_batch
from longtail.pipeline import run_stage
from stages import common

STAGES = ("pretrain", "finetune")
ENV = "LONGTAIL_TORCHRUN_ARGS"
USAGE = "python -m stages.launch N STAGE (N = dist.nproc, STAGE one of pretrain, finetune)"


def parse(argv: list[str]) -> tuple[int, str]:
    """``(N, stage)`` from the command line ``[N, stage]``."""
    if len(argv) != 2 or not argv[0].isdigit() or int(argv[0]) < 1 or argv[1] not in STAGES:
        raise ValueError(f"stages.launch: expected {USAGE}; got {' '.join(argv) or 'nothing'}")
    return int(argv[0]), argv[1]


def command(nproc: int, stage: str, torchrun_args: str | None) -> list[str] | None:
    """The torchrun command line, or None when the stage runs in this process.

    Args:
        nproc: processes on this machine.
        stage: the stage module under ``stages``.
        torchrun_args: multi-node rendezvous arguments (``LONGTAIL_TORCHRUN_ARGS``), or None.
    """
    if nproc == 1 and not torchrun_args:
        return None
    where = shlex.split(torchrun_args) if torchrun_args else ["--standalone"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        "--nproc-per-node",
        str(nproc),
        "-m",
        f"stages.{stage}",
    ]


def nodes(torchrun_args: str | None) -> int | None:
    """The node count of ``--nnodes N`` in the rendezvous arguments: 1 without them, None when
    elastic (``--nnodes MIN:MAX``: the world size is known only once the nodes have met).

    Raises:
        ValueError: ``--nnodes`` without a count.
    """
    words = shlex.split(torchrun_args or "")
    value = "1"
    for i, word in enumerate(words):
        if word.startswith("--nnodes="):
            value = word.split("=", 1)[1]
        elif word == "--nnodes":
            if i + 1 == len(words):
                raise ValueError(f"{ENV}: expected a count after --nnodes; got {torchrun_args!r}")
            value = words[i + 1]
    return int(value) if value.isdigit() else None


def check(cfg: Config, nproc: int, stage: str, torchrun_args: str | None = None) -> None:
    """Refuse a process count that disagrees with params.yaml or the machine.

    Args:
        torchrun_args: ``LONGTAIL_TORCHRUN_ARGS``; its ``--nnodes`` multiplies the world size.

    Raises:
        ValueError: naming the key (``dist.nproc``, ``pretrain.batch_size``, ...).
    """
    if nproc != cfg.dist.nproc:
        raise ValueError(
            f"dist.nproc: the launcher expected the process count of params.yaml "
            f"({cfg.dist.nproc}); got {nproc} on its command line"
        )
    count = nodes(torchrun_args)
    if count is not None:  # elastic (None): each rank checks its share once the nodes have met
        _check_batches(cfg, World(size=nproc * count), stage)
    if nproc > 1:
        _check_gpus(cfg, nproc)


def _check_batches(cfg: Config, world: World, stage: str) -> None:
    if stage == "pretrain":
        per_rank_batch(cfg.pretrain.optim.batch_size, world, "pretrain.batch_size")
    elif modes.get(cfg.finetune.mode).trains(cfg):
        per_rank_batch(cfg.finetune.optim.batch_size, world, "finetune.batch_size")


def _check_gpus(cfg: Config, nproc: int) -> None:
    import torch

    from longtail.train import resolve_device

    if resolve_device(cfg.device).type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(
            f"dist.nproc: expected at most one process per GPU ({torch.cuda.device_count()} "
            f"on this machine); got {nproc}"
        )


def main(argv: list[str] | None = None) -> None:
    nproc, stage = parse(sys.argv[1:] if argv is None else argv)
    check(common.config(), nproc, stage, os.environ.get(ENV))
    cmd = command(nproc, stage, os.environ.get(ENV))
    if cmd is None:
        sys.argv = [f"stages/{stage}.py"]
        runpy.run_module(f"stages.{stage}", run_name="__main__", alter_sys=True)
        return
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    run_stage(main)
