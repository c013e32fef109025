"""Tests of the CIFAR-10/100-LT family on tiny archives built in the published layout.

Counts are checked against the LDAM-DRW formula written out here; images against the raw pickles
read with plain ``pickle``; failures for the files they leave behind.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io as _io
import json
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fakes import make_cifar_archive

from longtail import io
from longtail.config import DataConfig, FramesConfig
from longtail.data import base, cifar

C10_PER_CLASS, C10_TEST = 201, 3  # 201 = n_max 200 + 1 val image per class
C100_PER_CLASS, C100_TEST = 12, 2
SPLITS = ("train", "val")


def formula(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    return [int(n_max * (1 / imbalance) ** (c / (num_classes - 1))) for c in range(num_classes)]


@pytest.fixture(scope="module")
def c10(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """(archive, md5, raw_dir) of a CIFAR-10 archive, downloaded once with its md5 checked."""
    root = tmp_path_factory.mktemp("c10")
    archive = root / "cifar-10-python.tar.gz"
    md5 = make_cifar_archive(
        archive, kind="cifar10", train_per_class=C10_PER_CLASS, test_per_class=C10_TEST
    )
    raw = root / "raw" / "cifar10"
    cifar.download(DataConfig(name="cifar10", archive=str(archive), md5=md5), raw)
    return archive, md5, raw


@pytest.fixture(scope="module")
def c100(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    root = tmp_path_factory.mktemp("c100")
    archive = root / "cifar-100-python.tar.gz"
    md5 = make_cifar_archive(
        archive, kind="cifar100", train_per_class=C100_PER_CLASS, test_per_class=C100_TEST
    )
    raw = root / "raw" / "cifar100"
    cifar.download(DataConfig(name="cifar100", archive=str(archive), md5=md5), raw)
    return archive, md5, raw


def raw_pickles(raw: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels read with plain pickle, independently of the family."""
    images, labels = [], []
    for file in files:
        with open(raw / file, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(batch[b"data"].reshape(-1, 3, 32, 32))
        labels.append(batch[b"labels"] if b"labels" in batch else batch[b"fine_labels"])
    return np.concatenate(images), np.concatenate(labels)


C10_TRAIN = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
C10_TESTFILE = ["cifar-10-batches-py/test_batch"]


def prepared(out: Path) -> tuple[dict, dict]:
    return (
        json.loads((out / "class_counts.json").read_text()),
        json.loads((out / "dataset.json").read_text()),
    )


# ------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize(
    ("name", "totals"),
    [
        ("cifar100", {10: 19_573, 50: 12_608, 100: 10_847, 200: 9_502}),
        ("cifar10", {10: 20_431, 50: 13_996, 100: 12_406, 200: 11_203}),
    ],
)
def test_standard_totals(name: str, totals: dict[int, int]) -> None:
    num_classes, per_class = (100, 500) if name == "cifar100" else (10, 5000)
    for imbalance, total in totals.items():
        counts = cifar.lt_counts(
            name, DataConfig(name=name, imbalance=imbalance), [per_class] * num_classes
        )
        assert sum(counts) == total
        assert counts == formula(per_class, num_classes, imbalance)


def test_cdb_val_protocol_total() -> None:
    """CDB-CE: 25 per class held out of CIFAR-100's 500, n_max 475, IF 100 -> 10,302 images."""
    counts = cifar.lt_counts("cifar100", DataConfig(name="cifar100", imbalance=100), [475] * 100)
    assert counts[0] == 475
    assert sum(counts) == 10_302


def test_n_max_too_small_for_imbalance() -> None:
    cfg = DataConfig(name="cifar10", imbalance=200, n_max=100)
    with pytest.raises(
        ValueError, match=r"class 8 would keep 0 training images.*expected n_max >= imbalance"
    ):
        cifar.lt_counts("cifar10", cfg, [5000] * 10)


def test_n_max_larger_than_available() -> None:
    cfg = DataConfig(name="cifar10", imbalance=10, n_max=300)
    with pytest.raises(ValueError, match=r"data\.n_max: class 0 needs 300 images, only 200"):
        cifar.lt_counts("cifar10", cfg, [200] * 10)


@pytest.mark.parametrize("imbalance", [1, 10, 50, 100, 200])
def test_prepare_counts_and_images(c10: tuple, tmp_path: Path, imbalance: float) -> None:
    _, _, raw = c10
    cifar.prepare(DataConfig(name="cifar10", imbalance=imbalance, n_max=200), 0, raw, tmp_path)
    counts, info = prepared(tmp_path)
    assert counts["train"] == formula(200, 10, imbalance)
    assert counts["names"][:3] == ["airplane", "automobile", "bird"]
    train = pd.read_csv(tmp_path / "train.csv")
    assert list(train.columns[:3]) == ["index", "source_index", "label"]
    images, labels = raw_pickles(raw, C10_TRAIN)
    stored = np.load(tmp_path / "train_images.npy")
    assert stored.dtype == np.uint8 and stored.shape == (sum(counts["train"]), 3, 32, 32)
    np.testing.assert_array_equal(stored, images[train["source_index"]])
    np.testing.assert_array_equal(train["label"], labels[train["source_index"]])
    assert info["in_channels"] == 3 and info["has_val"] is False
    assert info["mean"] == list(cifar.MEAN) and info["std"] == list(cifar.STD)


def test_cifar100_download_and_prepare(c100: tuple, tmp_path: Path) -> None:
    _, md5, raw = c100
    source = json.loads((raw / "source.json").read_text())
    assert source["md5"] == md5 and source["verified"] is True
    assert sorted(p.name for p in raw.iterdir()) == ["cifar-100-python", "source.json"]
    cifar.prepare(DataConfig(name="cifar100", imbalance=10, n_max=10), 3, raw, tmp_path)
    counts, _ = prepared(tmp_path)
    assert counts["num_classes"] == 100 and counts["names"][99] == "fine_99"
    assert counts["train"] == formula(10, 100, 10)
    assert counts["test"] == [C100_TEST] * 100


def test_no_val_writes_empty_split(c10: tuple, tmp_path: Path) -> None:
    _, _, raw = c10
    cifar.prepare(DataConfig(name="cifar10", imbalance=10), 0, raw, tmp_path)
    assert len(pd.read_csv(tmp_path / "val.csv")) == 0
    assert np.load(tmp_path / "val_images.npy").shape == (0, 3, 32, 32)
    counts, info = prepared(tmp_path)
    assert info["has_val"] is False
    assert counts["train"][0] == C10_PER_CLASS  # n_max defaults to all a class has (5000 if real)


def test_val_hold_out_is_balanced_disjoint_and_test_untouched(c10: tuple, tmp_path: Path) -> None:
    _, _, raw = c10
    cifar.prepare(DataConfig(name="cifar10", imbalance=10, val_per_class=1), 0, raw, tmp_path)
    counts, info = prepared(tmp_path)
    assert info["has_val"] is True
    assert counts["val"] == [1] * 10
    assert counts["train"] == formula(C10_PER_CLASS - 1, 10, 10)  # CDB: n_max = what is left
    train, val = pd.read_csv(tmp_path / "train.csv"), pd.read_csv(tmp_path / "val.csv")
    assert not set(train["source_index"]) & set(val["source_index"])
    train_images, _ = raw_pickles(raw, C10_TRAIN)
    np.testing.assert_array_equal(
        np.load(tmp_path / "val_images.npy"), train_images[val["source_index"]]
    )
    test = pd.read_csv(tmp_path / "test.csv")
    images, labels = raw_pickles(raw, C10_TESTFILE)
    np.testing.assert_array_equal(test["source_index"], np.arange(10 * C10_TEST))
    np.testing.assert_array_equal(test["label"], labels)
    np.testing.assert_array_equal(np.load(tmp_path / "test_images.npy"), images)


def test_selection_is_seeded(c10: tuple, tmp_path: Path) -> None:
    _, _, raw = c10
    cfg = DataConfig(name="cifar10", imbalance=10, n_max=100, val_per_class=1)
    picks = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        cifar.prepare(cfg, seed, raw, tmp_path / run)
        picks[run] = [pd.read_csv(tmp_path / run / f"{s}.csv")["source_index"] for s in SPLITS]
    for split in range(2):
        pd.testing.assert_series_equal(picks["a"][split], picks["b"][split])
        assert not picks["a"][split].equals(picks["c"][split])


def test_test_per_class_is_refused(c10: tuple, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.test_per_class: .* expected null, got 5"):
        cifar.prepare(DataConfig(name="cifar10", test_per_class=5), 0, c10[2], tmp_path)


def test_open_gives_augmented_batches(c10: tuple, tmp_path: Path) -> None:
    _, _, raw = c10
    cifar.prepare(DataConfig(name="cifar10", imbalance=10, n_max=20), 0, raw, tmp_path)
    ctx = base.SourceContext(
        data=DataConfig(name="cifar10"),
        frames=FramesConfig(),
        raw_dir=raw,
        prepared_dir=tmp_path,
        frames_dir=tmp_path / "frames",
        device=torch.device("cpu"),
    )
    source = base.get("cifar10").open(ctx, "train")
    labels = pd.read_csv(tmp_path / "train.csv")["label"].to_numpy()
    assert len(source) == len(labels) and source.in_channels == 3
    order = torch.arange(len(labels)).flip(0)
    gen = torch.Generator().manual_seed(0)
    x, y = next(source.batches(order, 8, train=True, generator=gen))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), labels[order[:8].numpy()])


def test_families_registered() -> None:
    for name in ("cifar10", "cifar100"):
        family = base.get(name)
        assert family.kind == "image" and family.default_arch == "resnet32"


def test_extract_records_nothing(tmp_path: Path) -> None:
    base.get("cifar100").extract(FramesConfig(), tmp_path, tmp_path, tmp_path / "frames")
    manifest = json.loads((tmp_path / "frames" / "manifest.json").read_text())
    assert manifest["dataset"] == "cifar100" and manifest["frames"] == 0


# ---------------------------------------------------------------------------------------- download
def test_md5_null_skips_with_message(
    c10: tuple, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    archive, md5, _ = c10
    raw = tmp_path / "raw" / "cifar10"
    cifar.download(DataConfig(name="cifar10", archive=str(archive), md5=None), raw)
    assert "md5 check skipped" in capsys.readouterr().out
    source = json.loads((raw / "source.json").read_text())
    assert source == {
        "archive": str(archive),
        "md5": md5,
        "verified": False,
        "folder": "cifar-10-batches-py",
    }


def test_auto_md5_is_the_published_one(c10: tuple, tmp_path: Path) -> None:
    """``auto`` checks torchvision's md5 of the real archive, so a fake one is refused."""
    import torchvision.datasets as tvd

    assert cifar.LAYOUTS["cifar10"].md5 == tvd.CIFAR10.tgz_md5
    assert cifar.LAYOUTS["cifar100"].md5 == tvd.CIFAR100.tgz_md5
    assert cifar.LAYOUTS["cifar10"].url == tvd.CIFAR10.url
    assert cifar.LAYOUTS["cifar100"].url == tvd.CIFAR100.url
    with pytest.raises(io.ChecksumError, match=tvd.CIFAR10.tgz_md5):
        cifar.download(DataConfig(name="cifar10", archive=str(c10[0])), tmp_path / "raw" / "c")


def leaves_nothing(parent: Path, before: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == before


def test_md5_mismatch_leaves_nothing(c10: tuple, tmp_path: Path) -> None:
    archive, md5, _ = c10
    bad = tmp_path / "bad.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    parent = tmp_path / "raw"
    parent.mkdir()
    with pytest.raises(io.ChecksumError) as err:
        cifar.download(DataConfig(name="cifar10", archive=str(bad), md5=md5), parent / "cifar10")
    message = str(err.value)
    assert str(bad) in message and md5 in message and io.md5sum(bad) in message
    assert "data.md5" in message
    leaves_nothing(parent, set())


def test_truncated_gzip_leaves_nothing(c10: tuple, tmp_path: Path) -> None:
    archive, _, _ = c10
    bad = tmp_path / "truncated.tar.gz"
    bad.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    parent = tmp_path / "raw"
    parent.mkdir()
    with pytest.raises(cifar.ArchiveError, match=r"truncated.tar.gz: .*truncated or not a"):
        cifar.download(DataConfig(name="cifar10", archive=str(bad), md5=None), parent / "cifar10")
    leaves_nothing(parent, set())


def tar_with(path: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, _io.BytesIO(payload) if member.isfile() else None)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_members_are_refused(tmp_path: Path, kind: str) -> None:
    member = tarfile.TarInfo({"dotdot": "../evil", "absolute": "/tmp/evil"}.get(kind, "link"))
    if kind == "symlink":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = tar_with(tmp_path / "evil.tar.gz", member)
    parent = tmp_path / "raw"
    parent.mkdir()
    with pytest.raises(cifar.ArchiveError, match="refusing member"):
        cifar.download(DataConfig(name="cifar10", archive=str(archive), md5=None), parent / "c")
    leaves_nothing(parent, set())
    assert not (tmp_path / "evil").exists()


def test_archive_without_the_published_folder(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "other.tar.gz", tarfile.TarInfo("something/else"))
    with pytest.raises(cifar.ArchiveError, match=r"expected cifar-10-batches-py/ with"):
        cifar.download(DataConfig(name="cifar10", archive=str(archive), md5=None), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_missing_archive_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.archive: .*nope\.tar\.gz"):
        cifar.download(DataConfig(name="cifar10", archive=str(tmp_path / "nope.tar.gz")), tmp_path)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over http on a free local port; yield the base URL."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _download_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep verified downloads in the test's own directory, never in the user's cache."""
    cache = tmp_path / "download-cache"
    monkeypatch.setenv("LONGTAIL_CACHE", str(cache))
    return cache


def test_verified_download_is_reused_without_the_network(c100: tuple, tmp_path: Path) -> None:
    archive, md5, _ = c100
    with serving(archive.parent) as base_url:
        url = f"{base_url}/{archive.name}"
        cifar.download(DataConfig(name="cifar100", archive=url, md5=md5), tmp_path / "a" / "c")
    assert io.md5sum(tmp_path / "download-cache" / archive.name) == md5
    # The server is gone: a rerun of the stage (say after data.imbalance changed) uses the cache.
    cifar.download(DataConfig(name="cifar100", archive=url, md5=md5), tmp_path / "b" / "c")
    assert json.loads((tmp_path / "b" / "c" / "source.json").read_text())["md5"] == md5


def test_download_from_url(c100: tuple, tmp_path: Path) -> None:
    """An http URL is fetched to a temporary name, checked, unpacked and the download deleted."""
    archive, md5, _ = c100
    raw = tmp_path / "raw" / "cifar100"
    with serving(archive.parent) as base_url:
        url = f"{base_url}/{archive.name}"
        cifar.download(DataConfig(name="cifar100", archive=url, md5=md5), raw)
    assert json.loads((raw / "source.json").read_text())["archive"] == url
    leaves_nothing(tmp_path / "raw", {"cifar100"})


def test_download_from_url_with_wrong_md5_leaves_nothing(c100: tuple, tmp_path: Path) -> None:
    archive, _, _ = c100
    parent = tmp_path / "raw"
    with serving(archive.parent) as base_url, pytest.raises(io.ChecksumError) as err:
        cifar.download(
            DataConfig(name="cifar100", archive=f"{base_url}/{archive.name}", md5="0" * 32),
            parent / "cifar100",
        )
    assert archive.name in str(err.value) and "0" * 32 in str(err.value)
    leaves_nothing(parent, set())


def test_unreachable_url_says_what_to_do(tmp_path: Path) -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler) as srv:
        port = srv.server_address[1]  # closed again before the request: nothing listens there
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    with pytest.raises(ConnectionError, match=r"data\.archive: cannot download .*by hand"):
        cifar.download(DataConfig(name="cifar10", archive=url), tmp_path / "raw" / "cifar10")
    leaves_nothing(tmp_path / "raw", set())


def test_reader_refuses_foreign_globals(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Path("x")}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="unexpected global pathlib"):
        cifar.load_pickle(path)
