"""The BALMS meta step: a class-level sampling distribution learned on a meta set during retraining.

Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020; the method
as jiawei-ren/BalancedMetaSoftmax-Classification implements it (``data/MetaSampler.py`` and
``meta_forward`` in ``run_networks.py``), written here with ``torch.func.functional_call`` instead
of the ``higher`` library.

The sampler holds one learnable logit ``w_c`` per class. An image of class ``y`` is drawn with
probability ∝ ``sigmoid(w_y)``, so one draw is of class ``c`` with probability
``n_c sigmoid(w_c) / Σ_k n_k sigmoid(w_k)``. The logits start at ``sigmoid(w_c) = π_c^(-p) /
(min π^(-p) + max π^(-p))`` (``π`` the training class frequencies, ``p = init_pow``): ``p = 0`` is
instance-balanced sampling, ``p = 1`` class-balanced.

BALMS is a step strategy, not a sampler: a plan of ``finetune.mode: classifier`` with
``finetune.sampler: meta`` carries a :class:`MetaStep`, which builds the learnable sampler for the
loop and wraps the loop's training source in a :class:`MetaSource` once the optimiser exists.

One training step of the classifier with the meta sampler (:class:`MetaSource` runs it):

1. draw the batch by a hard Gumbel-softmax over the ``N`` training images with logits
   ``log sigmoid(w_y)`` (temperature 1): the sampled image of row ``b`` is the argmax of
   ``log sigmoid(w_y) + Gumbel noise``, and its straight-through weight ``u_b`` is 1 in the forward
   pass with the gradient of the soft sample at that image;
2. take one differentiable SGD step of the classifier on ``mean_b u_b l_b`` (``l_b`` the
   per-image Balanced Softmax loss), with the learning rate, momentum buffer, weight decay and
   Nesterov flag of the classifier's own optimiser at that moment (what ``higher``'s
   differentiable SGD copies from it in the reference);
3. score the stepped classifier with plain cross-entropy on a class-balanced meta batch of the meta
   set (``finetune.meta_source``: ``val``, or ``train``; never ``test``) and update ``w`` with Adam
   (``lr = finetune.meta_lr``);
4. hand the batch to the training loop, which takes the ordinary classifier step on it.

The meta set: the reference's ``main.py`` builds it from ``train`` for CIFAR and from ``val`` for
ImageNet-LT and Places-LT (its CIFAR ``val`` is the test set); ``finetune.meta_source`` chooses
(:data:`META_SOURCES`), and the BALMS CIFAR recipes use ``train``, with no val hold-out, so they
train on the published 9,502 / 11,203 images of CIFAR-100/10-LT IF 200.

Meta batches are unaugmented (the frozen-backbone features of the images) by default; the
reference loads its CIFAR meta set with the training phase's loader, so it augments them, which
``finetune.meta_augment: true`` does (the BALMS CIFAR recipes set it). Differences from the
reference, on purpose: every batch is drawn from the current logits (the reference's DataLoader
prefetches batch indices a few steps ahead); class-balanced meta batches are drawn from the step's
generator (each class ``floor`` or ``ceil(M / C)`` times, images uniform within a class) instead
of an endless round-robin iterator, so resuming needs no iterator state.

Several processes (docs/scale-out.md): each rank draws its share of the step's batch (the
training loop's per-rank batch) and its share (``M / world_size``, class-balanced) of the meta
batch from its own generator. The inner step uses the gradient summed over ranks (a differentiable
all-reduce; each rank's inner loss is its share of the global batch mean), the meta loss is each
rank's share of the global meta mean, and the class logits' gradients are summed before Adam. So
the meta gradient is that of one process holding the global batch and meta batch, every rank takes
the same Adam step, and the logits stay identical on every rank without a broadcast.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from longtail.data.base import Source
from longtail.distributed import World
from longtail.samplers import Sampler

__all__ = [
    "META_SOURCES",
    "MetaSampler",
    "MetaSource",
    "MetaStep",
    "balanced_batch",
    "gumbel_noise",
    "initial_logits",
    "meta_loss",
    "sgd_step",
    "straight_through_draw",
]


# Where the meta batches come from (``finetune.meta_source``): a trainer's source by name.
META_SOURCES: dict[str, Callable[[Any], Source]] = {
    "val": lambda trainer: trainer.val_source,
    "train": lambda trainer: _train_meta_set(trainer),
}


def _train_meta_set(trainer: Any) -> Source:
    """``train`` as the meta set: the training source, or under ``data.draws: per_phase`` the meta
    phase's own draw (``trainer.meta_draw``, set by the stage) behind the same wrappers."""
    draw = getattr(trainer, "meta_draw", None)
    return trainer.train_source if draw is None else _rewrapped(trainer.train_source, draw)


def _rewrapped(wrapper: Any, inner: Source) -> Source:
    """A copy of a chain of source wrappers (frozen features, ...) around another ``inner``."""
    if not hasattr(wrapper, "source"):
        return inner
    view = copy.copy(wrapper)
    view.source = _rewrapped(wrapper.source, inner)
    view.labels = view.source.labels
    if hasattr(view, "_cache"):
        view._cache = None  # features of the wrapped images, computed again for the new ones
    return view


def meta_set(name: str, trainer: Any) -> Source:
    """The meta set ``name`` of ``trainer`` (``val`` or ``train``; ``test`` is never one)."""
    if name not in META_SOURCES:
        raise ValueError(
            f"finetune.meta_source: expected one of {', '.join(META_SOURCES)}; got {name!r}"
        )
    return META_SOURCES[name](trainer)


# ------------------------------------------------------------------------------------- the math
def initial_logits(counts: Tensor, init_pow: float) -> Tensor:
    """BALMS's start: ``sigmoid(w_c) = π_c^(-p) / (min + max of π^(-p))``, in (0, 1); (C,) float32.

    Classes without images are never drawn; their logit is 0.
    """
    present = counts > 0
    prior = counts.double() / counts.sum()
    inverse = prior.clamp_min(torch.finfo(torch.float64).tiny).pow(-init_pow)  # (C,)
    scaled = inverse / (inverse[present].min() + inverse[present].max())
    return torch.where(present, torch.logit(scaled), 0.0).float()


def gumbel_noise(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """(rows, cols) standard Gumbel noise ``-log E``, ``E ~ Exp(1)``, on the generator's device."""
    e = torch.empty(rows, cols, device=generator.device).exponential_(generator=generator)
    return -e.clamp_min(torch.finfo(e.dtype).tiny).log()


def straight_through_draw(logits: Tensor, labels: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """One image per row of ``noise`` by a hard Gumbel-softmax over the images.

    Args:
        logits: (C,) class logits ``w``.
        labels: (N,) class of each image, on the logits' device.
        noise: (B, N) Gumbel noise.

    Returns:
        ``(indices (B,) int64, weights (B,))``: the drawn images and their straight-through
        weights, exactly 1 in value, with the gradient of the soft sample at the drawn image.
    """
    per_image = F.logsigmoid(logits).gather(0, labels)  # (N,) log sigmoid(w_y)
    noise = noise.to(per_image.dtype)
    scores = per_image.unsqueeze(0) + noise  # (B, N)
    indices = scores.argmax(dim=1)  # (B,) the Gumbel-max sample
    # The soft sample at the drawn image, softmax(scores)[b, i_b], without a (B, N) one-hot; the
    # gathers are 1-D or of the noise (no gradient), deterministic on CUDA.
    drawn = per_image.gather(0, indices) + noise.gather(1, indices[:, None]).squeeze(1)  # (B,)
    picked = (drawn - scores.logsumexp(dim=1)).exp()  # (B,)
    return indices, picked - picked.detach() + 1.0


def balanced_batch(labels: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Indices of a class-balanced batch of ``labels``: every class ``floor`` or ``ceil(size/C')``.

    Classes are taken in a random order (fresh for each round through the ``C'`` non-empty
    classes), images uniformly within their class.

    Args:
        labels: (M,) int64 classes of the meta set.
        size: batch size.
        generator: source of the draws; the indices are on its device.

    Returns:
        (size,) int64 indices into ``labels``.
    """
    device = generator.device
    labels = labels.to(device)
    counts = torch.bincount(labels)  # (C,)
    present = torch.nonzero(counts).flatten()  # (C',)
    rounds = math.ceil(size / len(present))
    keys = torch.rand(rounds, len(present), generator=generator, device=device)
    classes = present[keys.argsort(dim=1)].flatten()[:size]  # (size,)
    members = torch.argsort(labels, stable=True)  # images grouped by class
    start = torch.cumsum(counts, 0) - counts
    within = torch.rand(size, generator=generator, device=device, dtype=torch.float64)
    offset = (within * counts[classes]).long().clamp(max=counts[classes] - 1)
    return members[start[classes] + offset]


def sgd_step(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor | None],
    hyper: Mapping[str, Mapping[str, float]],
) -> dict[str, Tensor]:
    """One differentiable step of ``torch.optim.SGD`` (weight decay, momentum, dampening, Nesterov).

    Args:
        params: tensors by name; those missing from ``grads`` are returned unchanged.
        grads: gradients by name (with their graph, for a second-order step).
        buffers: the optimiser's momentum buffer of each parameter (None before its first step).
        hyper: each parameter's ``lr``, ``momentum``, ``dampening``, ``weight_decay``,
            ``nesterov``.

    Returns:
        The stepped tensors by name.
    """
    stepped = dict(params)
    for name, grad in grads.items():
        p, h = params[name], hyper[name]
        d = grad + h["weight_decay"] * p if h["weight_decay"] else grad
        if h["momentum"]:
            buf = buffers.get(name)
            buf = d if buf is None else h["momentum"] * buf + (1 - h["dampening"]) * d
            d = d + h["momentum"] * buf if h["nesterov"] else buf
        stepped[name] = p - h["lr"] * d
    return stepped


def meta_loss(
    head: nn.Module,
    params: Mapping[str, Tensor],
    batch: tuple[Tensor, Tensor],
    weights: Tensor,
    meta_batch: tuple[Tensor, Tensor],
    *,
    shift: Tensor,
    buffers: Mapping[str, Tensor | None],
    hyper: Mapping[str, Mapping[str, float]],
    batch_share: float = 1.0,
    meta_share: float = 1.0,
    sum_over_ranks: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """CE on ``meta_batch`` of ``head`` after one SGD step on the ``weights``-weighted ``batch``.

    Args:
        head: the classifier, ``head(x) -> (logits, features)``.
        params: its parameters by name; those in ``hyper`` are stepped.
        batch: ``(x (B, ...), y (B,))`` of the training batch (this rank's share).
        weights: (B,) straight-through sample weights (the path to the class logits).
        meta_batch: ``(x (M, ...), y (M,))`` drawn from ``val`` (this rank's share).
        shift: (C,) added to the logits in the inner loss (``log n_c`` for Balanced Softmax).
        buffers, hyper: the optimiser's state and hyperparameters, as for :func:`sgd_step`.
        batch_share, meta_share: this rank's fraction of the global batch and meta batch (1 in
            one process): the means are scaled by them, so their sums over ranks are the global
            means.
        sum_over_ranks: a differentiable sum over processes of the inner gradient (None: one
            process).

    Returns:
        The scalar meta loss (this rank's share of it), differentiable in ``weights``.
    """
    x, y = batch
    logits, _ = functional_call(head, dict(params), (x,))
    logits = _upcast(logits)
    per_sample = F.cross_entropy(logits + shift.to(logits.dtype), y, reduction="none")  # (B,)
    inner = (weights * per_sample).mean() * batch_share
    names = list(hyper)
    grads = torch.autograd.grad(inner, [params[n] for n in names], create_graph=True)
    if sum_over_ranks is not None:
        grads = _summed(list(grads), sum_over_ranks)
    stepped = sgd_step(params, dict(zip(names, grads, strict=True)), buffers, hyper)
    meta_logits, _ = functional_call(head, stepped, (meta_batch[0],))
    return F.cross_entropy(_upcast(meta_logits), meta_batch[1]) * meta_share


def _summed(tensors: list[Tensor], sum_over_ranks: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """``sum_over_ranks`` of several tensors in one collective (flattened, then split back)."""
    flat = sum_over_ranks(torch.cat([t.reshape(-1) for t in tensors]))
    parts = flat.split([t.numel() for t in tensors])
    return [p.view_as(t) for p, t in zip(parts, tensors, strict=True)]


def _upcast(x: Tensor) -> Tensor:
    """bfloat16/float16 -> float32 (the meta step runs in float32; float64 stays, for tests)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ---------------------------------------------------------------------------------- the sampler
class MetaSampler(Sampler):
    """BALMS's learnable sampler; :class:`MetaSource` draws the batches and runs the meta step.

    On its own it is the sampler of its current logits: :meth:`global_indices` draws the epoch's
    ``N`` images i.i.d. with probability ∝ ``sigmoid(w_y)`` from the ``(seed, epoch)`` generator, as
    every sampler does. In training the logits change after every step, so :class:`MetaSource`
    redraws each batch from the live logits and uses the loop's order only for the number and size
    of the batches; :meth:`indices` refuses to run until a :class:`MetaSource` is attached, so the
    sampler cannot be used where no meta step drives it (``pretrain``, ``finetune.mode: full``).

    Args:
        labels, seed, rank, world_size, num_classes: as for :class:`~longtail.samplers.Sampler`.
        init_pow: ``p`` of the initialisation ``sigmoid(w_c) ∝ π_c^(-p)``, >= 0.
        lr: Adam learning rate of the logits, > 0.
    """

    def __init__(
        self,
        labels: Tensor,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_classes: int | None = None,
        init_pow: float = 0.0,
        lr: float = 0.01,
    ) -> None:
        super().__init__(
            labels, seed=seed, rank=rank, world_size=world_size, num_classes=num_classes
        )
        if isinstance(init_pow, bool) or not isinstance(init_pow, (int, float)) or init_pow < 0:
            raise ValueError(f"meta_init_pow: expected a number >= 0, got {init_pow!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"meta_lr: expected a number > 0, got {lr!r}")
        self.init_pow, self.lr = float(init_pow), float(lr)
        self.logits = nn.Parameter(initial_logits(self.counts, self.init_pow))  # (C,)
        self.optimizer = torch.optim.Adam([self.logits], lr=self.lr)
        self.history: dict[int, list[float]] = {}  # epoch -> logits at the start of the epoch
        self.attached = False

    def to(self, device: torch.device) -> MetaSampler:
        """Move the logits (and with them Adam's state, created at its first step) to ``device``."""
        self.logits.data = self.logits.data.to(device)
        return self

    # ---------------------------------------------------------------- distribution
    def sigmoid_weights(self) -> Tensor:
        """(C,) float64 ``sigmoid(w_c)``: the unnormalised per-image rate that BALMS prints."""
        return torch.sigmoid(self.logits.detach().double().cpu())  # host sync

    def class_probabilities(self) -> Tensor:
        mass = self.counts.double() * self.sigmoid_weights()
        return mass / mass.sum()

    def draw(self, generator: torch.Generator) -> Tensor:
        per_image = self.sigmoid_weights()[self.labels]  # (N,)
        return torch.multinomial(per_image, len(self.labels), replacement=True, generator=generator)

    def draw_batch(self, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``size`` images drawn from the live logits: ``(indices, straight-through weights)``."""
        labels = self.labels.to(self.logits.device)
        noise = gumbel_noise(size, len(labels), generator).to(self.logits.device)
        return straight_through_draw(self.logits, labels, noise)

    def apply_gradient(self, grad: Tensor) -> None:
        """One Adam step of the logits with the meta gradient ``grad`` (C,)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = grad.detach().to(self.logits.dtype)
        self.optimizer.step()

    # ---------------------------------------------------------------- epochs and state
    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        super().set_epoch(epoch, total_epochs)
        # A resumed epoch keeps the logits recorded when it first started.
        self.history.setdefault(epoch, self.logits.detach().cpu().tolist())

    def indices(self) -> Tensor:
        if not self.attached:
            raise ValueError(
                "sampler meta: expected to be driven by the BALMS meta step (finetune.mode: "
                "classifier with finetune.sampler: meta), got a training loop without it"
            )
        return super().indices()

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "logits": self.logits.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "history": {int(k): list(v) for k, v in self.history.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = {int(k): list(v) for k, v in state["history"].items()}

    def rate_rows(self, class_names: list[str] | None = None) -> list[dict[str, object]]:
        """Per epoch and class: ``sigmoid(w_c)`` and the class probability of one draw.

        Epoch ``e`` is the start of epoch ``e``; the last epoch number is the end of training.
        """
        snapshots = dict(self.history)
        snapshots[max(snapshots, default=-1) + 1] = self.logits.detach().cpu().tolist()
        counts = self.counts.double()
        rows = []
        for epoch, logits in sorted(snapshots.items()):
            weights = torch.sigmoid(torch.tensor(logits, dtype=torch.float64))
            probs = counts * weights / (counts * weights).sum()
            for c in range(self.num_classes):
                rows.append(
                    {
                        "epoch": epoch,
                        "class": class_names[c] if class_names else c,
                        "train_count": int(self.counts[c]),
                        "sigmoid": round(float(weights[c]), 6),
                        "class_prob": round(float(probs[c]), 6),
                    }
                )
        return rows


# ------------------------------------------------------------------------------ the meta step
class MetaSource:
    """Training batches drawn by a :class:`MetaSampler`, each after one BALMS meta update.

    It wraps the training source the loop reads (usually frozen-backbone features) and is what the
    loop receives as its ``train_source``: for each chunk of the loop's order it draws that many
    images from the live logits, runs the meta update on them (module docstring, steps 1-3) and
    yields them; the loop then takes the ordinary classifier step. Evaluation batches
    (``train=False``) pass through unchanged.

    Args:
        train: source of the training images (or their features).
        meta: source of the meta set (``finetune.meta_source``: ``val`` or ``train``).
        sampler: the meta sampler of the run.
        head: the classifier the loop trains, ``head(x) -> (logits, features)``.
        optimizer: the loop's optimiser of ``head`` (its current lr, momentum buffers, weight
            decay define the differentiable step).
        shift: (C,) added to the logits of the inner loss (``log n_c``: Balanced Softmax; 0: CE).
        meta_batch_size: images per meta batch, over all ranks (each draws ``M / world_size``).
        world: the processes training together (one by default); ``sampler`` is built for it.
        meta_split: the name of the meta set's split, for messages.
        meta_augment: draw meta batches with the training augmentation (``train=True``), as the
            reference's CIFAR meta loader; else unaugmented.
        features: maps a batch of ``train`` / ``meta`` to what ``head`` reads (the features of
            a train-mode backbone, without a graph: ``finetune.backbone_bn: train``); None: the
            sources already hold what ``head`` reads.
    """

    def __init__(
        self,
        train: Source,
        meta: Source,
        sampler: MetaSampler,
        head: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        shift: Tensor,
        meta_batch_size: int,
        world: World | None = None,
        meta_split: str = "val",
        meta_augment: bool = False,
        features: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        world = world or World()
        if (sampler.rank, sampler.world_size) != (world.rank, world.size):
            expected = (
                f"rank {world.rank} of world_size {world.size}"
                if world.active
                else "a single process (world_size 1)"
            )
            raise ValueError(
                f"sampler meta: expected {expected} as in the process group, got a sampler for "
                f"rank {sampler.rank} of world_size {sampler.world_size}"
            )
        if meta_batch_size < world.size:
            raise ValueError(
                f"finetune.meta_batch_size: expected at least one meta image per process "
                f"(>= {world.size}), got {meta_batch_size}"
            )
        if len(meta) == 0:
            hint = (
                "set data.val_per_class > 0, or finetune.meta_source: train"
                if meta_split == "val"
                else "the training split is empty"
            )
            raise ValueError(
                f"sampler meta: expected a non-empty {meta_split} split for the meta set "
                f"(finetune.meta_source: {meta_split}; {hint}), got 0 samples"
            )
        self.train, self.meta, self.sampler = train, meta, sampler
        self.head, self.optimizer = head, optimizer
        self.shift, self.meta_batch_size, self.world = shift, meta_batch_size, world
        self.meta_augment, self.features = meta_augment, features
        # This rank's share of every meta batch (the shares add up to meta_batch_size).
        self.meta_share = len(range(world.rank, meta_batch_size, world.size))
        self.labels, self.in_channels = train.labels, train.in_channels
        self.last_meta_loss: Tensor | None = None
        sampler.to(next(head.parameters()).device)
        sampler.attached = True

    def __len__(self) -> int:
        return len(self.train)

    def batches(
        self, order: Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        if not train:
            yield from self.train.batches(order, batch_size, train=False, generator=generator)
            return
        for chunk in order.split(batch_size):  # the loop's order fixes only the batch sizes
            indices, weights = self.sampler.draw_batch(len(chunk), generator)
            x, y = _one_batch(self.train, indices, train=True, generator=generator)
            self.update((x, y), weights, generator)
            yield x, y

    def update(
        self, batch: tuple[Tensor, Tensor], weights: Tensor, generator: torch.Generator
    ) -> None:
        """Steps 2-3: the meta loss of the stepped classifier, then Adam on the class logits.

        With several processes every rank calls this at the same step (it holds collectives);
        ``batch`` is this rank's share of the step's batch, all shares of one size.
        """
        meta_idx = balanced_batch(self.meta.labels, self.meta_share, generator)
        meta_batch = _one_batch(self.meta, meta_idx, train=self.meta_augment, generator=generator)
        if self.features is not None:  # the inner batch, then the meta batch, as the reference
            batch = (self.features(batch[0]), batch[1])
            meta_batch = (self.features(meta_batch[0]), meta_batch[1])
        buffers, hyper = self._optimizer_state()
        params = {n: p.detach().requires_grad_(n in hyper) for n, p in self.head.named_parameters()}
        active = self.world.active
        with torch.enable_grad():
            loss = meta_loss(
                self.head,
                params,
                batch,
                weights,
                meta_batch,
                shift=self.shift,
                buffers=buffers,
                hyper=hyper,
                batch_share=1.0 / self.world.size,
                meta_share=self.meta_share / self.meta_batch_size,
                sum_over_ranks=self.world.all_reduce_autograd if active else None,
            )
            (grad,) = torch.autograd.grad(loss, [self.sampler.logits])
        self.sampler.apply_gradient(self.world.all_reduce(grad))  # the same step on every rank
        self.last_meta_loss = loss.detach()

    def _optimizer_state(self) -> tuple[dict[str, Tensor | None], dict[str, dict[str, float]]]:
        """Momentum buffers and hyperparameters of the head's parameters the optimiser holds."""
        groups = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        buffers, hyper = {}, {}
        for name, p in self.head.named_parameters():
            if id(p) not in groups:
                continue
            g = groups[id(p)]
            keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
            hyper[name] = {k: g[k] for k in keys}
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            buffers[name] = None if buf is None else buf.detach()
        return buffers, hyper


def _one_batch(
    source: Source, indices: Tensor, *, train: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The single batch of ``source`` at ``indices``."""
    (batch,) = list(source.batches(indices, max(len(indices), 1), train=train, generator=generator))
    return batch


# ------------------------------------------------------------------------------ the strategy
class MetaStep:
    """The BALMS step strategy a plan carries: the learnable sampler plus the meta update.

    The loop asks it for the sampler (:meth:`sampler`) instead of the sampler registry, and hands
    it the built trainer (:meth:`attach`), whose training source it wraps in a :class:`MetaSource`
    over the trainer's own model and optimiser. The meta step differentiates through the trained
    module: the classifier over frozen features (``finetune.backbone_bn: frozen``) or the frozen
    backbone plus classifier in train mode (``train``): then the features carry no graph (no
    backbone parameter takes a gradient), and every backbone pass, the inner batch's, the meta
    batch's and the ordinary step's, updates BatchNorm's running statistics, as the reference's
    ``meta_forward`` and ``batch_forward`` do with every network in train mode
    (BalancedMetaSoftmax-Classification ``run_networks.py``).

    Args:
        init_pow, lr: of the :class:`MetaSampler`.
        shift: (C,) added to the logits of the inner loss (``log n_c`` for Balanced Softmax).
        meta_batch_size: images per meta batch, over all ranks.
        meta_source: the meta set's split (:data:`META_SOURCES`).
        meta_augment: meta batches drawn with the training augmentation.
    """

    def __init__(
        self,
        *,
        init_pow: float,
        lr: float,
        shift: Tensor,
        meta_batch_size: int,
        meta_source: str,
        meta_augment: bool,
    ) -> None:
        self.init_pow, self.lr, self.shift = init_pow, lr, shift
        self.meta_batch_size, self.meta_source = meta_batch_size, meta_source
        self.meta_augment = meta_augment
        self.driver: MetaSampler | None = None

    def sampler(
        self, labels: Tensor, *, seed: int, rank: int, world_size: int, num_classes: int
    ) -> MetaSampler:
        """The learnable sampler of the run (kept for the report)."""
        self.driver = MetaSampler(
            labels,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_classes=num_classes,
            init_pow=self.init_pow,
            lr=self.lr,
        )
        return self.driver

    def attach(self, trainer: Any) -> None:
        """Wrap the trainer's training source in the meta step (after its sources are final).

        A trained module with a ``head`` and ``features`` (a head on a train-mode backbone,
        ``longtail.decouple.OnBackbone``) has the meta step differentiate through its head on
        the backbone's detached features; any other is the head itself.
        """
        net = trainer.model
        trainer.train_source = MetaSource(
            trainer.train_source,
            meta_set(self.meta_source, trainer),
            trainer.sampler,
            getattr(net, "head", net),
            trainer.optimizer,
            features=getattr(net, "features", None),
            shift=self.shift.to(trainer.device),
            meta_batch_size=self.meta_batch_size,
            world=trainer.world,
            meta_split=self.meta_source,
            meta_augment=self.meta_augment,
        )
