"""Tests of longtail.samplers: class frequencies, determinism, resume and the per-rank slices.

Statistical checks use fixed seeds and a generous threshold (p > 1e-3), so they are deterministic;
a sampler with the wrong distribution fails them by many orders of magnitude.
"""

import pytest
import torch
from scipy import stats

from longtail import samplers
from longtail.samplers import Sampler, create, names, register

ALL = ("instance", "class_balanced", "sqrt", "progressive")
# 76 images, a long tail down to a single image, and class 4 empty.
COUNTS = (40, 20, 10, 5, 0, 1)
P_VALUE = 1e-3


def make_labels(counts: tuple[int, ...] = COUNTS, seed: int = 0) -> torch.Tensor:
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def make(name: str, labels: torch.Tensor, seed: int = 0, **kw: object) -> Sampler:
    sampler = create(name, labels, seed=seed, **kw)
    sampler.set_epoch(0, 10)
    return sampler


def epoch_order(sampler: Sampler, epoch: int, total: int = 10) -> torch.Tensor:
    sampler.set_epoch(epoch, total)
    return sampler.global_indices()


# ------------------------------------------------------------------------------ registry
def test_registry_names_and_unknown_name_lists_them() -> None:
    assert names()[:4] == ALL
    with pytest.raises(ValueError) as err:
        create("nope", make_labels(), seed=0)
    msg = str(err.value)
    assert msg.endswith("got 'nope'")
    assert "expected one of instance, class_balanced, sqrt, progressive" in msg


def test_register_refuses_duplicates_and_create_passes_options(monkeypatch) -> None:
    monkeypatch.setattr(samplers, "SAMPLERS", samplers.SAMPLERS.copy())

    @register("toy")
    class Toy(samplers.InstanceSampler):
        def __init__(self, labels: torch.Tensor, *, strength: float, **kw: object) -> None:
            super().__init__(labels, **kw)
            self.strength = strength

    sampler = create("toy", make_labels(), seed=3, rank=1, world_size=2, strength=0.5)
    assert isinstance(sampler, Toy)
    assert (sampler.strength, sampler.seed, sampler.rank, sampler.world_size) == (0.5, 3, 1, 2)
    assert "toy" in names()
    with pytest.raises(ValueError, match=r"^finetune\.sampler: 'toy' is already registered$"):
        register("toy")(Toy)
    with pytest.raises(ValueError, match="already registered"):
        register("instance")(Toy)


def test_unknown_option_is_refused_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="num_classes, num_samples_cls; got bogus"):
        create("class_balanced", make_labels(), seed=0, bogus=1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"seed": -1}, "seed: expected an integer >= 0"),
        ({"seed": 0, "rank": 2, "world_size": 2}, r"rank: expected an integer in \[0, 1\]"),
        ({"seed": 0, "num_classes": 3}, "num_classes: expected an integer >= 6"),
        ({"seed": 0, "num_samples_cls": 0}, "num_samples_cls: expected an integer >= 1"),
    ],
)
def test_bad_arguments_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create("class_balanced", make_labels(), **kw)


def test_bad_labels_and_epochs_are_refused() -> None:
    with pytest.raises(ValueError, match="labels: expected a 1-D int64 tensor"):
        create("instance", make_labels().float(), seed=0)
    with pytest.raises(ValueError, match="labels: expected classes >= 0"):
        create("instance", torch.tensor([0, -1]), seed=0)
    sampler = create("instance", make_labels(), seed=0)
    with pytest.raises(ValueError, match=r"epoch: expected an integer in \[0, 9\], got 10"):
        sampler.set_epoch(10, 10)


# ------------------------------------------------------------------------------ probabilities
def test_class_probabilities_closed_forms() -> None:
    # counts 4, 1, 0, 4: sqrt gives 2, 1, 0, 2 over 5.
    labels = make_labels((4, 1, 0, 4))
    expected = {
        "instance": [4 / 9, 1 / 9, 0, 4 / 9],
        "class_balanced": [1 / 3, 1 / 3, 0, 1 / 3],
        "sqrt": [0.4, 0.2, 0, 0.4],
        "progressive": [4 / 9, 1 / 9, 0, 4 / 9],  # epoch 0: instance-balanced
    }
    for name, probs in expected.items():
        got = make(name, labels).class_probabilities()
        assert got.dtype == torch.float64 and got.shape == (4,)
        torch.testing.assert_close(got, torch.tensor(probs, dtype=torch.float64))


def test_progressive_goes_from_instance_to_class_balanced() -> None:
    labels = make_labels()
    prog = create("progressive", labels, seed=0)
    instance = make("instance", labels).class_probabilities()
    balanced = make("class_balanced", labels).class_probabilities()
    total = 9
    prog.set_epoch(0, total)
    assert torch.equal(prog.class_probabilities(), instance)
    prog.set_epoch(total - 1, total)  # the last epoch, as np.linspace(0, 1, T)[T - 1] = 1
    assert torch.equal(prog.class_probabilities(), balanced)
    prog.set_epoch(2, total)  # λ = 2 / 8
    torch.testing.assert_close(prog.class_probabilities(), 0.75 * instance + 0.25 * balanced)
    prog.set_epoch(0, 1)  # a single epoch is instance-balanced, as linspace(0, 1, 1) = [0]
    assert torch.equal(prog.class_probabilities(), instance)


def test_progressive_needs_total_epochs() -> None:
    with pytest.raises(ValueError, match="set_epoch"):
        create("progressive", make_labels(), seed=0).global_indices()


def test_instance_is_a_permutation_every_epoch() -> None:
    sampler = make("instance", make_labels())
    for epoch in range(3):
        order = epoch_order(sampler, epoch)
        assert order.dtype == torch.int64
        assert torch.equal(order.sort().values, torch.arange(sum(COUNTS)))


@pytest.mark.parametrize("name", ["class_balanced", "sqrt", "progressive"])
def test_class_frequencies_match_probabilities(name: str) -> None:
    """χ² of the classes drawn over 200 epochs against the sum of each epoch's probabilities."""
    labels = make_labels()
    sampler = make(name, labels, seed=1)
    total, observed, expected = 200, torch.zeros(len(COUNTS)), torch.zeros(len(COUNTS))
    for epoch in range(total):
        observed += torch.bincount(labels[epoch_order(sampler, epoch, total)], minlength=6)
        expected += len(labels) * sampler.class_probabilities()
    assert observed[4] == 0 and expected[4] == 0  # the empty class is never drawn
    keep = expected > 0
    assert stats.chisquare(observed[keep], expected[keep]).pvalue > P_VALUE


@pytest.mark.parametrize("name", ["class_balanced", "sqrt", "progressive"])
def test_images_of_a_class_are_read_in_shuffled_passes(name: str) -> None:
    """Within an epoch, the images of a class drawn d times are each drawn floor or ceil(d / n)."""
    labels = make_labels()
    sampler = make(name, labels, seed=2)
    for epoch in range(5):
        hits = torch.bincount(epoch_order(sampler, epoch), minlength=len(labels))
        for c, n in enumerate(COUNTS):
            if n == 0:
                continue
            drawn = int(hits[labels == c].sum())
            per_image = hits[labels == c]
            assert int(per_image.min()) == drawn // n and int(per_image.max()) == -(-drawn // n)


def test_images_within_a_class_are_uniform_over_epochs() -> None:
    labels = make_labels()
    sampler = make("sqrt", labels, seed=3)
    hits = sum(torch.bincount(epoch_order(sampler, e, 100), minlength=76) for e in range(100))
    for c in (0, 1, 2, 3):
        assert stats.chisquare(hits[labels == c]).pvalue > P_VALUE


def test_class_balanced_is_round_robin_over_classes() -> None:
    # 5 non-empty classes: with one image per visit every run of 5 draws holds each class once.
    labels = make_labels()
    drawn = labels[make("class_balanced", labels).global_indices()]
    cycles = drawn[:75].view(15, 5)
    assert torch.equal(cycles.sort(dim=1).values, torch.tensor([0, 1, 2, 3, 5]).expand(15, 5))
    assert len({tuple(row.tolist()) for row in cycles}) > 1  # the class order is reshuffled


def test_class_balanced_takes_num_samples_cls_images_per_visit() -> None:
    labels = make_labels()
    drawn = labels[make("class_balanced", labels, num_samples_cls=4).global_indices()]
    visits = drawn[:76].view(19, 4)
    assert torch.equal(visits, visits[:, :1].expand(19, 4))  # 4 images of one class per visit
    first_cycles = visits[:15, 0].view(3, 5).sort(dim=1).values
    assert torch.equal(first_cycles, torch.tensor([0, 1, 2, 3, 5]).expand(3, 5))


def test_stage_option_samples_per_class_is_num_samples_cls() -> None:
    assert samplers.stage_options("class_balanced", samples_per_class=4) == {"num_samples_cls": 4}
    for name in ("instance", "sqrt", "progressive", "meta"):
        assert samplers.stage_options(name, samples_per_class=1) == {}
        with pytest.raises(ValueError, match=f"samples_per_class: expected 1 with sampler {name}"):
            samplers.stage_options(name, samples_per_class=4)
    with pytest.raises(ValueError, match="samples_per_class: expected an integer >= 1, got 0"):
        samplers.stage_options("class_balanced", samples_per_class=0)


def test_samples_per_class_is_checked_against_each_stage_sampler() -> None:
    from longtail import config

    def parse(section: str, values: dict) -> config.Config:
        return config.parse({section: values})

    assert parse("pretrain", {"sampler": "class_balanced", "samples_per_class": "4"})
    assert parse("finetune", {"mode": "lws", "sampler": "instance", "samples_per_class": 4})
    with pytest.raises(
        config.ConfigError,
        match=r"pretrain.samples_per_class: expected 1 with sampler instance .*; got 4",
    ):
        parse("pretrain", {"samples_per_class": 4})
    with pytest.raises(config.ConfigError, match=r"finetune.samples_per_class: expected 1 with"):
        parse("finetune", {"mode": "classifier", "sampler": "sqrt", "samples_per_class": 4})
    with pytest.raises(config.ConfigError, match=r"finetune.samples_per_class: expected a number"):
        parse("finetune", {"samples_per_class": 0})


def test_class_without_samples_does_not_crash() -> None:
    labels = torch.tensor([0, 0, 0, 2])  # class 1 and 3 empty
    for name in ALL:
        sampler = make(name, labels, num_classes=4)
        probs = sampler.class_probabilities()
        assert probs[1] == 0 and probs[3] == 0 and probs.sum().item() == pytest.approx(1.0)
        assert set(labels[sampler.global_indices()].tolist()) <= {0, 2}


# ------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("name", ALL)
def test_order_is_a_function_of_seed_and_epoch(name: str) -> None:
    labels = make_labels()
    a, b, c = make(name, labels, seed=5), make(name, labels, seed=5), make(name, labels, seed=6)
    assert torch.equal(epoch_order(a, 3), epoch_order(b, 3))
    assert torch.equal(epoch_order(a, 3), epoch_order(a, 3))  # no state carried between calls
    assert not torch.equal(epoch_order(a, 3), epoch_order(a, 4))
    assert not torch.equal(epoch_order(a, 3), epoch_order(c, 3))
    assert len(a.global_indices()) == len(labels)  # L = N for every sampler


@pytest.mark.parametrize("name", ALL)
def test_resume_from_state_dict_continues_identically(name: str) -> None:
    labels = make_labels()
    run = make(name, labels, seed=7)
    uninterrupted = [epoch_order(run, e, 6) for e in range(6)]
    run.set_epoch(2, 6)
    state = run.state_dict()
    resumed = make(name, labels, seed=7, world_size=2)  # world size may change on resume
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.total_epochs) == (2, 6)
    assert torch.equal(resumed.global_indices(), uninterrupted[2])
    for e in range(3, 6):
        assert torch.equal(epoch_order(resumed, e, 6), uninterrupted[e])


def test_state_of_another_seed_is_refused() -> None:
    state = make("instance", make_labels(), seed=1).state_dict()
    with pytest.raises(ValueError, match="sampler state seed: expected 2, got 1"):
        make("instance", make_labels(), seed=2).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("name", ALL)
def test_ranks_interleave_into_the_global_order(name: str, world_size: int) -> None:
    labels = make_labels()  # 76 images: not a multiple of 3, so rank lengths differ
    ranks = [make(name, labels, seed=4, rank=r, world_size=world_size) for r in range(world_size)]
    for rank in ranks:
        rank.set_epoch(5, 10)
    reassembled = torch.full((len(labels),), -1, dtype=torch.int64)
    for r, rank in enumerate(ranks):
        part = rank.indices()
        assert len(part) == len(rank)
        reassembled[r::world_size] = part
    assert torch.equal(reassembled, ranks[0].global_indices())
    assert all(torch.equal(rank.global_indices(), reassembled) for rank in ranks)
