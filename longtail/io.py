"""Atomic file output and checksums.

Every file the pipeline writes goes to a temporary name in the same directory and is renamed into
place, so a kill (Ctrl-C, SIGKILL, a lost machine) never leaves a truncated file where a good one is
expected. Directories are built the same way: under a temporary name, renamed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


class ChecksumError(ValueError):
    """A file's md5 differs from the expected one."""


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows opening a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(obj: Any, path: str | Path) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Atomically save one array in ``.npy`` format."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` if the block succeeds.

    On failure the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: str | Path, expected: str | None, override_key: str = "data.md5") -> bool:
    """Check ``path`` against ``expected``; ``None`` skips the check and returns False.

    Raises:
        ChecksumError: naming the file, both checksums and the param that overrides the check.
    """
    if expected is None:
        return False
    actual = md5sum(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"checksum mismatch for {path}: expected md5 {expected}, got {actual}. "
            f"The file is corrupt or not the published one; download it again, or set "
            f"{override_key} to its md5 (or to null to skip the check) if it is a trusted copy."
        )
    return True
