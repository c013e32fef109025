"""Loss registry and library for long-tailed recognition.

Every loss is a plain function of tensors (the math, callable from tests) plus a thin
:class:`LongTailLoss` module that holds its per-class tensors as buffers, so they go into
``state_dict()`` and checkpoints and follow ``.to(device)``. All modules share one call signature,

    loss(logits (B, C), targets (B,) int64, features (B, D)) -> scalar,

and one pair of per-epoch hooks (``update`` with the per-class validation accuracy, ``set_epoch``),
so the training loop never branches on a loss's name. ``forward`` computes in float32 even under
bf16 autocast and never synchronises with the host; the hooks run once per epoch and may.

Sources followed (equations in each docstring):

- ``ce``, ``focal``: softmax cross-entropy; focal loss (Lin et al., ICCV 2017), softmax form.
- ``class_balanced``: Cui et al., CVPR 2019 (richardaecn/class-balanced-loss).
- ``ldam``: Cao et al., NeurIPS 2019 (kaidic/LDAM-DRW), with its DRW re-weighting as an option.
- ``logit_adjust``: Menon et al., ICLR 2021.
- ``balanced_softmax``: Ren et al., NeurIPS 2020 (jiawei-ren/BalancedMetaSoftmax-Classification).
- ``cdb_ce``: Sinha, Ohashi, Nakamura, ACCV 2020 (hitachi-rd-cv/CDB-loss).
- ``fbl``: Li, Cheung, Jiang, ICME 2022 (juyongjiang/FBL).

Pick a loss by name: ``create("cdb_ce", class_counts, tau="dynamic")``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longtail.registry import Registry

if TYPE_CHECKING:
    from longtail.config import LossConfig

# A class measured at 100 % validation accuracy has difficulty 1 - A_c = 0; CDB-CE floors the
# difficulty here so the class keeps a small, non-zero weight (see CDBCrossEntropy).
CDB_MIN_DIFFICULTY = 1e-3
# Added to min A in CDB-CE's dynamic tau, b = max A / (min A + 0.01), as in the original code.
CDB_DYNAMIC_EPS = 0.01
# FBL's curriculum reaches full strength this many epochs before the end (original code: E - 10).
FBL_CURRICULUM_TAIL = 10

LOSSES: Registry[type[LongTailLoss]] = Registry("loss.name")


# ------------------------------------------------------------------------------------- registry
def register(name: str) -> Callable[[type[LongTailLoss]], type[LongTailLoss]]:
    """Class decorator that adds a loss to :data:`LOSSES` under ``name``.

    Args:
        name: registry name, the value of ``loss.name`` in params.yaml.

    Returns:
        The decorator; it returns the class unchanged.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorator(cls: type[LongTailLoss]) -> type[LongTailLoss]:
        if not (isinstance(cls, type) and issubclass(cls, LongTailLoss)):
            raise TypeError(f"register: expected a LongTailLoss subclass, got {cls!r}")
        return LOSSES.add(name, cls)

    return decorator


def names() -> tuple[str, ...]:
    """Registered loss names, in registration order."""
    return LOSSES.names()


def _get(name: str) -> type[LongTailLoss]:
    return LOSSES[name]


def option_names(name: str) -> tuple[str, ...]:
    """The options a loss accepts: the keyword-only parameters of its constructor.

    Args:
        name: registry name.

    Returns:
        Option names, e.g. ``("gamma",)`` for ``focal``.
    """
    parameters = inspect.signature(_get(name).__init__).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def create(name: str, class_counts: Sequence[int] | Tensor, **options: object) -> LongTailLoss:
    """Build a registered loss.

    Args:
        name: registry name.
        class_counts: training images per class, length C.
        **options: the loss's options (see :func:`option_names`); missing ones take defaults.

    Returns:
        The loss module, on the CPU.

    Raises:
        ValueError: unknown name or option, bad option value, bad class counts.
    """
    cls = _get(name)
    valid = option_names(name)
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise ValueError(
            f"loss options of {name}: expected some of ({', '.join(valid)}), "
            f'got unknown option "{unknown[0]}"'
        )
    return cls(class_counts, **options)


def kwargs(spec: LossConfig) -> dict[str, object]:
    """The options of a loss section that its loss takes, as keyword arguments for :func:`create`
    (a section may hold options of other losses: they are ignored)."""
    accepted = option_names(spec.name)
    return {k: v for k, v in spec.options.items() if k in accepted}


def logit_scale(name: str, **options: object) -> float:
    """The factor a loss multiplies the logits by before its softmax: LDAM's ``s``, else 1.

    A cosine head's logits lie in [-1, 1]; the loss that trained it scales them, so calibration
    (the evaluate stage's ECE) reads ``softmax(scale * logits)``, the probabilities it trained.
    """
    if "s" not in option_names(name):
        return 1.0
    default = inspect.signature(_get(name).__init__).parameters["s"].default
    return float(_positive("s", options.get("s", default)))


# ------------------------------------------------------------------------------ option checking
def _fail(option: str, expected: str, value: object) -> ValueError:
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    return ValueError(f"{option}: expected {expected}, got {shown}")


def _number(option: str, value: object, expected: str) -> float:
    """A finite real number; numeric strings are accepted (``dvc exp run -S`` may write them)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _fail(option, expected, value) from None
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise _fail(option, expected, value)
    if not math.isfinite(float(number)):
        raise _fail(option, expected, value)
    return float(number)


def _at_least(option: str, value: object, low: float) -> float:
    expected = f"a number >= {low:g}"
    number = _number(option, value, expected)
    if number < low:
        raise _fail(option, expected, value)
    return number


def _positive(option: str, value: object) -> float:
    number = _number(option, value, "a number > 0")
    if number <= 0:
        raise _fail(option, "a number > 0", value)
    return number


def _beta(value: object) -> float:
    number = _number("beta", value, "a number in [0, 1)")
    if not 0 <= number < 1:
        raise _fail("beta", "a number in [0, 1)", value)
    return number


def _choice(option: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(option, "one of " + ", ".join(choices), value)
    return str(value)


def _counts(class_counts: Sequence[int] | Tensor) -> Tensor:
    """Validate class counts; returns them as an int64 tensor of shape (C,)."""
    expected = "a 1-D sequence of non-negative integers"
    try:
        counts = torch.as_tensor(class_counts)
    except (TypeError, ValueError, RuntimeError):
        raise _fail("class_counts", expected, class_counts) from None
    integral = not (counts.dtype.is_floating_point or counts.dtype.is_complex)
    if counts.dim() != 1 or counts.numel() == 0 or not integral or counts.dtype == torch.bool:
        shown = f"shape {tuple(counts.shape)}, dtype {counts.dtype}"
        raise ValueError(f"class_counts: expected {expected}, got {shown}")
    negative = (counts < 0).nonzero().flatten().tolist()
    if negative:
        c = negative[0]
        raise ValueError(f"class_counts: expected {expected}, got {counts[c]} for class {c}")
    return counts.to(torch.int64)


def _positive_counts(counts: Tensor, loss: str, why: str) -> Tensor:
    """Refuse classes with no training images where the loss takes a log or divides by n_c."""
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"class_counts: expected every class to have n_c > 0 for {loss} ({why}), "
            f"got n_c = 0 for class {empty[0]}"
        )
    return counts


# ----------------------------------------------------------------------------------- base class
class LongTailLoss(nn.Module):
    """Base of every registered loss: one call signature and two per-epoch hooks.

    Subclasses take ``class_counts`` positionally and their options as keyword-only arguments
    (that is what :func:`option_names` reports). The constructor does no I/O and no device
    placement; per-class tensors are buffers.
    """

    #: True when ``update`` needs per-class accuracy on a held-out ``val`` split.
    requires_val: bool = False
    #: The per-image form the BALMS meta step differentiates (``longtail.meta``): cross-entropy
    #: on ``z + log n_c`` (True), on ``z`` (False); None: no per-image form is known.
    shifts_by_log_counts: bool | None = None

    def __init__(self, class_counts: Sequence[int] | Tensor) -> None:
        super().__init__()
        self.num_classes = int(_counts(class_counts).numel())

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor) -> Tensor:
        """The batch loss.

        Args:
            logits: (B, C) classifier outputs.
            targets: (B,) int64 class indices.
            features: (B, D) penultimate features (used by feature-aware losses only).

        Returns:
            A scalar float32 tensor (float64 when the logits are float64).
        """
        raise NotImplementedError

    def update(self, per_class_accuracy: Tensor) -> None:
        """Per-epoch hook with the validation accuracy of each class, (C,) in [0, 1]. No-op."""

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Per-epoch hook, called before epoch ``epoch`` (from 0) of ``total_epochs``. No-op."""

    def _logits(self, logits: Tensor) -> Tensor:
        """Check the class dimension (metadata only, no host sync) and upcast to float32."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits: expected shape (B, {self.num_classes}) to match class_counts, "
                f"got {tuple(logits.shape)}"
            )
        return _upcast(logits)


def _upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 so the loss is computed in float32; float64 stays (gradcheck)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _weighted_batch_mean(per_sample: Tensor, sample_weights: Tensor) -> Tensor:
    """sum_i w_i l_i / B: per-sample weights without renormalising by their sum."""
    return (sample_weights * per_sample).mean()


# ------------------------------------------------------------------------------------------- CE
def cross_entropy_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax cross-entropy, batch mean: mean_i (logsumexp(z_i) - z_{i, y_i})."""
    return F.cross_entropy(_upcast(logits), targets)


@register("ce")
class CrossEntropy(LongTailLoss):
    """Plain softmax cross-entropy (the baseline every method is compared with)."""

    shifts_by_log_counts = False

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor) -> Tensor:
        return cross_entropy_loss(self._logits(logits), targets)


# ---------------------------------------------------------------------------------------- focal
def focal_terms(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """Per-sample softmax focal loss -(1 - p_t)^gamma log p_t, shape (B,).

    The modulating factor is differentiated (Lin et al.'s loss; some long-tail codebases detach
    it). ``1 - p_t`` is clamped to the smallest normal number so that ``gamma < 1`` cannot produce
    an infinite gradient at p_t = 1.
    """
    nll = F.cross_entropy(_upcast(logits), targets, reduction="none")  # (B,) = -log p_t
    if gamma == 0:
        return nll
    one_minus_p = (-torch.expm1(-nll)).clamp_min(torch.finfo(nll.dtype).tiny)  # (B,)
    return one_minus_p.pow(gamma) * nll


def focal_loss(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """Softmax focal loss, batch mean; ``gamma = 0`` is cross-entropy."""
    return focal_terms(logits, targets, gamma).mean()


@register("focal")
class Focal(LongTailLoss):
    """Softmax focal loss (Lin et al., ICCV 2017), batch mean.

    Options:
        gamma: focusing parameter, >= 0 (0 is cross-entropy).
    """

    def __init__(self, class_counts: Sequence[int] | Tensor, *, gamma: float = 1.0) -> None:
        super().__init__(class_counts)
        self.gamma = _at_least("gamma", gamma, 0)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor) -> Tensor:
        return focal_loss(self._logits(logits), targets, self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}"


# ------------------------------------------------------------------------------- class-balanced
def class_balanced_weights(class_counts: Tensor, beta: float) -> Tensor:
    """Cui et al.'s weights (1 - beta) / (1 - beta^n_c), rescaled to sum to C; (C,) float32.

    ``beta = 0`` gives all ones. Every count must be > 0.
    """
    counts = class_counts.to(torch.float64)
    weights = (1.0 - beta) / (1.0 - beta**counts)  # (C,), 1 / effective number of samples
    return (weights / weights.sum() * counts.numel()).float()


def class_balanced_loss(
    logits: Tensor, targets: Tensor, class_weights: Tensor, gamma: float = 0.0
) -> Tensor:
    """Class-balanced (focal) loss: sum_i w_{y_i} l_i / B, l the focal term (CE for gamma = 0)."""
    z = _upcast(logits)
    terms = focal_terms(z, targets, gamma)  # (B,)
    return _weighted_batch_mean(terms, class_weights.to(z.dtype)[targets])


@register("class_balanced")
class ClassBalanced(LongTailLoss):
    """Class-balanced loss (Cui et al., CVPR 2019) on softmax CE or softmax focal loss.

    Per-sample weight w_y with w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C.

    Reduction: sum_i w_{y_i} l_i / B. This is Cui et al.'s official code: its softmax loss passes
    the per-sample weights to TensorFlow's ``softmax_cross_entropy`` (which divides by the number
    of non-zero weights, i.e. B) and its focal loss divides the weighted sum by the number of
    labels. (kaidic/LDAM-DRW's "Reweight" rule instead divides by sum_i w_{y_i}, through
    ``nn.CrossEntropyLoss(weight=...)``; the ``ldam`` loss here follows that code.) Cui et al.'s
    focal variant is sigmoid-based; ``base = focal`` here is the softmax focal loss, as in
    hitachi-rd-cv/CDB-loss's class-balanced focal baseline.

    Options:
        beta: in [0, 1); 0 gives unit weights (plain CE / focal), 0.9999 is the paper's default.
        base: ``ce`` or ``focal``.
        gamma: focal parameter (>= 0), used when ``base = focal``.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        beta: float = 0.9999,
        base: str = "ce",
        gamma: float = 1.0,
    ) -> None:
        super().__init__(class_counts)
        self.beta = _beta(beta)
        self.base = _choice("base", base, ("ce", "focal"))
        self.gamma = _at_least("gamma", gamma, 0)
        counts = _positive_counts(_counts(class_counts), "class_balanced", "1 - beta^0 = 0")
        self.register_buffer("weights", class_balanced_weights(counts, self.beta))  # (C,)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor) -> Tensor:
        gamma = self.gamma if self.base == "focal" else 0.0
        return class_balanced_loss(self._logits(logits), targets, self.weights, gamma)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, base={self.base}, gamma={self.gamma:g}"


# ----------------------------------------------------------------------------------------- LDAM
def ldam_margins(class_counts: Tensor, max_m: float) -> Tensor:
    """Margins Delta_c proportional to n_c^(-1/4), rescaled so the largest is ``max_m``; (C,)."""
    margins = class_counts.to(torch.float64).pow(-0.25)
    return (margins * (max_m / margins.max())).float()


def ldam_loss(
    logits: Tensor, targets: Tensor, margins: Tensor, s: float, class_weights: Tensor | None = None
) -> Tensor:
    """LDAM: CE on s * (z - Delta_y e_y).

    With ``class_weights`` the reduction is sum_i w_{y_i} l_i / sum_i w_{y_i}, as
    ``F.cross_entropy(weight=...)`` does; without, the batch mean.
    """
    z = _upcast(logits)
    target_mask = torch.zeros_like(z, dtype=torch.bool).scatter_(1, targets.unsqueeze(1), True)
    shifted = z - target_mask * margins.to(z.dtype)[targets].unsqueeze(1)  # (B, C)
    weight = None if class_weights is None else class_weights.to(z.dtype)
    return F.cross_entropy(s * shifted, targets, weight=weight)


@register("ldam")
class LDAM(LongTailLoss):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019; kaidic/LDAM-DRW).

    The margin Delta_c = max_m * (n_min / n_c)^(1/4) is subtracted from the target logit, all
    logits are scaled by ``s``, then cross-entropy. Cao et al. pair it with a normalised (cosine)
    classifier, whose logits lie in [-1, 1]: ``s = 30`` assumes logits of that size.

    DRW (deferred re-weighting) is this pipeline's native shape: ``pretrain`` with ``ldam``, then
    ``finetune`` with ``ldam`` and ``weights = class_balanced``, which is LDAM-DRW's second phase:
    LDAM with Cui et al.'s weights (beta = 0.9999 in the original). As in that code the weighted
    loss is reduced by sum_i w_{y_i} (``F.cross_entropy(weight=...)``), not by B.

    Options:
        max_m: largest margin, >= 0.
        s: logit scale, > 0.
        weights: ``none`` or ``class_balanced`` (``None`` means ``none``).
        beta: class-balanced beta in [0, 1), used when ``weights = class_balanced``.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        max_m: float = 0.5,
        s: float = 30.0,
        weights: str | None = "none",
        beta: float = 0.9999,
    ) -> None:
        super().__init__(class_counts)
        self.max_m = _at_least("max_m", max_m, 0)
        self.s = _positive("s", s)
        weighting = "none" if weights is None else weights
        self.weighting = _choice("weights", weighting, ("none", "class_balanced"))
        self.beta = _beta(beta)
        counts = _positive_counts(_counts(class_counts), "ldam", "margins use n_c^(-1/4)")
        self.register_buffer("margins", ldam_margins(counts, self.max_m))  # (C,)
        # Unit weights make F.cross_entropy's weighted mean the plain batch mean.
        beta_used = self.beta if self.weighting == "class_balanced" else 0.0
        self.register_buffer("weights", class_balanced_weights(counts, beta_used))  # (C,)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor) -> Tensor:
        return ldam_loss(self._logits(logits), targets, self.margins, self.s, self.weights)

    def extra_repr(self) -> str:
        return f"max_m={self.max_m:g}, s={self.s:g}, weights={self.weighting}, beta={self.beta:g}"


# ------------------------------------------------------------------------------ logit adjusted
def logit_adjusted_loss(logits: Tensor, targets: Tensor, log_prior: Tensor, tau: float) -> Tensor:
    """Logit-adjusted CE: CE on z + tau * log pi, batch mean."""
    z = _upcast(logits)
    return F.cross_entropy(z + tau * log_prior.to(z.dtype), targets)


@register("logit_adjust")
class LogitAdjusted(LongTailLoss):
    """Logit-adjusted loss (Menon et al., ICLR 2021): CE on z + tau * log pi, pi_c = n_c / sum n.

    Predictions use the raw logits z. Options:
        tau: >= 0; 0 is cross-entropy, 1 the paper's default.
    """

    def __init__(self, class_counts: Sequence[int] | Tensor, *, tau: float = 1.0) -> None:
        super().__init__(class_counts)
        self.tau = _at_least("tau", tau, 0)
        counts = _positive_counts(_counts(class_counts), "logit_adjust", "it takes log n_c")
        prior = counts.to(torch.float64) / counts.sum()
        self.register_buffer("log_prior", prior.log().float())  # (C,)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor) -> Tensor:
        return logit_adjusted_loss(self._logits(logits), targets, self.log_prior, self.tau)

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}"


# ----------------------------------------------------------------------------- balanced softmax
def balanced_softmax_loss(logits: Tensor, targets: Tensor, log_counts: Tensor) -> Tensor:
    """Balanced Softmax: CE on z + log n (raw counts), batch mean."""
    z = _upcast(logits)
    return F.cross_entropy(z + log_counts.to(z.dtype), targets)


@register("balanced_softmax")
class BalancedSoftmax(LongTailLoss):
    """Balanced Softmax (Ren et al., NeurIPS 2020): CE on z + log n_c with the raw counts.

    Equal counts shift every logit by the same amount, which is plain CE. Predictions use the raw
    logits z. No options.
    """

    shifts_by_log_counts = True

    def __init__(self, class_counts: Sequence[int] | Tensor) -> None:
        super().__init__(class_counts)
        counts = _positive_counts(_counts(class_counts), "balanced_softmax", "it takes log n_c")
        self.register_buffer("log_counts", counts.to(torch.float64).log().float())  # (C,)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor) -> Tensor:
        return balanced_softmax_loss(self._logits(logits), targets, self.log_counts)


# --------------------------------------------------------------------------------------- CDB-CE
def cdb_dynamic_tau(per_class_accuracy: Tensor, rule: str = "shifted_sigmoid") -> Tensor:
    """CDB-CE's dynamic tau from b = max A / (min A + 0.01); 0-dim float64 tensor.

    ``rule``: ``sigmoid`` is tau = sigmoid(b) (the authors' CIFAR-LT and EGTEA code),
    ``shifted_sigmoid`` is tau = 2 * sigmoid(b - 1) (their ImageNet-LT code).
    """
    acc = per_class_accuracy.to(torch.float64)
    bias = acc.max() / (acc.min() + CDB_DYNAMIC_EPS)
    return CDB_TAU_RULES[rule](bias)


# name -> tau as a function of b (0-dim tensors).
CDB_TAU_RULES: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "shifted_sigmoid": lambda b: 2.0 * torch.sigmoid(b - 1.0),
}


def cdb_weights(
    per_class_accuracy: Tensor, tau: float | str, rule: str = "shifted_sigmoid"
) -> tuple[Tensor, Tensor]:
    """CDB weights w_c = d_c^tau rescaled to sum to C, with d_c = max(1 - A_c, 1e-3).

    Args:
        per_class_accuracy: (C,) validation accuracy per class, in [0, 1].
        tau: a number >= 0 or ``"dynamic"``.
        rule: the dynamic-tau rule (a key of :data:`CDB_TAU_RULES`); unused for a number.

    Returns:
        ``(weights, tau_used)``: (C,) float64 weights summing to C, and the 0-dim tau applied.
    """
    acc = per_class_accuracy.to(torch.float64)
    difficulty = (1.0 - acc).clamp_min(CDB_MIN_DIFFICULTY)  # (C,), never 0: see CDBCrossEntropy
    tau_used = cdb_dynamic_tau(acc, rule) if tau == "dynamic" else acc.new_tensor(float(tau))
    # d^tau / sum d^tau as a softmax of tau * log d: no underflow to 0/0 for large tau.
    weights = torch.softmax(tau_used * difficulty.log(), dim=0) * acc.numel()
    return weights, tau_used


def _normalized_batch_mean(per_sample: Tensor, sample_weights: Tensor) -> Tensor:
    """sum_i w_i l_i / sum_i w_i, as ``F.cross_entropy(weight=...)`` reduces."""
    return (sample_weights * per_sample).sum() / sample_weights.sum()


# CDB-CE's batch reductions by name: (per-sample loss (B,), per-sample weight (B,)) -> scalar.
CDB_REDUCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mean": _weighted_batch_mean,
    "normalized": _normalized_batch_mean,
}


def cdb_ce_loss(
    logits: Tensor, targets: Tensor, class_weights: Tensor, reduction: str = "mean"
) -> Tensor:
    """CDB-CE: per-sample weighted CE reduced by ``reduction``.

    ``mean``: sum_i w_{y_i} l_i / B; ``normalized``: sum_i w_{y_i} l_i / sum_i w_{y_i}.
    """
    z = _upcast(logits)
    nll = F.cross_entropy(z, targets, reduction="none")  # (B,)
    return CDB_REDUCTIONS[reduction](nll, class_weights.to(z.dtype)[targets])


def _cdb_tau(value: object) -> float | str:
    if value == "dynamic":
        return "dynamic"
    expected = 'a number >= 0 or "dynamic"'
    tau = _number("tau", value, expected)
    if tau < 0:
        raise _fail("tau", expected, value)
    return tau


@register("cdb_ce")
class CDBCrossEntropy(LongTailLoss):
    """Class-wise Difficulty-Balanced cross-entropy (Sinha, Ohashi, Nakamura, ACCV 2020).

    ``update(A)`` after every epoch, with A_c the accuracy of class c on ``val``, sets the weights:
    difficulty d_c = 1 - A_c, w_c = d_c^tau rescaled so sum_c w_c = C. The loss is CE with
    per-sample weight w_y. Before the first update the weights are all ones (the original starts
    from d_c = 1 for every class).

    tau: a number, or ``dynamic``: b = max A / (min A + 0.01) and ``tau_rule`` picks tau(b):
    ``shifted_sigmoid`` (the default) is 2 * sigmoid(b - 1), the authors' ImageNet-LT code
    (``ImageNet-LT/loss/CDBSoftmaxLoss.py``); ``sigmoid`` is sigmoid(b), their CIFAR-LT and EGTEA
    code (``CIFAR-LT/losses/cdb_loss.py``, ``EGTEA/losses/cdb_loss.py``). With b in [0, 100],
    sigmoid(b) stays in [0.5, 1) (near 1 once b > 3), whereas 2 * sigmoid(b - 1) spans
    [0.54, 2) and keeps growing with the accuracy gap.

    Guards (absent from the original):

    - difficulty floor: d_c = max(1 - A_c, 1e-3). A class measured at 100 % accuracy would get
      weight exactly 0 and not be trained at all the next epoch; the floor keeps a small weight.
      1e-3 lies below the resolution 1 / n_val of any accuracy measured on fewer than 1000 val
      images per class (CDB's CIFAR protocol holds out 25), so it only changes classes at
      exactly 100 %.
    - all classes perfect: every d_c equals the floor, so every weight is 1 (no 0 / 0). The
      normalisation is computed as C * softmax(tau * log d), which cannot divide by zero.

    Reduction (``reduction``): ``mean`` (the default) is sum_i w_{y_i} l_i / B, the mean over the
    batch of the weighted per-sample loss, as in the authors' CIFAR-LT and EGTEA code
    (``reduction='none'`` then ``torch.mean``), the same reduction as ``class_balanced`` here, so
    the two compare on one footing. ``normalized`` is sum_i w_{y_i} l_i / sum_i w_{y_i}, what
    their ImageNet-LT code's ``nn.CrossEntropyLoss(weight=...)`` computes: every batch is
    renormalised, so the weights' overall scale (they sum to C over classes, not over the batch)
    no longer changes the step size.

    Buffers: ``weights`` (C,) and ``tau_used`` (the tau of the last update, for logging); both
    are checkpointed. Before the first update ``tau_used`` is the fixed tau, or for ``dynamic``
    the rule's value at the initial A = 0 (2 * sigmoid(-1) ~ 0.54, or sigmoid(0) = 0.5; the
    weights are ones either way). ``update`` synchronises with the host; ``forward`` does not.

    Options:
        tau: a number >= 0 (numeric strings accepted) or ``"dynamic"``.
        reduction: ``mean`` or ``normalized``.
        tau_rule: ``shifted_sigmoid`` or ``sigmoid`` (read only with ``tau: dynamic``).
    """

    requires_val = True

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        tau: float | str = 1.0,
        reduction: str = "mean",
        tau_rule: str = "shifted_sigmoid",
    ) -> None:
        super().__init__(class_counts)
        self.tau = _cdb_tau(tau)
        self.reduction = _choice("reduction", reduction, tuple(CDB_REDUCTIONS))
        self.tau_rule = _choice("tau_rule", tau_rule, tuple(CDB_TAU_RULES))
        zeros = torch.zeros(self.num_classes)
        weights, tau_used = cdb_weights(zeros, self.tau, self.tau_rule)  # d_c = 1
        self.register_buffer("weights", weights.float())  # (C,) all ones
        self.register_buffer("tau_used", tau_used.float())  # ()

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor) -> Tensor:
        return cdb_ce_loss(self._logits(logits), targets, self.weights, self.reduction)

    def update(self, per_class_accuracy: Tensor) -> None:
        """Recompute the weights from the per-class validation accuracy (C,) in [0, 1]."""
        acc = torch.as_tensor(per_class_accuracy).detach().to(self.weights.device)
        if acc.shape != (self.num_classes,):
            raise ValueError(
                f"per_class_accuracy: expected shape ({self.num_classes},), got {tuple(acc.shape)}"
            )
        acc = acc.to(torch.float64)
        outside = (~((acc >= 0) & (acc <= 1))).nonzero().flatten().tolist()  # host sync; NaN too
        if outside:
            c = outside[0]
            raise ValueError(
                f"per_class_accuracy: expected values in [0, 1], got {acc[c].item()} for class {c}"
            )
        weights, tau_used = cdb_weights(acc, self.tau, self.tau_rule)
        self.weights.copy_(weights)
        self.tau_used.copy_(tau_used)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction}, tau_rule={self.tau_rule}"


# ------------------------------------------------------------------------------------------ FBL
def fbl_alpha(class_counts: Tensor) -> Tensor:
    """alpha_c = (log n_max - log n_c) / (log n_max - log n_min); all zeros if counts are equal."""
    log_counts = class_counts.to(torch.float64).log()
    gap = log_counts.max() - log_counts
    span = gap.max()
    return (gap / span if span > 0 else torch.zeros_like(gap)).float()


def fbl_curriculum(epoch: int, total_epochs: int) -> float:
    """FBL's curriculum factor curr = (epoch / (E - 10))^2, epoch counted from 0.

    For E > 10 this is the original formula, unclamped: curr reaches 1 at epoch E - 10 and keeps
    growing to ((E - 1) / (E - 10))^2 at the last epoch (1.10 for E = 200; large for E close to
    10). For E <= 10 the original divides by zero or a negative number; here the ramp length is
    E - 1 instead (1 when E = 1), so curr reaches exactly 1 at the last epoch.
    """
    if total_epochs > FBL_CURRICULUM_TAIL:
        ramp = total_epochs - FBL_CURRICULUM_TAIL
    else:
        ramp = max(total_epochs - 1, 1)
    return (epoch / ramp) ** 2


def fbl_loss(
    logits: Tensor,
    targets: Tensor,
    features: Tensor,
    alpha: Tensor,
    lam: float,
    curr: float | Tensor,
    eps: float = 1e-12,
) -> Tensor:
    """Feature-Balanced Loss: CE on z'_c = z_c - curr * lam * alpha_c / (||f||_2 + eps)."""
    z = _upcast(logits)
    norms = torch.linalg.vector_norm(_upcast(features).to(z.dtype), dim=1, keepdim=True)  # (B, 1)
    strength = torch.as_tensor(curr, dtype=z.dtype, device=z.device) * lam
    adjusted = z - strength * alpha.to(z.dtype) / (norms + eps)  # (B, C)
    return F.cross_entropy(adjusted, targets)


@register("fbl")
class FeatureBalanced(LongTailLoss):
    """Feature-Balanced Loss (Li, Cheung, Jiang, ICME 2022; juyongjiang/FBL).

    alpha_c = (log n_max - log n_c) / (log n_max - log n_min) (all zeros when every class has the
    same count, where the original divides 0 by 0). During training the logits become
    z'_c = z_c - curr * lam * alpha_c / (||f||_2 + eps), with f the penultimate feature (its
    gradient flows through ||f||, as in the original), and the loss is CE on z'. The adjustment
    exists only in the loss: predictions use the raw logits z.

    ``set_epoch(epoch, E)`` sets the curriculum factor curr (see :func:`fbl_curriculum`), kept in
    the ``curr`` buffer so it is checkpointed; it is 0 before the first call.

    Options:
        lam: strength, >= 0 (60 for CIFAR, 150 for the large datasets in the paper).
        eps: added to the feature norm, > 0.
    """

    def __init__(
        self, class_counts: Sequence[int] | Tensor, *, lam: float = 60.0, eps: float = 1e-12
    ) -> None:
        super().__init__(class_counts)
        self.lam = _at_least("lam", lam, 0)
        self.eps = _positive("eps", eps)
        counts = _positive_counts(_counts(class_counts), "fbl", "it takes log n_c")
        self.register_buffer("alpha", fbl_alpha(counts))  # (C,)
        self.register_buffer("curr", torch.zeros(()))  # ()

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor) -> Tensor:
        z = self._logits(logits)
        return fbl_loss(z, targets, features, self.alpha, self.lam, self.curr, self.eps)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Set curr for epoch ``epoch`` (from 0) of ``total_epochs``."""
        if isinstance(total_epochs, bool) or not isinstance(total_epochs, int) or total_epochs < 1:
            raise _fail("total_epochs", "an integer >= 1", total_epochs)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < total_epochs:
            raise _fail("epoch", f"an integer in [0, {total_epochs})", epoch)
        self.curr.fill_(fbl_curriculum(epoch, total_epochs))

    def extra_repr(self) -> str:
        return f"lam={self.lam:g}, eps={self.eps:g}"
