"""Building blocks of the ``finetune.mode``s that keep the backbone frozen (``longtail.modes``).

Sources: Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
ICLR 2020 (facebookresearch/classifier-balancing: cRT, τ-norm, LWS, NCM); Ren et al., "Balanced
Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020
(jiawei-ren/BalancedMetaSoftmax-Classification); juyongjiang/FBL (partial fine-tuning).

BatchNorm of a frozen backbone (``finetune.backbone_bn``, registry :data:`BACKBONE_BN`; read by
``classifier``, ``lws`` and, for its frozen blocks, ``partial``):
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
included: the features of an image change with the batch it is in. The BALMS meta step runs
under either (``longtail.meta.MetaStep``).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from longtail.data.base import Source
from longtail.nets import heads
from longtail.registry import Registry
from longtail.train import FastPath

if TYPE_CHECKING:
    from longtail.modes import Job


# ------------------------------------------------------------------------------ building blocks
class FeatureHead(nn.Module):
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

    def features(self, x: Tensor) -> Tensor:
        """The backbone's features of ``x`` without a graph (BatchNorm in the module's mode)."""
        with torch.no_grad():
            return self.backbone.forward_features(x)


Sources = Callable[[Source, Source | None], tuple[Source, Source | None]]


@dataclass
class Retrain:
    """What the training loop runs to retrain a head on a frozen backbone.

    Attributes:
        net: the module the loop trains and validates.
        sources: adapts the loop's ``(train, val)`` split sources to what ``net`` reads.
    """

    net: nn.Module
    sources: Sources


def _bn_frozen(job: Job, backbone: nn.Module, head: nn.Module) -> Retrain:
    """Eval-mode backbone: the loop trains the head alone over :class:`FrozenFeatures`."""
    return Retrain(head, feature_sources(job, backbone))


def _bn_train(job: Job, backbone: nn.Module, head: nn.Module) -> Retrain:
    """Train-mode backbone (the references): every batch through it, nothing cached."""
    return Retrain(OnBackbone(backbone, head), unaugmented_sources(job.config.augment))


TrainMode = Callable[[nn.Module], None]


def _blocks_in_eval(trained: list[nn.Module]) -> TrainMode:
    """Frozen modules in eval mode, the trained ones in train mode."""

    def train_mode(net: nn.Module) -> None:
        net.eval()  # the frozen modules keep their running statistics
        for module in trained:
            module.train()

    return train_mode


def _blocks_in_train(trained: list[nn.Module]) -> TrainMode:
    """Every module in train mode (no frozen parameter takes a gradient)."""

    def train_mode(net: nn.Module) -> None:
        net.train()

    return train_mode


@dataclass(frozen=True)
class BackboneBN:
    """A ``finetune.backbone_bn`` policy.

    Attributes:
        retrain: how a head is trained on the whole frozen backbone (``classifier``, ``lws``).
        train_mode: the train-mode policy of a partly frozen network, given its trained modules
            (``partial``).
        summary: what the frozen part's BatchNorm does, in words (``tools.recipes --explain``).
    """

    retrain: Callable[[Job, nn.Module, nn.Module], Retrain]
    train_mode: Callable[[list[nn.Module]], TrainMode]
    summary: str = ""


BACKBONE_BN: Registry[BackboneBN] = Registry("finetune.backbone_bn")
BACKBONE_BN.add(
    "frozen",
    BackboneBN(
        _bn_frozen,
        _blocks_in_eval,
        "frozen part in eval mode (running statistics of pretrain, never updated)",
    ),
)
BACKBONE_BN.add(
    "train",
    BackboneBN(
        _bn_train,
        _blocks_in_train,
        "frozen weights, BatchNorm in train mode (batch statistics; running statistics drift "
        "under the sampler)",
    ),
)


def retrain(job: Job, backbone: nn.Module, head: nn.Module) -> Retrain:
    """The ``finetune.backbone_bn`` policy's plan for training ``head`` on ``backbone``."""
    return BACKBONE_BN[job.config.backbone_bn].retrain(job, backbone, head)


def unaugmented_sources(augment: bool) -> Sources:
    """The loop's sources, its training batches unaugmented when ``augment`` is off."""

    def sources(train: Source, val: Source | None) -> tuple[Source, Source | None]:
        return (train if augment else Unaugmented(train)), val

    return sources


def frozen_backbone(job: Job) -> nn.Module:
    """Put the whole network on the device, frozen and in eval mode; returns it."""
    model = job.model.to(job.device)
    job.fast.prepare_model(model)
    freeze(model)
    return model


def feature_sources(job: Job, backbone: nn.Module) -> Sources:
    """The loop's train and val sources as :class:`FrozenFeatures` of ``backbone``."""
    kw = {"batch_size": job.eval_batch_size, "fast": job.fast}

    def sources(train: Source, val: Source | None) -> tuple[Source, Source | None]:
        train = FrozenFeatures(train, backbone, augment=job.config.augment, **kw)
        if val is not None:
            val = FrozenFeatures(val, backbone, augment=False, **kw)
        return train, val

    return sources


# ------------------------------------------------------------------------ partial fine-tuning
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


def parameters_of(modules: Iterable[nn.Module], exclude: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``modules``, each once, without those of ``exclude``."""
    skip = {id(p) for p in exclude.parameters()}
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            if id(p) not in skip:
                seen.setdefault(id(p), p)
    return list(seen.values())
