"""The training loop's view of a video split: sampled, augmented, normalised clip batches.

Reads the frames that ``extract_frames`` stored (:mod:`longtail.data.frames`; one file per clip in
the frame store the extraction manifest names, :mod:`longtail.data.clipstore`) and drops the clips
the extraction listed as bad. A split that fits in ``DEVICE_CACHE_BYTES`` decoded is held on the
device whole; a larger one is read per batch, only the sampled frames (JPEGs decoded by a pool of
threads: OpenCV releases the GIL).

What the network is fed (``frames.*``, docs/video.md): ``channels`` ``rgb`` (the Kinetics
checkpoint's order) or ``bgr`` (OpenCV's, what CDB-CE feeds: ``cv2.imread`` with no swap,
EGTEA.py:57); ``normalize`` ``dataset`` (the family's mean and std: the Kinetics mean for EGTEA)
or ``none`` (raw 0..255 floats, CDB-CE's EGTEA input); ``eval_frame`` ``center`` or ``random``
(a draw per clip and segment fixed by ``frames.eval_seed``, so every evaluation of a clip sees the
same frames whatever the batch order: CDB-CE draws anew each time, unseeded).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from longtail.data import base, clipstore, frames
from longtail.data.augment import normalize
from longtail.data.video.clip_augment import ClipAugment
from longtail.data.video.sampling import sample_frames

# A split whose decoded frames take at most this many bytes is held on the device as one uint8
# tensor; a larger one is read per batch from the store (no FramesConfig key for it yet).
DEVICE_CACHE_BYTES = 4 * 2**30
CHANNEL_ORDER = {"rgb": (0, 1, 2), "bgr": (2, 1, 0)}  # indices into the stored RGB channels


class _DeviceClips:
    """Every clip of a split in one uint8 tensor (N, T_max, H, W, 3) on the device."""

    def __init__(
        self,
        paths: Sequence[Path],
        shape: tuple[int, int, int],
        device: torch.device,
        store: clipstore.Store,
    ) -> None:
        t_max, height, width = shape
        data = np.zeros((len(paths), t_max, height, width, 3), dtype=np.uint8)
        for row, path in enumerate(paths):
            clip = store.read(path)
            data[row, : len(clip)] = clip
        self.data = torch.from_numpy(data).to(device)

    def gather(self, idx: torch.Tensor, frame_idx: torch.Tensor) -> torch.Tensor:
        """(B, S, H, W, 3) uint8 frames ``frame_idx`` (B, S) of clips ``idx`` (B,)."""
        return self.data[idx[:, None], frame_idx]


class _DiskClips:
    """Clips read per batch from the store: only the sampled frames are read (and decoded)."""

    def __init__(
        self, paths: Sequence[Path], device: torch.device, store: clipstore.Store, threads: int
    ) -> None:
        self.paths, self.device, self.store = list(paths), device, store
        self.pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None

    def gather(self, idx: torch.Tensor, frame_idx: torch.Tensor) -> torch.Tensor:
        rows, frame_rows = idx.tolist(), frame_idx.cpu().numpy()  # host sync: the read needs them
        jobs = [(self.paths[r], f) for r, f in zip(rows, frame_rows, strict=True)]
        read = self.store.read_frames
        clips = (
            [read(p, f) for p, f in jobs]
            if self.pool is None
            else list(self.pool.map(lambda job: read(*job), jobs))
        )
        return torch.from_numpy(np.stack(clips)).to(self.device, non_blocking=True)


class ClipSource:
    """A split of clips: S frames sampled per clip, augmented alike across a clip, normalised.

    Args:
        paths: the clips' frame files, (T, H, W, 3) uint8 RGB in ``store``, frames of one size.
        num_frames: T of each clip.
        labels: (N,) integer labels.
        segments: S.
        mean, std: per-channel normalisation of frames scaled to [0, 1], in the fed channel order.
        augment: the family's augmentation.
        device: where batches are produced (and the clips held, if they fit).
        cache_bytes: the largest split held on the device; larger ones are read per batch.
        store: the frame store that wrote ``paths``.
        channels: ``rgb`` or ``bgr``, the order the network is fed.
        eval_draws: (N, S) uniforms in [0, 1) that fix each clip's evaluation frames (a random
            frame of each segment); None: the centre frames.
        readers: threads that read and decode a batch from disk.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        num_frames: Sequence[int],
        labels: torch.Tensor,
        *,
        frame_size: tuple[int, int],
        segments: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: ClipAugment,
        device: torch.device,
        cache_bytes: int = DEVICE_CACHE_BYTES,
        store: clipstore.Store | None = None,
        channels: str = "rgb",
        eval_draws: torch.Tensor | None = None,
        readers: int = 1,
    ) -> None:
        self.labels = labels.to(torch.int64).cpu()
        self.in_channels = 3
        self.segments, self.augment, self.device = segments, augment, device
        self.mean, self.std = tuple(mean), tuple(std)
        self.channel_order = CHANNEL_ORDER[channels]
        store = store if store is not None else clipstore.NpyStore()
        t_max = max(num_frames, default=1)
        size = len(paths) * t_max * frame_size[0] * frame_size[1] * 3
        self.cached = size <= cache_bytes
        self.store = (
            _DeviceClips(paths, (t_max, *frame_size), device, store)
            if self.cached
            else _DiskClips(paths, device, store, readers)
        )
        self.num_frames = torch.as_tensor(list(num_frames), dtype=torch.int64, device=device)
        self._labels_dev = self.labels.to(device)
        self.eval_draws = None if eval_draws is None else eval_draws.to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: torch.Tensor, batch_size: int, *, train: bool, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x (B, C, S, H, W) float normalised, y (B,))`` on the device, in ``order``."""
        order = order.to(self.device)
        for idx in order.split(batch_size):
            draws = None if train or self.eval_draws is None else self.eval_draws[idx]
            frame_idx = sample_frames(
                self.num_frames[idx], self.segments, train=train, generator=generator, draws=draws
            )  # (B, S)
            x = self.store.gather(idx, frame_idx).permute(0, 4, 1, 2, 3).contiguous()
            x = self.augment(x, train=train, generator=generator)  # (B, C, S, H', W') uint8
            if self.channel_order != CHANNEL_ORDER["rgb"]:
                x = x[:, list(self.channel_order)]
            yield normalize(x, self.mean, self.std), self._labels_dev[idx]


def feed_normalization(
    info_mean: Sequence[float], info_std: Sequence[float], cfg_normalize: str, channels: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` on the [0, 1] scale in the fed channel order.

    ``dataset``: the family's (``dataset.json``); ``none``: mean 0 and std 1 / 255, so that the
    network sees the raw 0..255 values (up to float rounding).
    """
    if cfg_normalize == "none":
        return (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)
    order = CHANNEL_ORDER[channels]
    return tuple(info_mean[c] for c in order), tuple(info_std[c] for c in order)


def open_clips(ctx: base.SourceContext, split: str, augment: ClipAugment) -> ClipSource:
    """A :class:`ClipSource` over ``split``'s extracted clips.

    Clips listed as bad (``frames.skip_bad``) are dropped from ``train`` and ``val``. From
    ``test`` they are dropped too, as they have no frames, but their labels stay in the source's
    ``unscored_labels``: ``evaluate`` counts them as wrong, so the test set never shrinks
    silently.
    """
    info = base.read_json(ctx.prepared_dir / "dataset.json")
    cfg = frames.resolve(ctx.frames, info["family"])
    extracted = frames.read_manifest(ctx.frames_dir)
    manifest = base.read_manifest(ctx.prepared_dir, split)
    draws = None
    if cfg.eval_frame == "random":  # drawn for every listed clip: dropping one moves no other
        generator = torch.Generator().manual_seed(cfg.eval_seed)
        draws = torch.rand(len(manifest), cfg.segments, generator=generator, dtype=torch.float64)
    bad = manifest["clip"].isin({entry["clip"] for entry in extracted["bad_clips"]})
    unscored = torch.tensor(manifest["label"][bad].to_numpy(), dtype=torch.int64)
    if draws is not None:
        draws = draws[torch.from_numpy(~bad.to_numpy())]
    manifest = manifest[~bad].reset_index(drop=True)
    per_clip = extracted["per_clip"]
    missing = [c for c in manifest["clip"] if c not in per_clip]
    if missing:
        raise ValueError(
            f"{ctx.frames_dir}: expected frames of every {split} clip, {len(missing)} "
            f"are missing (e.g. {missing[0]}): rerun extract_frames"
        )
    sizes = {(per_clip[c]["height"], per_clip[c]["width"]) for c in manifest["clip"]}
    if len(sizes) > 1:
        raise ValueError(f"{split}: expected frames of one size in a split, got {sorted(sizes)}")
    store = clipstore.create(extracted.get("format", "npy"))
    mean, std = feed_normalization(info["mean"], info["std"], cfg.normalize, cfg.channels)
    source = ClipSource(
        [frames.clip_output(ctx.frames_dir, c, store.suffix) for c in manifest["clip"]],
        [per_clip[c]["frames"] for c in manifest["clip"]],
        torch.tensor(manifest["label"].to_numpy(), dtype=torch.int64),
        frame_size=sizes.pop() if sizes else (1, 1),
        segments=cfg.segments,
        mean=mean,
        std=std,
        augment=augment,
        device=ctx.device,
        store=store,
        channels=cfg.channels,
        eval_draws=draws,
        readers=min(8, os.cpu_count() or 1),
    )
    if split == "test":
        source.unscored_labels = unscored
    return source
