"""Tests of the finetune modes (longtail.modes, longtail.decouple) and of the finetune stage.

In-process tests run each mode on a tiny network (a convolution, BatchNorm, a linear classifier)
and a few 4×4 images through the real training loop; the pipeline test runs every mode's
``finetune`` and ``evaluate`` stage scripts on tiny digits settings.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from trainers import make_trainer, plan_loop

from longtail import config, decouple, modes
from longtail.config import ConfigError
from longtail.data.base import TensorSource
from longtail.decouple import FeatureHead, FrozenFeatures, reset_classifier, tau_normalized
from longtail.meta import MetaSampler, MetaSource
from longtail.modes import Job
from longtail.train import FastPath

COUNTS = [12, 6, 3]
CPU = torch.device("cpu")
FAST = FastPath(bf16=False, channels_last=False, compile=False)


class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> mean pool -> fc: the interface of ``longtail.nets``."""

    def __init__(self, classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)
        self.feature_dim = width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.forward_features(x)
        return self.fc(feature), feature


def pretrained() -> TinyNet:
    """A TinyNet with BatchNorm running statistics far from their defaults."""
    with torch.random.fork_rng():  # nn's initialisers draw from the global RNG
        torch.manual_seed(0)
        net = TinyNet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5, generator=gen)
        net.bn.running_var.uniform_(0.5, 2.0, generator=gen)
        net.bn.num_batches_tracked.fill_(7)
    return net


def images(counts: list[int], seed: int, padding: int = 1) -> TensorSource:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    x = torch.randint(0, 256, (len(labels), 1, 4, 4), generator=gen, dtype=torch.uint8)
    return TensorSource(
        x, labels, mean=(0.5,), std=(0.25,), padding=padding, flip=False, device=CPU
    )


def parse(finetune: dict, loss: str = "ce") -> config.Config:
    base = {"epochs": 2, "batch_size": 8, "lr": 0.1}
    return config.parse({"finetune": {**base, **finetune}, "loss": {"name": loss}})


def make_job(model: nn.Module, cfg: config.Config, **sources: TensorSource) -> tuple[Job, list]:
    """A job whose loop runs the real Trainer in-process (``run``); records every call's objects."""
    train_src = sources.get("train", images(COUNTS, 1))
    val_src = sources.get("val", images([4, 4, 4], 2, padding=0))
    calls: list[dict] = []
    job = Job(
        model=model,
        config=cfg.finetune,
        loss=cfg.loss,
        seed=0,
        device=CPU,
        fast=FAST,
        eval_batch_size=64,
        train_counts=COUNTS,
        many_shot=10,
        few_shot=4,
        open_split=lambda split: {"val": val_src}[split],
    )
    job.loop = plan_loop(cfg, train_src, val_src, COUNTS, calls)
    return job, calls


def run(name: str, job: Job) -> modes.Outcome:
    """Run mode ``name`` on a :func:`make_job` job through its in-process loop."""
    return modes.run(name, job, job.loop)


def backbone_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")}


def assert_backbone_unchanged(before: dict, net: nn.Module) -> None:
    after = backbone_state(net)
    assert before.keys() == after.keys() and "bn.running_mean" in after
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # parameters and BatchNorm buffers


# ------------------------------------------------------------------------------ registry, config
def test_every_module_of_the_modes_package_is_the_mode_of_its_name() -> None:
    import pkgutil

    files = {m.name for m in pkgutil.iter_modules(modes.__path__) if not m.name.startswith("_")}
    assert set(modes.names()) == files and {"none", "full", "classifier"} <= files
    assert all(modes.get(name).name == name for name in files)
    with pytest.raises(ValueError, match=r"finetune.mode: expected one of classifier, full"):
        modes.get("nope")
    with pytest.raises(ValueError, match=r"finetune.mode: 'none' is already registered"):
        modes.register(type(modes.get("none")))
    with pytest.raises(ConfigError, match=r"finetune.mode: expected one of classifier, full, "):
        parse({"mode": "clasifier"})


@pytest.mark.parametrize(
    ("value", "candidates"),
    [
        (1.0, (1.0,)),
        ("1e-01", (0.1,)),
        ([1, 0.5, 1], (0.5, 1.0)),
        ("[0, 2]", (0.0, 2.0)),
        ("sweep", tuple(i / 10 for i in range(21))),
    ],
)
def test_tau_norm_accepts_a_number_a_list_or_sweep(value: object, candidates: tuple) -> None:
    assert parse({"tau_norm": value}).finetune.tau_candidates() == candidates


@pytest.mark.parametrize(
    ("finetune", "match"),
    [
        ({"tau_norm": -1}, "finetune.tau_norm: expected a number >= 0, a list of numbers"),
        ({"tau_norm": []}, "finetune.tau_norm: expected"),
        ({"tau_norm": "sweeep"}, "finetune.tau_norm: expected"),
        ({"mode": "full", "sampler": "meta"}, "finetune.sampler: meta expects finetune.mode: c"),
        ({"mode": "partial", "sampler": "meta"}, "finetune.sampler: meta expects finetune.mo"),
        ({"meta_lr": 0}, "finetune.meta_lr: expected a number > 0"),
        ({"meta_batch_size": 0}, "finetune.meta_batch_size: expected a number > 0"),
    ],
)
def test_bad_finetune_values_are_refused(finetune: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse(finetune)


def test_meta_options_parse_from_strings() -> None:
    cfg = parse({"mode": "classifier", "sampler": "meta", "meta_lr": "1e-03"}).finetune
    assert (cfg.meta_lr, cfg.meta_init_pow, cfg.meta_batch_size) == (0.001, 0.0, None)


# ------------------------------------------------------------------------------ building blocks
def test_tau_normalisation_closed_forms() -> None:
    weight = torch.tensor([[3.0, 4.0], [0.0, 0.5]])  # row norms 5 and 0.5
    assert torch.equal(tau_normalized(weight, 0.0), weight)
    assert torch.allclose(tau_normalized(weight, 1.0).norm(dim=1), torch.ones(2))
    expected = torch.tensor([[3.0, 4.0], [0.0, 0.5]]) / torch.tensor([[5**0.5], [0.5**0.5]])
    assert torch.allclose(tau_normalized(weight, 0.5), expected)


def test_reset_classifier_is_seeded_linear_default() -> None:
    a, b = nn.Linear(16, 3), nn.Linear(16, 3)
    reset_classifier(a, 5)
    reset_classifier(b, 5)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.weight.abs().max() <= 0.25 and a.bias.abs().max() <= 0.25  # U(±1/sqrt(16))
    reset_classifier(b, 6)
    assert not torch.equal(a.weight, b.weight)


def test_frozen_features_equal_the_backbone_on_each_batch() -> None:
    net = pretrained().eval()
    src = images(COUNTS, 1)
    order = torch.randperm(21, generator=torch.Generator().manual_seed(0))
    for augment in (True, False):
        frozen = FrozenFeatures(src, net, augment=augment, batch_size=64, fast=FAST)
        gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        ours = list(frozen.batches(order, 8, train=True, generator=gen_a))
        ref = list(src.batches(order, 8, train=augment, generator=gen_b))
        for (f, y), (x, y_ref) in zip(ours, ref, strict=True):
            assert torch.equal(y, y_ref)
            with torch.no_grad():
                expected = net.forward_features(x)
            if augment:  # the same augmented batch through the same backbone: identical
                assert torch.equal(f, expected)
            else:  # looked up from the one-off pass (batch 64 instead of 8)
                assert torch.allclose(f, expected, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ modes
def test_none_passes_the_network_through() -> None:
    net = pretrained()
    before = copy.deepcopy(net.state_dict())
    job, calls = make_job(net, parse({"mode": "none"}))
    outcome = run("none", job)
    assert not outcome.trained and not calls
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_full_trains_every_layer_and_can_skip_augmentation() -> None:
    net = pretrained()
    before = backbone_state(net)
    job, calls = make_job(net, parse({"mode": "full", "augment": False}))
    run("full", job)
    assert calls[0]["plan"].params is None  # every parameter
    assert not torch.equal(before["conv.weight"], net.conv.weight)
    trainer = calls[0]["trainer"]
    order, gen = torch.arange(8), torch.Generator()
    x, _ = next(trainer.train_source.batches(order, 8, train=True, generator=gen))
    x_eval, _ = next(images(COUNTS, 1).batches(order, 8, train=False, generator=gen))
    assert torch.equal(x, x_eval)  # augment: false trains on the evaluation batches


@pytest.mark.parametrize("augment", [True, False])
def test_classifier_mode_freezes_the_backbone_and_retrains_a_new_classifier(augment: bool) -> None:
    net = pretrained()
    before, old_fc = backbone_state(net), net.fc.weight.detach().clone()
    job, calls = make_job(net, parse({"mode": "classifier", "augment": augment}))
    outcome = run("classifier", job)
    assert_backbone_unchanged(before, net)
    assert not net.training  # BatchNorm stayed in eval mode throughout
    trainer = calls[0]["trainer"]
    assert isinstance(trainer.model, FeatureHead) and trainer.model.fc is net.fc
    assert {id(p) for p in calls[0]["plan"].params} == {id(net.fc.weight), id(net.fc.bias)}
    assert isinstance(trainer.train_source, FrozenFeatures)
    assert isinstance(trainer.val_source, FrozenFeatures)
    assert not torch.equal(net.fc.weight, old_fc)
    assert outcome.metrics["mode"] == "classifier" and outcome.metrics["epochs"] == 2


def test_classifier_mode_equals_the_loop_over_the_whole_frozen_network() -> None:
    """Exactness of the feature path: the same classifier as training the whole network with the
    backbone frozen in eval mode (same augmentation draws, same order, same steps)."""
    net, ref = pretrained(), pretrained()
    cfg = parse({"mode": "classifier", "sampler": "class_balanced"})
    job, _ = make_job(net, cfg)
    run("classifier", job)

    reset_classifier(ref.fc, 0)
    ref.requires_grad_(False)
    ref.fc.requires_grad_(True)
    trainer = make_trainer(
        ref,
        images(COUNTS, 1),
        images([4, 4, 4], 2, padding=0),
        COUNTS,
        optim=cfg.finetune.optim,
        train_cfg=cfg.train,
        sampler="class_balanced",
        params=list(ref.fc.parameters()),
        train_mode=lambda model: model.eval(),
    )
    trainer.fit()
    assert torch.equal(net.fc.weight, ref.fc.weight) and torch.equal(net.fc.bias, ref.fc.bias)


def test_balms_retrains_with_the_meta_sampler_on_val() -> None:
    net = pretrained()
    before = backbone_state(net)
    val = images([4, 4, 4], 2, padding=0)
    cfg = parse(
        {"mode": "classifier", "sampler": "meta", "meta_init_pow": 1.0, "meta_batch_size": 6},
        loss="balanced_softmax",
    )
    job, calls = make_job(net, cfg, val=val)
    outcome = run("classifier", job)
    assert_backbone_unchanged(before, net)
    source = calls[0]["trainer"].train_source
    assert isinstance(source, MetaSource) and isinstance(source.sampler, MetaSampler)
    assert source.meta.source is val  # the meta set is the val split, through its features
    assert source.meta_batch_size == 6 and source.sampler.init_pow == 1.0
    assert torch.equal(source.shift, torch.tensor(COUNTS, dtype=torch.float64).log().float())
    rows = outcome.plots["meta_sampling"]
    assert [r["train_count"] for r in rows] == COUNTS
    assert sum(r["class_prob"] for r in rows) == pytest.approx(1.0, abs=1e-5)
    epochs = {r["epoch"] for r in outcome.plots["meta_sampling_epochs"]}
    assert epochs == {0, 1, 2}
    first = [r["class_prob"] for r in outcome.plots["meta_sampling_epochs"] if r["epoch"] == 0]
    assert first == pytest.approx([1 / 3] * 3, abs=1e-5)  # init_pow 1 starts class-balanced
    assert first != pytest.approx([r["class_prob"] for r in rows], abs=1e-6)  # it learned


def test_meta_sampler_refuses_a_loss_without_a_per_image_form() -> None:
    with pytest.raises(ConfigError, match=r"loss.name: the meta sampler's inner step expects"):
        parse({"mode": "classifier", "sampler": "meta"}, "focal")


def test_tau_norm_with_tau_zero_leaves_predictions_unchanged() -> None:
    net = pretrained().eval()
    x = next(images(COUNTS, 3).batches(torch.arange(21), 21, train=False, generator=None))[0]
    with torch.no_grad():
        before = net(x)[0]
    job, calls = make_job(net, parse({"mode": "tau_norm", "tau_norm": 0, "tau_norm_bias": True}))
    outcome = run("tau_norm", job)
    with torch.no_grad():
        assert torch.equal(net(x)[0], before)
    assert not calls and not outcome.trained and outcome.metrics["tau"] == 0.0


def test_tau_norm_without_bias_at_tau_zero_is_the_bias_free_pretrained_scores() -> None:
    """The default (classifier-balancing's tau_norm.py): f · w / ||w||^0 = f · w, no bias."""
    net = pretrained().eval()
    assert net.fc.bias.abs().min() > 0  # a bias that would change the scores
    x = next(images(COUNTS, 3).batches(torch.arange(21), 21, train=False, generator=None))[0]
    with torch.no_grad():
        features = net.forward_features(x)
        expected = features @ net.fc.weight.T  # (B, C) the pretrained scores without the bias
    job, _ = make_job(net, parse({"mode": "tau_norm", "tau_norm": 0}))
    outcome = run("tau_norm", job)
    with torch.no_grad():
        logits, _ = net(x)
    assert torch.equal(logits, expected)
    assert not net.fc.bias.any() and outcome.metrics["tau_norm_bias"] is False


def test_tau_sweep_scores_without_the_bias_unless_asked() -> None:
    """A bias that flips the val prediction: the sweep reads it only with tau_norm_bias: true."""
    val = Rows(torch.tensor([[1.0, 0.5], [0.5, 1.0]]), torch.tensor([0, 1]))
    accuracy = {}
    for keep in (False, True):
        net = Identity()
        with torch.no_grad():
            net.fc.weight.copy_(torch.eye(2))
            net.fc.bias.copy_(torch.tensor([0.0, 1.0]))  # pushes every sample to class 1
        job, _ = make_job(
            net, parse({"mode": "tau_norm", "tau_norm": [0, 1], "tau_norm_bias": keep})
        )
        job.open_split = lambda split: {"val": val}[split]
        job.train_counts = [100, 10]
        rows = run("tau_norm", job).plots["tau_norm"]
        accuracy[keep] = [r["mean_class_accuracy"] for r in rows]
    assert accuracy == {False: [100.0, 100.0], True: [50.0, 50.0]}


class Identity(nn.Module):
    """A backbone whose feature is the flattened input (features chosen by hand)."""

    feature_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Rows:
    """A source of given feature rows (no augmentation)."""

    in_channels = 2

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.labels = x, y

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order, batch_size, *, train, generator):
        for idx in order.split(batch_size):
            yield self.x[idx], self.labels[idx]


def test_tau_sweep_picks_the_best_tau_on_val() -> None:
    """Head class 0 has a 10× longer weight: τ = 0 misreads the tail sample, τ = 2 the head one."""
    net = Identity()
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 1.0]]))
        net.fc.bias.zero_()
    val = Rows(torch.tensor([[1.0, 0.5], [0.5, 1.0]]), torch.tensor([0, 1]))
    job, _ = make_job(net, parse({"mode": "tau_norm", "tau_norm": [0, 1, 2]}))
    job.open_split = lambda split: {"val": val}[split]
    job.train_counts = [100, 10]
    outcome = run("tau_norm", job)
    accuracy = {r["tau"]: r["mean_class_accuracy"] for r in outcome.plots["tau_norm"]}
    assert accuracy == {0.0: 50.0, 1.0: 100.0, 2.0: 50.0}
    assert outcome.metrics["tau"] == 1.0 and outcome.metrics["val/top1"] == 100.0
    assert torch.allclose(net.fc.weight, torch.eye(2))  # w_c / ||w_c|| applied


def test_lws_learns_one_scale_per_class_on_class_balanced_batches() -> None:
    net = pretrained()
    before, fc = backbone_state(net), copy.deepcopy(net.fc)
    job, calls = make_job(net, parse({"mode": "lws", "sampler": "instance"}))
    outcome = run("lws", job)
    assert_backbone_unchanged(before, net)
    assert calls[0]["sampler"] == "class_balanced"  # by definition, whatever finetune.sampler
    head = calls[0]["trainer"].model
    assert [id(p) for p in calls[0]["plan"].params] == [id(head.scales)]
    scales = torch.tensor([r["scale"] for r in outcome.plots["lws_scales"]])
    assert not torch.allclose(scales, torch.ones(3))
    # Folded: the final classifier is the pretrained one with each row scaled.
    ratio = net.fc.weight / fc.weight
    assert torch.allclose(ratio, scales[:, None].expand_as(ratio), rtol=1e-5)
    assert torch.allclose(net.fc.bias, scales * fc.bias, rtol=1e-5)


# ------------------------------------------------------------------------------ backbone BatchNorm
def bn_buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if k.startswith("bn.")}


@pytest.mark.parametrize("mode", ["classifier", "lws"])
@pytest.mark.parametrize("augment", [True, False])
def test_backbone_bn_train_moves_running_statistics_not_weights(mode: str, augment: bool) -> None:
    net = pretrained()
    conv_w, conv_b = net.conv.weight.detach().clone(), net.conv.bias.detach().clone()
    bn_w, bn_b = net.bn.weight.detach().clone(), net.bn.bias.detach().clone()
    buffers = bn_buffers(net)
    cfg = parse({"mode": mode, "backbone_bn": "train", "augment": augment})
    job, calls = make_job(net, cfg)
    outcome = run(mode, job)
    # The weights of the backbone are bit-identical ...
    assert torch.equal(net.conv.weight, conv_w) and torch.equal(net.conv.bias, conv_b)
    assert torch.equal(net.bn.weight, bn_w) and torch.equal(net.bn.bias, bn_b)
    # ... its BatchNorm statistics drifted under the re-balanced batches.
    assert not torch.equal(net.bn.running_mean, buffers["bn.running_mean"])
    assert not torch.equal(net.bn.running_var, buffers["bn.running_var"])
    assert int(net.bn.num_batches_tracked) == 7 + 2 * 3  # 2 epochs of 3 batches of 8 (21 images)
    trainer = calls[0]["trainer"]
    assert isinstance(trainer.model, decouple.OnBackbone)  # every batch through the backbone
    inner = trainer.train_source
    assert not isinstance(inner, FrozenFeatures)  # no cache, augment: false included
    assert isinstance(inner, decouple.Unaugmented) == (not augment)
    assert outcome.metrics["backbone_bn"] == "train"


def test_backbone_bn_train_equals_the_loop_over_the_whole_network_in_train_mode() -> None:
    """cRT as classifier-balancing runs it: the whole network in train mode, only fc optimised."""
    net, ref = pretrained(), pretrained()
    cfg = parse({"mode": "classifier", "sampler": "class_balanced", "backbone_bn": "train"})
    job, _ = make_job(net, cfg)
    run("classifier", job)

    reset_classifier(ref.fc, 0)
    ref.requires_grad_(False)
    ref.fc.requires_grad_(True)
    trainer = make_trainer(
        ref,
        images(COUNTS, 1),
        images([4, 4, 4], 2, padding=0),
        COUNTS,
        optim=cfg.finetune.optim,
        train_cfg=cfg.train,
        sampler="class_balanced",
        params=list(ref.fc.parameters()),
    )
    trainer.fit()
    for key, value in ref.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def test_backbone_bn_frozen_leaves_every_backbone_tensor_bit_identical() -> None:
    net = pretrained()
    before = backbone_state(net)
    job, calls = make_job(net, parse({"mode": "classifier", "backbone_bn": "frozen"}))
    run("classifier", job)
    assert_backbone_unchanged(before, net)
    assert isinstance(calls[0]["trainer"].model, FeatureHead)


def test_balms_meta_step_runs_with_the_backbone_in_train_mode() -> None:
    """BALMS as the reference runs it (``run_networks.py``: every network in train mode): the
    inner batch, the meta batch and the ordinary step each pass through the backbone's BatchNorm
    in train mode, updating its running statistics; the backbone weights stay fixed; the meta
    gradient reaches the sampler's class logits."""
    net = pretrained()
    conv_w, bn_w = net.conv.weight.detach().clone(), net.bn.weight.detach().clone()
    running = net.bn.running_mean.clone()
    cfg = parse(
        {"mode": "classifier", "sampler": "meta", "backbone_bn": "train", "meta_batch_size": 6},
        loss="balanced_softmax",
    )
    job, calls = make_job(net, cfg)
    outcome = run("classifier", job)
    trainer = calls[0]["trainer"]
    assert isinstance(trainer.model, decouple.OnBackbone)
    assert isinstance(trainer.train_source, MetaSource)
    meta_step = trainer.train_source
    assert meta_step.head is trainer.model.head and meta_step.features == trainer.model.features
    # 2 epochs of 3 steps; each step: the inner batch, the meta batch, the ordinary step.
    assert int(net.bn.num_batches_tracked) == 7 + 2 * 3 * 3
    assert not torch.equal(net.bn.running_mean, running)
    assert torch.equal(net.conv.weight, conv_w) and torch.equal(net.bn.weight, bn_w)
    rows = outcome.plots["meta_sampling_epochs"]
    start = [r["sigmoid"] for r in rows if r["epoch"] == 0]
    end = [r["sigmoid"] for r in rows if r["epoch"] == 2]
    assert start != end  # the meta gradient moved the class logits
    assert outcome.metrics["backbone_bn"] == "train"


def test_balms_meta_update_moves_running_statistics_with_the_inner_and_meta_batches() -> None:
    """One meta update through a train-mode backbone: its BatchNorm running statistics end as two
    train-mode passes, the inner batch then the meta batch, leave them; the class logits take an
    Adam step with a non-zero meta gradient."""
    from longtail.meta import balanced_batch

    net, ref = pretrained(), pretrained()
    net.requires_grad_(False)
    model = decouple.OnBackbone(net, FeatureHead(net.fc.requires_grad_(True))).train()
    train, val = images(COUNTS, 1), images([4, 4, 4], 2, padding=0)
    sampler = MetaSampler(train.labels, seed=0, num_classes=3)
    optimizer = torch.optim.SGD(net.fc.parameters(), lr=0.1, momentum=0.9)
    source = MetaSource(
        train,
        val,
        sampler,
        model.head,
        optimizer,
        shift=torch.zeros(3),
        meta_batch_size=6,
        features=model.features,
    )
    start = sampler.logits.detach().clone()
    gen = torch.Generator().manual_seed(0)
    indices, weights = sampler.draw_batch(8, gen)
    x, y = next(train.batches(indices, 8, train=False, generator=gen))
    meta_gen = torch.Generator().manual_seed(0)
    meta_gen.set_state(gen.get_state())
    source.update((x, y), weights, gen)
    meta_idx = balanced_batch(val.labels, 6, meta_gen)
    x_meta, _ = next(val.batches(meta_idx, 6, train=False, generator=meta_gen))
    ref.train()
    with torch.no_grad():
        ref.forward_features(x)
        ref.forward_features(x_meta)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(net.bn, key).double(), getattr(ref.bn, key).double()), key
    assert int(net.bn.num_batches_tracked) == 7 + 2
    assert not torch.equal(sampler.logits.detach(), start)  # Adam moved the class logits
    assert source.last_meta_loss is not None and torch.isfinite(source.last_meta_loss)


def test_backbone_bn_names_its_choices() -> None:
    with pytest.raises(ConfigError, match=r"finetune.backbone_bn: expected one of frozen, train"):
        parse({"backbone_bn": "drift"})


# ------------------------------------------------------------------------------ partial fine-tuning
class TwoStageNet(nn.Module):
    """stem (conv, BN) -> block (conv, BN) -> mean pool -> fc, with named stages like a ResNet."""

    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.forward_features(x)
        return self.fc(feature), feature


def two_stage() -> TwoStageNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = TwoStageNet()
    with torch.no_grad():  # "pretrained" statistics, far from the defaults
        for bn in (net.stem[1], net.block[1]):
            bn.running_mean.fill_(0.3)
            bn.running_var.fill_(1.7)
            bn.num_batches_tracked.fill_(7)
    return net


def state(net: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if k.startswith(prefix)}


def test_partial_trains_only_the_named_block_and_the_classifier() -> None:
    net = two_stage()
    stem, block, fc = state(net, "stem."), state(net, "block."), state(net, "fc.")
    cfg = parse({"mode": "partial", "train_blocks": ["block"], "block_lr": 0.01})
    job, calls = make_job(net, cfg)
    outcome = run("partial", job)
    for key, value in stem.items():  # frozen layers: parameters and BN buffers bit-identical
        assert torch.equal(net.state_dict()[key], value), key
    for key in ("block.0.weight", "block.1.running_mean", "fc.weight", "fc.bias"):
        assert not torch.equal(net.state_dict()[key], {**block, **fc}[key]), key
    groups = calls[0]["trainer"].optimizer.param_groups
    assert [g["initial_lr"] for g in groups] == [0.01, 0.1]  # block_lr, then the classifier's lr
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in net.block.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.fc.parameters()}
    assert outcome.metrics["train_blocks"] == ["block"] and outcome.metrics["block_lr"] == 0.01


def test_partial_reinitialises_the_blocks_with_their_seeded_defaults() -> None:
    """Before training: each named module's own reset_parameters from the run's seed; the frozen
    stem stays in eval mode and the named block runs in train mode."""
    net = two_stage()
    cfg = parse({"mode": "partial", "train_blocks": ["block"], "lr": 1e-30, "momentum": 0})
    job, calls = make_job(net, cfg)
    run("partial", job)
    fresh = TwoStageNet().block
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the run's seed
        for module in fresh.modules():  # in module order, as a Module iterates them
            getattr(module, "reset_parameters", lambda: None)()
    # lr 1e-30 moves no float32 weight: what is left is the re-initialisation
    assert torch.equal(net.block[0].weight, fresh[0].weight)
    assert torch.equal(net.block[1].weight, torch.ones(4))
    assert int(net.block[1].num_batches_tracked) == 2 * 3  # restarted, then 6 train-mode batches
    model = calls[0]["trainer"].model
    model.train()
    calls[0]["trainer"].train_mode(model)
    assert not net.stem.training and net.block.training and net.fc.training


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_partial_frozen_blocks_follow_backbone_bn(bn: str) -> None:
    """``frozen`` (the default, FBL's eval-mode backbone): the frozen stem's BatchNorm neither
    normalises with batch statistics nor updates its running ones; ``train``: it does both, its
    weights still fixed."""
    net = two_stage()
    stem = state(net, "stem.")
    cfg = parse({"mode": "partial", "train_blocks": ["block"], "backbone_bn": bn})
    job, calls = make_job(net, cfg)
    run("partial", job)
    bn_keys = ("stem.1.running_mean", "stem.1.running_var", "stem.1.num_batches_tracked")
    moved = [k for k in bn_keys if not torch.equal(net.state_dict()[k], stem[k])]
    assert moved == ([] if bn == "frozen" else list(bn_keys))
    assert int(net.stem[1].num_batches_tracked) == (7 if bn == "frozen" else 7 + 2 * 3)
    for key in ("stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias"):
        assert torch.equal(net.state_dict()[key], stem[key]), key
    model = calls[0]["trainer"].model
    calls[0]["trainer"].train_mode(model)
    assert net.stem.training == (bn == "train") and net.block.training and net.fc.training


def test_partial_defaults_block_lr_to_lr() -> None:
    job, calls = make_job(two_stage(), parse({"mode": "partial", "train_blocks": ["block.0"]}))
    run("partial", job)
    assert [g["initial_lr"] for g in calls[0]["trainer"].optimizer.param_groups] == [0.1, 0.1]


def test_partial_names_the_valid_blocks_for_an_unknown_one() -> None:
    job, calls = make_job(two_stage(), parse({"mode": "partial", "train_blocks": ["layer4.2"]}))
    expected = (
        "finetune.train_blocks: expected module names of TwoStageNet among stem, stem.0, stem.1, "
        "stem.2, block, block.0, block.1, block.2, fc (or deeper, e.g. layer4.2.conv1); "
        "got layer4.2"
    )
    with pytest.raises(ValueError) as err:
        run("partial", job)
    assert str(err.value) == expected and not calls
    with pytest.raises(ConfigError, match=r"finetune.train_blocks: expected a non-empty list"):
        parse({"mode": "partial"})


# ------------------------------------------------------------------------------ the pipeline
MODE_PARAMS = {
    "none": {"finetune": {"mode": "none"}},
    "full": {"finetune": {"mode": "full"}},
    "full_autoaugment": {"finetune": {"mode": "full", "policy": "autoaugment_cutout"}},
    "crt": {
        "finetune": {"mode": "classifier", "sampler": "class_balanced"},
        "loss": {"name": "ce"},
    },
    "decoupled_bs": {
        "finetune": {"mode": "classifier", "augment": False},
        "loss": {"name": "balanced_softmax"},
    },
    "balms": {
        "finetune": {"mode": "classifier", "sampler": "meta", "meta_init_pow": 0.5},
        "loss": {"name": "balanced_softmax"},
    },
    "tau_norm": {"finetune": {"mode": "tau_norm", "tau_norm": [0, 0.5, 1]}},
    "lws": {"finetune": {"mode": "lws"}, "loss": {"name": "ce"}},
    "crt_reference": {  # classifier-balancing's cRT: 4 images per class visit, BN in train mode
        "finetune": {
            "mode": "classifier",
            "sampler": "class_balanced",
            "samples_per_class": 4,
            "backbone_bn": "train",
            "augment": False,
        },
        "loss": {"name": "ce"},
    },
    "partial": {
        "finetune": {"mode": "partial", "train_blocks": ["layer3.4"], "block_lr": 0.01},
        "loss": {"name": "fbl"},
    },
}

# Runs the stage scripts as `python -m stages.<name>` would (runpy), in one interpreter so that
# torch is imported once: the prerequisites once, then finetune + evaluate per mode.
DRIVER = """
import json, runpy, shutil, sys, torch, yaml
from pathlib import Path

torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine: threads only contend

def stage(name):
    try:
        runpy.run_module("stages." + name, run_name="__main__")
    except SystemExit as exit:
        if exit.code:
            raise

def merge(base, update):
    out = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if nested else value
    return out

base = yaml.safe_load(Path("params.yaml").read_text())
for name in ("download", "inject_imbalance", "extract_frames", "pretrain"):
    stage(name)
for label, update in json.loads(sys.argv[1]).items():
    Path("params.yaml").write_text(yaml.safe_dump(merge(base, update), sort_keys=False))
    stage("finetune")
    stage("evaluate")
    out = Path("results") / label
    out.mkdir(parents=True)
    for path in ("models/final.pt", "metrics/finetune.json", "metrics/evaluate.json"):
        shutil.copy(path, out)
    shutil.copytree("plots/finetune", out / "plots")
    assert Path("checkpoints/finetune.ckpt").exists() and Path("dvclive/finetune/plots").is_dir()
"""


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every mode run through the stage scripts on tiny digits settings; returns the results."""
    from conftest import REPO, TINY, TRACKED, copy_repo

    root = tmp_path_factory.mktemp("pipeline") / "repo"
    repo = copy_repo(REPO, root, TRACKED)
    repo.params({**TINY, "finetune": {"epochs": 2, "batch_size": 128}})
    repo.run(sys.executable, "-c", DRIVER, json.dumps(MODE_PARAMS))
    (root / "results" / "pretrain.pt").write_bytes((root / "models/pretrain.pt").read_bytes())
    return root / "results"


def load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("label", list(MODE_PARAMS))
def test_every_mode_runs_end_to_end(pipeline: Path, label: str) -> None:
    mode = MODE_PARAMS[label]["finetune"]["mode"]
    result = json.loads((pipeline / label / "evaluate.json").read_text())
    assert result["finetune_mode"] == mode and 0 <= result["top1"] <= 100
    assert json.loads((pipeline / label / "finetune.json").read_text())["mode"] == mode
    pre, final = load_state(pipeline / "pretrain.pt"), load_state(pipeline / label / "final.pt")
    backbone = [k for k in pre if not k.startswith("fc.")]
    trained = {"full": "", "partial": "layer3.4."}.get(mode)
    frozen = [k for k in backbone if trained is None or not k.startswith(trained)]
    # Frozen modes: every parameter and buffer; BN in train mode: the weights only.
    buffers = label == "crt_reference"
    frozen = [k for k in frozen if not (buffers and ("running_" in k or "num_batches" in k))]
    assert bool(frozen) == (mode != "full")
    assert all(torch.equal(pre[k], final[k]) for k in frozen)
    moved = [k for k in backbone if k not in frozen]
    assert all(not torch.equal(pre[k], final[k]) for k in moved if "num_batches" not in k)
    assert bool(moved) == (trained is not None or buffers)
    fc_weight_same = torch.equal(pre["fc.weight"], final["fc.weight"])
    assert fc_weight_same == (mode == "none" or (mode == "tau_norm" and _tau(pipeline, label) == 0))
    if mode == "tau_norm":  # scored without the bias (tau_norm_bias: false)
        assert not final["fc.bias"].any()


def _tau(pipeline: Path, label: str) -> float:
    return json.loads((pipeline / label / "finetune.json").read_text())["tau"]


def test_pipeline_balms_writes_the_learned_sampling_rates(pipeline: Path) -> None:
    rates = pd.read_csv(pipeline / "balms" / "plots" / "meta_sampling.csv")
    epochs = pd.read_csv(pipeline / "balms" / "plots" / "meta_sampling_epochs.csv")
    assert len(rates) == 10 and rates["class_prob"].sum() == pytest.approx(1.0, abs=1e-4)
    assert sorted(epochs["epoch"].unique()) == [0, 1, 2]
    assert rates["train_count"].is_monotonic_decreasing  # digits-LT classes run head to tail
    metrics = json.loads((pipeline / "balms" / "finetune.json").read_text())
    assert (metrics["sampler"], metrics["loss"]) == ("meta", "balanced_softmax")


def test_pipeline_tau_norm_reports_the_sweep_and_the_choice(pipeline: Path) -> None:
    sweep = pd.read_csv(pipeline / "tau_norm" / "plots" / "tau_norm.csv")
    assert list(sweep["tau"]) == [0.0, 0.5, 1.0]
    best = sweep["mean_class_accuracy"].max()
    assert _tau(pipeline, "tau_norm") == sweep[sweep["mean_class_accuracy"] == best]["tau"].min()


def test_pipeline_lws_folds_its_scales_into_the_classifier(pipeline: Path) -> None:
    scales = torch.tensor(pd.read_csv(pipeline / "lws" / "plots" / "lws_scales.csv")["scale"])
    pre, final = load_state(pipeline / "pretrain.pt"), load_state(pipeline / "lws" / "final.pt")
    assert torch.allclose(final["fc.bias"].double(), scales * pre["fc.bias"].double(), rtol=1e-4)
