"""The verify pass of image-list datasets: every listed image decoded once, before any training.

ImageNet-LT, Places-LT and iNaturalist 2018 are read file by file during training; an image that
does not decode would stop a run hours in. ``inject_imbalance`` therefore decodes every listed
image with the decoder the training loader uses (``torchvision.io.decode_image``, RGB), in
``data.workers`` processes, and lists the ones that fail with the decoder's reason.

The result is cached per file in ``<cache>/verify/<md5 of the root>.json`` (``LONGTAIL_CACHE``,
default ``~/.cache/longtail``): a file whose size and modification time are unchanged is not
decoded again, so a rerun of the stage (another ``data.seed``, another val carve) costs a ``stat``
per image. What the stage does with the bad files is ``data.skip_bad``'s: ``false`` stops with
their list; ``true`` drops them from train and val, and keeps them in test, where ``evaluate``
scores them as wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from torchvision.io import ImageReadMode, decode_image, read_file

from longtail import io

Stat = tuple[int, int]  # (size in bytes, mtime in ns)


def decode_error(path: str) -> str | None:
    """Why ``path`` does not decode as an RGB image (None: it does)."""
    try:
        decode_image(read_file(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as err:
        return str(err).strip().splitlines()[-1][:200] or type(err).__name__
    return None


def _stat(path: str) -> Stat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def cache_file(root: str | Path) -> Path:
    """Where the verify results of the images under ``root`` are cached."""
    key = hashlib.md5(os.path.realpath(root).encode()).hexdigest()
    return io.cache_dir() / "verify" / f"{key}.json"


def verify(root: str | Path, paths: Iterable[str], workers: int) -> dict[str, str]:
    """Decode every image of ``paths`` (relative to ``root``) not verified before, in parallel.

    Returns:
        The bad images: relative path -> reason, in sorted order.
    """
    root = Path(root)
    cache_path = cache_file(root)
    cached = _load(cache_path)
    todo, results = [], {}
    for rel in sorted(set(paths)):
        stat = _stat(str(root / rel))
        entry = cached.get(rel)
        if stat is not None and entry is not None and tuple(entry[:2]) == stat:
            results[rel] = entry
        else:
            todo.append((rel, stat))
    errors = _decode_all([str(root / rel) for rel, _ in todo], workers)
    for (rel, stat), error in zip(todo, errors, strict=True):
        if stat is None:
            error = "file not found"
        results[rel] = [*(stat or (0, 0)), error]
    if todo:
        with io.atomic_path(cache_path) as tmp:
            tmp.write_text(json.dumps({**cached, **results}))
    print(f"verify: {len(results)} images, {len(todo)} decoded, {len(results) - len(todo)} cached")
    return {rel: entry[2] for rel, entry in results.items() if entry[2] is not None}


def _load(path: Path) -> dict[str, list]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache, or an unreadable one: verify everything again


def _decode_all(files: Sequence[str], workers: int) -> list[str | None]:
    if workers <= 1 or len(files) <= 1:
        return [decode_error(f) for f in files]
    chunk = max(1, min(256, len(files) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(decode_error, files, chunksize=chunk))
