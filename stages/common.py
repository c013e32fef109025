"""Paths and wiring shared by the stage scripts (the only place that names the output layout).

Every stage validates the whole ``params.yaml`` first (:func:`config`), so a bad value stops the
first stage that runs, before any work. The training stages join the process group of their
torchrun launch through :func:`start` (one plain process without torchrun) and leave it through
:func:`finish`; only rank 0 writes outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from longtail import data
from longtail.config import Config, ConfigError, load, to_dict
from longtail.data.base import Family, SourceContext

if TYPE_CHECKING:  # the training stages import torch; the data stages never do
    import torch

    from longtail.distributed import World
    from longtail.loop import Stage

PARAMS = Path("params.yaml")
RAW = Path("data/raw")
PREPARED = Path("data/prepared")
FRAMES = Path("data/frames")
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
CHECKPOINTS = Path("checkpoints")
LIVE = Path("dvclive")
CODE = [Path("longtail")]


def config(training: bool = True) -> Config:
    """The validated params.yaml (``training=False``: the data stages' checks, no torch)."""
    return load(PARAMS, training)


def start(cfg: Config) -> tuple[torch.device, World]:
    """Resolve the device, join the process group (under torchrun), set determinism.

    Returns:
        ``(device of this rank, world)``; ``cuda:<local_rank>`` on CUDA.
    """
    from longtail import distributed
    from longtail.train import resolve_device, set_cpu_threads, set_determinism

    device = resolve_device(cfg.device)
    world = distributed.init(device, cfg.dist.backend)
    device = distributed.rank_device(device, world)
    if cfg.dist.sync_bn and world.active and device.type != "cuda":
        raise ConfigError(
            f"dist.sync_bn: SyncBatchNorm expects CUDA devices (PyTorch has no CPU version); got "
            f"{world.size} processes on {device.type} (set dist.sync_bn: false)"
        )
    set_determinism(cfg.determinism, device)
    set_cpu_threads(cfg.train.cpu_threads, device)
    return device, world


def finish(world: World) -> None:
    """Wait for every rank, then leave the process group."""
    from longtail import distributed

    world.barrier()
    distributed.shutdown()


def raw_dir(cfg: Config) -> Path:
    """Where ``download`` puts the dataset: ``data/raw/<name>``."""
    return RAW / cfg.data.name


def context(cfg: Config, device: torch.device) -> SourceContext:
    """What a family needs to open its splits."""
    return SourceContext(
        data=cfg.data,
        frames=cfg.frames,
        raw_dir=raw_dir(cfg),
        prepared_dir=PREPARED,
        frames_dir=FRAMES,
        device=device,
    )


def val_needed_by(cfg: Config) -> list[str]:
    """The params of ``cfg`` that need a non-empty ``val`` split, as ``key: value`` strings.

    CDB-CE's difficulties as ``pretrain.loss``, and what the finetune mode says it needs
    (``Mode.val_needs``: CDB-CE's as the finetune ``loss`` of a mode that trains, the BALMS meta set
    with ``finetune.meta_source: val``, a τ-norm sweep score on ``val``).
    """
    from longtail import modes
    from longtail.losses import LOSSES

    needs = []
    if LOSSES[cfg.pretrain.loss.name].requires_val:
        needs.append(f"pretrain.loss.name: {cfg.pretrain.loss.name}")
    return needs + modes.get(cfg.finetune.mode).val_needs(cfg)


def sample_shape(cfg: Config, device: torch.device) -> tuple[int, ...]:
    """The shape of one training input as the network sees it: ``(C, H, W)`` or ``(C, T, H, W)``."""
    import torch

    source = family(cfg).open(context(cfg, device), "train")
    gen = torch.Generator(device=device)
    x, _ = next(source.batches(torch.arange(1), 1, train=False, generator=gen))
    return tuple(x.shape[1:])


def family(cfg: Config) -> Family:
    return data.get(cfg.data.name)


def arch(cfg: Config) -> str:
    """``model.arch``, with ``auto`` resolved to the dataset's backbone from the papers."""
    return family(cfg).default_arch if cfg.model.arch == "auto" else cfg.model.arch


def sections(cfg: Config, *names: str) -> dict:
    """The named params sections as plain dicts (for signatures and checkpoints)."""
    full = to_dict(cfg)
    return {name: full[name] for name in names}


def code_paths(stage: str) -> list[Path]:
    """The code a training stage's checkpoint signature covers (its dvc.yaml code deps)."""
    script = Path("stages") / f"{stage}.py"
    return [*CODE, Path("stages/common.py"), *([script] if script.exists() else [])]


def training(
    name: str,
    cfg: Config,
    device: torch.device,
    world: World,
    *,
    inputs: list[Path],
    param_sections: tuple[str, ...],
    first_step: int = 0,
    carry: dict | None = None,
    carry_out: dict | None = None,
) -> Stage:
    """The training stage ``name`` for :func:`longtail.loop.run`: its splits, checkpoint
    (``checkpoints/<name>.ckpt``, resumed when its signature matches), curves
    (``dvclive/<name>/``) and metrics (``metrics/<name>.json``).

    The checkpoint signature covers ``param_sections``, the resolved device type (a CPU
    checkpoint does not resume on CUDA), the process count and SyncBatchNorm (they change the
    computation), the stage's code and ``inputs``. ``first_step``: the DVCLive step of the first
    epoch (finetune's curves continue after pretrain's epochs).
    """
    from longtail.data.base import class_counts
    from longtail.loop import Stage
    from longtail.pipeline import signature

    params_used = {
        **sections(cfg, *param_sections),
        "resolved_device": device.type,
        "world": {"size": world.size, "sync_bn": cfg.dist.sync_bn and world.active},
    }
    ctx = context(cfg, device)
    return Stage(
        name=name,
        cfg=cfg,
        device=device,
        world=world,
        open_split=lambda split: family(cfg).open(ctx, split),
        counts=class_counts(PREPARED, "train"),
        checkpoint=CHECKPOINTS / f"{name}.ckpt",
        signature=signature(params_used, [*code_paths(name), *inputs]),
        meta=params_used,
        live_dir=LIVE / name,
        metrics_path=METRICS / f"{name}.json",
        describe=f"{arch(cfg)} on {cfg.data.name}",
        first_step=first_step,
        carry=carry,
        carry_out=carry_out,
    )
