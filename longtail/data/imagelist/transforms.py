"""The image-list transforms on uint8 tensors, bit-identical to torchvision's for the same seed.

Training: RandomResizedCrop(size) + RandomHorizontalFlip + ColorJitter(s, s, s, 0) (s: the
family's default or ``pretrain.color_jitter`` / ``finetune.color_jitter``; 0 none). Evaluation:
Resize(size * 256 / 224) + CenterCrop(size). Every random parameter is drawn from a
``torch.Generator`` with torchvision's algorithms (``torchvision.transforms.v2``), no global RNG.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as F


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high, generator=gen))  # float32, as torchvision


def resized_crop_box(
    height: int,
    width: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of RandomResizedCrop, torchvision's algorithm, drawn from ``gen``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return top, left, h, w
    # No box fitted in ten tries: the centre crop at the nearest allowed aspect ratio.
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(
    image: torch.Tensor, size: int, color_jitter: float, gen: torch.Generator
) -> torch.Tensor:
    """RandomResizedCrop + RandomHorizontalFlip + ColorJitter(s, s, s, 0) of (3, H, W) uint8.

    ``color_jitter`` is the strength s (0: no jitter, and no draws for it).
    """
    top, left, h, w = resized_crop_box(image.shape[-2], image.shape[-1], gen)
    image = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if float(torch.rand((), generator=gen)) < 0.5:
        image = F.horizontal_flip(image)
    if color_jitter > 0:
        # ColorJitter's draws: the order of its four operations, then the three factors (hue 0 is
        # never applied and draws nothing), each uniform in [max(0, 1 - s), 1 + s].
        order = torch.randperm(4, generator=gen).tolist()
        ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
        low, high = max(0.0, 1 - color_jitter), 1 + color_jitter
        factors = [_uniform(gen, low, high) for _ in ops]
        for k in order:
            if k < len(ops):
                image = ops[k](image, factors[k])
    return image


def eval_transform(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size * 256 / 224``, then CenterCrop(size): (3, size, size)."""
    image = F.resize(image, [int(size * 256 / 224)], antialias=True)
    return F.center_crop(image, [size, size])
