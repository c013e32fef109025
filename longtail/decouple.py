"""The ``finetune.mode``s: fine-tuning and decoupled classifier retraining (registry ``MODES``).

Sources: Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
ICLR 2020 (facebookresearch/classifier-balancing: cRT, τ-norm, LWS); Ren et al., "Balanced
Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020
(jiawei-ren/BalancedMetaSoftmax-Classification: decoupled Balanced Softmax, BALMS).

``none``
    The pretrained network is the final one.
``full``
    Fine-tune every layer with ``loss`` and ``finetune.sampler`` (LDAM-DRW's deferred stage).
``classifier``
    Freeze the backbone, re-initialise the classifier head (its own fresh initialisation from a
    generator seeded by ``seed``: ``nn.Linear``'s default U(±1/sqrt(D)) for a linear head,
    LDAM's for a cosine head; ``longtail.nets.heads``) and retrain it with ``loss`` and
    ``finetune.sampler``: cRT with ``class_balanced`` + ``ce``, decoupled Balanced Softmax with
    ``instance`` + ``balanced_softmax``, BALMS with ``meta`` + ``balanced_softmax``
    (:mod:`longtail.meta`).
``tau_norm``
    No training: ``w_c <- w_c / ||w_c||^τ`` on the pretrained classifier. classifier-balancing's
    ``tau_norm.py`` scores ``f · w_c / ||w_c||^τ`` without the bias, and so does the default
    ``finetune.tau_norm_bias: false`` (the bias is set to zero in ``models/final.pt``, so τ = 0 is
    the pretrained network without its bias); ``true`` keeps the bias as trained, so that τ = 0 is
    the pretrained network exactly. With several τ candidates (``finetune.tau_norm: sweep`` is that
    script's grid 0, 0.1, ..., 2) the one with the best mean per-class accuracy on ``val`` is used
    (the smallest τ among ties); the script scores its sweep on ``test`` or ``val``, here never
    ``test``.
``lws``
    Learnable weight scaling: logits ``s_c (w_c · f + b_c)`` with the pretrained ``w``, ``b`` and
    backbone frozen and one scale per class, initialised to 1, trained with ``loss`` on the
    ``class_balanced`` sampler (the method's definition, so ``finetune.sampler`` is not read) and
    the optimiser settings of ``finetune`` (weight decay applies to the scales, as in
    classifier-balancing's LWS config). The scales are then folded into the classifier
    (``w_c <- s_c w_c``, ``b_c <- s_c b_c``; a cosine head keeps them in its per-class ``scales``
    buffer, since it normalises its class vectors), so ``models/final.pt`` is the plain
    architecture.
``partial``
    Partial fine-tuning (FBL and OLTR on Places-LT, juyongjiang/FBL ``train.py``): the network is
    frozen in eval mode except the modules named in ``finetune.train_blocks`` (e.g. ``layer4.2``,
    the last bottleneck of ResNet-152) and the classifier. Those are re-initialised (each
    submodule's own PyTorch default, ``reset_parameters``, drawn from a generator seeded by
    ``seed``: FBL builds its new last block as fresh modules and never applies torchvision's
    ResNet initialisation to it; BatchNorm running statistics restart too), run in train mode and
    are trained with ``loss`` and ``finetune.sampler``; the blocks at ``finetune.block_lr`` (None:
    ``finetune.lr``, as in FBL, whose one SGD holds the block and the classifier at one LR), the
    classifier at ``finetune.lr``. The LR schedule scales both alike.

BatchNorm of a frozen backbone (``finetune.backbone_bn``, ``classifier`` and ``lws``):
``frozen`` (the default) keeps the backbone in eval mode for the whole stage, so BatchNorm
normalises with the running statistics of ``pretrain`` and never updates them: every backbone
parameter and buffer leaves the stage bit-identical, and the classifier is trained on exactly the
features it sees at test time. ``train`` does what the reference implementations do
(classifier-balancing's ``run_networks.py`` calls ``.train()`` on every network each epoch, the
feature model included, with its parameters frozen): BatchNorm normalises each training batch
with its own statistics and its running statistics drift towards the re-balanced sampling, while
the convolution weights (and BatchNorm's affine parameters) stay fixed; evaluation then uses the
drifted running statistics. With ``train`` every training batch goes through the backbone (in
train mode, without autograd through it), so nothing is cached, ``finetune.augment: false``
included: the features of an image change with the batch it is in. The BALMS meta step needs
frozen features, so ``sampler: meta`` accepts ``frozen`` only.

Features (``backbone_bn: frozen``): because the backbone is a fixed function in eval mode, the
training loop runs on the
classifier alone over :class:`FrozenFeatures` (``head(f) -> (fc(f), f)``). Without augmentation
(``val``, and training batches with ``finetune.augment: false``) the features of every image are
computed once, in the evaluation batches, and looked up afterwards; with augmentation each batch is
augmented exactly as before (same generator, same draws) and passed through the backbone without
autograd. Either way the classifier sees the same numbers as a loop running the whole network with
the backbone frozen in eval mode; only the backbone's backward pass, which computes nothing that
is used, is gone. (Cached features equal per-batch ones up to the batch-size dependence of the
convolution kernels, if any.) With several processes every rank caches the features of the whole
split once (a sampler may draw any image) and only the classifier is wrapped in DDP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.config import FinetuneConfig, LossConfig
from longtail.data.base import Source
from longtail.meta import MetaSampler, MetaSource, meta_set
from longtail.metrics import confusion_matrix, summarize
from longtail.nets import heads
from longtail.train import FastPath

# Losses whose per-image form the BALMS inner step knows: name -> whether it adds log n_c.
META_LOSSES = {"balanced_softmax": True, "ce": False}


# ------------------------------------------------------------------------------------ the job
class TrainFn(Protocol):
    """Runs the shared training loop on ``model`` (the stage binds paths, seed and optimiser)."""

    def __call__(
        self,
        model: nn.Module,
        *,
        loss: LossConfig,
        sampler: str,
        params: list[nn.Parameter] | list[dict[str, Any]] | None = None,
        sampler_options: dict[str, Any] | None = None,
        setup: Callable[[Any], None] | None = None,
        train_mode: Callable[[nn.Module], None] | None = None,
    ) -> dict[str, Any]: ...


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
        open_split: opens ``"val"`` (the τ sweep); ``"test"`` is never asked for.
        train: the shared training loop.
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
    train: TrainFn
    class_names: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """What a mode reports: metrics, plot tables by name, and whether the training loop ran."""

    metrics: dict[str, Any]
    plots: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    trained: bool = True


Mode = Callable[[Job], Outcome]
MODES: dict[str, Mode] = {}


def register(name: str) -> Callable[[Mode], Mode]:
    """Decorator that adds a mode to :data:`MODES`; a duplicate name is refused."""

    def add(mode: Mode) -> Mode:
        if name in MODES:
            raise ValueError(f"finetune.mode {name!r}: already registered")
        MODES[name] = mode
        return mode

    return add


def run(name: str, job: Job) -> Outcome:
    """Run the mode called ``name`` on ``job``."""
    if name not in MODES:
        raise ValueError(f'finetune.mode: expected one of {", ".join(MODES)}; got "{name}"')
    return MODES[name](job)


# ------------------------------------------------------------------------------ building blocks
class LinearHead(nn.Module):
    """The classifier alone as a network over features: ``forward(f) -> (fc(f), f)``."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.fc(features), features


class ScaledHead(nn.Module):
    """LWS: ``forward(f) -> (s * fc(f), f)`` with one learnable scale per class, ``s`` from 1."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc
        self.scales = nn.Parameter(torch.ones(fc.out_features, device=fc.weight.device))  # (C,)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.fc(features) * self.scales, features

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the scales into ``fc``, then ``s <- 1``.

        A linear head takes ``w_c <- s_c w_c``, ``b_c <- s_c b_c``; a cosine head, whose class
        vectors are normalised in its forward pass, multiplies its per-class ``scales`` buffer.
        """
        heads.adapt(self.fc).fold_scales(self.scales)
        self.scales.fill_(1.0)


def freeze(model: nn.Module) -> None:
    """No gradients anywhere and eval mode (BatchNorm keeps and uses its running statistics)."""
    model.requires_grad_(False)
    model.eval()


def reset_classifier(fc: nn.Module, seed: int) -> None:
    """The head's fresh initialisation drawn from ``seed`` (``longtail.nets.heads``): for a linear
    head ``nn.Linear``'s default, U(±1/sqrt(in_features)); for a cosine head LDAM's."""
    heads.adapt(fc).reset(torch.Generator().manual_seed(seed))


def tau_normalized(weight: Tensor, tau: float) -> Tensor:
    """``w_c / ||w_c||^τ`` for each row (class) of ``weight`` (C, D); τ = 0 changes nothing."""
    norms = weight.norm(dim=1, keepdim=True)  # (C, 1)
    return weight / norms.pow(tau)


class FrozenFeatures:
    """A source of frozen-backbone features over another source (module docstring, "Features").

    Args:
        source: the images.
        backbone: a network with ``forward_features``, frozen and in eval mode, on the device.
        augment: whether training batches are augmented (else they use the cached features).
        batch_size: batch size of the one-off feature pass.
        fast: speed switches (autocast, channels_last) for the backbone.
    """

    def __init__(
        self, source: Source, backbone: nn.Module, *, augment: bool, batch_size: int, fast: FastPath
    ) -> None:
        self.source, self.backbone, self.augment = source, backbone, augment
        self.batch_size, self.fast = batch_size, fast
        self.labels = source.labels
        self.in_channels = int(backbone.feature_dim)
        self._cache: tuple[Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.source)

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """(B, D) float32 features of a batch of images."""
        assert not self.backbone.training, "the frozen backbone must stay in eval mode"
        device = x.device
        with self.fast.autocast(device):
            return self.backbone.forward_features(self.fast.prepare_input(x)).float()

    def cached(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Features (N, D) and labels (N,) of every unaugmented image, computed on first use."""
        if self._cache is None:
            order = torch.arange(len(self.source))
            parts = [
                (self.features(x), y)
                for x, y in self.source.batches(
                    order, self.batch_size, train=False, generator=generator
                )
            ]
            self._cache = (torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts]))
        return self._cache

    def batches(
        self, order: Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        if train and self.augment:
            for x, y in self.source.batches(order, batch_size, train=True, generator=generator):
                yield self.features(x), y
            return
        features, labels = self.cached(generator)
        for idx in order.to(features.device).split(batch_size):
            yield features[idx], labels[idx]


class Unaugmented:
    """A source whose training batches are its evaluation batches (``finetune.augment: false``)."""

    def __init__(self, source: Source) -> None:
        self.source, self.labels, self.in_channels = source, source.labels, source.in_channels

    def __len__(self) -> int:
        return len(self.source)

    def batches(
        self, order: Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        return self.source.batches(order, batch_size, train=False, generator=generator)


class OnBackbone(nn.Module):
    """A frozen backbone under a trainable head: ``forward(x) -> head(backbone features of x)``.

    ``backbone_bn: train`` trains this whole module with only the head's parameters in the
    optimiser: ``.train()`` puts the backbone's BatchNorm in train mode (batch statistics, running
    statistics updated), and since no backbone parameter requires a gradient no autograd graph is
    kept through it.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.backbone.forward_features(x))


@dataclass
class Retrain:
    """What the training loop runs to retrain a head on a frozen backbone.

    Attributes:
        net: the module the loop trains and validates.
        setup: the trainer hook that adapts its sources.
    """

    net: nn.Module
    setup: Callable[[Any], None]


BackboneBN = Callable[[Job, nn.Module, nn.Module], Retrain]
BACKBONE_BN: dict[str, BackboneBN] = {}


def _backbone_bn(name: str) -> Callable[[BackboneBN], BackboneBN]:
    def add(policy: BackboneBN) -> BackboneBN:
        if name in BACKBONE_BN:
            raise ValueError(f"finetune.backbone_bn {name!r}: already registered")
        BACKBONE_BN[name] = policy
        return policy

    return add


@_backbone_bn("frozen")
def _bn_frozen(job: Job, backbone: nn.Module, head: nn.Module) -> Retrain:
    """Eval-mode backbone: the loop trains the head alone over :class:`FrozenFeatures`."""
    return Retrain(head, _feature_setup(job, backbone))


@_backbone_bn("train")
def _bn_train(job: Job, backbone: nn.Module, head: nn.Module) -> Retrain:
    """Train-mode backbone (the references): every batch through it, nothing cached."""
    return Retrain(OnBackbone(backbone, head), _unaugmented_setup(job))


def retrain(job: Job, backbone: nn.Module, head: nn.Module) -> Retrain:
    """The ``finetune.backbone_bn`` policy's plan for training ``head`` on ``backbone``."""
    name = job.config.backbone_bn
    if name not in BACKBONE_BN:
        raise ValueError(
            f'finetune.backbone_bn: expected one of {", ".join(BACKBONE_BN)}; got "{name}"'
        )
    return BACKBONE_BN[name](job, backbone, head)


def _unaugmented_setup(job: Job) -> Callable[[Any], None]:
    """A trainer setup hook that trains on unaugmented images when ``finetune.augment`` is off."""

    def setup(trainer: Any) -> None:
        if not job.config.augment:
            trainer.train_source = Unaugmented(trainer.train_source)

    return setup


def _frozen_backbone(job: Job) -> nn.Module:
    """Put the whole network on the device, frozen and in eval mode; returns it."""
    model = job.model.to(job.device)
    job.fast.prepare_model(model)
    freeze(model)
    return model


def _feature_setup(job: Job, backbone: nn.Module) -> Callable[[Any], None]:
    """A trainer setup hook that swaps its train and val sources for :class:`FrozenFeatures`."""

    def setup(trainer: Any) -> None:
        kw = {"batch_size": job.eval_batch_size, "fast": job.fast}
        trainer.train_source = FrozenFeatures(
            trainer.train_source, backbone, augment=job.config.augment, **kw
        )
        if trainer.val_source is not None:
            trainer.val_source = FrozenFeatures(trainer.val_source, backbone, augment=False, **kw)

    return setup


# ------------------------------------------------------------------------------------- modes
@register("none")
def none(job: Job) -> Outcome:
    """The pretrained network passes through unchanged."""
    return Outcome({"mode": "none", "epochs": 0}, trained=False)


@register("full")
def full(job: Job) -> Outcome:
    """Fine-tune every layer with ``loss`` and ``finetune.sampler``."""

    setup = _unaugmented_setup(job)
    summary = job.train(job.model, loss=job.loss, sampler=job.config.sampler, setup=setup)
    return Outcome({"mode": "full", **summary})


@register("classifier")
def classifier(job: Job) -> Outcome:
    """Re-initialise and retrain the classifier on the frozen backbone (cRT, BALMS, ...)."""
    cfg = job.config
    meta = cfg.sampler == "meta"
    if meta and job.loss.name not in META_LOSSES:
        raise ValueError(
            f"loss.name: the meta sampler's inner step expects one of {', '.join(META_LOSSES)} "
            f'(BALMS uses balanced_softmax); got "{job.loss.name}"'
        )
    backbone = _frozen_backbone(job)
    reset_classifier(backbone.fc, job.seed)
    head = LinearHead(backbone.fc.requires_grad_(True))
    plan = retrain(job, backbone, head)
    drivers: list[MetaSampler] = []

    def setup(trainer: Any) -> None:
        plan.setup(trainer)
        if isinstance(trainer.sampler, MetaSampler):
            trainer.train_source = _meta_source(job, trainer)
            drivers.append(trainer.sampler)

    options = {"init_pow": cfg.meta_init_pow, "lr": cfg.meta_lr} if meta else None
    summary = job.train(
        plan.net,
        loss=job.loss,
        sampler=cfg.sampler,
        params=list(head.parameters()),
        sampler_options=options,
        setup=setup,
    )
    metrics = {"mode": "classifier", "backbone_bn": cfg.backbone_bn, **summary}
    plots = {}
    if drivers:
        metrics.update(meta_init_pow=cfg.meta_init_pow, meta_lr=cfg.meta_lr)
        rows = drivers[0].rate_rows(job.class_names or None)
        last = max(r["epoch"] for r in rows)
        plots["meta_sampling_epochs"] = rows
        plots["meta_sampling"] = [r for r in rows if r["epoch"] == last]
    return Outcome(metrics, plots)


def _meta_source(job: Job, trainer: Any) -> MetaSource:
    """The BALMS meta step around the trainer's feature source (meta set: ``meta_source``)."""
    log_counts = torch.tensor(job.train_counts, dtype=torch.float64).log().float()
    shift = log_counts if META_LOSSES[job.loss.name] else torch.zeros_like(log_counts)
    size = job.config.meta_batch_size or job.config.optim.batch_size
    return MetaSource(
        trainer.train_source,
        meta_set(job.config.meta_source, trainer),
        trainer.sampler,
        trainer.model,
        trainer.optimizer,
        shift=shift.to(job.device),
        meta_batch_size=size,
        world=trainer.world,
        meta_split=job.config.meta_source,
        meta_augment=job.config.meta_augment,
    )


@register("tau_norm")
def tau_norm(job: Job) -> Outcome:
    """τ-normalise the pretrained classifier, τ chosen on ``val`` when there are candidates."""
    taus = job.config.tau_candidates()
    backbone = _frozen_backbone(job)
    val = job.open_split("val")
    if len(taus) > 1 and len(val) == 0:
        raise ValueError(
            f"finetune.tau_norm: choosing among {len(taus)} values needs a val split "
            "(set data.val_per_class > 0), got 0 val samples"
        )
    rows = []
    if len(val) > 0:
        source = FrozenFeatures(
            val, backbone, augment=False, batch_size=job.eval_batch_size, fast=job.fast
        )
        features, labels = source.cached(torch.Generator(device=job.device))
        rows = tau_sweep(backbone.fc, features, labels, taus, job)
    chosen = best_tau(rows) if len(taus) > 1 else taus[0]
    with torch.no_grad():
        backbone.fc.weight.copy_(tau_normalized(backbone.fc.weight, chosen))
        if not job.config.tau_norm_bias and backbone.fc.bias is not None:
            backbone.fc.bias.zero_()  # the reference scores f · w / ||w||^τ, no bias
    metrics: dict[str, Any] = {
        "mode": "tau_norm",
        "epochs": 0,
        "tau": chosen,
        "tau_norm_bias": job.config.tau_norm_bias,
    }
    for row in rows:
        if row["tau"] == chosen:
            metrics.update({f"val/{k}": v for k, v in row.items() if k != "tau"})
    return Outcome(metrics, {"tau_norm": rows} if len(taus) > 1 else {}, trained=False)


def tau_sweep(
    fc: nn.Linear, features: Tensor, labels: Tensor, taus: tuple[float, ...], job: Job
) -> list[dict[str, float]]:
    """Val scores (percent) of the τ-normalised classifier for each τ in ``taus``."""
    rows = []
    bias = fc.bias if job.config.tau_norm_bias else None
    for tau in taus:
        with torch.no_grad():
            logits = F.linear(features, tau_normalized(fc.weight, tau).to(features.dtype), bias)
        conf = confusion_matrix(logits.argmax(1), labels, len(job.train_counts))
        s = summarize(conf, job.train_counts, job.many_shot, job.few_shot)
        keys = ("top1", "mean_class_accuracy", "many", "medium", "few")
        rows.append({"tau": tau, **{k: s[k] for k in keys}})
    return rows


def best_tau(rows: list[dict[str, float]]) -> float:
    """The τ of the best mean per-class accuracy; the smallest τ among ties."""
    best = max(r["mean_class_accuracy"] for r in rows)
    return min(r["tau"] for r in rows if r["mean_class_accuracy"] == best)


@register("lws")
def lws(job: Job) -> Outcome:
    """Learn one scale per class of the frozen pretrained classifier on class-balanced batches."""
    backbone = _frozen_backbone(job)
    head = ScaledHead(backbone.fc)
    plan = retrain(job, backbone, head)
    summary = job.train(
        plan.net,
        loss=job.loss,
        sampler=job.config.stage_sampler(),
        params=[head.scales],
        setup=plan.setup,
    )
    scales = head.scales.detach().cpu().tolist()
    head.fold()
    names = job.class_names or list(range(len(scales)))
    rows = [
        {"class": names[c], "train_count": job.train_counts[c], "scale": round(s, 6)}
        for c, s in enumerate(scales)
    ]
    metrics = {"mode": "lws", "backbone_bn": job.config.backbone_bn, **summary}
    return Outcome(metrics, {"lws_scales": rows})


@register("partial")
def partial(job: Job) -> Outcome:
    """Re-initialise and train the named blocks and the classifier on a frozen network (FBL)."""
    cfg = job.config
    model = job.model
    blocks = named_blocks(model, cfg.train_blocks)
    with torch.random.fork_rng(devices=[]):  # module initialisers draw from the global RNG
        torch.manual_seed(job.seed)
        for block in blocks.values():
            reinitialise(block)
    reset_classifier(model.fc, job.seed)
    model = _frozen_backbone(job)
    trained = [*blocks.values(), model.fc]
    for module in trained:
        module.requires_grad_(True)
    block_lr = cfg.block_lr if cfg.block_lr is not None else cfg.optim.lr
    groups = [
        {"params": _parameters(blocks.values(), exclude=model.fc), "lr": block_lr},
        {"params": list(model.fc.parameters()), "lr": cfg.optim.lr},
    ]

    def train_mode(net: nn.Module) -> None:
        net.eval()  # the frozen network keeps its running statistics
        for module in trained:
            module.train()

    summary = job.train(
        model,
        loss=job.loss,
        sampler=cfg.sampler,
        params=groups,
        setup=_unaugmented_setup(job),
        train_mode=train_mode,
    )
    metrics = {"mode": "partial", "train_blocks": list(blocks), "block_lr": block_lr}
    return Outcome({**metrics, **summary})


def named_blocks(model: nn.Module, names: tuple[str, ...]) -> dict[str, nn.Module]:
    """The modules of ``model`` called ``names`` (``layer4.2``), in the order given.

    Raises:
        ValueError: a name that is not a module of ``model``; the message lists the valid names
            down to blocks (names with at most one dot).
    """
    modules = dict(model.named_modules())
    unknown = [name for name in names if not name or name not in modules]
    if unknown:
        valid = [name for name in modules if name and name.count(".") <= 1]
        raise ValueError(
            f"finetune.train_blocks: expected module names of {type(model).__name__} among "
            f"{', '.join(valid)} (or deeper, e.g. layer4.2.conv1); got {', '.join(unknown)}"
        )
    return {name: modules[name] for name in names}


def reinitialise(module: nn.Module) -> None:
    """Every submodule's own PyTorch default initialisation (``reset_parameters``), in place.

    BatchNorm's resets its running statistics as well. Draws from the global RNG (the caller
    seeds it).
    """
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()


def _parameters(modules: Iterable[nn.Module], exclude: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``modules``, each once, without those of ``exclude``."""
    skip = {id(p) for p in exclude.parameters()}
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            if id(p) not in skip:
                seen.setdefault(id(p), p)
    return list(seen.values())
