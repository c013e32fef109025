"""TSN-style clip sampling, CDB-CE's ``createEGTEA`` (hitachi-rd-cv/CDB-loss, EGTEA/data/EGTEA.py).

The T frames of a clip are cut into S = ``frames.segments`` segments (null: the family's; EGTEA
CDB-CE's 10), segment ``i`` being frames ``[floor(i T / S), floor((i + 1) T / S))``. Training takes
one uniformly random frame of each segment; evaluation takes each segment's centre frame,
``start + len // 2`` (``frames.eval_frame: center``), or a random frame drawn once per clip from a
fixed seed (``random``: CDB-CE's val and test loaders, whose dataset leaves ``is_training`` at its
default True, EGTEA.py:21 and EGTEA_train.py:194, draw random frames at evaluation too). CDB-CE
draws from ``linspace(0, T - 1, S + 1)`` boundaries, which never reach the last frame and fail on an
empty segment; here the segments partition all T frames, and a clip with fewer frames than segments
gives segment ``i`` frame ``floor(i T / S)``: its frames repeat, in order (nearest-neighbour
stretching in time).
"""

from __future__ import annotations

import torch


def sample_frames(
    num_frames: torch.Tensor,
    segments: int,
    *,
    train: bool,
    generator: torch.Generator | None,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Frame indices of each clip, one per segment (TSN; see the module docstring).

    Args:
        num_frames: (B,) frame count of each clip, >= 1.
        segments: S, the number of segments (and of frames taken).
        train: one uniform frame per segment if True, else each segment's centre frame.
        generator: source of the training draws (unused in evaluation), on ``num_frames``'s device.
        draws: (B, S) uniforms in [0, 1) that pick the frame of each segment instead of the
            generator or the centre (``frames.eval_frame: random``).

    Returns:
        (B, S) int64 indices, non-decreasing along S.
    """
    n = num_frames.to(torch.int64)[:, None]  # (B, 1)
    i = torch.arange(segments, device=n.device)  # (S,)
    start = i * n // segments  # (B, S)
    length = ((i + 1) * n // segments - start).clamp(min=1)  # a clip shorter than S repeats frames
    if draws is None and not train:
        return start + length // 2
    if draws is None:
        assert generator is not None, "training draws need a generator"
        draws = torch.rand(start.shape, generator=generator, device=n.device, dtype=torch.float64)
    return start + torch.minimum((draws * length).long(), length - 1)
