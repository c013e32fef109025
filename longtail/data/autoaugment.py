"""AutoAugment (CIFAR-10 policy) and Cutout on whole uint8 batches, one independent draw per image.

Sources: Cubuk et al., "AutoAugment: Learning Augmentation Policies from Data", CVPR 2019, with the
CIFAR-10 policy, operations and magnitudes exactly as torchvision defines them
(``torchvision.transforms.AutoAugment(AutoAugmentPolicy.CIFAR10)``, whose table and magnitude
bins are read from torchvision itself, not copied); DeVries and Taylor, "Improved Regularization of
Convolutional Neural Networks with Cutout", 2017, as the BALMS CIFAR configs use it
(jiawei-ren/BalancedMetaSoftmax-Classification, ``data/autoaugment.py``, ``Cutout(n_holes=1,
length=16)``): a hole centre uniform over the pixels, the 16×16 square around it clipped at the
border, zeroed after ``ToTensor`` (so 0 in uint8) and before ``Normalize``.

Per image, torchvision's ``AutoAugment.forward`` draws a sub-policy uniformly from the 25, then for
each of its two operations applies it when ``u <= p`` (``u`` uniform) with its magnitude negated
when a fair sign bit is 0 (signed operations only), the second operation on the output of the
first. Here the same quantities are drawn for the whole batch at once from ``generator`` on the
images' device, in this order: ``randint(0, 25, (B,))`` sub-policies, ``rand(B, 2)`` the two
``u``, ``randint(0, 2, (B, 2))`` the sign bits; :func:`cutout` then draws ``randint(0, H, (B,))``
and ``randint(0, W, (B,))`` hole centres. Each operation is then applied to the images that drew
it, in one batched call per operation and stage, with torchvision's tensor arithmetic (blends in
float32 truncated to uint8, nearest-neighbour affine resampling with zero fill, per-channel
autocontrast and histogram equalisation), so an image comes out as torchvision's per-image
transform makes it from the same draws. Hidden cost: selecting the images of an operation is a
host sync (one per operation and stage, up to 26 per batch).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import AutoAugment, AutoAugmentPolicy
from torchvision.transforms.functional import _get_inverse_affine_matrix

__all__ = ["AutoAugmentDraw", "autoaugment_cifar10", "cutout", "draw_autoaugment"]

NUM_BINS = 10  # torchvision's magnitude bins


@functools.lru_cache(maxsize=8)
def policy_table(height: int, width: int) -> tuple[tuple[tuple[str, float, float], ...], ...]:
    """torchvision's CIFAR-10 policy: 25 sub-policies of two ``(op, p, unsigned magnitude)``.

    The magnitude is torchvision's ``float(magnitudes[bin])`` for an image of this size (0 for
    the operations without one); whether it is signed is in :data:`SIGNED`.
    """
    aa = AutoAugment(AutoAugmentPolicy.CIFAR10)
    space = aa._augmentation_space(NUM_BINS, (height, width))
    table = []
    for sub in aa.policies:
        ops = []
        for name, p, bin_id in sub:
            magnitudes, _ = space[name]
            ops.append(
                (name, float(p), float(magnitudes[bin_id].item()) if bin_id is not None else 0.0)
            )
        table.append(tuple(ops))
    return tuple(table)


def _signed() -> dict[str, bool]:
    space = AutoAugment(AutoAugmentPolicy.CIFAR10)._augmentation_space(NUM_BINS, (32, 32))
    return {name: bool(signed) for name, (_, signed) in space.items()}


SIGNED = _signed()


class AutoAugmentDraw:
    """The random draws of one batch: sub-policy, whether each operation applies, its magnitude.

    Attributes:
        policy: (B,) int64 sub-policy of each image.
        applied: (B, 2) bool, operation ``i`` of the image's sub-policy applies.
        magnitude: (B, 2) float64 signed magnitude of each operation (torchvision's Python float).
    """

    def __init__(self, policy: Tensor, applied: Tensor, magnitude: Tensor) -> None:
        self.policy, self.applied, self.magnitude = policy, applied, magnitude


def draw_autoaugment(
    batch: int, height: int, width: int, generator: torch.Generator
) -> AutoAugmentDraw:
    """Draw sub-policies, application bits and signs for ``batch`` images (module docstring)."""
    device = generator.device
    table = policy_table(height, width)
    policy = torch.randint(0, len(table), (batch,), generator=generator, device=device)
    u = torch.rand(batch, 2, generator=generator, device=device)
    sign_bit = torch.randint(0, 2, (batch, 2), generator=generator, device=device)
    p = torch.tensor([[op[1] for op in sub] for sub in table], device=device)  # (25, 2)
    mag = torch.tensor([[op[2] for op in sub] for sub in table], dtype=torch.float64, device=device)
    signed = torch.tensor([[SIGNED[op[0]] for op in sub] for sub in table], device=device)
    negate = signed[policy] & (sign_bit == 0)
    magnitude = torch.where(negate, -mag[policy], mag[policy])  # (B, 2)
    # torchvision compares the float32 draw with the Python float p: in float64, exactly as there.
    applied = u.double() <= p[policy].double()
    return AutoAugmentDraw(policy, applied, magnitude)


def autoaugment_cifar10(images: Tensor, generator: torch.Generator) -> Tensor:
    """AutoAugment with torchvision's CIFAR-10 policy, an independent draw per image.

    Args:
        images: (B, C, H, W) uint8 (C = 1 or 3), on any device.
        generator: source of the draws, on the images' device.

    Returns:
        (B, C, H, W) uint8.
    """
    _check(images)
    draw = draw_autoaugment(images.shape[0], images.shape[2], images.shape[3], generator)
    return apply_autoaugment(images, draw)


def apply_autoaugment(images: Tensor, draw: AutoAugmentDraw) -> Tensor:
    """Apply the two stages of ``draw`` to ``images`` (B, C, H, W) uint8."""
    table = policy_table(images.shape[2], images.shape[3])
    names = sorted({op[0] for sub in table for op in sub})
    ids = {name: i for i, name in enumerate(names)}
    op_of = torch.tensor([[ids[op[0]] for op in sub] for sub in table], device=images.device)
    out = images
    for stage in range(2):
        stage_op = op_of[draw.policy, stage]  # (B,)
        current, out = out, out.clone()
        for name in names:
            idx = torch.nonzero(draw.applied[:, stage] & (stage_op == ids[name])).flatten()
            if idx.numel() == 0:  # host sync
                continue
            out[idx] = OPS[name](current[idx], draw.magnitude[idx, stage])
    return out


def cutout(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Zero one ``size``×``size`` hole per image, centred on a uniform pixel, clipped at the border.

    As BALMS's ``Cutout``: centre ``(y, x)`` uniform over the H×W pixels; rows
    ``clip(y - size//2, 0, H) .. clip(y + size//2, 0, H)`` (end excluded), columns likewise.

    Args:
        images: (B, C, H, W) uint8.
        size: side of the hole before clipping.
        generator: source of the centres, on the images' device.
    """
    _check(images)
    batch, _, height, width = images.shape
    device = images.device
    y = torch.randint(0, height, (batch,), generator=generator, device=device)
    x = torch.randint(0, width, (batch,), generator=generator, device=device)
    half = size // 2
    rows = torch.arange(height, device=device)  # (H,)
    cols = torch.arange(width, device=device)  # (W,)
    in_rows = (rows >= (y - half).clamp(0, height)[:, None]) & (
        rows < (y + half).clamp(0, height)[:, None]
    )  # (B, H)
    in_cols = (cols >= (x - half).clamp(0, width)[:, None]) & (
        cols < (x + half).clamp(0, width)[:, None]
    )  # (B, W)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
    return images.masked_fill(hole, 0)


# ------------------------------------------------------------------------------------ operations
# Each takes (n, C, H, W) uint8 images and (n,) float64 signed magnitudes, and returns uint8.
def _factor(magnitude: Tensor) -> tuple[Tensor, Tensor]:
    """``(float32(1 + m), float32(1 - (1 + m)))`` as (n, 1, 1, 1): torchvision's blend ratios."""
    ratio = 1.0 + magnitude
    return (
        ratio.float().view(-1, 1, 1, 1),
        (1.0 - ratio).float().view(-1, 1, 1, 1),
    )


def _blend(images: Tensor, other: Tensor, magnitude: Tensor) -> Tensor:
    """``(r * img + (1 - r) * other).clamp(0, 255)`` truncated to uint8, ``r = 1 + m``."""
    ratio, rest = _factor(magnitude)
    return (ratio * images.float() + rest * other.float()).clamp(0, 255).to(torch.uint8)


def _grayscale(images: Tensor) -> Tensor:
    """(n, 1, H, W) uint8 luma (ITU-R 601-2, as torchvision), or the image itself if grey."""
    if images.shape[1] != 3:
        return images.clone()
    r, g, b = images.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8).unsqueeze(1)


def _brightness(images: Tensor, magnitude: Tensor) -> Tensor:
    return _blend(images, torch.zeros_like(images), magnitude)


def _color(images: Tensor, magnitude: Tensor) -> Tensor:
    if images.shape[1] == 1:  # torchvision (like PIL) leaves grey images alone
        return images
    return _blend(images, _grayscale(images), magnitude)


def _contrast(images: Tensor, magnitude: Tensor) -> Tensor:
    mean = _grayscale(images).float().mean(dim=(-3, -2, -1), keepdim=True)  # (n, 1, 1, 1)
    ratio, rest = _factor(magnitude)
    return (ratio * images.float() + rest * mean).clamp(0, 255).to(torch.uint8)


def _sharpness(images: Tensor, magnitude: Tensor) -> Tensor:
    if images.shape[-1] <= 2 or images.shape[-2] <= 2:
        return images
    channels = images.shape[1]
    kernel = torch.ones((3, 3), dtype=torch.float32, device=images.device)
    kernel[1, 1] = 5.0
    kernel /= kernel.sum()
    kernel = kernel.expand(channels, 1, 3, 3)
    blurred = F.conv2d(images.float(), kernel, groups=channels).round().to(torch.uint8)
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = blurred
    return _blend(images, degenerate, magnitude)


def _posterize(images: Tensor, magnitude: Tensor) -> Tensor:
    bits = magnitude.long()  # (n,)
    mask = (256 - 2 ** (8 - bits)).to(torch.uint8).view(-1, 1, 1, 1)
    return images & mask


def _solarize(images: Tensor, magnitude: Tensor) -> Tensor:
    threshold = magnitude.float().view(-1, 1, 1, 1)
    return torch.where(images.float() >= threshold, 255 - images, images)


def _invert(images: Tensor, magnitude: Tensor) -> Tensor:
    return 255 - images


def _autocontrast(images: Tensor, magnitude: Tensor) -> Tensor:
    low = images.amin(dim=(-2, -1), keepdim=True).float()  # (n, C, 1, 1)
    high = images.amax(dim=(-2, -1), keepdim=True).float()
    scale = 255.0 / (high - low)
    flat = ~torch.isfinite(scale)
    low = torch.where(flat, 0.0, low)
    scale = torch.where(flat, 1.0, scale)
    return ((images - low) * scale).clamp(0, 255).to(torch.uint8)


def _equalize(images: Tensor, magnitude: Tensor) -> Tensor:
    """torchvision's per-channel equalisation, every (image, channel) at once."""
    n, c, h, w = images.shape
    flat = images.reshape(n * c, h * w).long()  # (K, P)
    offsets = torch.arange(n * c, device=images.device)[:, None] * 256
    hist = torch.bincount((flat + offsets).flatten(), minlength=n * c * 256).view(n * c, 256)
    # Sum of the non-zero bins but the last one: every pixel except those at the channel's maximum.
    top = flat.amax(dim=1, keepdim=True)  # (K, 1)
    step = torch.div(h * w - hist.gather(1, top), 255, rounding_mode="floor")  # (K, 1)
    safe = step.clamp(min=1)
    lut = torch.div(
        hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor"
    )
    lut = F.pad(lut, [1, 0])[:, :-1].clamp(0, 255)  # (K, 256)
    mapped = lut.gather(1, flat)  # (K, P)
    out = torch.where(step == 0, flat, mapped)
    return out.to(torch.uint8).view(n, c, h, w)


def _affine(images: Tensor, matrices: list[list[float]]) -> Tensor:
    """Nearest-neighbour resampling with zero fill at torchvision's inverse affine ``matrices``."""
    n, _, h, w = images.shape
    device = images.device
    theta = torch.tensor(matrices, dtype=torch.float32, device=device).view(n, 2, 3)
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, device=device))
    base[..., 1].copy_(
        torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, device=device).unsqueeze_(-1)
    )
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=device)
    rescaled = theta.transpose(1, 2) / scale  # (n, 3, 2)
    grid = base.view(1, h * w, 3).expand(n, h * w, 3).bmm(rescaled).view(n, h, w, 2)
    out = F.grid_sample(
        images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out.round().to(torch.uint8)


def _geometric(build: object) -> object:
    """An operation from ``build(magnitude, h, w) -> inverse affine matrix`` (one per image)."""

    def op(images: Tensor, magnitude: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        matrices = [build(m, h, w) for m in magnitude.tolist()]  # host sync: the magnitudes
        return _affine(images, matrices)

    return op


def _rotate_matrix(angle: float, h: int, w: int) -> list[float]:
    return _get_inverse_affine_matrix([0.0, 0.0], -angle, [0.0, 0.0], 1.0, [0.0, 0.0])


def _translate_x_matrix(m: float, h: int, w: int) -> list[float]:
    return _get_inverse_affine_matrix([0.0, 0.0], 0.0, [float(int(m)), 0.0], 1.0, [0.0, 0.0])


def _translate_y_matrix(m: float, h: int, w: int) -> list[float]:
    return _get_inverse_affine_matrix([0.0, 0.0], 0.0, [0.0, float(int(m))], 1.0, [0.0, 0.0])


def _shear_center(h: int, w: int) -> list[float]:
    return [0.0 - w * 0.5, 0.0 - h * 0.5]  # torchvision's center=[0, 0], relative to the middle


def _shear_x_matrix(m: float, h: int, w: int) -> list[float]:
    shear = [math.degrees(math.atan(m)), 0.0]
    return _get_inverse_affine_matrix(_shear_center(h, w), 0.0, [0.0, 0.0], 1.0, shear)


def _shear_y_matrix(m: float, h: int, w: int) -> list[float]:
    shear = [0.0, math.degrees(math.atan(m))]
    return _get_inverse_affine_matrix(_shear_center(h, w), 0.0, [0.0, 0.0], 1.0, shear)


OPS = {
    "AutoContrast": _autocontrast,
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Posterize": _posterize,
    "Rotate": _geometric(_rotate_matrix),
    "Sharpness": _sharpness,
    "ShearX": _geometric(_shear_x_matrix),
    "ShearY": _geometric(_shear_y_matrix),
    "Solarize": _solarize,
    "TranslateX": _geometric(_translate_x_matrix),
    "TranslateY": _geometric(_translate_y_matrix),
}


def _check(images: Tensor) -> None:
    if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.ndim != 4:
        got = (
            f"{images.dtype} of shape {tuple(images.shape)}" if torch.is_tensor(images) else images
        )
        raise ValueError(f"images: expected uint8 (B, C, H, W) images, got {got}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected 1 or 3 channels, got {images.shape[1]}")
