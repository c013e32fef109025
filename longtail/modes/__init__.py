"""The ``finetune.mode``s: each one object in the registry :data:`MODES`, one file in this package.

A mode describes itself to the rest of the pipeline and builds the plan the training loop runs
(``longtail.loop``); nothing outside this package asks for a mode's name:

- :meth:`Mode.trains`: whether the stage runs the training loop (the launcher checks the finetune
  batch against the process count only then);
- :meth:`Mode.val_needs`: the params that need a non-empty ``val`` split under this mode;
- :meth:`Mode.samplers`, :meth:`Mode.sampler`: the ``finetune.sampler`` values it takes, and the
  sampler its loop uses;
- :meth:`Mode.check`: its own option checks, run with the whole config before any work;
- :meth:`Mode.head_loss`: the loss that trained the final classifier (its logit scale);
- :meth:`Mode.plan`: the :class:`~longtail.loop.Plan` of its training (None: no training);
- :meth:`Mode.finish`: what it does after the loop (or instead of it) and its report.

Every module of this package whose name does not start with ``_`` is a mode of the same name and
registers itself on import (:func:`register`); the registry lists them without importing them, so
adding a mode is adding one file. Sources of each mode: its module docstring; the pages
``docs/methods.md``.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from longtail.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from longtail.config import Config, FinetuneConfig, LossConfig
    from longtail.data.base import Source
    from longtail.loop import Plan
    from longtail.train import FastPath

MODES: Registry[Mode] = Registry(
    "finetune.mode",
    lazy={
        info.name: f"{__name__}.{info.name}"
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    },
)

M = TypeVar("M", bound="type[Mode]")


def register(cls: M) -> M:
    """Class decorator: one instance of the mode ``cls`` joins :data:`MODES` as ``cls.name``."""
    MODES.add(cls.name, cls())
    return cls


def names() -> tuple[str, ...]:
    """The mode names (without importing the modes)."""
    return MODES.names()


def get(name: str) -> Mode:
    """The mode called ``name``; an unknown name lists the valid ones."""
    return MODES[name]


@dataclass
class Job:
    """Everything a mode works with; the finetune stage builds it.

    Attributes:
        model: the pretrained network, changed in place into the final one.
        config: the ``finetune`` section.
        loss: the ``loss`` section.
        seed: the run's seed (classifier re-initialisation).
        device: where the work runs.
        fast: the resolved speed switches (autocast, channels_last) for backbone features.
        eval_batch_size: batch size of feature extraction and evaluation.
        train_counts: (C,) training images per class.
        many_shot, few_shot: shot thresholds of the val summaries.
        open_split: opens ``"train"`` or ``"val"``; ``"test"`` is never asked for.
        class_names: names of the classes, for the plots.
    """

    model: nn.Module
    config: FinetuneConfig
    loss: LossConfig
    seed: int
    device: torch.device
    fast: FastPath
    eval_batch_size: int
    train_counts: list[int]
    many_shot: int
    few_shot: int
    open_split: Callable[[str], Source]
    class_names: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """What a mode reports: metrics, plot tables by name, whether the loop ran, the final head.

    ``classifier``: the head (``model.classifier`` name) of the final network when the mode
    replaced the pretrained one's; None keeps it.
    """

    metrics: dict[str, Any]
    plots: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    trained: bool = True
    classifier: str | None = None


class Mode:
    """A ``finetune.mode``: its facts and its plan. The defaults are those of a mode that trains
    with ``finetune.sampler`` and ``loss``."""

    name: ClassVar[str] = ""
    #: ``finetune.optimizer: continue`` can carry pretrain's optimiser on (same parameters).
    continues_optimizer: ClassVar[bool] = False
    #: Whether the mode reads ``finetune.sampler`` (else any value some mode takes passes).
    reads_sampler: ClassVar[bool] = True
    #: What the final classifier is, in words (``tools.recipes --explain``).
    summary: ClassVar[str] = ""

    def batchnorm(self, cfg: Config) -> str:
        """What BatchNorm does while the mode trains, in words (``tools.recipes --explain``)."""
        return "train mode (every BatchNorm)"

    def trains(self, cfg: Config) -> bool:
        """Whether the finetune stage runs the training loop."""
        return True

    def samplers(self) -> tuple[str, ...]:
        """The ``finetune.sampler`` values this mode takes."""
        from longtail import samplers

        return samplers.names()

    def sampler(self, cfg: Config) -> str:
        """The sampler its loop uses (its options are checked with ``finetune``'s)."""
        return cfg.finetune.sampler

    def val_needs(self, cfg: Config) -> list[str]:
        """The params that need a non-empty ``val`` split, as ``key: value`` strings."""
        from longtail import losses

        if self.trains(cfg) and losses.LOSSES[cfg.loss.name].requires_val:
            return [f"loss.name: {cfg.loss.name}"]
        return []

    def head_loss(self, cfg: Config) -> LossConfig | None:
        """The loss that trained the final classifier (None: no loss did)."""
        return cfg.loss

    def check(self, cfg: Config) -> None:
        """Refuse option combinations this mode cannot run (``ConfigError``)."""

    def plan(self, job: Job) -> Plan | None:
        """The training the loop runs; None: the mode does not train."""
        raise NotImplementedError

    def finish(self, job: Job, plan: Plan | None, summary: dict[str, Any]) -> Outcome:
        """After the loop (``summary``: its metrics; empty without a plan): the report."""
        raise NotImplementedError


def run(name: str, job: Job, loop: Callable[[Plan], dict[str, Any]]) -> Outcome:
    """Run the mode called ``name`` on ``job``: its plan through ``loop``, then its finish."""
    mode = MODES[name]
    plan = mode.plan(job)
    summary = loop(plan) if plan is not None else {}
    outcome = mode.finish(job, plan, summary)
    outcome.trained = plan is not None
    return outcome
