"""Tests of longtail.meta, the BALMS meta sampler: initialisation, draws, the meta gradient.

Statistical checks use fixed seeds and a generous threshold (p > 1e-3), so they are deterministic;
the gradient checks are finite differences in float64.
"""

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from longtail import samplers
from longtail.decouple import FeatureHead
from longtail.meta import (
    MetaSampler,
    MetaSource,
    balanced_batch,
    gumbel_noise,
    initial_logits,
    meta_loss,
    sgd_step,
    straight_through_draw,
)

COUNTS = (40, 20, 10, 5, 0, 1)  # a long tail down to one image, and class 4 empty
P_VALUE = 1e-3


def make_labels(counts: tuple[int, ...] = COUNTS) -> torch.Tensor:
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def make(labels: torch.Tensor | None = None, **kw: object) -> MetaSampler:
    sampler = MetaSampler(make_labels() if labels is None else labels, seed=0, **kw)
    assert isinstance(sampler, MetaSampler)
    return sampler


class ListSource:
    """A source of fixed feature rows that records every request (indices and ``train``)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels, self.in_channels = features, labels, features.shape[1]
        self.requests: list[tuple[torch.Tensor, bool]] = []

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order, batch_size, *, train, generator):
        for idx in order.split(batch_size):
            self.requests.append((idx.clone(), train))
            yield self.features[idx], self.labels[idx]


def meta_setup(world_size: int = 1, val_size: int = 18, lr: float = 0.01):
    """A meta source over 76 training rows (COUNTS) and a val set of 3 rows per class."""
    gen = torch.Generator().manual_seed(1)
    labels = make_labels()
    train = ListSource(torch.randn(len(labels), 3, generator=gen), labels)
    val_labels = torch.arange(6).repeat(3)[:val_size]
    val = ListSource(torch.randn(len(val_labels), 3, generator=gen), val_labels)
    sampler = MetaSampler(labels, seed=0, world_size=world_size, lr=lr)
    with torch.random.fork_rng():  # the head's initial weights, the same in every test process
        torch.manual_seed(0)
        head = FeatureHead(nn.Linear(3, 6))
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    source = MetaSource(
        train, val, sampler, head, optimizer, shift=torch.zeros(6), meta_batch_size=12
    )
    return source, train, val, sampler


# ------------------------------------------------------------------------------ registry, options
def test_meta_is_a_step_strategy_not_a_sampler_and_takes_its_options() -> None:
    from longtail.modes import classifier

    assert "meta" not in samplers.names() and "meta" in classifier.STEPS
    sampler = make(init_pow=0.5, lr=0.001)
    assert (sampler.init_pow, sampler.lr) == (0.5, 0.001)
    assert sampler.optimizer.param_groups[0]["lr"] == 0.001


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"init_pow": -1}, "meta_init_pow: expected a number >= 0, got -1"),
        ({"lr": 0}, "meta_lr: expected a number > 0, got 0"),
    ],
)
def test_bad_options_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(**kw)


# ------------------------------------------------------------------------------ the distribution
def test_initialisation_follows_the_power_of_the_prior() -> None:
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    present = counts > 0
    prior = counts / counts.sum()
    for p in (0.0, 0.5, 1.0):
        weights = torch.sigmoid(initial_logits(torch.tensor(COUNTS), p).double())
        inverse = prior[present] ** -p
        expected = inverse / (inverse.min() + inverse.max())  # BALMS: scaled into (0, 1)
        assert torch.allclose(weights[present], expected, rtol=1e-6)
    # p = 0: instance-balanced (n_c / N); p = 1: class-balanced (1 / C' over the 5 present classes).
    assert torch.allclose(make(init_pow=0.0).class_probabilities(), prior)
    uniform = present.double() / present.sum()
    assert torch.allclose(make(init_pow=1.0).class_probabilities(), uniform, rtol=1e-6)


def test_class_frequencies_of_epoch_orders_match_probabilities() -> None:
    """χ² of the classes of 200 epochs' orders against the sampler's class probabilities."""
    labels = make_labels()
    sampler = make(labels, init_pow=0.5)
    observed = torch.zeros(len(COUNTS))
    for epoch in range(200):
        sampler.set_epoch(epoch, 200)
        observed += torch.bincount(labels[sampler.global_indices()], minlength=len(COUNTS))
    expected = 200 * len(labels) * sampler.class_probabilities()
    assert observed[4] == 0  # the empty class is never drawn
    keep = expected > 0
    assert stats.chisquare(observed[keep], expected[keep]).pvalue > P_VALUE


def test_gumbel_draws_match_class_probabilities_and_weigh_one() -> None:
    """The straight-through draws are exact samples of the same distribution, weight 1 each."""
    labels = make_labels()
    sampler = make(labels)
    with torch.no_grad():
        sampler.logits.copy_(torch.tensor([-2.0, 0.5, -0.3, 1.0, 0.0, 2.0]))
    gen = torch.Generator().manual_seed(3)
    observed = torch.zeros(len(COUNTS))
    for _ in range(20):
        indices, weights = sampler.draw_batch(500, gen)
        assert torch.equal(weights.detach(), torch.ones(500))
        observed += torch.bincount(labels[indices], minlength=len(COUNTS))
    expected = 10_000 * sampler.class_probabilities()
    keep = expected > 0
    assert observed[4] == 0
    assert stats.chisquare(observed[keep], expected[keep]).pvalue > P_VALUE


def test_balanced_batch_takes_every_class_floor_or_ceil_times() -> None:
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 3, 3, 3])  # class 2 empty
    gen = torch.Generator().manual_seed(0)
    for size in (3, 7, 12):
        idx = balanced_batch(labels, size, gen)
        drawn = torch.bincount(labels[idx], minlength=4)[[0, 1, 3]]
        assert drawn.sum() == size and drawn.max() - drawn.min() <= 1
        assert int(drawn.min()) == size // 3


# ------------------------------------------------------------------------------ the meta gradient
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("first_step", [True, False])
def test_sgd_step_is_torch_sgd(nesterov: bool, first_step: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    p = nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.3, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    if not first_step:
        p.grad = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        opt.step()
    grad = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    buf = opt.state[p].get("momentum_buffer")
    hyper = {"p": {k: opt.param_groups[0][k] for k in ("lr", "momentum", "dampening")}}
    hyper["p"].update(weight_decay=0.01, nesterov=nesterov)
    ours = sgd_step({"p": p.detach()}, {"p": grad}, {"p": buf}, hyper)["p"]
    p.grad = grad
    opt.step()
    assert torch.allclose(ours, p.detach(), rtol=1e-14, atol=1e-15)


def _toy():
    """A tiny float64 meta problem: 10 training images of 4 classes, 8 drawn, 6 meta images."""
    gen = torch.Generator().manual_seed(7)
    head = FeatureHead(nn.Linear(3, 4)).double()
    features = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    meta = (torch.randn(6, 3, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1]))
    noise = gumbel_noise(8, 10, gen).double()
    params = {n: p.detach().requires_grad_() for n, p in head.named_parameters()}
    buffers = {
        n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()
    }
    hyper = {
        n: {"lr": 0.5, "momentum": 0.9, "dampening": 0.0, "weight_decay": 1e-3, "nesterov": False}
        for n in params
    }
    shift = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)  # a Balanced-Softmax-like prior
    logits = torch.tensor([0.3, -0.2, 0.8, -1.0], dtype=torch.float64)

    def loss_of_weights(idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        batch = (features[idx], labels[idx])
        return meta_loss(
            head, params, batch, weights, meta, shift=shift, buffers=buffers, hyper=hyper
        )

    toy = {"head": head, "features": features, "meta": meta, "buffers": buffers, "shift": shift}
    return logits, labels, noise, loss_of_weights, toy


def test_meta_gradient_reaches_the_class_logits_finite_differences() -> None:
    """dL/dw by autograd through the straight-through draw = FD(dL/du) · FD(d soft_b / dw).

    The draw is piecewise constant in w, so the straight-through estimator replaces its Jacobian
    by that of the soft sample at the drawn image; everything else is smooth, so both factors are
    checked by central differences with the drawn images held fixed.
    """
    logits, labels, noise, loss_of_weights, _ = _toy()
    w = logits.clone().requires_grad_()
    idx, weights = straight_through_draw(w, labels, noise)
    (grad_w,) = torch.autograd.grad(loss_of_weights(idx, weights), w)

    h = 1e-6
    ones = torch.ones(len(idx), dtype=torch.float64)
    d_loss_d_u = torch.stack(
        [
            (loss_of_weights(idx, ones + h * e) - loss_of_weights(idx, ones - h * e)) / (2 * h)
            for e in torch.eye(len(idx), dtype=torch.float64)
        ]
    )  # (B,)

    def soft_at_drawn(v: torch.Tensor) -> torch.Tensor:
        soft = (F.logsigmoid(v)[labels] + noise).softmax(dim=1)  # (B, N)
        return soft[torch.arange(len(idx)), idx]  # (B,)

    d_soft_d_w = torch.stack(
        [
            (soft_at_drawn(logits + h * e) - soft_at_drawn(logits - h * e)) / (2 * h)
            for e in torch.eye(4, dtype=torch.float64)
        ],
        dim=1,
    )  # (B, C)
    expected = d_loss_d_u @ d_soft_d_w
    assert grad_w.abs().min() > 1e-6  # every class logit receives a gradient
    assert torch.allclose(grad_w, expected, rtol=1e-5, atol=1e-9)


def test_meta_loss_is_ce_after_the_torch_sgd_step_on_the_drawn_batch() -> None:
    """With unit weights, the meta loss is plain CE on the meta batch after torch.optim.SGD's step
    (same momentum buffers, weight decay, lr) on the drawn batch's Balanced-Softmax-style loss."""
    logits, labels, noise, loss_of_weights, toy = _toy()
    idx, weights = straight_through_draw(logits, labels, noise)
    fc = nn.Linear(3, 4).double()
    fc.load_state_dict(toy["head"].fc.state_dict())
    opt = torch.optim.SGD(fc.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    for name, p in fc.named_parameters():
        opt.state[p]["momentum_buffer"] = toy["buffers"][f"fc.{name}"].clone()
    inner = F.cross_entropy(fc(toy["features"][idx]) + toy["shift"], labels[idx])
    inner.backward()
    opt.step()
    expected = F.cross_entropy(fc(toy["meta"][0]), toy["meta"][1])
    assert torch.allclose(loss_of_weights(idx, weights).detach(), expected.detach(), rtol=1e-12)


# ------------------------------------------------------------------------------ the meta source
def test_meta_batches_are_class_balanced_draws_from_val() -> None:
    source, train, val, sampler = meta_setup()
    gen = torch.Generator().manual_seed(0)
    sizes = [len(y) for _, y in source.batches(torch.arange(76), 20, train=True, generator=gen)]
    assert sizes == [20, 20, 20, 16]  # the loop's order fixes the batch sizes
    assert len(val.requests) == 4 and len(train.requests) == 4  # one meta batch per step
    for idx, train_flag in val.requests:
        assert train_flag is False  # the meta set is read without augmentation
        assert int(idx.min()) >= 0 and int(idx.max()) < len(val)  # indices into val
        assert torch.equal(torch.bincount(val.labels[idx], minlength=6), torch.full((6,), 2))
    for idx, train_flag in train.requests:
        assert train_flag is True and int(idx.max()) < len(train)
        assert not torch.isin(idx, torch.nonzero(train.labels == 4).flatten()).any()
    assert sampler.attached


def test_first_meta_step_moves_each_logit_by_the_adam_lr() -> None:
    """Adam's first step is lr * g / (|g| + eps) (bias-corrected moments of one gradient): every
    logit with a gradient moves by lr * |g| / (|g| + 1e-8), close to lr."""
    source, _, _, sampler = meta_setup(lr=0.01)
    before = sampler.logits.detach().clone()
    gen = torch.Generator().manual_seed(0)
    next(iter(source.batches(torch.arange(76), 20, train=True, generator=gen)))
    moved = (sampler.logits.detach() - before).abs()
    present = torch.tensor(COUNTS) > 0
    g = sampler.logits.grad.abs()
    assert torch.allclose(moved[present], 0.01 * g[present] / (g[present] + 1e-8), rtol=1e-4)
    assert torch.allclose(moved[present], torch.full((5,), 0.01), rtol=1e-2)
    assert moved[4] == 0  # the empty class is never drawn: no gradient
    assert source.last_meta_loss is not None


def test_evaluation_batches_pass_through() -> None:
    source, train, val, sampler = meta_setup()
    before = sampler.logits.detach().clone()
    gen = torch.Generator().manual_seed(0)
    out = list(source.batches(torch.arange(10), 4, train=False, generator=gen))
    assert [len(y) for _, y in out] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in out]), train.labels[:10])
    assert not val.requests and torch.equal(sampler.logits.detach(), before)


def test_meta_source_refuses_a_sampler_of_another_world_and_an_empty_val() -> None:
    with pytest.raises(ValueError, match="expected a single process"):
        meta_setup(world_size=2)
    with pytest.raises(ValueError, match="expected a non-empty val split"):
        meta_setup(val_size=0)


# ------------------------------------------------------------------------------ state, epochs
def test_unattached_sampler_refuses_to_give_an_order() -> None:
    with pytest.raises(ValueError, match="expected to be driven by the BALMS meta step"):
        make().indices()


def test_state_round_trip_and_rate_history() -> None:
    source, _, _, sampler = meta_setup()
    gen = torch.Generator().manual_seed(0)
    for epoch in range(2):
        sampler.set_epoch(epoch, 2)
        for _ in source.batches(torch.arange(76), 38, train=True, generator=gen):
            pass
    sampler.set_epoch(1, 2)  # a resumed epoch keeps what was recorded when it first started
    state = sampler.state_dict()
    restored = make()
    restored.load_state_dict(state)
    assert torch.equal(restored.logits.detach(), sampler.logits.detach())
    assert restored.optimizer.state_dict()["state"][0]["step"] == 4  # 2 epochs x 2 steps
    rows = restored.rate_rows()
    assert sorted({r["epoch"] for r in rows}) == [0, 1, 2]  # epoch starts, then the end
    for epoch in (0, 1, 2):
        probs = [r["class_prob"] for r in rows if r["epoch"] == epoch]
        assert len(probs) == 6 and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["sigmoid"] == pytest.approx(0.5)  # init_pow 0 starts at sigmoid(0)


def test_ranks_take_their_slice_of_one_global_order() -> None:
    labels = make_labels()
    ranks = [make(labels, rank=r, world_size=2) for r in range(2)]
    for rank in ranks:
        rank.set_epoch(3, 10)
        rank.attached = True
    whole = ranks[0].global_indices()
    assert torch.equal(ranks[1].global_indices(), whole)
    assert torch.equal(ranks[0].indices(), whole[0::2])
    assert torch.equal(ranks[1].indices(), whole[1::2])
