"""Batched training augmentation on the data's own device: random crop with padding, random flip.

``random_crop_flip`` has the semantics of torchvision's
``RandomCrop((H, W), padding=p)`` (zero fill, applied to the uint8 image before normalisation)
followed by ``RandomHorizontalFlip(p=0.5)``, the CIFAR augmentation of the long-tail papers
(LDAM-DRW, BALMS, CDB-CE, FBL), with one independent draw per image. It works on a whole batch at
once on whatever device holds it: the batch is padded once and each output pixel is gathered from
per-image row and column indices, so the cost is two gathers over the output, with no Python loop
over the batch and no host sync. Video clips (B, C, T, H, W) get one draw per clip, shared by all
of its frames.

The random draws, in this order, all from ``generator`` on the images' device:
``torch.randint(0, 2p + 1, (2, B))`` for the top and left offsets into the padded image, then, if
``flip``, ``torch.rand(B) < 0.5`` for the flips. torchvision draws the same quantities from the
global generator, one image at a time.

``normalize`` turns uint8 images into the network's input: ``(x / 255 - mean) / std`` per channel,
as ``ToTensor`` + ``Normalize`` do.

Training augmentation policies (``pretrain.policy`` / ``finetune.policy``, registry
:data:`POLICIES`), each an object the source calls as ``policy(images, generator)``:
``crop_flip`` is the dataset's crop and flip above; ``autoaugment_cutout`` is the BALMS CIFAR
pipeline (jiawei-ren/BalancedMetaSoftmax-Classification, ``data/ImbalanceCIFAR.py``): crop and
flip, then AutoAugment with the CIFAR-10 policy, then Cutout with one 16×16 hole
(:mod:`longtail.data.autoaugment`), each image with its own draws.

Colour jitter (``pretrain.color_jitter`` / ``finetune.color_jitter``, :func:`use_color_jitter`) is
part of the policy: null keeps the dataset family's default (ImageNet-LT and Places-LT
ColorJitter(0.4, 0.4, 0.4, 0) as classifier-balancing and BALMS, iNaturalist and the in-memory
datasets none), a number s trains with ColorJitter(s, s, s, 0), 0 with none (FBL, whose
``loader/dataset.py`` has the ColorJitter line of its ImageNet / iNat / Places transform commented
out). Only sources whose transform has a jitter step (the image lists) take a strength above 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["POLICIES", "AutoAugmentCutout", "CropFlip", "create_policy", "normalize"]
__all__ += ["random_crop_flip", "use_color_jitter", "use_policy"]


def random_crop_flip(
    images: torch.Tensor, *, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Pad, randomly crop back to size and randomly flip every image (or clip) of a batch.

    Args:
        images: (B, C, H, W) images or (B, C, T, H, W) clips, uint8, on any device.
        padding: zero border added on each side before cropping; the crop's top and left offsets
            are uniform in ``[0, 2 * padding]``.
        flip: flip each image horizontally with probability 0.5.
        generator: source of the draws, on the same device as ``images``.

    Returns:
        uint8 tensor of the input's shape, on its device.
    """
    _check_images(images, padding, generator)
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    flat = images.reshape(batch, -1, height, width)  # (B, C*T, H, W): a clip's frames share a draw
    device = images.device
    top, left = torch.randint(
        0, 2 * padding + 1, (2, batch), generator=generator, device=device
    )  # (B,), (B,)
    rows = top[:, None] + torch.arange(height, device=device)  # (B, H) into the padded image
    cols = torch.arange(width, device=device).expand(batch, width)  # (B, W)
    if flip:
        flipped = torch.rand(batch, generator=generator, device=device) < 0.5  # (B,)
        cols = torch.where(flipped[:, None], width - 1 - cols, cols)
    cols = left[:, None] + cols
    out = _gather_crops(F.pad(flat, (padding,) * 4), rows, cols)
    return out.reshape(images.shape)


class CropFlip:
    """The dataset's crop and flip: :func:`random_crop_flip` (nothing when both are off).

    Args:
        padding: zero border of the random crop (0: no crop).
        flip: random horizontal flip.
    """

    def __init__(self, *, padding: int, flip: bool) -> None:
        self.padding, self.flip = padding, flip

    @property
    def active(self) -> bool:
        """Whether the policy changes an image at all."""
        return self.padding > 0 or self.flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.padding == 0 and not self.flip:
            return images
        return random_crop_flip(images, padding=self.padding, flip=self.flip, generator=generator)


class AutoAugmentCutout(CropFlip):
    """BALMS CIFAR: crop and flip, AutoAugment (CIFAR-10 policy), Cutout (one 16×16 hole)."""

    HOLE = 16  # BALMS: Cutout(n_holes=1, length=16)

    @property
    def active(self) -> bool:
        return True

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # Here, not at the top: the policy table comes from torchvision, which the default
        # crop-and-flip path never imports (a second of every training stage's start).
        from longtail.data.autoaugment import autoaugment_cifar10, cutout

        images = super().__call__(images, generator)
        images = autoaugment_cifar10(images, generator)
        return cutout(images, self.HOLE, generator)


POLICIES: dict[str, type[CropFlip]] = {
    "crop_flip": CropFlip,
    "autoaugment_cutout": AutoAugmentCutout,
}


def create_policy(name: str, *, padding: int, flip: bool) -> CropFlip:
    """The policy registered as ``name`` around the dataset's crop and flip."""
    if name not in POLICIES:
        raise ValueError(f'policy: expected one of {", ".join(POLICIES)}; got "{name}"')
    return POLICIES[name](padding=padding, flip=flip)


def use_policy(source: Any, name: str, key: str) -> None:
    """Give a training ``source`` the augmentation policy ``name`` (``key`` names the param).

    Sources that hold uint8 batches on the device (``TensorSource``: digits, CIFAR) take any
    policy through ``set_policy``; the others keep their own augmentation, which is what
    ``crop_flip`` means for them, and refuse any other policy.

    Raises:
        ValueError: an unknown name, or a policy other than ``crop_flip`` for a source without
            ``set_policy``.
    """
    set_policy: Callable[[str], None] | None = getattr(source, "set_policy", None)
    if set_policy is not None:
        set_policy(name)
        return
    if name != "crop_flip":
        raise ValueError(
            f"{key}: expected crop_flip for {type(source).__name__} (its own augmentation; "
            f"{name} runs on the in-memory datasets digits, cifar10, cifar100); got {name}"
        )


def use_color_jitter(source: Any, strength: float | None, key: str) -> None:
    """Give a training ``source`` ColorJitter(s, s, s, 0) of ``strength`` (None: its default).

    Raises:
        ValueError: a strength above 0 for a source without a jitter step (``set_color_jitter``).
    """
    if strength is None:
        return
    set_color_jitter: Callable[[float], None] | None = getattr(source, "set_color_jitter", None)
    if set_color_jitter is not None:
        set_color_jitter(strength)
        return
    if strength != 0:
        raise ValueError(
            f"{key}: expected null or 0 for {type(source).__name__} (its augmentation has no "
            f"colour jitter; a strength runs on the image lists imagenet_lt, places_lt, "
            f"inat2018); got {strength:g}"
        )


def normalize(
    images_uint8: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel, the input of the network.

    Args:
        images_uint8: (B, C, ...) uint8 images or clips.
        mean: per-channel mean of the images scaled to [0, 1], C values.
        std: per-channel standard deviation, C positive values.
        dtype: floating dtype of the result; the arithmetic is done in at least float32.

    Returns:
        Tensor of ``dtype`` with the input's shape, on its device.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim < 2:
        raise ValueError(
            "images_uint8: expected a uint8 tensor (B, C, ...), "
            f"got {images_uint8.dtype} of shape {tuple(images_uint8.shape)}"
        )
    channels = images_uint8.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean, std: expected {channels} values each (one per channel), "
            f"got {len(mean)} and {len(std)}"
        )
    if min(std) <= 0:
        raise ValueError(f"std: expected positive values, got {list(std)}")
    work = torch.promote_types(dtype, torch.float32)
    scale, shift = _affine(tuple(mean), tuple(std), images_uint8.ndim, images_uint8.device, work)
    return (images_uint8.to(work) * scale + shift).to(dtype)


@functools.lru_cache(maxsize=16)
def _affine(
    mean: tuple[float, ...],
    std: tuple[float, ...],
    ndim: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x * scale + shift == (x / 255 - mean) / std``, shaped (1, C, 1, ...) for broadcasting.

    Cached so that a training step does not copy two tiny tensors to the GPU (a host sync) for
    every batch.
    """
    shape = (1, len(mean)) + (1,) * (ndim - 2)
    std64 = torch.tensor(std, dtype=torch.float64)
    scale = 1.0 / (255.0 * std64)
    shift = -torch.tensor(mean, dtype=torch.float64) / std64
    return (
        scale.view(shape).to(device=device, dtype=dtype),
        shift.view(shape).to(device=device, dtype=dtype),
    )


def _gather_crops(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Pick rows, then columns, per image: (B, K, Hp, Wp) -> (B, K, H, W)."""
    batch, planes, _, padded_width = padded.shape
    height, width = rows.shape[1], cols.shape[1]
    row_index = rows[:, None, :, None].expand(batch, planes, height, padded_width)
    picked_rows = torch.gather(padded, 2, row_index)  # (B, K, H, Wp)
    col_index = cols[:, None, None, :].expand(batch, planes, height, width)
    return torch.gather(picked_rows, 3, col_index)  # (B, K, H, W)


def _check_images(images: torch.Tensor, padding: int, generator: torch.Generator) -> None:
    if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.ndim not in (4, 5):
        got = (
            f"{images.dtype} of shape {tuple(images.shape)}" if torch.is_tensor(images) else images
        )
        raise ValueError(
            f"images: expected uint8 (B, C, H, W) images or (B, C, T, H, W) clips, got {got}"
        )
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"padding: expected an integer >= 0, got {padding!r}")
    if generator.device.type != images.device.type:
        raise ValueError(
            f"generator: expected one on the images' device {images.device}, "
            f"got one on {generator.device}"
        )
