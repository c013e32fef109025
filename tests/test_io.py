"""Atomic writes leave the old content or the new, never a partial file; checksums name the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail import io


class Boom(RuntimeError):
    """Raised inside a write block to stand for a crash half-way through."""


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_path_writes_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.pt"
    with io.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert entries(target.parent) == ["model.pt"]


def test_atomic_path_exception_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(Boom), io.atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise Boom
    assert target.read_text() == "old"
    assert entries(tmp_path) == ["metrics.json"]


def test_atomic_path_exception_leaves_nothing_when_absent(tmp_path: Path) -> None:
    with pytest.raises(Boom), io.atomic_path(tmp_path / "a.csv") as tmp:
        tmp.write_text("x")
        raise Boom
    assert entries(tmp_path) == []


def test_atomic_dir_exception_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Boom), io.atomic_dir(tmp_path / "raw") as tmp:
        (tmp / "part.bin").write_bytes(b"partial")
        (tmp / "sub").mkdir()
        raise Boom
    assert entries(tmp_path) == []


def test_atomic_dir_exception_keeps_old_directory(tmp_path: Path) -> None:
    old = tmp_path / "prepared"
    old.mkdir()
    (old / "train.csv").write_text("old")
    with pytest.raises(Boom), io.atomic_dir(old) as tmp:
        (tmp / "train.csv").write_text("new")
        raise Boom
    assert entries(old) == ["train.csv"] and (old / "train.csv").read_text() == "old"
    assert entries(tmp_path) == ["prepared"]


def test_atomic_dir_replaces_whole_directory(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "stale.csv").write_text("from the previous run")
    with io.atomic_dir(target) as tmp:
        (tmp / "train.csv").write_text("new")
    assert entries(target) == ["train.csv"]
    assert entries(tmp_path) == ["prepared"]


def test_stale_temps_of_a_killed_write_are_removed(tmp_path: Path) -> None:
    # What SIGKILL leaves behind: a temp file and a temp dir of the same targets, which no
    # `finally` removed; a temp of another target and look-alike names stay.
    (tmp_path / ".ckpt.0123abcd.tmp").write_bytes(b"half")
    (tmp_path / ".raw.89abcdef.tmp").mkdir()
    (tmp_path / ".raw.89abcdef.tmp" / "x").write_bytes(b"half")
    (tmp_path / ".other.0123abcd.tmp").write_bytes(b"someone else's")
    (tmp_path / ".ckpt.x.0123abcd.tmp").write_bytes(b"temp of 'ckpt.x'")
    io.write_bytes(tmp_path / "ckpt", b"good")
    with io.atomic_dir(tmp_path / "raw") as tmp:
        (tmp / "y").write_bytes(b"good")
    assert entries(tmp_path) == [".ckpt.x.0123abcd.tmp", ".other.0123abcd.tmp", "ckpt", "raw"]


def test_outputs_follow_the_umask_not_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "f.txt", "x")
        with io.atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_writers_round_trip(tmp_path: Path) -> None:
    io.write_json(tmp_path / "m.json", {"top1": 12.5, "classes": [1, 2]})
    assert (tmp_path / "m.json").read_text() == (
        '{\n  "top1": 12.5,\n  "classes": [\n    1,\n    2\n  ]\n}\n'
    )
    io.save_npy(tmp_path / "a.npy", np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert np.load(tmp_path / "a.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    io.save_torch({"w": torch.tensor([1.5, -2.0])}, tmp_path / "w.pt")
    assert torch.load(tmp_path / "w.pt")["w"].tolist() == [1.5, -2.0]
    assert entries(tmp_path) == ["a.npy", "m.json", "w.pt"]


def test_same_state_saves_to_the_same_bytes(tmp_path: Path) -> None:
    # DVC compares outputs by md5: an unchanged model must not look changed after a rewrite.
    state = {"w": torch.arange(6.0).reshape(2, 3), "config": {"lr": 0.1}}
    io.save_torch(state, tmp_path / "a.pt")
    io.save_torch(state, tmp_path / "b" / "model.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def test_md5_known_value(tmp_path: Path) -> None:
    (tmp_path / "abc").write_bytes(b"abc")
    assert io.md5sum(tmp_path / "abc", chunk=2) == "900150983cd24fb0d6963f7d28e17f72"
    assert io.verify_md5(tmp_path / "abc", "900150983CD24FB0D6963F7D28E17F72") is True
    assert io.verify_md5(tmp_path / "abc", None) is False


def test_md5_mismatch_names_file_both_sums_and_override(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(b"abc")
    with pytest.raises(io.ChecksumError) as err:
        io.verify_md5(archive, "0" * 32, override_key="data.md5")
    message = str(err.value)
    assert str(archive) in message
    assert "expected md5 " + "0" * 32 in message
    assert "got 900150983cd24fb0d6963f7d28e17f72" in message
    assert "data.md5" in message
    assert isinstance(err.value, ValueError)
