"""Frame stores: how the extracted frames of one clip are kept on disk, one file per clip.

Picked by name (``frames.store``; null: the family's, :class:`longtail.data.base.FrameDefaults`):

``npy``
    One (T, H, W, 3) uint8 RGB array per clip (``<clip>.npy``): no decoding on read, sampled
    frames read memory-mapped. 150 KB a frame at EGTEA's 224×299: about 211 GB for its 1.05 M
    frames, so kept for small sets (the moving-digits default, 3 KB a frame at 32×32).
``jpeg``
    CDB-CE keeps every frame as a JPEG (hitachi-rd-cv/CDB-loss, ``EGTEA/data/extract_frames.py:29``,
    ``cv2.imwrite`` at OpenCV's default quality 95, full 640×480 frames, one file per frame). Here
    the frames are JPEG-encoded by OpenCV at ``frames.quality`` (90: 95 at 224 px projects to
    24.4 GB for EGTEA on generated clips, too close to a 25 GB budget; BENCHMARKS.md) after the
    resize to the training size, and one clip's JPEGs are concatenated into one file
    (``<clip>.jpgs``), so that a dataset of 1.05 M frames is 10 K files for DVC to track, not
    1.05 M. Layout, little-endian:
    ``b"LTJPEGS1"``, ``uint32`` T, H, W, then ``uint64`` offsets (T + 1, from the start of the
    JPEG data), then the JPEG data; frame ``t`` is bytes ``[offsets[t], offsets[t + 1])``, a
    standard JPEG file (``cv2.imdecode`` or any decoder reads it). A read decodes only the
    sampled frames. Bytes per frame and read speed: BENCHMARKS.md (``benchmarks.extract_speed``).

Every store writes atomically (``longtail.io``) and returns RGB frames.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import cv2
import numpy as np

from longtail import io
from longtail.registry import Registry

JPEG_MAGIC = b"LTJPEGS1"
_HEADER = struct.Struct("<8s3I")  # magic, T, H, W


class Store(Protocol):
    """One clip's frames in one file: written once, read whole or by frame index."""

    name: str
    suffix: str

    def write(self, path: Path, clip: np.ndarray) -> None:
        """Write (T, H, W, 3) uint8 RGB ``clip`` to ``path`` atomically."""
        ...

    def dump(self, f: BinaryIO, clip: np.ndarray) -> None:
        """Write ``clip``'s file content to the open binary file ``f``."""
        ...

    def shape(self, path: Path) -> tuple[int, int, int]:
        """(T, H, W) of the stored clip, from its header only."""
        ...

    def read(self, path: Path) -> np.ndarray:
        """Every frame, (T, H, W, 3) uint8 RGB."""
        ...

    def read_frames(self, path: Path, index: Sequence[int]) -> np.ndarray:
        """Frames ``index`` (in that order, repeats allowed), (len(index), H, W, 3) uint8 RGB."""
        ...


@dataclass(frozen=True)
class NpyStore:
    """Raw uint8 arrays, ``.npy``."""

    name: str = "npy"
    suffix: str = ".npy"

    def write(self, path: Path, clip: np.ndarray) -> None:
        io.save_npy(path, clip)

    def dump(self, f: BinaryIO, clip: np.ndarray) -> None:
        np.save(f, clip)

    def shape(self, path: Path) -> tuple[int, int, int]:
        t, h, w, _ = np.load(path, mmap_mode="r").shape
        return int(t), int(h), int(w)

    def read(self, path: Path) -> np.ndarray:
        return np.load(path)

    def read_frames(self, path: Path, index: Sequence[int]) -> np.ndarray:
        return np.asarray(np.load(path, mmap_mode="r")[np.asarray(index)])


@dataclass(frozen=True)
class JpegStore:
    """A clip's frames as JPEGs (OpenCV, ``quality``) concatenated in one ``.jpgs`` file."""

    quality: int = 90
    name: str = "jpeg"
    suffix: str = ".jpgs"

    def encode(self, clip: np.ndarray) -> bytes:
        """The file's bytes for (T, H, W, 3) uint8 RGB ``clip``."""
        t, h, w, _ = clip.shape
        params = [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        jpegs = []
        for frame in clip:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
            assert ok, "OpenCV failed to encode a uint8 frame as JPEG"
            jpegs.append(data.tobytes())
        offsets = np.zeros(t + 1, dtype="<u8")
        np.cumsum([len(j) for j in jpegs], out=offsets[1:])
        return b"".join([_HEADER.pack(JPEG_MAGIC, t, h, w), offsets.tobytes(), *jpegs])

    def write(self, path: Path, clip: np.ndarray) -> None:
        with io.atomic_path(path) as tmp:
            Path(tmp).write_bytes(self.encode(clip))

    def dump(self, f: BinaryIO, clip: np.ndarray) -> None:
        f.write(self.encode(clip))

    def _index(self, f: BinaryIO) -> tuple[tuple[int, int, int], np.ndarray]:
        magic, t, h, w = _HEADER.unpack(f.read(_HEADER.size))
        if magic != JPEG_MAGIC:
            raise ValueError(
                f"{f.name}: expected a .jpgs frame file (magic {JPEG_MAGIC!r}), got {magic!r}"
            )
        offsets = np.frombuffer(f.read(8 * (t + 1)), dtype="<u8")
        return (t, h, w), offsets

    def shape(self, path: Path) -> tuple[int, int, int]:
        with open(path, "rb") as f:
            return self._index(f)[0]

    def read(self, path: Path) -> np.ndarray:
        with open(path, "rb") as f:
            (t, _, _), _ = self._index(f)
        return self.read_frames(path, range(t))

    def read_frames(self, path: Path, index: Sequence[int]) -> np.ndarray:
        with open(path, "rb") as f:
            _, offsets = self._index(f)
            start = f.tell()
            decoded: dict[int, np.ndarray] = {}
            for i in sorted(set(int(i) for i in index)):  # each frame read and decoded once
                f.seek(start + int(offsets[i]))
                data = np.frombuffer(f.read(int(offsets[i + 1] - offsets[i])), dtype=np.uint8)
                decoded[i] = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return np.stack([decoded[int(i)] for i in index])


# ``frames.store``: name -> builder taking the JPEG quality (unused by npy).
STORES: Registry[Callable[[int], Store]] = Registry("frames.store")
STORES.add("npy", lambda quality: NpyStore())
STORES.add("jpeg", lambda quality: JpegStore(quality=quality))


def create(name: str, quality: int = 90) -> Store:
    """The store called ``name`` (``quality``: JPEG quality, 1-100, used by ``jpeg`` only)."""
    return STORES[name](quality)


def from_suffix(path: Path, quality: int = 90) -> Store:
    """The store that wrote ``path``, known by its suffix."""
    for name in STORES.names():
        store = create(name, quality)
        if Path(path).name.endswith(store.suffix):
            return store
    raise ValueError(f"{path}: expected a frame file ending in .npy or .jpgs")
