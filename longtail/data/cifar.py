"""CIFAR-10-LT and CIFAR-100-LT from the published python tarballs (Krizhevsky, 2009).

Download: the archive named by ``data.archive`` (a local path or an http(s) URL), else the URL that
torchvision downloads from. Its md5 is checked *before* anything is unpacked (``data.md5: auto`` is
the published archive md5 that torchvision pins, a hex string overrides it, ``null`` skips the check
and says so), and it is unpacked under a temporary name, member names checked, so a corrupt or
truncated archive leaves no partial ``data/raw/<name>``. The raw folder keeps the published folder
(``cifar-10-batches-py/`` or ``cifar-100-python/``) and a ``source.json``.

Protocol of LDAM-DRW (Cao et al., NeurIPS 2019), used unchanged by BALMS (Ren et al., NeurIPS 2020),
CDB-CE (Sinha et al., ACCV 2020) and FBL (Li et al., ICME 2022): class ``c`` keeps
``int(n_max * (1 / IF) ** (c / (C - 1)))`` training images, ``n_max`` = 5,000 (CIFAR-10) or 500
(CIFAR-100); the test set is the full balanced 10,000 images, untouched and in published order.
With n_max 500 / 5000 this gives the reference totals: CIFAR-100-LT IF 10/50/100/200 → 19,573 /
12,608 / 10,847 / 9,502 images, CIFAR-10-LT → 20,431 / 13,996 / 12,406 / 11,203.

Which images a class keeps follows one of the references, ``data.subset``
(:data:`longtail.data.imbalance.SUBSETS`), drawn with ``data.seed``, never the training seed:
``ldam`` (the default) is LDAM-DRW's and FBL's rule, NumPy's legacy RNG seeded once, then for each
class in label order its indices shuffled and the first n_c kept (``rand_number`` 0 in LDAM-DRW is
``data.seed`` 0: the same images); ``cdb`` is CDB-CE's, the last ``data.val_per_class`` images of
each class in file order as val and the first n_c of the rest as train; ``random`` a seeded choice.
``data.val_per_class`` (CDB-CE's protocol: 25; null or 0: none) holds out that many images of every
class of the published train set as a balanced ``val`` split; the profile is then applied with
``n_max`` = the per-class remainder (CDB-CE's code takes ``len(train) / C`` after the hold-out: 475
for CIFAR-100), which gives CDB-CE's 10,302 training images at IF 100. Without a hold-out
``val.csv`` is empty and ``dataset.json`` records ``has_val: false`` (BALMS on CIFAR draws its meta
set from train: ``finetune.meta_source: train``).

``data.draws: per_phase`` (BALMS's CIFAR code, :mod:`longtail.data.imbalance`) adds
``train_finetune`` and ``train_meta``: the same rule drawn again with each phase's seed from every
image outside val; ``cdb`` (file order, no seed) cannot draw differently and is refused with it.

Normalisation: the fixed per-channel statistics of LDAM-DRW's code, (0.4914, 0.4822, 0.4465) /
(0.2023, 0.1994, 0.2010), used there and by BALMS and FBL for both CIFAR-10 and CIFAR-100, rather
than statistics of each LT subset, so every imbalance factor and seed sees the same input scaling.
Training augmentation: RandomCrop(32, padding=4) + horizontal flip, done on the device in batches.
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from longtail import io
from longtail.data import base, imbalance

if TYPE_CHECKING:
    from longtail.config import DataConfig

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


class ArchiveError(ValueError):
    """An archive that cannot be read or unpacked safely."""


@dataclass(frozen=True)
class Layout:
    """Where one CIFAR variant lives and how its published pickles are laid out."""

    url: str
    md5: str  # of the published .tar.gz, as torchvision pins it
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    n_max: int  # images per class in the published train set


LAYOUTS = {
    "cifar10": Layout(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        n_max=5000,
    ),
    "cifar100": Layout(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        n_max=500,
    ),
}


# ----------------------------------------------------------------------------------------- download
def download(cfg: DataConfig, raw_dir: Path) -> None:
    """Fetch (or take) the archive, check its md5, unpack it into ``raw_dir`` atomically."""
    layout = LAYOUTS[cfg.name]
    source = cfg.archive or layout.url
    expected = layout.md5 if cfg.md5 == "auto" else cfg.md5
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    cached = _cached_archive(source, expected)
    with _local_copy(str(cached or source), raw_dir.parent) as archive:
        verified = io.verify_md5(archive, expected)
        if verified and cached is None and source.startswith(("http://", "https://")):
            _keep_in_cache(archive, source)
        if not verified:
            print(f"md5 check skipped for {archive} (data.md5 is null)")
        md5 = expected.lower() if verified else io.md5sum(archive)
        with io.atomic_dir(raw_dir) as tmp:
            safe_extract(archive, tmp)
            _check_layout(tmp / layout.folder, layout, archive)
            io.write_json(
                tmp / "source.json",
                {"archive": str(source), "md5": md5, "verified": verified, "folder": layout.folder},
            )
    print(f"{cfg.name}: {layout.folder}/ unpacked into {raw_dir}")


def _cache_dir() -> Path:
    """Where verified downloads are kept (``LONGTAIL_CACHE``, default ``~/.cache/longtail``).

    The download stage reruns when a ``data`` param it lists changes (``data.imbalance`` does, for
    the rendered video default); the cache keeps such a rerun from fetching the archive again.
    """
    return io.cache_dir()


def _cached_archive(source: str, expected: str | None) -> Path | None:
    """A cached copy of the URL ``source`` whose md5 is ``expected``, if one exists."""
    if expected is None or not source.startswith(("http://", "https://")):
        return None
    path = _cache_dir() / source.rstrip("/").rsplit("/", 1)[-1]
    if path.is_file() and io.md5sum(path) == expected.lower():
        print(f"using the verified download cached at {path}")
        return path
    return None


def _keep_in_cache(archive: Path, source: str) -> None:
    """Copy a verified download into the cache (atomically; a failure only costs a re-download)."""
    target = _cache_dir() / source.rstrip("/").rsplit("/", 1)[-1]
    with contextlib.suppress(OSError), io.atomic_path(target) as tmp:
        shutil.copyfile(archive, tmp)


@contextlib.contextmanager
def _local_copy(source: str, scratch: Path) -> Iterator[Path]:
    """A local file for ``source``, a path or an http(s) URL.

    A URL is downloaded to a temporary name in ``scratch``, deleted on exit, success or not.
    """
    if not source.startswith(("http://", "https://")):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"data.archive: expected an existing file or an http(s) URL; "
                f"got {source!r} (no such file)"
            )
        yield path
        return
    basename = source.rstrip("/").rsplit("/", 1)[-1]  # so that messages name the archive
    fd, name = tempfile.mkstemp(prefix=f".{basename}.", suffix=".part", dir=scratch)
    tmp = Path(name)
    try:
        print(f"downloading {source}")
        try:
            with open(fd, "wb") as out, urllib.request.urlopen(source, timeout=60) as response:
                shutil.copyfileobj(response, out, length=1 << 20)
        except urllib.error.URLError as err:
            raise ConnectionError(
                f"data.archive: cannot download {source} ({err.reason}); download it by hand and "
                f"set data.archive to the local file"
            ) from None
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a .tar.gz into ``dest`` in one pass, refusing unsafe members.

    Raises:
        ArchiveError: a member with an absolute path, ``..``, a link or a device; or an archive
            that is truncated or not a gzip-compressed tar.
    """
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                _check_member(member, archive)
                tar.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ArchiveError(
            f"cannot unpack {archive}: {err}. The archive is truncated or not a "
            f".tar.gz; download it again (or point data.archive at a good copy)"
        ) from None


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ArchiveError(
            f"{archive}: refusing member {member.name!r}: expected a relative path "
            f"inside the archive"
        )
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(
            f"{archive}: refusing member {member.name!r}: expected a file or a "
            f"directory, got a link or device"
        )


def _check_layout(folder: Path, layout: Layout, archive: Path) -> None:
    needed = (*layout.train_files, layout.test_file, layout.meta_file)
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise ArchiveError(
            f"{archive}: expected {layout.folder}/ with {', '.join(needed)}; "
            f"missing {', '.join(missing)}"
        )


# ------------------------------------------------------------------------------------------ reader
# The function numpy pickles arrays with (``numpy.core.multiarray._reconstruct`` in the published
# files, ``numpy._core.multiarray._reconstruct`` under numpy 2).
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


class _ArrayUnpickler(pickle.Unpickler):
    """Loads the published pickles, which hold only dicts, lists, strings and numpy arrays.

    Any other global is refused, so a tampered file cannot run code when it is read.
    """

    def find_class(self, module: str, name: str) -> object:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _RECONSTRUCT
        # ``_codecs.encode`` is how protocol-2 pickles written by Python 3 store bytes.
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a CIFAR pickle")


def load_pickle(path: Path) -> dict:
    """One published pickle as a dict with bytes keys (``encoding="bytes"``, as published)."""
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="bytes").load()


def read_split(folder: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of the published ``train`` or ``test``."""
    layout = LAYOUTS[name]
    files = layout.train_files if split == "train" else (layout.test_file,)
    images, labels = [], []
    for file in files:
        batch = load_pickle(folder / file)
        data = np.asarray(batch[b"data"])
        target = np.asarray(batch[layout.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(
                f"{folder / file}: expected data of shape (N, 3072) uint8; got "
                f"{data.shape} {data.dtype}"
            )
        if len(target) != len(data):
            raise ValueError(f"{folder / file}: {len(data)} images but {len(target)} labels")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are CHW: 1024 R, 1024 G, 1024 B
        labels.append(target)
    return np.concatenate(images), np.concatenate(labels)


def read_class_names(folder: Path, name: str) -> list[str]:
    """Class names from the published meta file, in label order."""
    layout = LAYOUTS[name]
    names = load_pickle(folder / layout.meta_file)[layout.names_key]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


# ----------------------------------------------------------------------------------------- prepare
def lt_counts(name: str, cfg: DataConfig, available: Sequence[int]) -> list[int]:
    """Per-class training counts of the profile, given how many images each class has left.

    ``n_max`` is ``data.n_max``, else the published per-class count capped by the smallest class
    left after a val hold-out (CDB-CE's rule: 500 - 25 = 475 for CIFAR-100).
    """
    num_classes = len(available)
    n_max = cfg.n_max if cfg.n_max is not None else min(LAYOUTS[name].n_max, min(available))
    counts = imbalance.profile_counts(cfg.profile, n_max, num_classes, cfg.imbalance)
    for c, (k, have) in enumerate(zip(counts, available, strict=True)):
        if k > have:
            raise ValueError(
                f"data.n_max: class {c} needs {k} images, only {have} are left after "
                f"the val hold-out; expected n_max <= {min(available)}, got {n_max}"
            )
        if k == 0:
            raise ValueError(
                f"data.n_max / data.imbalance: class {c} would keep 0 training images "
                f"(n_max {n_max}, imbalance {cfg.imbalance:g}); expected n_max >= "
                f"imbalance"
            )
    return counts


def prepare(cfg: DataConfig, seed: int, raw_dir: Path, out_dir: Path) -> None:
    """Hold out the optional balanced val set, apply the LT profile, keep the full test set.

    ``seed`` is the data seed (the stage passes ``data.seed``); ``data.subset`` picks the rule.
    """
    if cfg.test_per_class is not None:
        raise ValueError(
            f"data.test_per_class: CIFAR-LT is tested on the full published test "
            f"set; expected null, got {cfg.test_per_class}"
        )
    folder = raw_dir / LAYOUTS[cfg.name].folder
    train_images, train_labels = read_split(folder, cfg.name, "train")
    test_images, test_labels = read_split(folder, cfg.name, "test")
    class_names = read_class_names(folder, cfg.name)
    val_pc = cfg.val_per_class or 0
    per_class = np.bincount(train_labels, minlength=len(class_names))
    if val_pc >= per_class.min():
        raise ValueError(
            f"data.val_per_class: expected fewer than the {per_class.min()} images of the "
            f"smallest class; got {val_pc}"
        )
    counts = lt_counts(cfg.name, cfg, (per_class - val_pc).tolist())
    train, val = imbalance.subset(cfg.subset, train_labels, counts, val_pc, seed)
    phases = imbalance.phase_draws(_drawer(cfg.subset, train_labels, val, counts), seed, cfg.draws)
    test = np.arange(len(test_labels))
    manifests = {
        "train": _manifest(train, train_labels),
        "val": _manifest(val, train_labels),
        "test": _manifest(test, test_labels),
    }
    images = {"train": train_images[train], "val": train_images[val], "test": test_images}
    info = {
        "kind": "image",
        "in_channels": 3,
        "size": [32, 32],
        "mean": list(MEAN),
        "std": list(STD),
        "has_val": bool(val_pc),
        "n_max": counts[0],
        "imbalance": cfg.imbalance,
        "profile": cfg.profile,
        "subset": cfg.subset,
        "val_per_class": val_pc,
        "data_seed": seed,
        "draws": imbalance.draws_info(cfg.draws, train, phases),
    }
    print(
        f"{cfg.name}: subset {cfg.subset} (data.seed {seed}), {len(train)} train / {len(val)} "
        f"val / {len(test)} test images"
    )
    base.write_prepared(out_dir, manifests, class_names, info, images=images)
    imbalance.write_phase_splits(out_dir, phases, train_labels, train_images)


def _drawer(
    rule: str, labels: np.ndarray, val: np.ndarray, counts: Sequence[int]
) -> Callable[[int], np.ndarray]:
    """One more draw of the ``rule`` subset with another seed, from every image not in val
    (``data.draws: per_phase``; with no val hold-out, the rule on the whole train set)."""
    pool = np.setdiff1d(np.arange(len(labels)), val)

    def draw(seed: int) -> np.ndarray:
        picked, _ = imbalance.subset(rule, labels[pool], counts, 0, seed)
        return pool[picked]

    return draw


def _manifest(indices: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Rows of one split: position, index into the published split, label."""
    return pd.DataFrame(
        {"index": np.arange(len(indices)), "source_index": indices, "label": labels[indices]}
    )


# ------------------------------------------------------------------------------------ extract, open
def _extractor(name: str) -> Callable[[object, Path, Path, Path], None]:
    def extract(frames_cfg: object, raw_dir: Path, prepared_dir: Path, frames_dir: Path) -> None:
        """Images need no frame extraction; record that explicitly."""
        base.write_nothing_to_extract(frames_dir, name)

    return extract


def open_split(ctx: base.SourceContext, split: str) -> base.TensorSource:
    """The split on the device; training adds the papers' pad-4 random crop and horizontal flip."""
    return base.open_arrays(ctx, split, padding=4, flip=True)


for _name in LAYOUTS:
    base.register(
        base.Family(
            name=_name,
            kind="image",
            default_arch="resnet32",
            download=download,
            prepare=prepare,
            extract=_extractor(_name),
            open=open_split,
        )
    )
