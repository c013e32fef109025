"""Classifier heads (``model.classifier``) and classifier bias initialisations (``bias_init``).

Every network keeps its classifier as ``fc``; the head picked by name replaces the architecture's
``nn.Linear`` when the network is built (:func:`longtail.nets.create`). Each head is a small
module that the rest of the code treats alike, through four members:

- ``forward(f) -> logits`` (B, C) from features (B, D);
- ``weight`` (C, D), one row per class, and ``bias`` (C,) or None;
- ``reset(generator)``: the head's own fresh initialisation (classifier retraining, a checkpoint
  whose classifier does not fit), drawn on the CPU from ``generator`` and copied in place;
- ``fold_scales(s)``: make ``head(f)`` equal ``s * head(f)`` (learnable weight scaling);

and one class attribute, ``refused_modes``: the ``finetune.mode``s that make no sense with the
head, each with the reason. The config refuses those combinations before any work.

``linear``
    ``w · f + b``: ``nn.Linear`` itself, initialised by the architecture (kaiming-normal weights
    for ResNet-32, as LDAM-DRW's ``resnet_cifar.py``; torchvision's defaults for the others).
``cosine``
    LDAM-DRW's ``NormedLinear`` (Cao et al., NeurIPS 2019; kaidic/LDAM-DRW
    ``models/resnet_cifar.py``): ``z_c = <f / ||f||, w_c / ||w_c||>``, no bias, so every logit is
    a cosine in [-1, 1]; LDAM's scale ``s`` multiplies the logits inside the loss, as in the
    original. Initialised as there: each entry U(-1, 1), then each class vector rescaled to unit
    norm. The original stores the weight transposed, (D, C), and normalises its columns; here it
    is (C, D) with unit rows, the layout of ``nn.Linear``, so the per-class code (LWS, checkpoints)
    is shared. One buffer ``scales`` (C,), all ones, multiplies the cosines; only learnable weight
    scaling changes it (the class vectors are normalised in ``forward``, so a scale cannot be
    folded into them). ``tau_norm`` is refused: ``w_c / ||w_c||^τ`` only rescales each class
    vector, which the head normalises away, so every τ scores exactly the same logits.

Bias initialisations (``model.bias_init``): ``default`` keeps the head's own, ``prior`` sets
every bias to ``-log((1 - π) / π)`` with π = 1/C, the prior probability of a class under a
sigmoid (CDB-CE's CIFAR code, hitachi-rd-cv/CDB-loss ``CIFAR-LT/cifar_train.py``). ``prior`` needs
a head with a bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.registry import Registry


class LinearHead(nn.Linear):
    """``w · f + b``; the architecture's ``nn.Linear`` with the head interface."""

    refused_modes: ClassVar[Mapping[str, str]] = {}
    has_bias: ClassVar[bool] = True
    #: Whether the loss that trained it scales its logits (LDAM's ``s``; ``losses.logit_scale``).
    scaled_by_loss: ClassVar[bool] = False

    @classmethod
    def from_linear(cls, fc: nn.Linear) -> LinearHead:
        """The same layer (same tensors, no new random draw) as a :class:`LinearHead`."""
        # Built on the meta device: no memory, no draw from the global RNG.
        head = cls(fc.in_features, fc.out_features, bias=fc.bias is not None, device="meta")
        head.weight = fc.weight
        head.bias = fc.bias
        return head

    def reset(self, generator: torch.Generator | None) -> None:
        """``nn.Linear``'s default, U(±1/sqrt(D)) for weight then bias, drawn from ``generator``."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            for p in (self.weight, self.bias):
                if p is not None:
                    draw = torch.empty(p.shape).uniform_(-bound, bound, generator=generator)
                    p.copy_(draw)

    @torch.no_grad()
    def fold_scales(self, scales: Tensor) -> None:
        """``w_c <- s_c w_c``, ``b_c <- s_c b_c``."""
        self.weight.mul_(scales[:, None].to(self.weight.dtype))
        if self.bias is not None:
            self.bias.mul_(scales.to(self.bias.dtype))


class CosineHead(nn.Module):
    """LDAM-DRW's normalised classifier: ``scales_c * cos(f, w_c)``, no bias (module docstring).

    Args:
        in_features: D, the feature size.
        out_features: C, the number of classes.
        generator: source of the initial draw (None: the global torch RNG).
    """

    has_bias: ClassVar[bool] = False
    scaled_by_loss: ClassVar[bool] = True  # logits in [-1, 1], scaled by the loss (LDAM's s)
    refused_modes: ClassVar[Mapping[str, str]] = {
        "tau_norm": (
            "the cosine head normalises every class vector w_c in its forward pass, so "
            "w_c / ||w_c||^tau gives the same logits for every tau"
        ),
    }

    def __init__(
        self, in_features: int, out_features: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))  # (C, D)
        self.bias = None
        self.register_buffer("scales", torch.ones(out_features))  # (C,)
        self.reset(generator)

    @classmethod
    def from_linear(cls, fc: nn.Linear) -> CosineHead:
        """A new cosine head of ``fc``'s shape, drawn from the global RNG."""
        return cls(fc.in_features, fc.out_features)

    def forward(self, features: Tensor) -> Tensor:
        f = F.normalize(features, dim=1)  # (B, D)
        w = F.normalize(self.weight, dim=1)  # (C, D)
        return F.linear(f, w) * self.scales  # (B, C)

    def reset(self, generator: torch.Generator | None) -> None:
        """U(-1, 1) entries, each class vector rescaled to unit norm (LDAM's init); scales 1."""
        draw = torch.empty(self.weight.shape).uniform_(-1.0, 1.0, generator=generator)
        with torch.no_grad():
            self.weight.copy_(F.normalize(draw, dim=1))
            self.scales.fill_(1.0)

    @torch.no_grad()
    def fold_scales(self, scales: Tensor) -> None:
        """``scales_c <- s_c scales_c`` (the class vectors are normalised: they cannot hold it)."""
        self.scales.mul_(scales.to(self.scales.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


# name -> head class; each builds itself from the architecture's nn.Linear (``from_linear``).
HEADS: Registry[type[nn.Module]] = Registry("model.classifier")


def register(name: str, cls: type[nn.Module]) -> None:
    """Add a head class to :data:`HEADS`; a duplicate name is refused."""
    HEADS.add(name, cls)


register("linear", LinearHead)
register("cosine", CosineHead)


def names() -> tuple[str, ...]:
    """The registered head names."""
    return HEADS.names()


def create(name: str, fc: nn.Linear) -> nn.Module:
    """The head called ``name`` in place of the architecture's classifier ``fc``."""
    return HEADS[name].from_linear(fc)


def adapt(fc: nn.Module) -> nn.Module:
    """``fc`` itself if it is a head; a plain ``nn.Linear`` as a :class:`LinearHead` sharing its
    tensors (so the head methods act on ``fc`` in place)."""
    if isinstance(fc, tuple(HEADS.values())):
        return fc
    if isinstance(fc, nn.Linear):
        return LinearHead.from_linear(fc)
    raise TypeError(f"expected a classifier head or nn.Linear, got {type(fc).__name__}")


def refusal(name: str, mode: str) -> str | None:
    """Why ``finetune.mode`` ``mode`` makes no sense with head ``name``; None when it does."""
    return HEADS[name].refused_modes.get(mode)


# ------------------------------------------------------------------------------ bias init
def _prior_bias(head: nn.Module) -> None:
    """Every bias -log((1 - π) / π), π = 1/C (CDB-CE's CIFAR code)."""
    pi = 1.0 / head.out_features
    with torch.no_grad():
        head.bias.fill_(-math.log((1.0 - pi) / pi))


# name -> (initialisation, whether it needs a bias).
BIAS_INITS: dict[str, tuple[Callable[[nn.Module], None], bool]] = {
    "default": (lambda head: None, False),
    "prior": (_prior_bias, True),
}


def bias_refusal(name: str, classifier: str) -> str | None:
    """Why bias initialisation ``name`` cannot apply to head ``classifier``; None when it can."""
    if BIAS_INITS[name][1] and not HEADS[classifier].has_bias:
        return f"{name} sets the classifier bias, but the {classifier} head has none"
    return None


def init_bias(name: str, head: nn.Module) -> None:
    """Apply the bias initialisation ``name`` to ``head``."""
    if name not in BIAS_INITS:
        raise ValueError(f'model.bias_init: expected one of {", ".join(BIAS_INITS)}; got "{name}"')
    init, needs_bias = BIAS_INITS[name]
    if needs_bias and head.bias is None:
        raise ValueError(
            f"model.bias_init: {name} sets the classifier bias, but the {type(head).__name__} "
            "has none; expected model.bias_init: default"
        )
    init(head)
