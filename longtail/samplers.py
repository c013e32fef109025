"""Index samplers for long-tailed training: one registry, one seeded global order per epoch.

A sampler turns the training labels into the order in which one epoch visits the data. Every
sampler here follows the same rules, so that the training loop, distributed training and resuming
never depend on which one is used:

* **Same epoch length.** Every sampler yields ``L = N`` indices per epoch (``N`` = dataset size),
  so the number of steps per epoch, and with it every step-based schedule, is the same whatever
  the sampler. Re-balancing samplers draw with replacement, so within one epoch some images of rare
  classes repeat and some images of frequent classes are skipped. classifier-balancing trains for
  ``N / batch_size`` steps per epoch regardless of its samplers' nominal lengths, which is the same
  rule.
* **One global order, sliced per rank.** The order of epoch ``e`` is drawn from a
  ``torch.Generator`` seeded by a hash of ``(seed, e)`` alone, so every rank computes the same
  global order and takes ``global[rank::world_size]``; the union of one step's per-rank batches is
  a contiguous chunk of the global order. When ``world_size`` does not divide ``L`` the ranks'
  lengths differ by one; the training loop pads the shorter slices
  (``longtail.distributed.equal_slices``) so every rank takes ``ceil(L / world_size)`` indices.
* **Exact resume.** No random state is carried between epochs: ``state_dict`` holds the epoch, and
  a sampler restored at epoch ``k`` yields the same orders as an uninterrupted run, on any
  ``world_size``.

The samplers (``n_c`` = training count of class ``c``; ``C'`` = number of non-empty classes):

``instance``
    A random permutation of ``0..N-1``: every image once per epoch, ``p_c = n_c / N``.
``class_balanced``
    Class-aware sampling (Shen et al., ECCV 2016; the cRT sampler of Kang et al., "Decoupling
    Representation and Classifier for Long-Tailed Recognition", ICLR 2020): ``p_c = 1 / C'``.
    Like facebookresearch/classifier-balancing's ``ClassAwareSampler`` the classes are visited
    round-robin, in a fresh random order for each cycle through the classes, and each visit takes
    ``num_samples_cls`` consecutive images of that class (the published cRT configs use 4). The
    round-robin is kept because it is what the published cRT numbers were trained with: it makes
    every block of ``C' * num_samples_cls`` draws exactly balanced instead of balanced only in
    expectation, and ``num_samples_cls`` decides how many images of one class share a batch.
    The marginal of one draw is still uniform over classes.
``sqrt``
    Square-root sampling (Mahajan et al., ECCV 2018; Kang et al.): classes drawn i.i.d. with
    ``p_c ∝ n_c^(1/2)``.
``progressive``
    Progressively-balanced sampling (Kang et al.): classes drawn i.i.d. with
    ``p_c(t) = (1 - λ_t) n_c / N + λ_t / C'``. The paper writes ``λ_t = t / T``; the reference code
    (``ClassPrioritySampler`` with ``lam: null, cycle: 0``) uses ``np.linspace(0, 1, T)[t]`` for the
    epoch it trains, i.e. ``λ_t = t / (T - 1)`` with ``t = 0..T-1`` counted from 0: the first epoch
    is exactly instance-balanced and the last exactly class-balanced. That is what is done here
    (``T = 1`` gives ``λ = 0``, as ``linspace(0, 1, 1)`` does). ``T`` comes from ``set_epoch``.

Within a class, images are taken in shuffled passes (each image of the class once, then a new
shuffle), as classifier-balancing's ``RandomCycleIter`` does; the passes restart every epoch so an
epoch's order depends on nothing but ``(seed, epoch)``. The marginal of one draw is uniform within
the class, as in the papers; the passes only avoid needless repeats. The reference's square-root
sampler draws images i.i.d., which has the same marginal.

Other modules add samplers with ``register("name")``; ``create`` passes its ``**options`` to the
sampler's constructor. (BALMS's learnable sampler is not one of them: it is part of the BALMS meta
step, ``longtail.modes.balms``, which draws every batch itself.)

Example:
    >>> sampler = create("class_balanced", labels, seed=0, num_samples_cls=4)
    >>> sampler.set_epoch(epoch, total_epochs)
    >>> order = sampler.indices()  # (len(sampler),) int64 indices into the dataset
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import torch

from longtail.registry import Registry

__all__ = [
    "SAMPLERS",
    "ClassBalancedSampler",
    "InstanceSampler",
    "ProgressiveSampler",
    "Sampler",
    "SqrtSampler",
    "create",
    "names",
    "register",
]


class Sampler:
    """Base class: labels, the epoch, the distributed slice and the resume state.

    A subclass implements :meth:`class_probabilities` and :meth:`draw` (the epoch's whole order from
    a generator). One whose order depends on more than ``(seed, epoch, options)`` overrides
    :meth:`global_indices` and the state methods as well.

    Args:
        labels: (N,) int64 class of each training sample, on the CPU.
        seed: non-negative integer; with the epoch it determines the order.
        rank: index of this process among ``world_size``.
        world_size: number of processes that share one global order.
        num_classes: number of classes ``C``; default ``labels.max() + 1``. Classes without
            samples get probability 0.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_classes: int | None = None,
    ) -> None:
        _check_labels(labels)
        _check_int("seed", seed, low=0)
        _check_int("world_size", world_size, low=1)
        _check_int("rank", rank, low=0, high=world_size - 1)
        self.labels = labels
        self.num_classes = _resolve_num_classes(labels, num_classes)
        self.counts = torch.bincount(labels, minlength=self.num_classes)  # (C,) int64
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.total_epochs: int | None = None

    # ---------------------------------------------------------------- epoch and state
    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Select the epoch whose order the next calls return.

        Args:
            epoch: epoch counted from 0.
            total_epochs: number of epochs of the run (``progressive`` reads it).
        """
        _check_int("total_epochs", total_epochs, low=1)
        _check_int("epoch", epoch, low=0, high=total_epochs - 1)
        self.epoch, self.total_epochs = epoch, total_epochs

    def state_dict(self) -> dict:
        """The state to checkpoint: the epoch (the order is derived from seed and epoch)."""
        return {
            "epoch": self.epoch,
            "total_epochs": self.total_epochs,
            "seed": self.seed,
            "num_samples": len(self.labels),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; refuses a state saved for another seed or dataset size."""
        for key in ("seed", "num_samples"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise ValueError(f"sampler state {key}: expected {mine}, got {state.get(key)}")
        if state["total_epochs"] is None:
            self.epoch, self.total_epochs = state["epoch"], None
        else:
            self.set_epoch(state["epoch"], state["total_epochs"])

    # ---------------------------------------------------------------- orders
    def generator(self) -> torch.Generator:
        """A CPU generator seeded from ``(seed, epoch)`` only, fresh on every call."""
        return torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))

    def global_indices(self) -> torch.Tensor:
        """The whole epoch's order: (L,) int64 on the CPU, ``L = N``, identical on every rank."""
        order = self.draw(self.generator())
        assert order.shape == (len(self.labels),) and order.dtype == torch.int64
        return order

    def indices(self) -> torch.Tensor:
        """This rank's share of the epoch: ``global_indices()[rank::world_size]``."""
        return self.global_indices()[self.rank :: self.world_size].contiguous()

    def __len__(self) -> int:
        return len(range(self.rank, len(self.labels), self.world_size))

    # ---------------------------------------------------------------- per sampler
    def class_probabilities(self) -> torch.Tensor:
        """(C,) float64: the probability that one draw of this epoch is of class ``c``."""
        raise NotImplementedError

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """The epoch's order, (N,) int64, drawn from ``generator`` only."""
        raise NotImplementedError


# -------------------------------------------------------------------------------- registry
SAMPLERS: Registry[type[Sampler]] = Registry("finetune.sampler")


def register(name: str) -> Callable[[type[Sampler]], type[Sampler]]:
    """Class decorator that adds a :class:`Sampler` subclass to :data:`SAMPLERS` under ``name``."""

    def add(cls: type[Sampler]) -> type[Sampler]:
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise ValueError(f"sampler {name!r}: expected a Sampler subclass, got {cls!r}")
        return SAMPLERS.add(name, cls)

    return add


def names() -> tuple[str, ...]:
    """The registered sampler names, in registration order."""
    return SAMPLERS.names()


def create(
    name: str,
    labels: torch.Tensor,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    **options: object,
) -> Sampler:
    """Build the sampler registered as ``name``.

    Args:
        name: a key of :data:`SAMPLERS`.
        labels: (N,) int64 training labels on the CPU.
        seed: seed of the run; every rank passes the same one.
        rank: this process's rank.
        world_size: number of processes.
        **options: the sampler's own keyword arguments (``num_classes``, ``num_samples_cls``, ...).

    Raises:
        ValueError: unknown name or an option the sampler does not take.
    """
    cls = SAMPLERS[name]
    _check_options(name, cls, options)
    return cls(labels, seed=seed, rank=rank, world_size=world_size, **options)


def stage_options(name: str, *, samples_per_class: int) -> dict[str, object]:
    """The constructor options of sampler ``name`` that a stage's params set.

    ``samples_per_class`` (``pretrain.`` / ``finetune.samples_per_class``) is the class-aware
    sampler's ``num_samples_cls``; any other sampler takes no such option, so a value other than 1
    for it is refused rather than ignored.

    Raises:
        ValueError: ``samples_per_class`` is not an integer >= 1, or is not 1 for a sampler that
            does not take it.
    """
    _check_int("samples_per_class", samples_per_class, low=1)
    cls = SAMPLERS.loaded().get(name)
    takes = cls is not None and "num_samples_cls" in inspect.signature(cls.__init__).parameters
    if takes:
        return {"num_samples_cls": samples_per_class}
    if samples_per_class != 1:
        raise ValueError(
            f"samples_per_class: expected 1 with sampler {name} (only class_balanced takes "
            f"several consecutive images per class visit); got {samples_per_class}"
        )
    return {}


# -------------------------------------------------------------------------------- samplers
@register("instance")
class InstanceSampler(Sampler):
    """Instance-balanced sampling: a random permutation, every sample once per epoch."""

    def class_probabilities(self) -> torch.Tensor:
        return self.counts.double() / len(self.labels)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(len(self.labels), generator=generator)


class _ClassThenInstance(Sampler):
    """Draws a class for each position, then an image of that class in shuffled passes."""

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        classes = self.class_sequence(generator)  # (N,)
        return _take_within_classes(classes, self.labels, self.counts, generator)

    def class_sequence(self, generator: torch.Generator) -> torch.Tensor:
        """(N,) int64 class of each draw of the epoch."""
        probs = self.class_probabilities()
        return torch.multinomial(probs, len(self.labels), replacement=True, generator=generator)


@register("class_balanced")
class ClassBalancedSampler(_ClassThenInstance):
    """Class-aware sampling: classes round-robin in shuffled cycles, ``num_samples_cls`` per visit.

    Args:
        labels, seed, rank, world_size, num_classes: as for :class:`Sampler`.
        num_samples_cls: consecutive images taken from a class at each visit (classifier-balancing's
            default is 1; its cRT and LWS configs use 4).
    """

    def __init__(
        self,
        labels: torch.Tensor,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_classes: int | None = None,
        num_samples_cls: int = 1,
    ) -> None:
        super().__init__(
            labels, seed=seed, rank=rank, world_size=world_size, num_classes=num_classes
        )
        _check_int("num_samples_cls", num_samples_cls, low=1)
        self.num_samples_cls = num_samples_cls

    def class_probabilities(self) -> torch.Tensor:
        present = (self.counts > 0).double()
        return present / present.sum()

    def class_sequence(self, generator: torch.Generator) -> torch.Tensor:
        present = torch.nonzero(self.counts).flatten()  # (C',) classes with samples
        visits = math.ceil(len(self.labels) / self.num_samples_cls)
        cycles = math.ceil(visits / len(present))
        # One fresh random order of the classes per cycle: (cycles, C') -> visits.
        orders = torch.argsort(torch.rand(cycles, len(present), generator=generator), dim=1)
        visited = present[orders].flatten()[:visits]
        # Each visit takes num_samples_cls consecutive draws of its class.
        per_draw = visited[:, None].expand(visits, self.num_samples_cls).flatten()
        return per_draw[: len(self.labels)]


@register("sqrt")
class SqrtSampler(_ClassThenInstance):
    """Square-root sampling: classes i.i.d. with ``p_c ∝ sqrt(n_c)``."""

    def class_probabilities(self) -> torch.Tensor:
        root = self.counts.double().sqrt()
        return root / root.sum()


@register("progressive")
class ProgressiveSampler(_ClassThenInstance):
    """Progressively-balanced sampling: instance- to class-balanced, linearly over the epochs."""

    def balance(self) -> float:
        """``λ_t = t / (T - 1)``: 0 in the first epoch, 1 in the last (``T = 1``: 0)."""
        if self.total_epochs is None:
            raise ValueError(
                "progressive sampler: expected set_epoch(epoch, total_epochs) before drawing, "
                "got no total_epochs"
            )
        return self.epoch / (self.total_epochs - 1) if self.total_epochs > 1 else 0.0

    def class_probabilities(self) -> torch.Tensor:
        lam = self.balance()
        counts = self.counts.double()
        instance = counts / counts.sum()
        present = (counts > 0).double()
        return (1.0 - lam) * instance + lam * present / present.sum()


# -------------------------------------------------------------------------------- helpers
def _take_within_classes(
    classes: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Map each drawn class to an image of it, each class read in shuffled passes.

    The k-th draw of class c (in order of position) takes element k of c's stream, the
    concatenation of independent random permutations of c's images. All streams are built at
    once: every (class, pass) segment gets random keys offset by its segment number, so one sort
    shuffles inside each segment and keeps the segments in place.

    Args:
        classes: (L,) class of each draw; only classes with ``counts > 0``.
        labels: (N,) class of each image.
        counts: (C,) images per class.
        generator: source of the shuffles.

    Returns:
        (L,) int64 image index of each draw.
    """
    num_classes = len(counts)
    members = torch.argsort(labels, stable=True)  # (N,) images grouped by class
    member_start = torch.cumsum(counts, 0) - counts  # (C,)
    draws = torch.bincount(classes, minlength=num_classes)  # (C,)
    assert bool((counts[draws > 0] > 0).all()), "drew a class without images"
    passes = torch.where(draws > 0, _ceil_div(draws, counts.clamp(min=1)), 0)  # (C,)
    slots = passes * counts  # (C,) stream length of each class
    slot_end = torch.cumsum(slots, 0)
    slot_start = slot_end - slots
    pass_start = torch.cumsum(passes, 0) - passes
    # Every slot's class, and its pass and member position within that class. (searchsorted, not
    # repeat_interleave: the latter costs milliseconds on a busy CPU.)
    total = int(slot_end[-1])
    slot_class = torch.searchsorted(slot_end, torch.arange(total), right=True)  # (S,)
    local = torch.arange(total) - slot_start[slot_class]  # (S,)
    slot_counts = counts[slot_class]
    segment = pass_start[slot_class] + local // slot_counts  # (S,) global (class, pass) number
    keys = segment.double() + torch.rand(len(segment), generator=generator, dtype=torch.float64)
    stream = (local % slot_counts)[torch.argsort(keys)]  # (S,) member position, shuffled per pass
    occurrence = _occurrence(classes)  # (L,) k for the k-th draw of its class
    picked = stream[slot_start[classes] + occurrence]
    return members[member_start[classes] + picked]


def _occurrence(values: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same value: (L,) int64."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    first = torch.searchsorted(sorted_values, sorted_values, right=False)
    occurrence = torch.empty_like(values)
    occurrence[order] = torch.arange(len(values)) - first
    return occurrence


def _ceil_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that hashes ``(seed, epoch)`` (numpy's SeedSequence), no other input."""
    words = np.random.SeedSequence((seed, epoch)).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _resolve_num_classes(labels: torch.Tensor, num_classes: int | None) -> int:
    observed = int(labels.max()) + 1
    if num_classes is None:
        return observed
    _check_int("num_classes", num_classes, low=observed)
    return num_classes


def _check_labels(labels: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        got = (
            f"{labels.dtype} of shape {tuple(labels.shape)}" if torch.is_tensor(labels) else labels
        )
        raise ValueError(f"labels: expected a 1-D int64 tensor, got {got}")
    if labels.device.type != "cpu":
        raise ValueError(f"labels: expected a CPU tensor, got one on {labels.device}")
    if len(labels) == 0:
        raise ValueError("labels: expected at least one sample, got 0")
    if int(labels.min()) < 0:
        raise ValueError(f"labels: expected classes >= 0, got {int(labels.min())}")


def _check_int(name: str, value: object, *, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name}: expected {allowed}, got {value!r}")


def _check_options(name: str, cls: type[Sampler], options: dict) -> None:
    """Refuse options the sampler's constructor does not take, naming the ones it does."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    fixed = {"self", "labels", "seed", "rank", "world_size"}
    accepted = [p for p in params if p not in fixed]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"sampler {name}: expected options among {', '.join(accepted) or '(none)'}; "
            f"got {', '.join(unknown)}"
        )
