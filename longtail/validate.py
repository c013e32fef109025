"""Checks of a parsed config across sections and against the registries (``longtail.config``
stays a leaf: it types and bounds each key; the names a key may take live in the registries).

:func:`check` runs inside :func:`longtail.config.parse` (it joins ``config.CHECKS`` when the
package is imported). The checks of the data stages (``training=False``) import no torch: the
dataset family, CIFAR subset and imbalance profile, the finetune mode's name, and
``finetune.optimizer: continue``. The training stages add everything that picks from a
torch-based registry: losses and their options, samplers, networks, heads, bias
initialisations, augmentation policies, BatchNorm policies, meta sets, the epoch kept, and each
finetune mode's own checks (``Mode.check``). Every refusal names the key, what is allowed and
what came.
"""

from __future__ import annotations

import typing
from typing import Any

from longtail.config import CHECKS, Config, ConfigError, LossConfig, ModelConfig

# Keys of finetune that must equal pretrain's under finetune.optimizer: continue (the one optimiser
# and LR schedule run on); finetune.epochs is free: the number of epochs added.
CONTINUED_KEYS = (
    "batch_size",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "milestones",
    "lr_decay",
    "warmup_epochs",
    "bias_decay",
    "lr_update",
)


def _fail(key: str, expected: str, value: Any) -> typing.NoReturn:
    raise ConfigError(f"{key}: expected {expected}; got {value!r}")


def _unknown(key: str, valid: list[str]) -> typing.NoReturn:
    raise ConfigError(f"{key}: unknown key; valid keys here are {', '.join(valid)}")


def _named(key: str, value: str, valid: typing.Iterable[str]) -> None:
    """``value`` is one of the registry's names ``valid``."""
    valid = list(valid)
    if value not in valid:
        _fail(key, "one of " + ", ".join(valid), value)


def check(config: Config, training: bool = True) -> None:
    """Every cross-section and registry check of ``config`` (``training``: see module)."""
    _check_data(config)
    _check_mode_name(config)
    _check_continue(config)
    _check_lr_update(config)
    if training:
        _check_training(config)


def _check_data(config: Config) -> None:
    """Dataset family, CIFAR subset rule and imbalance profile (checks that import no torch)."""
    from longtail import data
    from longtail.data import imbalance

    _named("data.name", config.data.name, data.names())
    _named("data.subset", config.data.subset, imbalance.SUBSETS)
    _named("data.profile", config.data.profile, imbalance.PROFILES)
    if config.frames.store is not None:  # the store registry imports OpenCV: only when named
        from longtail.data import clipstore

        _named("frames.store", config.frames.store, clipstore.STORES.names())
    _check_draws(config)


def _check_draws(config: Config) -> None:
    """``data.draws: per_phase`` needs a family whose training split is a seeded draw."""
    from longtail.data.imbalance import DRAWN_FAMILIES

    cfg = config.data
    if cfg.draws == "shared":
        return
    if cfg.name not in DRAWN_FAMILIES:
        _fail(
            "data.draws",
            f"shared for {cfg.name} (its training images are published lists or clips, not a "
            f"seeded draw; per_phase is for {', '.join(DRAWN_FAMILIES)})",
            cfg.draws,
        )
    if cfg.subset == "cdb" and cfg.name != "digits":
        _fail(
            "data.draws",
            "shared with data.subset: cdb (CDB-CE's images are in file order: every draw would "
            "be the same)",
            cfg.draws,
        )


def _check_lr_update(config: Config) -> None:
    """``epoch_prestep`` steps a scheduler before each epoch; no reference warms up that way."""
    for stage in ("pretrain", "finetune"):
        optim = getattr(config, stage).optim
        if optim.lr_update == "epoch_prestep" and optim.warmup_epochs > 0:
            _fail(
                f"{stage}.warmup_epochs",
                f"0 with {stage}.lr_update: epoch_prestep (classifier-balancing's scheduler, "
                "stepped before each epoch, has no warmup; use lr_update: epoch for LDAM-DRW's)",
                optim.warmup_epochs,
            )


def _check_mode_name(config: Config) -> None:
    from longtail import modes

    _named("finetune.mode", config.finetune.mode, modes.names())


def _check_continue(config: Config) -> None:
    """``finetune.optimizer: continue`` runs pretrain's optimiser on: refuse what cannot."""
    if config.finetune.optimizer != "continue":
        return
    from longtail import modes

    why = "finetune.optimizer: continue carries pretrain's optimiser and LR schedule on"
    if not modes.get(config.finetune.mode).continues_optimizer:
        takers = [n for n in modes.names() if modes.get(n).continues_optimizer]
        expected = " or ".join(takers)
        _fail(
            "finetune.mode", f"{expected} ({why}, over the same parameters)", config.finetune.mode
        )
    pre, fine = config.pretrain.optim, config.finetune.optim
    for key in CONTINUED_KEYS:
        if getattr(pre, key) != getattr(fine, key):
            _fail(
                f"finetune.{key}",
                f"pretrain.{key}'s value {getattr(pre, key)!r} ({why})",
                getattr(fine, key),
            )
    if pre.schedule == "cosine":
        _fail(
            "pretrain.schedule",
            f"step or constant ({why}, and a cosine schedule has reached LR 0 at pretrain.epochs)",
            pre.schedule,
        )
    if config.train.keep != "last":
        _fail(
            "train.keep",
            f"last ({why} from pretrain's last epoch, so pretrain must keep that epoch)",
            config.train.keep,
        )


def _check_training(config: Config) -> None:
    """Names and options that pick from the torch-based registries, and the mode's own checks."""
    from longtail import decouple, meta, modes, nets, samplers
    from longtail.checkpoint import KEEPS
    from longtail.data import augment
    from longtail.nets import heads

    _check_loss(config.pretrain.loss, "pretrain.loss")
    _check_loss(config.loss, "loss")
    if config.model.arch != "auto":
        _named("model.arch", config.model.arch, ("auto", *nets.names()))
    _named("model.classifier", config.model.classifier, heads.names())
    _named("model.bias_init", config.model.bias_init, heads.BIAS_INITS)
    _named("pretrain.policy", config.pretrain.policy, augment.POLICIES)
    _named("finetune.policy", config.finetune.policy, augment.POLICIES)
    _named("finetune.backbone_bn", config.finetune.backbone_bn, decouple.BACKBONE_BN)
    _named("finetune.meta_source", config.finetune.meta_source, meta.META_SOURCES)
    _named("train.keep", config.train.keep, KEEPS)
    _check_head(config.model, config.finetune.mode)
    _check_pretrain_mode(config)
    _named("pretrain.sampler", config.pretrain.sampler, samplers.names())
    mode = modes.get(config.finetune.mode)
    _check_finetune_sampler(config, mode)
    for stage, section, sampler in (
        ("pretrain", config.pretrain, config.pretrain.sampler),
        ("finetune", config.finetune, mode.sampler(config)),
    ):
        try:
            samplers.stage_options(sampler, samples_per_class=section.samples_per_class)
        except ValueError as err:
            raise ConfigError(f"{stage}.{err}") from None
    mode.check(config)


def _check_pretrain_mode(config: Config) -> None:
    """``pretrain.mode`` names an entry; one that does not train needs weights to start from."""
    from longtail import loop

    _named("pretrain.mode", config.pretrain.mode, loop.PRETRAIN_MODES)
    if loop.PRETRAIN_MODES[config.pretrain.mode].trains:
        return
    why = f"pretrain.mode: {config.pretrain.mode} starts from them without training"
    if not config.model.weights:
        _fail("model.weights", f"a checkpoint path ({why})", config.model.weights)
    if config.finetune.optimizer != "fresh":
        _fail(
            "finetune.optimizer",
            f"fresh (pretrain.mode: {config.pretrain.mode} runs no optimiser to continue)",
            config.finetune.optimizer,
        )


def _check_finetune_sampler(config: Config, mode: Any) -> None:
    """``finetune.sampler`` is one the mode takes (any that some mode takes if it reads none)."""
    from longtail import modes

    name = config.finetune.sampler
    takers = [n for n in modes.names() if name in modes.get(n).samplers()]
    if not takers:
        everything = dict.fromkeys(s for n in modes.names() for s in modes.get(n).samplers())
        _named("finetune.sampler", name, everything)
    if mode.reads_sampler and config.finetune.mode not in takers:
        raise ConfigError(
            f"finetune.sampler: {name} expects finetune.mode: {' or '.join(takers)}; got "
            f"finetune.mode: {config.finetune.mode}"
        )


def _check_loss(section: LossConfig, prefix: str) -> None:
    """Every option of a loss section is valid, whichever loss the section selects.

    Driven by the registry (each loss's keyword-only options and its own checks), never by a list
    kept here: a key no registered loss takes is unknown; a value is refused when no loss that
    takes the key accepts it on its own (``loss.gamma: -1`` is refused under ``loss.name: cdb_ce``
    too); then the selected loss is built with its options together (combinations it refuses).
    """
    from longtail import losses

    _named(f"{prefix}.name", section.name, losses.names())
    takers: dict[str, list[str]] = {}
    for name in losses.names():
        for option in losses.option_names(name):
            takers.setdefault(option, []).append(name)
    for key, value in section.options.items():
        if key not in takers:
            _unknown(f"{prefix}.{key}", ["name", *takers])
        errors = []
        for name in takers[key]:
            try:  # two dummy classes suffice to check an option's value
                losses.create(name, [1, 1], **{key: value})
            except ValueError as err:
                errors.append(str(err))
            else:
                break
        else:
            raise ConfigError(f"{prefix}.{errors[0]}")
    try:
        losses.create(section.name, [1, 1], **losses.kwargs(section))
    except ValueError as err:
        raise ConfigError(f"{prefix}.{err}") from None


def _check_head(model: ModelConfig, mode: str) -> None:
    """The head must take the finetune mode and the bias initialisation."""
    from longtail.nets import heads

    why = heads.refusal(model.classifier, mode)
    if why is not None:
        raise ConfigError(
            f"finetune.mode: {mode} makes no sense with model.classifier: {model.classifier} "
            f"({why}); expected another finetune.mode or model.classifier: linear"
        )
    why = heads.bias_refusal(model.bias_init, model.classifier)
    if why is not None:
        raise ConfigError(f"model.bias_init: {why}; expected model.bias_init: default")


CHECKS.append(check)
