"""Typed, frozen configuration: one dataclass per section of ``params.yaml``.

``params.yaml`` is the only source of hyperparameters. Each stage parses the *whole* file with
:func:`load` before doing any work, so a bad value stops the first stage that runs, in seconds,
with a
message naming the key, the value and what is allowed. Unknown keys are errors. Numbers written as
strings (``dvc exp run -S train.lr=1e-05`` writes ``'1e-05'``, which YAML 1.1 does not read as
a float)
are accepted. Each component receives only its own section, never the whole config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A value in params.yaml is missing, unknown or out of range."""


def _check(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple | None = None,
) -> Any:
    """A dataclass field with bounds or choices that :func:`_parse` enforces."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class LossConfig:
    """A loss by registry name plus its options; keys a loss does not take are ignored by it
    (``longtail.losses.kwargs``: the options the named loss takes)."""

    name: str = "ce"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListsConfig:
    """List files (``path label`` per line, classifier-balancing format) of image-list datasets."""

    train: str | None = None
    val: str | None = None
    test: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """``data``: which dataset, where it comes from, and how the imbalance is injected.

    ``seed`` drives every data draw (subsets, held-out splits, generated splits, clip rendering);
    the top-level ``seed`` drives training only. ``subset`` picks CIFAR-LT's selection rule by name
    (``longtail.data.imbalance.SUBSETS``).
    """

    name: str = "digits"
    seed: int = _check(0, ge=0)
    subset: str = "ldam"
    draws: Literal["shared", "per_phase"] = "shared"  # per_phase: BALMS CIFAR, docs/protocol.md
    root: str | None = None
    archive: str | None = None
    md5: str | None = "auto"
    imbalance: float = _check(50.0, ge=1.0)
    profile: str = "exp"
    n_max: int | None = _check(None, gt=0)
    n_min: int | None = _check(None, gt=0)
    val_per_class: int | None = _check(None, ge=0)
    test_per_class: int | None = _check(None, gt=0)
    lists: ListsConfig = field(default_factory=ListsConfig)
    test_root: str | None = None
    pareto_alpha: float = _check(6.0, gt=0)
    image_size: int | None = _check(None, gt=0)
    workers: int = _check(2, ge=0)
    skip_bad: bool = False


@dataclass(frozen=True)
class FramesConfig:
    """``frames``: frame extraction, frame store and clip sampling of the video datasets.

    ``size``, ``segments`` and ``store`` null: the dataset's published setting (the family's
    ``FrameDefaults``; EGTEA: CDB-CE's 224 px, 10 segments, JPEG frames). ``channels``,
    ``normalize`` and ``eval_frame`` choose what the network is fed (docs/video.md: ``bgr``,
    ``none`` and ``random`` are CDB-CE's EGTEA code).
    """

    fps: float | None = _check(None, gt=0)
    size: int | None = _check(None, gt=0)
    workers: int = _check(2, ge=1)
    skip_bad: bool = False
    segments: int | None = _check(None, gt=0)
    store: str | None = None  # longtail.data.clipstore.STORES; None: the family's
    quality: int = _check(90, ge=1, le=100)
    interpolation: Literal["linear", "area"] = "linear"
    channels: Literal["rgb", "bgr"] = "rgb"
    normalize: Literal["dataset", "none"] = "dataset"
    eval_frame: Literal["center", "random"] = "center"
    eval_seed: int = _check(0, ge=0)


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the network; ``auto`` picks the dataset's backbone from the papers.

    ``classifier`` names a head of ``longtail.nets.heads`` (``linear``, or ``cosine``: LDAM-DRW's
    normalised classifier); ``bias_init`` the classifier bias initialisation (``default``, or
    ``prior``: -log((1 - 1/C) / (1/C)), CDB-CE's CIFAR code).
    """

    arch: str = "auto"
    weights: str | None = None
    classifier: str = "linear"
    bias_init: str = "default"


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule of one training stage (SGD with momentum, warmup, step or cosine)."""

    epochs: int = _check(100, ge=1)  # 0 is refused: a stage that trains nothing has no curves
    batch_size: int = _check(128, gt=0)
    lr: float = _check(0.1, gt=0)
    momentum: float = _check(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = _check(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: tuple[int, ...] = ()
    lr_decay: float = _check(0.1, gt=0, le=1)
    warmup_epochs: int = _check(0, ge=0)
    bias_decay: bool = True  # false: no weight decay on the classifier bias (CDB-CE's CIFAR code)
    # When the LR changes: every step, or once per epoch (train.lr_factor; docs/protocol.md)
    lr_update: Literal["step", "epoch", "epoch_prestep"] = "step"


@dataclass(frozen=True)
class PretrainConfig:
    """``pretrain``: representation learning (plain CE by default).

    ``mode`` picks an entry of ``longtail.loop.PRETRAIN_MODES``: ``train`` (the default) or
    ``weights`` (no training: ``model.weights`` pass through, scored on ``val``).
    """

    mode: str = "train"
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: str = "instance"
    samples_per_class: int = _check(1, ge=1)
    policy: str = "crop_flip"
    color_jitter: float | None = _check(None, ge=0)  # None: the family's; 0: none (FBL)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass(frozen=True)
class FinetuneConfig:
    """``finetune``: loss-specific fine-tuning or decoupled retraining of the pretrained network.

    ``mode`` picks an entry of ``longtail.modes.MODES``, which also says which keys it reads and
    refuses what it cannot run (``longtail.validate``). ``tau_norm`` is a number (τ of the
    τ-normalised classifier), a list of candidates, or ``sweep`` (classifier-balancing's grid
    0, 0.1, ..., 2); with more than one candidate the best on ``val`` is used. The ``meta_*`` keys
    configure BALMS's meta step (``sampler: meta`` under ``mode: classifier``); their
    defaults are the BALMS CIFAR configs (``init_pow`` 0, Adam lr 0.01, meta batch = batch size).
    ``samples_per_class``: consecutive images per class visit of the ``class_balanced`` sampler
    (classifier-balancing's ``num_samples_cls``). ``policy``: the training augmentation
    (``longtail.data.augment.POLICIES``). ``backbone_bn``: a frozen backbone's BatchNorm
    in ``classifier`` / ``lws`` (and the frozen blocks' in ``partial``) stays in eval mode
    (``frozen``) or runs in train mode (``train``, the reference code: batch statistics, drifting
    running statistics). ``tau_norm_bias``: keep
    the classifier bias in ``tau_norm`` (the reference scores without it). ``partial``: only the
    modules named in ``train_blocks`` and the classifier are re-initialised and trained, the
    blocks at ``block_lr`` (None: ``lr``).
    ``meta_source`` is the split the class-balanced meta batches come from: ``val`` (BALMS on
    ImageNet-LT and Places-LT) or ``train`` (BALMS on CIFAR-LT); never ``test``. ``meta_augment``:
    meta batches from ``train`` pass through the training augmentation, as the BALMS CIFAR meta
    loader does (needs ``augment: true``; a ``val`` meta set is never augmented).
    """

    TAU_SWEEP: typing.ClassVar[tuple[float, ...]] = tuple(i / 10 for i in range(21))

    mode: str = "full"
    sampler: str = "instance"
    samples_per_class: int = _check(1, ge=1)
    augment: bool = True
    policy: str = "crop_flip"
    color_jitter: float | None = _check(None, ge=0)  # None: the family's; 0: none (FBL)
    backbone_bn: str = "frozen"
    optimizer: Literal["fresh", "continue"] = "fresh"
    tau_norm: float | str | tuple[float, ...] = "sweep"
    tau_norm_bias: bool = False
    train_blocks: tuple[str, ...] = ()
    block_lr: float | None = _check(None, gt=0)
    meta_lr: float = _check(0.01, gt=0)
    meta_init_pow: float = _check(0.0, ge=0)
    meta_batch_size: int | None = _check(None, gt=0)
    meta_source: str = "val"
    meta_augment: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau_norm", self._parse_tau_norm(self.tau_norm))
        if self.meta_augment and (self.meta_source != "train" or not self.augment):
            raise ConfigError(
                "finetune.meta_augment: true augments meta batches drawn from train with the "
                "training augmentation; expected finetune.meta_source: train and "
                f"finetune.augment: true, got meta_source: {self.meta_source}, augment: "
                f"{str(self.augment).lower()}"
            )

    @classmethod
    def _parse_tau_norm(cls, value: Any) -> float | str | tuple[float, ...]:
        """A number >= 0, ``sweep``, or a non-empty list of numbers >= 0 (sorted, deduplicated)."""
        expected = 'a number >= 0, a list of numbers >= 0, or "sweep"'
        if isinstance(value, str) and value.strip() == "sweep":
            return "sweep"
        if isinstance(value, str) and value.strip().startswith("["):
            value = [v for v in value.strip("[] ").split(",") if v.strip()]
        many = isinstance(value, (list, tuple))
        items = list(value) if many else [value]
        try:
            numbers = [_number("finetune.tau_norm", v, float) for v in items]
        except ConfigError:
            _fail("finetune.tau_norm", expected, value)
        if not numbers or any(not 0 <= t < float("inf") for t in numbers):
            _fail("finetune.tau_norm", expected, value)
        return tuple(sorted(set(numbers))) if many else numbers[0]

    def tau_candidates(self) -> tuple[float, ...]:
        """The τ values to try, ascending (one value: no choice to make)."""
        if self.tau_norm == "sweep":
            return self.TAU_SWEEP
        return self.tau_norm if isinstance(self.tau_norm, tuple) else (self.tau_norm,)


@dataclass(frozen=True)
class TrainConfig:
    """``train``: how both training stages run (the fast path switches), not what they compute."""

    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    eval_batch_size: int = _check(1024, gt=0)
    checkpoint_minutes: float = _check(10.0, gt=0)
    log_every_epochs: int = _check(1, gt=0)
    cpu_threads: int | None = _check(1, gt=0)  # torch's intra-op threads on the CPU; None: default
    keep: str = "last"  # best: the epoch of the best val mean-class accuracy


@dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate``: shot thresholds (many: > many_shot train images; few: < few_shot)."""

    many_shot: int = _check(100, ge=0)
    few_shot: int = _check(20, ge=0)


@dataclass(frozen=True)
class DistConfig:
    """``dist``: data-parallel training of ``pretrain`` and ``finetune`` through torchrun.

    ``nproc`` processes on this machine (one per GPU on CUDA, gloo ranks on the CPU); 1 runs the
    stages as plain processes. ``batch_size`` stays the global batch whatever ``nproc`` is.
    ``backend``: ``auto`` is NCCL on CUDA and gloo on the CPU. ``sync_bn``: SyncBatchNorm, batch
    statistics over the global batch instead of each process's share (CUDA only).
    """

    nproc: int = _check(1, ge=1)
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    sync_bn: bool = False


@dataclass(frozen=True)
class Config:
    """The whole ``params.yaml``."""

    seed: int = _check(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    determinism: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(name="cdb_ce"))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# Sections whose flat YAML keys fold into a nested dataclass field (pretrain.lr -> optim.lr).
_FLATTENED = {PretrainConfig: "optim", FinetuneConfig: "optim"}


# ------------------------------------------------------------------------------------------ parser
def _fail(key: str, expected: str, value: Any) -> typing.NoReturn:
    raise ConfigError(f"{key}: expected {expected}; got {value!r}")


def _unknown(key: str, valid: list[str]) -> typing.NoReturn:
    raise ConfigError(f"{key}: unknown key; valid keys here are {', '.join(valid)}")


def _number(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        _fail(key, f"a{'n integer' if kind is int else ' number'}", value)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            _fail(key, f"a{'n integer' if kind is int else ' number'}", value)
    if not isinstance(value, (int, float)):
        _fail(key, f"a{'n integer' if kind is int else ' number'}", value)
    if kind is int:
        if float(value) != int(value):
            _fail(key, "an integer", value)
        return int(value)
    return float(value)


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    _fail(key, "true or false", value)


def _convert(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the annotated type ``hint`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (
            isinstance(value, str) and value.lower() in ("null", "none", "~")
        )
        if is_null and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(key, value, inner[0]) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            _fail(key, "one of " + ", ".join(map(str, args)), value)
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            _fail(key, "a list", value)
        return tuple(_convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _parse(hint, value, key)
    if hint is bool:
        return _bool(key, value)
    if hint in (int, float):
        return _number(key, value, hint)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            _fail(key, "a string", value)
        return str(value)
    if hint is Any or hint is typing.Mapping or origin is Mapping:
        return value
    raise TypeError(f"unsupported annotation {hint!r} for {key}")


def _bounds(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    for name, op, word in (
        ("ge", float.__ge__, ">="),
        ("gt", float.__gt__, ">"),
        ("le", float.__le__, "<="),
        ("lt", float.__lt__, "<"),
    ):
        bound = meta.get(name)
        if bound is not None and not op(float(value), float(bound)):
            _fail(key, f"a number {word} {bound:g}", value)
    if meta.get("choices") is not None and value not in meta["choices"]:
        _fail(key, "one of " + ", ".join(map(str, meta["choices"])), value)


def _parse(cls: type, raw: Any, prefix: str) -> Any:
    if cls is LossConfig:
        return _parse_loss(raw, prefix)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        _fail(prefix or "params.yaml", "a mapping of keys", raw)
    raw = dict(raw)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    nested = _FLATTENED.get(cls)
    if nested is not None:
        nested_cls = hints[nested]
        nested_keys = {f.name for f in dataclasses.fields(nested_cls)}
        flat = {k: raw.pop(k) for k in list(raw) if k in nested_keys}
        kwargs[nested] = _parse(nested_cls, flat, prefix)
    known = {f.name for f in dataclasses.fields(cls)} - ({nested} if nested else set())
    for key in raw:
        if key not in known:
            valid = sorted(known | (nested_keys if nested else set()))
            _unknown(f"{prefix}.{key}".lstrip("."), valid)
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = f"{prefix}.{f.name}".lstrip(".")
        value = _convert(key, raw[f.name], hints[f.name])
        _bounds(key, value, f.metadata)
        kwargs[f.name] = value
    return cls(**kwargs)


def _parse_loss(raw: Any, prefix: str) -> LossConfig:
    """Parse a loss section into ``name`` plus options (their values: ``longtail.validate``)."""
    if raw is None:
        raw = {}
    if isinstance(raw, str):  # ``pretrain.loss: ce`` is shorthand for ``{name: ce}``
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        _fail(prefix, "a mapping with a 'name'", raw)
    raw = dict(raw)
    name = str(raw.pop("name", "ce"))
    options = {str(k): _loss_value(v) for k, v in raw.items()}
    return LossConfig(name=name, options=types.MappingProxyType(options))


def _loss_value(value: Any) -> Any:
    """Loss options arrive as YAML scalars; numeric strings become numbers (DVC writes 1e-05)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None if value.lower() == "null" else value
    return value


# The checks across sections and registries, ``check(config, training)``: ``longtail.validate``
# adds its own when the package is imported (``longtail/__init__.py``), so this module imports
# nothing from the package (the registries that name the allowed values live there).
CHECKS: list[Callable[[Config, bool], None]] = []


def parse(raw: Mapping[str, Any], training: bool = True) -> Config:
    """Build a :class:`Config` from a parsed params mapping, validating every key.

    The types, ranges and checks within one section are this module's; the names that pick from
    a registry and the checks across sections run in :data:`CHECKS` (``longtail.validate``).

    Args:
        raw: the parsed ``params.yaml``.
        training: also check what only the training stages build (loss names and every loss
            option, samplers, the network and its input size), which needs the torch-based
            registries. The data stages pass ``False``: they then import no torch, and the first
            training stage refuses those values before any training.
    """
    config = _parse(Config, raw, "")
    for check in CHECKS:
        check(config, training)
    return config


def load(path: str | Path = "params.yaml", training: bool = True) -> Config:
    """Read and validate ``params.yaml`` (``training``: see :func:`parse`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found (run the stages from the repository root)")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    return parse(raw, training)


def to_dict(config: Any) -> Any:
    """A plain, YAML/JSON-serialisable copy of a config (saved inside every checkpoint)."""
    if isinstance(config, LossConfig):
        return {"name": config.name, **dict(config.options)}
    if dataclasses.is_dataclass(config):
        out = {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
        nested = _FLATTENED.get(type(config))
        if nested:
            out.update(out.pop(nested))
        return out
    if isinstance(config, (tuple, list)):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config
