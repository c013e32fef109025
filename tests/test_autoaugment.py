"""Tests of the batched AutoAugment (CIFAR-10 policy) and Cutout against per-image references.

The reference for AutoAugment is torchvision's own per-image transform (its ``get_params`` draws
and its ``_apply_op`` operations); for Cutout, BALMS's per-image ``Cutout(n_holes=1, length=16)``
written out below with NumPy's RNG. Statistical checks use fixed seeds and a threshold of
p > 1e-3, so they are deterministic; a wrong distribution fails them by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

from longtail import config
from longtail.data import autoaugment as aa
from longtail.data.augment import (
    AutoAugmentCutout,
    CropFlip,
    normalize,
    random_crop_flip,
    use_policy,
)
from longtail.data.base import TensorSource

P_VALUE = 1e-3
CPU = torch.device("cpu")


def random_images(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    x[: n // 10] = x[: n // 10] // 16 + 100  # low contrast: autocontrast and equalize stretch it
    x[n // 10 : n // 10 + 3] = 77  # flat images: the degenerate branches
    return x


def torchvision_per_image(x: torch.Tensor, draw: aa.AutoAugmentDraw) -> torch.Tensor:
    """torchvision's AutoAugment.forward, image by image, on the given draws."""
    table = aa.policy_table(x.shape[2], x.shape[3])
    out = []
    for i in range(len(x)):
        img = x[i]
        for stage in range(2):
            if draw.applied[i, stage]:
                name = table[int(draw.policy[i])][stage][0]
                magnitude = float(draw.magnitude[i, stage])
                img = _apply_op(img, name, magnitude, InterpolationMode.NEAREST, None)
        out.append(img)
    return torch.stack(out)


# ------------------------------------------------------------------------------ AutoAugment
def test_the_policy_is_torchvisions_cifar10_table() -> None:
    theirs = AutoAugment(AutoAugmentPolicy.CIFAR10).policies
    ours = aa.policy_table(32, 32)
    assert len(ours) == 25
    assert [[(op[0], op[1]) for op in sub] for sub in ours] == [
        [(name, p) for name, p, _ in sub] for sub in theirs
    ]
    # Magnitude bins for a 32-px image, e.g. TranslateX bin 9 is 150/331 * 32 pixels.
    assert ours[1][1] == ("TranslateX", 0.3, pytest.approx(150 / 331 * 32, rel=1e-6))
    assert ours[5][1] == ("Posterize", 0.3, 5.0)


@pytest.mark.parametrize(("channels", "size", "n"), [(3, 32, 400), (1, 8, 200)])
def test_batch_equals_torchvisions_per_image_transform_on_the_same_draws(
    channels: int, size: int, n: int
) -> None:
    x = random_images(n, channels, size, seed=channels)
    draw = aa.draw_autoaugment(n, size, size, torch.Generator().manual_seed(5))
    assert bool(draw.applied.any(dim=1).all()) is False  # some images keep both operations off
    ours = aa.apply_autoaugment(x, draw)
    assert torch.equal(ours, torchvision_per_image(x, draw))
    assert not torch.equal(ours, x)


def test_sub_policy_and_operation_frequencies_match_torchvision() -> None:
    """Per image, (sub-policy, op 1 applied, op 2 applied, signs) as torchvision draws them."""
    n = 20_000
    table = aa.policy_table(32, 32)
    p = torch.tensor([[op[1] for op in sub] for sub in table])
    draw = aa.draw_autoaugment(n, 32, 32, torch.Generator().manual_seed(0))
    ours = draw.policy * 4 + draw.applied[:, 0] * 2 + draw.applied[:, 1]
    theirs = []
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(n):
            policy, probs, _ = AutoAugment.get_params(len(table))  # forward's own draw
            applied = [bool(probs[i] <= p[policy, i]) for i in range(2)]  # forward's rule
            theirs.append(policy * 4 + applied[0] * 2 + applied[1])
    counts = np.stack(
        [np.bincount(ours.numpy(), minlength=100), np.bincount(theirs, minlength=100)]
    )
    keep = counts.sum(0) > 0  # cells of p = 0 or 1 are empty in both
    assert stats.chi2_contingency(counts[:, keep]).pvalue > P_VALUE
    per_policy = np.bincount(draw.policy.numpy(), minlength=25)
    assert stats.chisquare(per_policy).pvalue > P_VALUE  # uniform over the 25 sub-policies
    # Never applied when p = 0 (sub-policy 14's Invert), always when p = 1 is absent here.
    assert not draw.applied[draw.policy == 14, 1].any()
    signed = torch.tensor([[aa.SIGNED[op[0]] for op in sub] for sub in table])[draw.policy]
    signs = np.sign(draw.magnitude[draw.applied & signed & (draw.magnitude != 0)].numpy())
    assert stats.binomtest(int((signs > 0).sum()), len(signs)).pvalue > P_VALUE


# ------------------------------------------------------------------------------ Cutout
def balms_cutout(h: int, w: int, y: int, x: int, length: int = 16) -> np.ndarray:
    """BALMS's Cutout mask for one image given its centre: 0 inside the clipped hole."""
    mask = np.ones((h, w), np.float32)
    y1, y2 = np.clip(y - length // 2, 0, h), np.clip(y + length // 2, 0, h)
    x1, x2 = np.clip(x - length // 2, 0, w), np.clip(x + length // 2, 0, w)
    mask[y1:y2, x1:x2] = 0.0
    return mask


def test_cutout_is_balms_hole_at_the_drawn_centre() -> None:
    n = 500
    x = torch.full((n, 3, 32, 32), 200, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    out = aa.cutout(x, 16, gen)
    gen.set_state(state)
    ys = torch.randint(0, 32, (n,), generator=gen)
    xs = torch.randint(0, 32, (n,), generator=gen)
    for i in range(n):
        expected = torch.from_numpy(balms_cutout(32, 32, int(ys[i]), int(xs[i])) * 200)
        assert torch.equal(out[i].float(), expected.expand(3, 32, 32)), i


def test_cutout_centre_and_clipped_area_match_the_per_image_transform() -> None:
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    holes = aa.cutout(torch.ones(n, 1, 32, 32, dtype=torch.uint8), 16, gen)[:, 0] == 0
    gen.set_state(state)
    centres_y = torch.randint(0, 32, (n,), generator=gen)  # the centres our holes used
    assert stats.chisquare(np.bincount(centres_y.numpy(), minlength=32)).pvalue > P_VALUE
    # BALMS's per-image transform with NumPy's RNG: same clipped-area distribution.
    rng = np.random.RandomState(0)
    ref = np.array([balms_cutout(32, 32, rng.randint(32), rng.randint(32)) for _ in range(n)])
    ours_area = holes.sum(dim=(1, 2)).numpy()
    ref_area = (ref == 0).sum(axis=(1, 2))
    values = np.union1d(ours_area, ref_area)
    table = np.stack([[np.sum(a == v) for v in values] for a in (ours_area, ref_area)])
    assert stats.chi2_contingency(table).pvalue > P_VALUE
    # Closed form: a side is min(c + 8, 32) - max(c - 8, 0) for a uniform centre c (mean 14),
    # the two sides independent: mean area 196 of the unclipped 256.
    side = np.array([min(c + 8, 32) - max(c - 8, 0) for c in range(32)])
    assert side.mean() == 14.0 and ours_area.mean() == pytest.approx(196.0, rel=0.01)
    # Each pixel's chance of being in the hole, against the closed form (4 standard errors).
    inside = np.array([[(c - 8 <= r < c + 8) for c in range(32)] for r in range(32)]).mean(1)
    expected = np.outer(inside, inside)  # (32, 32)
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(holes.float().mean(0).numpy() - expected) < 4 * sigma + 1e-9)


# ------------------------------------------------------------------------------ the policy
def test_autoaugment_cutout_policy_composes_crop_flip_autoaugment_cutout() -> None:
    x = random_images(64, 3, 32, seed=9)
    policy = AutoAugmentCutout(padding=4, flip=True)
    gen_a, gen_b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    ours = policy(x, gen_a)
    ref = random_crop_flip(x, padding=4, flip=True, generator=gen_b)
    ref = aa.cutout(aa.autoaugment_cifar10(ref, gen_b), 16, gen_b)
    assert torch.equal(ours, ref)


def test_source_trains_with_the_chosen_policy_and_evaluates_without() -> None:
    x, y = random_images(40, 3, 32, seed=1), torch.arange(40) % 4
    source = TensorSource(x, y, mean=(0.5,) * 3, std=(0.25,) * 3, padding=4, flip=True, device=CPU)
    assert type(source.augment) is CropFlip
    use_policy(source, "autoaugment_cutout", "pretrain.policy")
    assert isinstance(source.augment, AutoAugmentCutout) and source.augment.padding == 4
    order = torch.arange(40)
    gen = torch.Generator().manual_seed(4)
    ((xb, _),) = list(source.batches(order, 40, train=True, generator=gen))
    expected = AutoAugmentCutout(padding=4, flip=True)(x, torch.Generator().manual_seed(4))
    assert torch.equal(xb, normalize(expected, (0.5,) * 3, (0.25,) * 3))
    ((xe, _),) = list(source.batches(order, 40, train=False, generator=gen))
    assert torch.equal(xe, normalize(x, (0.5,) * 3, (0.25,) * 3))


def test_a_source_without_policies_takes_only_its_own_augmentation() -> None:
    class Files:  # a file-based source: no set_policy
        pass

    use_policy(Files(), "crop_flip", "finetune.policy")
    with pytest.raises(ValueError, match=r"finetune.policy: expected crop_flip for Files"):
        use_policy(Files(), "autoaugment_cutout", "finetune.policy")


def test_policy_params_are_validated() -> None:
    cfg = config.parse({"pretrain": {"policy": "autoaugment_cutout"}})
    assert (cfg.pretrain.policy, cfg.finetune.policy) == ("autoaugment_cutout", "crop_flip")
    with pytest.raises(config.ConfigError, match=r"finetune.policy: expected one of crop_flip, a"):
        config.parse({"finetune": {"policy": "randaugment"}})
