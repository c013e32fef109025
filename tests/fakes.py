"""Builders of tiny datasets in the exact layout their authors publish, for tests.

No machine that runs the tests can download the real datasets, so every download and prepare path
is exercised on these: a CIFAR python tarball with the published folder, file names and pickle keys
(random pixels), and an image folder of real JPEGs with classifier-balancing list files.
"""

from __future__ import annotations

import pickle
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_jpeg, write_file

from longtail import io

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer")
CIFAR10_NAMES += ("dog", "frog", "horse", "ship", "truck")


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Each class ``per_class`` times, shuffled (the published files are not sorted by class)."""
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the published files are protocol-2 pickles


def _cifar10_files(
    folder: Path, train_per_class: int, test_per_class: int, rng: np.random.Generator
) -> None:
    train = _labels(10, train_per_class, rng)
    for i, part in enumerate(np.array_split(np.arange(len(train)), 5), start=1):
        _dump(
            folder / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": train[part].tolist(),
                b"data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8),
                b"filenames": [f"img_{j}.png".encode() for j in part],
            },
        )
    test = _labels(10, test_per_class, rng)
    _dump(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test.tolist(),
            b"data": rng.integers(0, 256, (len(test), 3072), dtype=np.uint8),
            b"filenames": [f"test_{j}.png".encode() for j in range(len(test))],
        },
    )
    _dump(
        folder / "batches.meta",
        {
            b"num_cases_per_batch": len(train) // 5,
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": 3072,
        },
    )


def _cifar100_files(
    folder: Path, train_per_class: int, test_per_class: int, rng: np.random.Generator
) -> None:
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = _labels(100, per_class, rng)
        _dump(
            folder / split,
            {
                b"filenames": [f"{split}_{j}.png".encode() for j in range(len(fine))],
                b"batch_label": f"{split}ing batch 1 of 1".encode(),
                b"fine_labels": fine.tolist(),
                b"coarse_labels": (fine // 5).tolist(),
                b"data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
            },
        )
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [f"fine_{c:02d}".encode() for c in range(100)],
            b"coarse_label_names": [f"coarse_{c:02d}".encode() for c in range(20)],
        },
    )


def make_cifar_archive(
    path: str | Path,
    *,
    kind: str = "cifar10",
    train_per_class: int,
    test_per_class: int,
    seed: int = 0,
) -> str:
    """Write a ``.tar.gz`` laid out like the published CIFAR python archive; return its md5.

    ``cifar10``: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``;
    ``cifar100``: ``cifar-100-python/train``, ``test``, ``meta``. Pixels are random.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    folder_name = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[kind]
    staging = path.parent / f".{path.name}.staging"
    folder = staging / folder_name
    folder.mkdir(parents=True)
    write = _cifar10_files if kind == "cifar10" else _cifar100_files
    write(folder, train_per_class, test_per_class, rng)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=folder_name)
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()
    staging.rmdir()
    return io.md5sum(path)


def make_image_tree(
    root: str | Path,
    classes: Sequence[str],
    per_class: int | Sequence[int],
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> dict[str, list[str]]:
    """Write ``root/<class>/<k>.jpg`` real JPEGs of random pixels (H, W = ``size``).

    Returns:
        For every class, its image paths relative to ``root`` (posix), in file-name order.
    """
    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    counts = [per_class] * len(classes) if isinstance(per_class, int) else list(per_class)
    paths: dict[str, list[str]] = {}
    for name, count in zip(classes, counts, strict=True):
        (root / name).mkdir(parents=True, exist_ok=True)
        paths[name] = []
        for k in range(count):
            image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=gen)
            rel = f"{name}/{k:04d}.jpg"
            write_file(str(root / rel), encode_jpeg(image, quality=90))
            paths[name].append(rel)
    return paths


def make_list_files(
    directory: str | Path,
    splits: Mapping[str, Sequence[tuple[str, int]]],
    prefix: str = "ImageNet_LT",
) -> dict[str, Path]:
    """Write ``<prefix>_<split>.txt`` with one ``relative/path.jpg label`` line per sample."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        files[split] = directory / f"{prefix}_{split}.txt"
        files[split].write_text("".join(f"{path} {label}\n" for path, label in rows))
    return files


def downloaded_cifar(root: Path, *, test_per_class: int) -> dict[str, Path]:
    """CIFAR-10 (60 train images per class) and CIFAR-100 (12) fakes, each written as its
    published archive and put through the family's ``download`` into ``root/raw/<name>``."""
    from longtail.config import DataConfig
    from longtail.data import cifar

    out = {}
    for kind, per_class in (("cifar10", 60), ("cifar100", 12)):
        archive = root / f"{kind}.tar.gz"
        md5 = make_cifar_archive(
            archive, kind=kind, train_per_class=per_class, test_per_class=test_per_class
        )
        out[kind] = root / "raw" / kind
        cifar.download(DataConfig(name=kind, archive=str(archive), md5=md5), out[kind])
    return out
