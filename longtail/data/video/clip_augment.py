"""Clip augmentation: CDB-CE's square crop, rotation and flip (vidaug), or a padded crop and flip.

EGTEA (CDB-CE, ``EGTEA_train.py:191``): training crops a 480×480 square at a random position of the
640×480 frames, rotates by a uniform angle in [-10°, 10°] (bilinear, black corners), flips
horizontally with probability 0.5 and resizes to 224; evaluation crops the centre square. One draw
per clip, shared by all its frames. Here the frames are extracted with short side ``frames.size``
(null: 224, CDB-CE's input), so the square crop is the input, with no resize. Moving digits:
``random_crop_flip`` with padding 2 and no flip (digits are chiral), the same crop for every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longtail.data.augment import random_crop_flip


@dataclass(frozen=True)
class ClipAugment:
    """A family's clip augmentation; every draw is per clip and shared by its frames.

    ``square``: CDB-CE's, a random square of the short side in training (centre in evaluation),
    rotation in ``[-degrees, degrees]`` and horizontal flip. Otherwise ``random_crop_flip`` with
    ``padding`` and ``flip`` in training and nothing in evaluation.
    """

    square: bool = False
    padding: int = 0
    flip: bool = False
    degrees: float = 0.0

    def __call__(
        self, clips: torch.Tensor, *, train: bool, generator: torch.Generator
    ) -> torch.Tensor:
        """Augment (B, C, T, H, W) uint8 clips; returns uint8 (B, C, T, H', W')."""
        if self.square:
            return square_crop(
                clips, train=train, flip=self.flip, degrees=self.degrees, generator=generator
            )
        if train and (self.padding > 0 or self.flip):
            return random_crop_flip(
                clips, padding=self.padding, flip=self.flip, generator=generator
            )
        return clips


def square_crop(
    clips: torch.Tensor, *, train: bool, flip: bool, degrees: float, generator: torch.Generator
) -> torch.Tensor:
    """CDB-CE's crop: a square of the short side, random (train) or central, then flip and rotate.

    The draws, all from ``generator`` on the clips' device, in order: ``rand(B)`` for the crop
    offsets along the long side, ``rand(B)`` for the flips (< 0.5 flips), ``rand(B)`` for the
    angles (uniform in ``[-degrees, degrees]``).
    """
    batch, _, _, height, width = clips.shape
    side, long_axis = min(height, width), (3 if height > width else 4)
    slack = max(height, width) - side
    if not train:
        return clips.narrow(long_axis, slack // 2, side)
    device = clips.device
    offsets = (torch.rand(batch, generator=generator, device=device) * (slack + 1)).long()
    offsets = offsets.clamp(max=slack)  # (B,)
    index = offsets[:, None] + torch.arange(side, device=device)  # (B, side)
    shape = [batch, 1, 1, 1, 1]
    shape[long_axis] = side
    index = index.view(shape).expand(*clips.shape[:long_axis], side, *clips.shape[long_axis + 1 :])
    cropped = clips.gather(long_axis, index)  # (B, C, T, side, side)
    flips = torch.rand(batch, generator=generator, device=device) < 0.5
    angles = (torch.rand(batch, generator=generator, device=device) * 2 - 1) * degrees
    return _flip_rotate(cropped, flips if flip else torch.zeros_like(flips), angles)


def _flip_rotate(clips: torch.Tensor, flips: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Flip and rotate square clips about their centre (bilinear, zero fill), one per clip."""
    batch, channels, steps, side, _ = clips.shape
    radians = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(radians), torch.sin(radians)
    sign = 1.0 - 2.0 * flips.double()  # -1 mirrors the output's x before rotating
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64, device=clips.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sign, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * sign, cos
    flat = clips.reshape(batch, channels * steps, side, side).float()  # frames share the warp
    grid = F.affine_grid(theta.float(), list(flat.shape), align_corners=False)
    warped = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.round_().clamp_(0, 255).to(torch.uint8).reshape(clips.shape)
