"""Atomic file output and checksums.

Every file the pipeline writes goes to a temporary name in the same directory and is renamed into
place, so a kill (Ctrl-C, SIGKILL, a lost machine) never leaves a truncated file where a good one is
expected: the path holds either the old content or the new, never a mix. Directories are built the
same way, under a temporary name renamed at the end.

Temporary names are ``.<name>.<8 hex digits>.tmp`` beside the target. A kill can leave one behind
(no ``finally`` runs under SIGKILL); the next write of the same target removes it, so a persisted
output directory (checkpoints) does not fill up with them. One process writes a given path at a
time (only rank 0 writes outputs), which is what makes that clean-up safe.

Temporary files and directories are created with the process's umask, like an ordinary ``open``,
so outputs are not made private the way ``tempfile.mkstemp`` would make them.

Every torch file is read through :func:`load_torch`, with ``weights_only=True``: PyTorch's
restricted unpickler, which builds tensors, numbers, strings, lists, tuples and dicts and refuses
any other object, so a crafted file (from a DVC remote, a shared drive, a download) cannot run
code when a stage opens it. The pipeline writes only such values (RNG states included, see
``longtail.train.rng_state``). A refused file is never retried with ``weights_only=False``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import pickle
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np


class ChecksumError(ValueError):
    """A file's md5 differs from the expected one."""


class UnsafeFileError(ValueError):
    """A torch file holds something other than tensors and plain values; it was not loaded."""


# ----------------------------------------------------------------------------- temporary siblings
def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def _is_temp_of(candidate: Path, path: Path) -> bool:
    pattern = rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp"
    return re.fullmatch(pattern, candidate.name) is not None


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporaries that an interrupted write of ``path`` left beside it.

    Returns:
        The removed paths.
    """
    path = Path(path)
    stale = [
        p for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if _is_temp_of(p, path)
    ]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def _new_temp(path: Path, directory: bool) -> Path:
    """Create an empty temporary file or directory beside ``path`` (mode from the umask)."""
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary name beside {path}")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows opening a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The block must write to exactly the yielded path (a writer that appends its own suffix, such
    as ``np.savez``, needs an open file object instead). On an exception the temporary file is
    removed and ``path`` keeps its old content, or stays absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _new_temp(path, directory=False)
    try:
        yield tmp
        _fsync_file(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` if the block succeeds.

    On an exception the temporary directory is removed and ``path`` is left as it was. A kill
    during the final swap can leave ``path`` absent (never half-written); the next run rebuilds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _new_temp(path, directory=True)
    try:
        yield tmp
        _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _swap_in(new: Path, path: Path) -> None:
    """Rename ``new`` onto ``path``, moving an existing ``path`` aside first and deleting it."""
    old = None
    if path.exists() or path.is_symlink():
        old = _temp_name(path)
        os.replace(path, old)
    os.replace(new, path)
    _fsync_dir(path.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


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
    """Atomically ``torch.save`` ``obj`` to ``path``; the same ``obj`` gives the same bytes.

    ``torch.save`` given a file name records that name inside the zip archive (here the random
    temporary name), so two saves of one state would differ and DVC would see a changed output.
    Given an open file it records the fixed name ``archive``.
    """
    import torch  # here, not at the top: the data stages write no tensors and never load torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_torch(path: str | Path, remedy: str) -> Any:
    """Read a torch file with ``weights_only=True`` (tensors and plain values only), on the CPU.

    Args:
        path: the file.
        remedy: what the user should do with a refused file (the message ends with it).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeFileError: the file asks for an object that PyTorch's restricted unpickler does not
            build (a class or function to call: what a crafted pickle uses to run code, and what
            an older file of NumPy arrays holds). The message names the file, the refused global
            and ``remedy``. It is never retried with ``weights_only=False``.
        pickle.UnpicklingError: bytes that are no pickle the restricted unpickler reads (a
            truncated or foreign file), with a short message naming the file.
        RuntimeError: a damaged archive (a truncated copy), as ``torch.load`` raises it.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _refusal_reason(err)
        if "GLOBAL" not in reason:
            raise pickle.UnpicklingError(f"{path}: {reason}") from None
        raise UnsafeFileError(
            f"{path} was refused: expected only tensors, numbers, strings, lists and dicts (a "
            f"weights-only load), got {reason}. It was not loaded, because unpickling other "
            f"objects can run arbitrary code. {remedy}"
        ) from None


def _refusal_reason(err: pickle.UnpicklingError) -> str:
    """What PyTorch's message says was refused (without its advice to allow or retry it)."""
    text = str(err)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        return f"GLOBAL {found.group(1)} (a class or function that unpickling would call)"
    if found := re.search(r"Unsupported operand (\d+)", text):
        return f"unsupported pickle opcode {found.group(1)}"
    return "content that is no weights-only torch file"


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Atomically save one array in ``.npy`` format."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def cache_dir() -> Path:
    """The user cache of verified downloads and verify passes (``LONGTAIL_CACHE``, default
    ``~/.cache/longtail``)."""
    return Path(os.environ.get("LONGTAIL_CACHE", Path.home() / ".cache" / "longtail"))


# ------------------------------------------------------------------------------- untrusted paths
def relative_path(text: str, where: str) -> str:
    """``text`` if it is a relative POSIX path that stays under the folder it is joined to.

    List files, split files and the manifests in ``data/prepared`` (which a DVC remote supplies)
    name files by paths joined to a root; a path that is absolute or climbs out with ``..`` would
    make a stage read, or for video frames write, outside it.

    Raises:
        ValueError: naming ``where`` and the path.
    """
    parts = PurePosixPath(text).parts
    if not text or "\\" in text or PurePosixPath(text).is_absolute() or ".." in parts:
        raise ValueError(
            f"{where}: expected a relative path inside the data root (no leading /, no .., no "
            f"backslash), got {text!r}"
        )
    return text


# ------------------------------------------------------------------------------------- checksums
def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: str | Path, expected: str | None, override_key: str = "data.md5") -> bool:
    """Check ``path`` against ``expected``; ``None`` skips the check and returns False.

    Call it before unpacking anything from ``path``.

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
