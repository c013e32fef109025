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

    CDB-CE's difficulties (as ``pretrain.loss`` or as the finetune ``loss``), the BALMS meta set
    with ``finetune.meta_source: val``, and a τ-norm sweep score on ``val``.
    """
    from longtail.losses import LOSSES

    ft = cfg.finetune
    needs = []
    if LOSSES[cfg.pretrain.loss.name].requires_val:
        needs.append(f"pretrain.loss.name: {cfg.pretrain.loss.name}")
    if ft.mode not in ("none", "tau_norm") and LOSSES[cfg.loss.name].requires_val:
        needs.append(f"loss.name: {cfg.loss.name}")
    if ft.mode == "classifier" and ft.sampler == "meta" and ft.meta_source == "val":
        needs.append("finetune.meta_source: val")
    if ft.mode == "tau_norm" and len(ft.tau_candidates()) > 1:
        needs.append(f"finetune.tau_norm: {ft.tau_norm}")
    return needs


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


def train_stage(
    stage: str,
    cfg: Config,
    model: torch.nn.Module,
    loss_cfg,
    sampler_name: str,
    optim,
    device: torch.device,
    inputs: list[Path],
    param_sections: tuple[str, ...],
    params: list | None = None,
    train_mode=None,
    sampler_options: dict | None = None,
    setup=None,
    world: World | None = None,
    first_step: int = 0,
    carry: dict | None = None,
    carry_out: dict | None = None,
) -> dict:
    """Train ``model`` with one loss and sampler under the shared loop; returns final metrics.

    Writes the checkpoint ``checkpoints/<stage>.ckpt`` (resumed when its signature matches), the
    DVCLive curves ``dvclive/<stage>/`` and ``metrics/<stage>.json`` (rank 0 only, once every rank
    is done). ``sampler_options`` go to the sampler's constructor; ``setup(trainer)``, if given,
    runs once the trainer is built and before it resumes (decoupled retraining swaps in
    frozen-feature sources and the BALMS meta step there). ``world``: the processes of a torchrun
    launch (one by default). ``first_step``: the DVCLive step of the first epoch (finetune's
    curves continue after pretrain's epochs).
    """
    from longtail import io, losses, samplers
    from longtail.data.augment import use_color_jitter, use_policy
    from longtail.data.base import class_counts
    from longtail.data.imbalance import phase_split
    from longtail.distributed import World
    from longtail.pipeline import EpochLogger, machine, signature
    from longtail.train import Checkpointer, Trainer

    fam = family(cfg)
    ctx = context(cfg, device)
    train_src, val_src = fam.open(ctx, phase_split(cfg.data.draws, stage)), fam.open(ctx, "val")
    counts = class_counts(PREPARED, "train")
    loss = losses.create(loss_cfg.name, counts, **loss_cfg.kwargs())
    if getattr(loss, "requires_val", False) and len(val_src) == 0:
        raise ValueError(
            f"{stage}: loss {loss_cfg.name} needs a val split (set data.val_per_class > 0)"
        )
    world = world or World()
    section = {"pretrain": cfg.pretrain, "finetune": cfg.finetune}[stage]
    meta_draw = None  # data.draws: per_phase, the BALMS meta set's own draw (longtail.meta)
    if stage == "finetune" and cfg.data.draws == "per_phase" and section.meta_source == "train":
        meta_draw = fam.open(ctx, phase_split(cfg.data.draws, "meta"))
    try:
        for source in (train_src, meta_draw) if meta_draw is not None else (train_src,):
            use_policy(source, section.policy, f"{stage}.policy")
            use_color_jitter(source, section.color_jitter, f"{stage}.color_jitter")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    options = samplers.stage_options(sampler_name, samples_per_class=section.samples_per_class)
    sampler = samplers.create(
        sampler_name,
        train_src.labels,
        seed=cfg.seed,
        rank=world.rank,
        world_size=world.size,
        num_classes=len(counts),
        **{**options, **(sampler_options or {})},
    )
    # The resolved device type joins the params (a CPU checkpoint does not resume on CUDA), and so
    # do the process count and SyncBatchNorm, which change the computation (a checkpoint resumes
    # with the number of processes that wrote it).
    params_used = {
        **sections(cfg, *param_sections),
        "resolved_device": device.type,
        "world": {"size": world.size, "sync_bn": cfg.dist.sync_bn and world.active},
    }
    sig = signature(params_used, [*code_paths(stage), *inputs])
    trainer = Trainer(
        model=model,
        loss=loss,
        sampler=sampler,
        train_source=train_src,
        val_source=val_src,
        optim=optim,
        train_cfg=cfg.train,
        device=device,
        seed=cfg.seed,
        num_classes=len(counts),
        train_counts=counts,
        many_shot=cfg.evaluate.many_shot,
        few_shot=cfg.evaluate.few_shot,
        stage=stage,
        loss_name=loss_cfg.name,
        params=params,
        train_mode=train_mode,
        checkpointer=Checkpointer(CHECKPOINTS / f"{stage}.ckpt", sig, meta=params_used),
        world=world,
        sync_bn=cfg.dist.sync_bn,
        carry=carry,
    )
    if meta_draw is not None:
        trainer.meta_draw = meta_draw
    if setup is not None:
        setup(trainer)
    logger = EpochLogger(LIVE / stage, enabled=world.is_main, first_step=first_step)
    trainer.log_epoch = logger
    if trainer.resume():
        logger.replay(trainer.history)
    if world.is_main:
        print(
            f"[{stage}] {arch(cfg)} on {cfg.data.name}: {len(train_src)} train / {len(val_src)} "
            f"val samples, loss {loss_cfg.name}, sampler {sampler_name}, {optim.epochs} epochs, "
            f"batch {optim.batch_size}, lr {optim.lr:g}, device {device}, fast path {trainer.fast}"
        )
        print(scale_line(stage, world, trainer.batch_size, optim.lr, cfg.dist.sync_bn))
    history = trainer.fit()
    logger.close()
    if carry_out is not None:  # what a following stage needs to continue this optimiser
        carry_out.update(trainer.carry_state())
    # The epoch whose weights the model now holds (train.keep) and its metrics.
    kept = trainer.kept_epoch
    final = dict(history[kept]) if history else {}
    final.pop("seconds", None)
    summary = {
        "epochs": optim.epochs,
        "loss": loss_cfg.name,
        "sampler": sampler_name,
        "seconds": round(sum(h["seconds"] for h in history), 3),
        **machine(device),
        **final,
        "keep": cfg.train.keep,
        "kept_epoch": kept,
    }
    world.barrier()  # every rank is done before rank 0 writes
    if world.is_main:
        io.write_json(METRICS / f"{stage}.json", summary)
    return summary


def scale_line(stage: str, world: World, per_rank: int, lr: float, sync_bn: bool) -> str:
    """The log line of the scale-out conventions: world size, batches and the effective LR."""
    how = f" ({world.backend()})" if world.active else ""
    bn = ""
    if world.active:
        bn = "; SyncBatchNorm" if sync_bn else "; BatchNorm statistics per rank"
    return (
        f"[{stage}] world size {world.size}{how}: per-rank batch {per_rank}, global batch "
        f"{per_rank * world.size}, effective lr {lr:g} (batch_size is the global batch, so the "
        f"learning rate does not change with the world size){bn}"
    )
